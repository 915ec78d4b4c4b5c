//! What can stop a worker binary before its worker runs.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use worker_core::{BrokerError, ConfigError};

use super::config_file::ConfigFileError;

/// Why the command line could not start the worker. Messages never include a secret.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A shared store (--credits-url, --rate-limit-url, --idempotency-url) could not be used.
    #[error("{flag} ({target}): {reason}")]
    Store {
        /// The flag that names it.
        flag: &'static str,
        /// Where it points, without any password.
        target: String,
        /// Why.
        reason: String,
    },
    /// `credits` without `--credits-url`.
    #[error("the credits subcommand operates the ledger that --credits-url (WORKER_CREDITS_URL) names: give it")]
    CreditsNeedUrl,
    /// `bridge` without `--config`.
    #[error(
        "the bridge reads its routes from the [bridge] section of a configuration file: give it with --config (or WORKER_CONFIG)"
    )]
    BridgeNeedsConfig,
    /// The chosen backend's cargo feature is off.
    #[error("backend `{0}` is not compiled in (enable feature `{0}`)")]
    BackendNotCompiled(&'static str),
    /// The chosen backend could not connect (or refused its settings).
    #[error("cannot connect the `{backend}` backend to {target}")]
    Connect {
        /// The backend.
        backend: &'static str,
        /// Where it was told to connect, without any password.
        target: String,
        /// Why.
        #[source]
        source: BrokerError,
    },
    /// `--pulsar-listener` was given, which the Pulsar client cannot honour.
    #[error(
        "--pulsar-listener (PULSAR_LISTENER) is `{listener}`, but this Pulsar client cannot ask \
         for an advertised listener: unset it and point --pulsar-host (PULSAR_HOST) at that \
         listener's address, or at a Pulsar proxy"
    )]
    PulsarListener {
        /// The listener name given.
        listener: String,
        /// The backend's refusal.
        #[source]
        source: BrokerError,
    },
    /// The `--config` file could not be read.
    #[error("cannot read the configuration file `{}`", path.display())]
    ReadConfig {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The `--config` file is not acceptable.
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
    /// A task's own configuration is not acceptable.
    #[error("invalid task configuration:{}", problem_lines(.0))]
    InvalidTaskConfig(Vec<ConfigError>),
    /// `--tasks` names tasks this binary does not have.
    #[error(
        "--tasks names {} this binary does not have: {}; known tasks: {}",
        if .unknown.len() == 1 { "a task" } else { "tasks" },
        .unknown.join(", "),
        if .known.is_empty() { "none".to_owned() } else { .known.join(", ") }
    )]
    UnknownTasks {
        /// The names not found.
        unknown: Vec<String>,
        /// Every task in the binary.
        known: Vec<String>,
    },
    /// The binary holds no task, or `--tasks` selected none.
    #[error(
        "no tasks to run: declare one with #[pulsar_io_task] or #[pulsar_db_task] in a crate \
         linked into this binary"
    )]
    NoTasks,
    /// The `--jwt-secret-file` could not be read.
    #[error("cannot read the JWT secret file `{}`", path.display())]
    ReadSecret {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The JWT secret given is empty.
    #[error("the JWT secret from {0} is empty")]
    EmptySecret(&'static str),
    /// Tasks check senders' tokens but no verification key was given.
    #[error(
        "{} `{}` {} senders' tokens but no verification key is configured: set \
         WORKER_JWT_SECRET_FILE (or --jwt-secret-file, WORKER_JWT_SECRET, --jwt-secret)",
        if .0.len() == 1 { "task" } else { "tasks" },
        .0.join("`, `"),
        if .0.len() == 1 { "verifies" } else { "verify" }
    )]
    NoVerifier(Vec<String>),
    /// `dlq --replay` of a task that verifies senders, without a token for the replayed messages.
    #[error(
        "task `{0}` verifies its senders' tokens, and dead-letter copies keep none: give the \
         replay the token to send them with in WORKER_REPLAY_TOKEN (or --token)"
    )]
    ReplayNeedsToken(String),
    /// The token given to `dlq --replay` would not be accepted by the task.
    #[error("the replay token would not be accepted by task `{task}`")]
    ReplayTokenRefused {
        /// The task.
        task: String,
        /// Why (never the token itself).
        #[source]
        source: crate::auth::AuthError,
    },
    /// The metrics endpoint could not listen.
    #[error("cannot serve metrics on {addr} (use --metrics-addr to pick another, or `off`)")]
    MetricsBind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The shutdown signal handlers could not be installed.
    #[error("cannot listen for shutdown signals")]
    Signals(#[source] io::Error),
}

fn problem_lines(errors: &[ConfigError]) -> String {
    match errors {
        [one] => format!(" {one}"),
        many => many.iter().map(|e| format!("\n  {e}")).collect(),
    }
}
