//! The Apache Pulsar flags, and connecting with them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use worker_core::Broker;

use super::super::args::{positive_duration, secret_value};
use crate::auth::Secret;
use crate::cli::{CliError, LevelCap};

/// How to reach a Pulsar cluster and how to produce to it.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Pulsar (--backend pulsar)")]
pub struct PulsarArgs {
    /// The service URL: `pulsar://host:6650`, or `pulsar+ssl://host:6651` for TLS.
    #[arg(
        id = "pulsar_host",
        long = "pulsar-host",
        env = "PULSAR_HOST",
        default_value = "pulsar://localhost:6650",
        value_name = "URL"
    )]
    pub host: String,

    /// A token (JWT) for token authentication; never printed. Prefer the variable to the flag:
    /// a flag's value is visible to other users of the machine.
    #[arg(
        id = "pulsar_api_key",
        long = "pulsar-api-key",
        env = "PULSAR_API_KEY",
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = secret_value,
        allow_hyphen_values = true
    )]
    pub api_key: Option<Secret>,

    /// An advertised listener name. The Pulsar client used here cannot send one, so setting it
    /// stops the worker at start: connect to the listener's address directly instead.
    #[arg(
        id = "pulsar_listener",
        long = "pulsar-listener",
        env = "PULSAR_LISTENER",
        value_name = "NAME"
    )]
    pub listener: Option<String>,

    /// A PEM file of certificate authorities to trust besides the public roots
    /// (`pulsar+ssl://` only).
    #[arg(
        id = "pulsar_tls_ca_file",
        long = "pulsar-tls-ca-file",
        env = "PULSAR_TLS_CA_FILE",
        value_name = "PATH"
    )]
    pub tls_ca_file: Option<PathBuf>,

    /// The broker's admin REST API (`http://host:8080`), read for each task's backlog
    /// (`worker_backlog_messages`); without it no backlog is reported.
    #[arg(
        id = "pulsar_admin_url",
        long = "pulsar-admin-url",
        env = "PULSAR_ADMIN_URL",
        value_name = "URL"
    )]
    pub admin_url: Option<String>,

    /// The limit for one request to the broker (lookup, subscribe, one send's receipt).
    #[arg(
        id = "pulsar_operation_timeout",
        long = "pulsar-operation-timeout",
        env = "PULSAR_OPERATION_TIMEOUT",
        default_value = "30s",
        value_name = "DURATION",
        value_parser = positive_duration
    )]
    pub operation_timeout: Duration,

    /// The limit for opening one connection (TCP and TLS).
    #[arg(
        id = "pulsar_connection_timeout",
        long = "pulsar-connection-timeout",
        env = "PULSAR_CONNECTION_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION",
        value_parser = positive_duration
    )]
    pub connection_timeout: Duration,

    /// How long acks wait to be sent together (they go out at once when many are waiting).
    #[arg(
        id = "pulsar_ack_group_time",
        long = "pulsar-ack-group-time",
        env = "PULSAR_ACK_GROUP_TIME",
        default_value = "100ms",
        value_name = "DURATION",
        value_parser = positive_duration
    )]
    pub ack_group_time: Duration,

    /// Batch produced messages (those without a key and without a delivery time).
    #[arg(
        id = "pulsar_batching",
        long = "pulsar-batching",
        env = "PULSAR_BATCHING"
    )]
    pub batching: bool,

    /// The most messages in one batch (with --pulsar-batching).
    #[arg(
        id = "pulsar_batch_size",
        long = "pulsar-batch-size",
        env = "PULSAR_BATCH_SIZE",
        default_value_t = 100,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(2..),
        requires = "pulsar_batching"
    )]
    pub batch_size: u32,

    /// How long the first message of a batch may wait for others (with --pulsar-batching).
    #[arg(
        id = "pulsar_batch_delay",
        long = "pulsar-batch-delay",
        env = "PULSAR_BATCH_DELAY",
        default_value = "5ms",
        value_name = "DURATION",
        value_parser = positive_duration,
        requires = "pulsar_batching"
    )]
    pub batch_delay: Duration,

    /// Compression of produced payloads; consumers read every kind.
    #[arg(
        id = "pulsar_compression",
        long = "pulsar-compression",
        env = "PULSAR_COMPRESSION",
        value_enum,
        value_name = "CODEC",
        default_value_t = PulsarCompression::None
    )]
    pub compression: PulsarCompression,
}

/// The payload compressions `--pulsar-compression` offers.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PulsarCompression {
    /// No compression.
    #[default]
    None,
    /// LZ4: fast, moderate ratio.
    Lz4,
    /// Zstandard: slower, better ratio.
    Zstd,
}

/// Log caps that keep the token out of the logs (see `LOG_TARGET_WITH_TOKENS`).
#[cfg(feature = "pulsar")]
pub(super) const LOG_CAPS: &[LevelCap] = &[LevelCap {
    target: crate::broker::pulsar::LOG_TARGET_WITH_TOKENS,
    max: tracing::Level::DEBUG,
}];
/// Without the backend there is no Pulsar client to log anything.
#[cfg(not(feature = "pulsar"))]
pub(super) const LOG_CAPS: &[LevelCap] = &[];

#[cfg(feature = "pulsar")]
impl PulsarArgs {
    /// The backend options these flags describe. Empty values (a variable set to "") count as
    /// not given.
    pub fn options(&self) -> crate::broker::pulsar::PulsarOptions {
        use crate::broker::pulsar::{Batching, Compression, PulsarOptions, Token};

        let mut options = PulsarOptions::new(self.host.trim())
            .with_timeouts(self.operation_timeout, self.connection_timeout)
            .with_compression(match self.compression {
                PulsarCompression::None => Compression::None,
                PulsarCompression::Lz4 => Compression::Lz4,
                PulsarCompression::Zstd => Compression::Zstd,
            });
        options.token = self
            .api_key
            .as_ref()
            .map(super::secret_text)
            .filter(|token| !token.is_empty())
            .map(Token::new);
        options.ack_group_time = self.ack_group_time;
        options.listener = self.listener.clone().filter(|name| !name.is_empty());
        options.admin_url = self
            .admin_url
            .as_deref()
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned);
        options.tls_ca_file = self
            .tls_ca_file
            .clone()
            .filter(|path| !path.as_os_str().is_empty());
        if self.batching {
            options = options.with_batching(Batching {
                max_messages: self.batch_size,
                max_delay: self.batch_delay,
            });
        }
        options
    }
}

/// Connects to the cluster the flags name.
#[cfg(feature = "pulsar")]
pub(super) async fn connect(args: &PulsarArgs) -> Result<Arc<dyn Broker>, CliError> {
    use worker_core::BrokerError;

    let options = args.options();
    let url = options.url.clone();
    let listener = options.listener.clone();
    tracing::info!(url = %super::redact_url(&url), "connecting to pulsar");
    match (
        crate::broker::PulsarBroker::connect(options).await,
        listener,
    ) {
        (Ok(broker), _) => Ok(Arc::new(broker)),
        (Err(source @ BrokerError::Unsupported { .. }), Some(listener)) => {
            Err(CliError::PulsarListener { listener, source })
        }
        (Err(source), _) => Err(super::connect_error(
            super::BackendKind::Pulsar,
            &url,
            source,
        )),
    }
}

/// Without the `pulsar` feature there is nothing to connect.
#[cfg(not(feature = "pulsar"))]
pub(super) async fn connect(_: &PulsarArgs) -> Result<Arc<dyn Broker>, CliError> {
    Err(CliError::BackendNotCompiled("pulsar"))
}
