//! [`PulsarOptions`]: how to reach the cluster and how to produce and consume.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use worker_core::DEFAULT_MAX_PAYLOAD_BYTES;

/// The environment variable of the service URL.
pub const ENV_HOST: &str = "PULSAR_HOST";
/// The environment variable of the token (JWT) used for authentication.
pub const ENV_API_KEY: &str = "PULSAR_API_KEY";
/// The environment variable of the advertised listener name.
pub const ENV_LISTENER: &str = "PULSAR_LISTENER";
/// The environment variable of the PEM file of certificate authorities trusted for TLS.
pub const ENV_TLS_CA_FILE: &str = "PULSAR_TLS_CA_FILE";
/// The environment variable of the admin REST API's URL.
pub const ENV_ADMIN_URL: &str = "PULSAR_ADMIN_URL";
/// The service URL used when none is given.
pub const DEFAULT_URL: &str = "pulsar://localhost:6650";

/// The log target under which pulsar-rs logs the frames it sends at trace level, the
/// authentication token of the `CONNECT` command included. A process that uses
/// [`super::PulsarBroker`] with a token must never let this target's trace events through; the
/// worker binary caps it at debug whatever `RUST_LOG` says.
pub const LOG_TARGET_WITH_TOKENS: &str = "pulsar::connection";

/// Room kept in a message frame for its command, metadata, properties and key when declaring
/// the payload limit.
pub const FRAME_HEADROOM: usize = 64 * 1024;

/// An authentication token. Its `Debug` form never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Token(token.into())
    }

    /// The token itself, to hand to the client.
    pub(super) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Payload compression applied by producers. Consumers decompress whatever they receive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// No compression.
    #[default]
    None,
    /// LZ4: fast, moderate ratio.
    Lz4,
    /// Zstandard at its default level: slower, better ratio.
    Zstd,
}

impl Compression {
    /// Parses `none`, `lz4` or `zstd`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "none" => Some(Compression::None),
            "lz4" => Some(Compression::Lz4),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// Producer-side batching: several messages stored as one entry, fewer frames and receipts.
///
/// Only messages without a key and without a delivery time are batched: Pulsar cannot delay one
/// message of a batch, and pulsar-rs has no key-based batching, so a batch of mixed keys would
/// break per-key order on key_shared subscriptions. The others go through an unbatched producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// The most messages in one batch (at least 2 to batch at all).
    pub max_messages: u32,
    /// How long the first message of a batch may wait for others.
    pub max_delay: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_messages: 100,
            max_delay: Duration::from_millis(5),
        }
    }
}

/// Everything [`super::PulsarBroker::connect`] needs. Build it with [`PulsarOptions::new`] or
/// [`PulsarOptions::from_env`] and the `with_*` methods, or set the fields directly.
#[derive(Clone, Debug, PartialEq)]
pub struct PulsarOptions {
    /// `pulsar://host:port`, or `pulsar+ssl://host:port` for TLS. Default
    /// [`DEFAULT_URL`], env [`ENV_HOST`].
    pub url: String,
    /// Token authentication (a JWT), env [`ENV_API_KEY`]. Never logged.
    pub token: Option<Token>,
    /// The advertised listener to use, env [`ENV_LISTENER`]. pulsar-rs 6 cannot send one in its
    /// lookups, so connecting fails with [`worker_core::BrokerError::Unsupported`] when it is set;
    /// connect to that listener's address directly, or through a Pulsar proxy, instead.
    pub listener: Option<String>,
    /// A PEM file of certificate authorities to trust besides the public roots (TLS only), env
    /// [`ENV_TLS_CA_FILE`].
    pub tls_ca_file: Option<PathBuf>,
    /// The broker's admin REST API (`http://host:8080`), env [`ENV_ADMIN_URL`]: subscriptions
    /// report their backlog from it (`worker_backlog_messages`). Without it they report none.
    pub admin_url: Option<String>,
    /// The limit for one request to the broker (lookup, subscribe, one send's receipt).
    pub operation_timeout: Duration,
    /// The limit for opening one TCP (and TLS) connection.
    pub connection_timeout: Duration,
    /// How long a publish may keep trying, across reconnections, before it fails. It includes
    /// the wait for room in the publish buffer.
    pub publish_timeout: Duration,
    /// Publishes in flight at once, per broker handle (the bounded publish buffer). Further
    /// publishes wait for room.
    pub max_pending_publishes: usize,
    /// Producer batching; `None` sends every message on its own.
    pub batching: Option<Batching>,
    /// Producer compression.
    pub compression: Compression,
    /// The broker's `maxMessageSize`: the limit of one message frame on the wire, its payload,
    /// properties, key and framing together (a broker closes the connection of a client that
    /// sends a larger one). The payload limit the backend declares is this less
    /// [`FRAME_HEADROOM`]; a message whose frame would still be over it is refused before it is
    /// sent. Default 5 MiB, Pulsar's own default.
    pub max_message_bytes: usize,
    /// How long acks are collected before they are sent.
    pub ack_group_time: Duration,
    /// How many acked entries make a flush happen before `ack_group_time` ends.
    pub ack_group_max: usize,
}

impl Default for PulsarOptions {
    fn default() -> Self {
        PulsarOptions {
            url: DEFAULT_URL.to_owned(),
            token: None,
            listener: None,
            tls_ca_file: None,
            admin_url: None,
            operation_timeout: Duration::from_secs(30),
            connection_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(60),
            max_pending_publishes: 1000,
            batching: None,
            compression: Compression::None,
            max_message_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            ack_group_time: Duration::from_millis(100),
            ack_group_max: 1000,
        }
    }
}

/// Why a [`PulsarOptions`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PulsarOptionsError {
    /// The URL is not `pulsar://…` or `pulsar+ssl://…` with a host.
    #[error("pulsar url `{0}` must look like `pulsar://host:6650` or `pulsar+ssl://host:6651`")]
    InvalidUrl(String),
    /// The admin URL is not one the backend can use.
    #[error("{0}")]
    InvalidAdminUrl(String),
    /// A CA file was given for a plain-text URL.
    #[error("a TLS CA file was given but the url `{0}` is not `pulsar+ssl://`")]
    CaFileWithoutTls(String),
    /// A duration or size that must be positive is zero.
    #[error("pulsar option `{0}` must be greater than zero")]
    Zero(&'static str),
}

impl PulsarOptions {
    /// Defaults, with this service URL.
    pub fn new(url: impl Into<String>) -> Self {
        PulsarOptions {
            url: url.into(),
            ..PulsarOptions::default()
        }
    }

    /// Defaults, with the URL, token, listener, CA file and admin URL taken from [`ENV_HOST`],
    /// [`ENV_API_KEY`], [`ENV_LISTENER`], [`ENV_TLS_CA_FILE`] and [`ENV_ADMIN_URL`] where they
    /// are set and not empty.
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        PulsarOptions {
            url: var(ENV_HOST).unwrap_or_else(|| DEFAULT_URL.to_owned()),
            token: var(ENV_API_KEY).map(Token::new),
            listener: var(ENV_LISTENER),
            tls_ca_file: var(ENV_TLS_CA_FILE).map(PathBuf::from),
            admin_url: var(ENV_ADMIN_URL),
            ..PulsarOptions::default()
        }
    }

    /// Sets the token (builder style).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Token::new(token));
        self
    }

    /// Sets the CA file for TLS (builder style).
    pub fn with_tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// Sets the operation and connection timeouts (builder style).
    pub fn with_timeouts(mut self, operation: Duration, connection: Duration) -> Self {
        self.operation_timeout = operation;
        self.connection_timeout = connection;
        self
    }

    /// Turns producer batching on (builder style).
    pub fn with_batching(mut self, batching: Batching) -> Self {
        self.batching = Some(batching);
        self
    }

    /// Sets the producer compression (builder style).
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// The largest payload accepted: [`Self::max_message_bytes`] less the room kept for the
    /// frame's command, metadata and properties.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_message_bytes.saturating_sub(FRAME_HEADROOM)
    }

    /// Whether the URL asks for TLS.
    pub fn uses_tls(&self) -> bool {
        self.url.starts_with("pulsar+ssl://")
    }

    /// Checks the options without connecting.
    pub fn validate(&self) -> Result<(), PulsarOptionsError> {
        let rest = self
            .url
            .strip_prefix("pulsar://")
            .or_else(|| self.url.strip_prefix("pulsar+ssl://"))
            .ok_or_else(|| PulsarOptionsError::InvalidUrl(self.url.clone()))?;
        let host = rest.split([':', '/']).next().unwrap_or_default();
        if host.is_empty() {
            return Err(PulsarOptionsError::InvalidUrl(self.url.clone()));
        }
        if self.tls_ca_file.is_some() && !self.uses_tls() {
            return Err(PulsarOptionsError::CaFileWithoutTls(self.url.clone()));
        }
        if let Some(url) = &self.admin_url {
            super::admin::Admin::new(url, None, self.operation_timeout)
                .map_err(PulsarOptionsError::InvalidAdminUrl)?;
        }
        for (name, value) in [
            ("operation_timeout", self.operation_timeout),
            ("connection_timeout", self.connection_timeout),
            ("publish_timeout", self.publish_timeout),
            ("ack_group_time", self.ack_group_time),
        ] {
            if value.is_zero() {
                return Err(PulsarOptionsError::Zero(name));
            }
        }
        for (name, value) in [
            ("max_pending_publishes", self.max_pending_publishes),
            ("max_message_bytes", self.max_message_bytes),
            ("ack_group_max", self.ack_group_max),
        ] {
            if value == 0 {
                return Err(PulsarOptionsError::Zero(name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_local() {
        let options = PulsarOptions::default();
        assert_eq!(options.url, "pulsar://localhost:6650");
        assert_eq!(options.max_message_bytes, 5 * 1024 * 1024);
        assert_eq!(options.max_payload_bytes(), 5 * 1024 * 1024 - 64 * 1024);
        assert!(options.batching.is_none());
        assert_eq!(options.validate(), Ok(()));
        assert!(!options.uses_tls());
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let options = PulsarOptions::new("pulsar://broker:6650").with_token("eyJsecret.part");
        let printed = format!("{options:?}");
        assert!(!printed.contains("eyJsecret"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }

    #[test]
    fn urls_and_tls_settings_are_checked() {
        assert!(PulsarOptions::new("pulsar+ssl://broker:6651")
            .with_tls_ca_file("/etc/ca.pem")
            .validate()
            .is_ok());
        assert_eq!(
            PulsarOptions::new("pulsar://broker:6650")
                .with_tls_ca_file("/etc/ca.pem")
                .validate(),
            Err(PulsarOptionsError::CaFileWithoutTls(
                "pulsar://broker:6650".into()
            ))
        );
        for bad in [
            "http://broker:8080",
            "pulsar://",
            "pulsar://:6650",
            "broker:6650",
        ] {
            assert_eq!(
                PulsarOptions::new(bad).validate(),
                Err(PulsarOptionsError::InvalidUrl(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn zero_limits_are_refused() {
        let options = PulsarOptions {
            max_pending_publishes: 0,
            ..PulsarOptions::default()
        };
        assert_eq!(
            options.validate(),
            Err(PulsarOptionsError::Zero("max_pending_publishes"))
        );
        let options =
            PulsarOptions::default().with_timeouts(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(
            options.validate(),
            Err(PulsarOptionsError::Zero("operation_timeout"))
        );
    }

    #[test]
    fn compression_names_parse() {
        assert_eq!(Compression::parse("lz4"), Some(Compression::Lz4));
        assert_eq!(Compression::parse("zstd"), Some(Compression::Zstd));
        assert_eq!(Compression::parse("none"), Some(Compression::None));
        assert_eq!(Compression::parse("gzip"), None);
    }
}
