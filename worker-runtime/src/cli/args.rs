//! The flags of a worker binary, each with an environment variable as fallback.

use std::convert::Infallible;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use worker_core::{parse_duration, DurationError};

use super::backend::BackendArgs;
use super::logging::LogFormat;
use crate::auth::Secret;
use crate::worker::default_consumer_name;

/// The command line of a worker binary. Every flag may instead be given by the environment
/// variable named in `--help`; a flag given on the command line wins.
#[derive(Parser, Clone, Debug)]
#[command(
    about = "Runs the message-driven tasks linked into this binary.",
    long_about = "Runs the message-driven tasks linked into this binary: consumes each task's \
                  topic and drives every message through rate limiting, a per-attempt timeout, \
                  retries with backoff and dead-letter routing. SIGINT or SIGTERM stops taking \
                  messages and lets work in flight finish; a second signal exits at once."
)]
pub struct Cli {
    /// This worker's consumer name, unique per running copy and the same across its restarts
    /// [default: {hostname}-{n}, n the lowest slot no other running copy on this host holds].
    #[arg(long, env = "WORKER_CONSUMER_NAME", global = true)]
    pub consumer_name: Option<String>,

    /// Run only these tasks (comma-separated names) [default: every task in the binary].
    #[arg(
        long,
        env = "WORKER_TASKS",
        value_delimiter = ',',
        value_name = "NAMES",
        global = true
    )]
    pub tasks: Vec<String>,

    /// Where to serve /metrics, /healthz and /readyz, or `off`.
    #[arg(
        long,
        env = "WORKER_METRICS_ADDR",
        default_value = "0.0.0.0:9090",
        value_name = "ADDR|off",
        global = true
    )]
    pub metrics_addr: MetricsAddr,

    /// A TOML file overriding task settings ([tasks.NAME] tables with the same keys as the task
    /// attributes) and holding the bridge's routes (`[bridge]`).
    #[arg(long, env = "WORKER_CONFIG", value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,

    /// How to write logs (to stderr); RUST_LOG filters them [default filter: info].
    #[arg(long, env = "WORKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub log_format: LogFormat,

    /// The HS256 key that verifies senders' tokens (db tasks). Prefer --jwt-secret-file: a flag's
    /// value is visible to other users of the machine.
    #[arg(
        long,
        env = "WORKER_JWT_SECRET",
        hide_env_values = true,
        value_name = "SECRET",
        value_parser = secret_value,
        allow_hyphen_values = true,
        conflicts_with = "jwt_secret_file"
    )]
    pub jwt_secret: Option<Secret>,

    /// A file holding the HS256 key that verifies senders' tokens (one trailing newline is ignored).
    #[arg(long, env = "WORKER_JWT_SECRET_FILE", value_name = "PATH")]
    pub jwt_secret_file: Option<PathBuf>,

    /// Where credit balances live, shared by every worker: `redis://…`/`rediss://…` (Valkey) or
    /// `postgres://…` (PostgreSQL, whose schema is applied at start). Without it, db tasks that
    /// charge credits have no ledger and the worker refuses to start.
    #[arg(
        long,
        env = "WORKER_CREDITS_URL",
        hide_env_values = true,
        value_name = "URL",
        global = true
    )]
    pub credits_url: Option<String>,

    /// The Valkey (`redis://…`) that holds the rate limits of tasks with
    /// `rate_limit_scope = "global"`, shared by all their workers.
    #[arg(
        long,
        env = "WORKER_RATE_LIMIT_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub rate_limit_url: Option<String>,

    /// Where tasks with an `idempotency_window` record handled messages, shared by every worker:
    /// `redis://…` or `postgres://…` [default: each worker's own memory].
    #[arg(
        long,
        env = "WORKER_IDEMPOTENCY_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub idempotency_url: Option<String>,

    /// How long work in flight may take to finish after a shutdown signal ("30s", "2m", or seconds).
    #[arg(
        long,
        env = "WORKER_SHUTDOWN_GRACE",
        default_value = "30s",
        value_name = "DURATION",
        value_parser = duration_value,
        global = true
    )]
    pub shutdown_grace: Duration,

    /// How often each task's backlog is read from the broker (`worker_backlog_messages`).
    #[arg(
        long,
        env = "WORKER_BACKLOG_INTERVAL",
        default_value = "15s",
        value_name = "DURATION",
        value_parser = duration_value
    )]
    pub backlog_interval: Duration,

    /// Which broker to use, and how to reach it (last, so that its help headings follow the
    /// worker's own flags).
    #[command(flatten)]
    pub backend: BackendArgs,

    /// What to do; without a subcommand the worker runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Subcommand, Clone, Debug)]
pub enum Command {
    /// Print every task with its effective configuration (after --config and --tasks), in the
    /// override file's format, and exit.
    Tasks,
    /// Inspect a task's dead-letter queue, or replay it to the task's topic.
    Dlq(DlqArgs),
    /// Operate the credit ledger --credits-url names: grant credits, show a balance, list a
    /// principal's recent charges and refunds.
    #[command(subcommand)]
    Credits(CreditsCommand),
    /// Forward messages between brokers along the routes of the `[bridge]` section of --config
    /// (Valkey lists and Celery queues, topics on any backend), until a shutdown signal.
    Bridge(BridgeArgs),
}

/// What `credits` does.
#[derive(Subcommand, Clone, Debug)]
pub enum CreditsCommand {
    /// Adds credits to a principal's balance and prints the new balance.
    Grant {
        /// The principal (a token's `sub`).
        principal: String,
        /// The credit type (`db_credits`).
        credit_type: String,
        /// How many.
        amount: u64,
    },
    /// Prints a principal's balance of one credit type.
    Balance {
        /// The principal.
        principal: String,
        /// The credit type.
        credit_type: String,
    },
    /// Lists a principal's latest charges, refunds and grants, newest first.
    History {
        /// The principal.
        principal: String,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// What `bridge` does.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct BridgeArgs {
    /// Run only this route (repeat for several); every route of the `[bridge]` section otherwise.
    #[arg(long = "route", value_name = "NAME")]
    pub routes: Vec<String>,
    /// Instead of running the routes: replay one.
    #[command(subcommand)]
    pub action: Option<BridgeAction>,
}

/// What `bridge` does besides running its routes.
#[derive(Subcommand, Clone, Debug)]
pub enum BridgeAction {
    /// Forward a route's history again, from a position, through a subscription of its own that
    /// is deleted at the end (topic sources on Pulsar, Valkey or the embedded broker).
    Replay(ReplayArgs),
}

/// What `bridge replay` does.
#[derive(clap::Args, Clone, Debug)]
pub struct ReplayArgs {
    /// The route to replay.
    pub route: String,
    /// Where to start: `earliest`, an RFC 3339 time (`2026-12-01T08:00:00Z`), or a message id
    /// (a Pulsar position as the DLQ shows it, a Valkey entry id).
    #[arg(long, value_name = "POSITION")]
    pub from: String,
    /// Count what would be forwarded; forward nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Forward at most this many.
    #[arg(long)]
    pub limit: Option<u64>,
}

/// What `dlq` does.
#[derive(clap::Args, Clone, Debug)]
pub struct DlqArgs {
    /// The task whose dead-letter queue to read.
    pub task: String,
    /// Republish the dead letters to the topic they came from (attempts start afresh), instead
    /// of only listing them.
    #[arg(long)]
    pub replay: bool,
    /// The signed token the replayed messages carry (`wr-auth-token`). Dead-letter copies keep no
    /// token, so a replay to a db task that checks roles or charges credits needs one: the
    /// messages then run, and are charged, as its principal. Prefer WORKER_REPLAY_TOKEN: a flag's
    /// value is visible to other users of the machine.
    #[arg(
        long,
        env = "WORKER_REPLAY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = secret_value,
        requires = "replay"
    )]
    pub token: Option<Secret>,
    /// Read at most this many.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

impl Cli {
    /// The consumer name: `--consumer-name` when given and not blank, else
    /// [`default_consumer_name`].
    pub fn consumer_name(&self) -> String {
        match self.consumer_name.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => default_consumer_name(),
        }
    }
}

/// Parses a command line (the first item is the binary's name) without exiting on errors, for
/// tests and for programs that build their own `main`.
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Cli::try_parse_from(args)
}

/// Where the metrics endpoint listens, if anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    /// No endpoint.
    Off,
    /// Listen on this address (port 0 picks a free port).
    On(SocketAddr),
}

impl FromStr for MetricsAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim().eq_ignore_ascii_case("off") {
            return Ok(MetricsAddr::Off);
        }
        text.trim().parse().map(MetricsAddr::On).map_err(|_| {
            "expected an IP address and port such as 0.0.0.0:9090 or [::1]:9090, or `off`".into()
        })
    }
}

impl fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsAddr::Off => f.write_str("off"),
            MetricsAddr::On(addr) => addr.fmt(f),
        }
    }
}

pub(super) fn secret_value(text: &str) -> Result<Secret, Infallible> {
    Ok(Secret::new(text.as_bytes()))
}

fn duration_value(text: &str) -> Result<Duration, DurationError> {
    parse_duration(text)
}

/// A duration that must not be zero (a timeout, an interval).
pub(super) fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be greater than zero".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}
