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

/// `url` for messages and logs: any `user:password@` part becomes `***@`, the values of query
/// parameters that carry secrets (`password=`, `token=`, …) become `***`, and text that is no
/// `scheme://` URL (a key-value connection string, say) is not shown at all.
pub(crate) fn redact_url(url: &str) -> String {
    let scheme = crate::credits::url_scheme(url);
    if scheme.is_empty() {
        return "(not a scheme:// url; not shown)".to_owned();
    }
    let rest = &url[scheme.len() + 3..];
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    // The last `@` before the query ends the user information, even where a password holds `@`.
    let location = match before_query.rfind('@') {
        Some(at) => format!("***{}", &before_query[at..]),
        None => before_query.to_owned(),
    };
    let query = query.map(|query| {
        query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret_parameter(name) => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    match query {
        Some(query) => format!("{scheme}://{location}?{query}"),
        None => format!("{scheme}://{location}"),
    }
}

/// Whether a query parameter of this name carries a secret.
fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "pass", "pwd", "secret", "token", "key"]
        .iter()
        .any(|secret| name.contains(secret))
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
        assert_eq!(
            redact_url("postgresql://h/db?user=u&password=s3cret&sslpassword=x"),
            "postgresql://h/db?user=u&password=***&sslpassword=***"
        );
        assert_eq!(
            redact_url("postgres://ops:pw@db:5432/ledger?application_name=w"),
            "postgres://***@db:5432/ledger?application_name=w"
        );
        for not_a_url in ["host=db password=s3cret", "no scheme@host", "://x:y@z"] {
            let shown = redact_url(not_a_url);
            assert!(!shown.contains("s3cret") && !shown.contains('@'), "{shown}");
        }
    }
}
