//! Choosing and connecting the broker backend from the command line.
//!
//! Every backend's flags exist in every build, so that `--help` and deployment files do not
//! depend on the cargo features; choosing a backend whose feature is off is a start-up error
//! naming the feature.

mod mqtt;
mod pulsar;
mod valkey;

use std::fmt;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use worker_core::Broker;

use super::error::CliError;
use super::logging::LevelCap;
use crate::broker::MemoryBroker;

pub use mqtt::MqttArgs;
pub use pulsar::{PulsarArgs, PulsarCompression};
pub use valkey::ValkeyArgs;

/// The backend flags: which backend, and how to reach each one. Every flag has an environment
/// variable; secrets (`--pulsar-api-key`, `--mqtt-password`, a password inside `--valkey-url`)
/// never appear in `--help`, in `Debug` output or in logs.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Broker")]
pub struct BackendArgs {
    /// The broker backend.
    #[arg(long, env = "PUBSUB_BACKEND", value_enum, default_value_t = BackendKind::Memory)]
    pub backend: BackendKind,

    /// Apache Pulsar settings (`--backend pulsar`).
    #[command(flatten)]
    pub pulsar: PulsarArgs,

    /// Valkey settings (`--backend valkey`).
    #[command(flatten)]
    pub valkey: ValkeyArgs,

    /// MQTT settings (`--backend mqtt`).
    #[command(flatten)]
    pub mqtt: MqttArgs,
}

impl BackendArgs {
    /// The log caps the chosen backend needs so that no secret reaches the logs (for Pulsar:
    /// pulsar-rs logs the frames it sends, token included, at trace level).
    pub fn log_caps(&self) -> &'static [LevelCap] {
        match self.backend {
            BackendKind::Pulsar => pulsar::LOG_CAPS,
            BackendKind::Memory | BackendKind::Valkey | BackendKind::Mqtt => &[],
        }
    }
}

/// The broker backends a worker binary may be built with.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// The embedded in-process broker: nothing to install, nothing survives the process.
    Memory,
    /// Apache Pulsar (cargo feature `pulsar`).
    Pulsar,
    /// Valkey or Redis streams (cargo feature `valkey`).
    Valkey,
    /// An MQTT 5 broker (cargo feature `mqtt`).
    Mqtt,
}

impl BackendKind {
    /// The name used on the command line and as the cargo feature.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Pulsar => "pulsar",
            BackendKind::Valkey => "valkey",
            BackendKind::Mqtt => "mqtt",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Connects the backend `args` choose, with its flags. A backend whose cargo feature is off is a
/// clear error naming the feature; one that cannot be reached is an error naming where it was
/// looked for (without any password).
pub async fn connect_backend(args: &BackendArgs) -> Result<Arc<dyn Broker>, CliError> {
    match args.backend {
        BackendKind::Memory => Ok(Arc::new(MemoryBroker::new())),
        BackendKind::Pulsar => pulsar::connect(&args.pulsar).await,
        BackendKind::Valkey => valkey::connect(&args.valkey).await,
        BackendKind::Mqtt => mqtt::connect(&args.mqtt).await,
    }
}

/// `url` with any `user:password@` part replaced by `***@`, for messages and logs.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// A secret given on the command line, as text (clap hands over valid UTF-8).
#[cfg(any(feature = "pulsar", feature = "mqtt"))]
fn secret_text(secret: &crate::auth::Secret) -> String {
    String::from_utf8_lossy(secret.expose()).into_owned()
}

/// The error for a backend that could not connect to `target` (shown without any password).
#[cfg(any(feature = "pulsar", feature = "valkey", feature = "mqtt"))]
fn connect_error(backend: BackendKind, target: &str, source: worker_core::BrokerError) -> CliError {
    CliError::Connect {
        backend: backend.as_str(),
        target: redact_url(target),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_flag_values() {
        for kind in BackendKind::value_variants() {
            let value = kind.to_possible_value().expect("not skipped");
            assert_eq!(value.get_name(), kind.as_str());
        }
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("redis://:pw@127.0.0.1:6379/0"),
            "redis://***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("rediss://user:p@ss@host:6380"),
            "rediss://***@host:6380"
        );
        assert_eq!(
            redact_url("pulsar://localhost:6650"),
            "pulsar://localhost:6650"
        );
        assert_eq!(redact_url("no scheme@host"), "no scheme@host");
    }
}
