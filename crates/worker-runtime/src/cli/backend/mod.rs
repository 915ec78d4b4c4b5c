//! Choosing and connecting the broker backend from the command line.

use std::fmt;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use worker_core::Broker;

use super::error::CliError;
use crate::broker::MemoryBroker;

/// The backend flags. A backend's own settings (`--valkey-url`, …) go here, each with its
/// environment variable.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct BackendArgs {
    /// The broker backend.
    #[arg(long, env = "PUBSUB_BACKEND", value_enum, default_value_t = BackendKind::Memory)]
    pub backend: BackendKind,
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

/// Connects the backend `args` choose. A backend whose cargo feature is off is a clear error
/// naming the feature.
pub async fn connect_backend(args: &BackendArgs) -> Result<Arc<dyn Broker>, CliError> {
    match args.backend {
        BackendKind::Memory => Ok(Arc::new(MemoryBroker::new())),
        // Each compiled-in backend connects here with its flags from `BackendArgs`.
        #[cfg(feature = "pulsar")]
        BackendKind::Pulsar => Err(CliError::BackendNotWired("pulsar")),
        #[cfg(not(feature = "pulsar"))]
        BackendKind::Pulsar => Err(CliError::BackendNotCompiled("pulsar")),
        #[cfg(feature = "valkey")]
        BackendKind::Valkey => Err(CliError::BackendNotWired("valkey")),
        #[cfg(not(feature = "valkey"))]
        BackendKind::Valkey => Err(CliError::BackendNotCompiled("valkey")),
        #[cfg(feature = "mqtt")]
        BackendKind::Mqtt => Err(CliError::BackendNotWired("mqtt")),
        #[cfg(not(feature = "mqtt"))]
        BackendKind::Mqtt => Err(CliError::BackendNotCompiled("mqtt")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "valkey"))]
    #[tokio::test]
    async fn a_backend_not_compiled_in_names_its_feature() {
        let args = BackendArgs {
            backend: BackendKind::Valkey,
        };
        let error = connect_backend(&args).await.err().expect("not compiled in");
        assert_eq!(
            error.to_string(),
            "backend `valkey` is not compiled in (enable feature `valkey`)"
        );
    }

    #[test]
    fn names_match_the_flag_values() {
        for kind in BackendKind::value_variants() {
            let value = kind.to_possible_value().expect("not skipped");
            assert_eq!(value.get_name(), kind.as_str());
        }
    }
}
