//! The command line of a worker binary: [`run`] is its whole `main`.
//!
//! ```no_run
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     worker_runtime::cli::run().await
//! }
//! ```
//!
//! | flag | environment | default | |
//! |---|---|---|---|
//! | `--backend` | `PUBSUB_BACKEND` | `memory` | `memory`, `pulsar`, `valkey` or `mqtt` (the last three behind cargo features) |
//! | `--consumer-name` | `WORKER_CONSUMER_NAME` | `{hostname}-{pid}` | unique per worker process |
//! | `--tasks` | `WORKER_TASKS` | every task | comma-separated subset to run |
//! | `--metrics-addr` | `WORKER_METRICS_ADDR` | `0.0.0.0:9090` | `/metrics`, `/healthz`, `/readyz`; `off` disables |
//! | `--config` | `WORKER_CONFIG` | none | TOML overrides of task settings, see [`config_file`] |
//! | `--log-format` | `WORKER_LOG_FORMAT` | `pretty` | `pretty` or `json`, on stderr; `RUST_LOG` filters (default `info`) |
//! | `--jwt-secret` | `WORKER_JWT_SECRET` | none | HS256 key verifying senders' tokens; never printed |
//! | `--jwt-secret-file` | `WORKER_JWT_SECRET_FILE` | none | the same key read from a file |
//! | `--shutdown-grace` | `WORKER_SHUTDOWN_GRACE` | `30s` | time work in flight may take after SIGINT/SIGTERM |
//!
//! `worker tasks` prints every task's effective configuration and exits. A bad flag, file or task
//! setting stops the binary at start with a message naming it. SIGINT or SIGTERM stops taking
//! messages and lets work in flight finish within the grace period, then the process exits with
//! status 0; a second signal exits at once with status 130.

mod args;
mod backend;
pub mod config_file;
mod error;
mod listing;
pub mod logging;
pub mod signals;
#[cfg(test)]
mod test_tasks;
#[cfg(test)]
mod tests;
mod worker_shim;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use worker_core::{Broker, ConfigError, TaskKind};

pub use args::{default_consumer_name, parse_from, Cli, Command, MetricsAddr};
pub use backend::{connect_backend, BackendArgs, BackendKind};
pub use config_file::{apply_overrides, ConfigFileError, ConfigProblem};
pub use error::CliError;
pub use listing::describe_tasks;
pub use logging::LogFormat;

use crate::auth::{Secret, TokenVerifier};
use crate::credits::CreditLedger;
use crate::metrics::{server, Metrics};
use crate::TaskDefinition;
use worker_shim::{Hs256Verifier, Worker};

/// How long the metrics endpoint may take to finish its requests after the worker stopped.
const METRICS_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Parses the process's command line and runs [`run_with`]; `--help` and flag errors print and
/// exit as usual.
pub async fn run() -> anyhow::Result<()> {
    run_with(Cli::parse(), RunExtras::default()).await
}

/// What a program may hand [`run_with`] instead of what the command line would build.
#[derive(Default)]
pub struct RunExtras {
    broker: Option<Arc<dyn Broker>>,
    credit_ledger: Option<Arc<dyn CreditLedger>>,
    verifier: Option<Arc<dyn TokenVerifier>>,
    tasks: Option<Vec<TaskDefinition>>,
    shutdown: Option<CancellationToken>,
    no_signal_handlers: bool,
}

impl RunExtras {
    /// Nothing extra: everything comes from the command line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses this broker instead of connecting `--backend` (e.g. a memory broker the program also
    /// publishes to).
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Uses this credit ledger for db tasks that charge credits.
    pub fn credit_ledger(mut self, ledger: Arc<dyn CreditLedger>) -> Self {
        self.credit_ledger = Some(ledger);
        self
    }

    /// Uses this token verifier instead of one built from `--jwt-secret`/`--jwt-secret-file`.
    pub fn verifier(mut self, verifier: Arc<dyn TokenVerifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// Runs these tasks instead of [`registered_tasks`](crate::registered_tasks) (`--config` and
    /// `--tasks` still apply).
    pub fn tasks(mut self, tasks: Vec<TaskDefinition>) -> Self {
        self.tasks = Some(tasks);
        self
    }

    /// Stops the worker when this token is cancelled, besides on signals.
    pub fn shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = Some(token);
        self
    }

    /// Leaves SIGINT and SIGTERM alone (for a program that handles them itself and cancels the
    /// [`shutdown`](Self::shutdown) token).
    pub fn without_signal_handlers(mut self) -> Self {
        self.no_signal_handlers = true;
        self
    }
}

impl fmt::Debug for RunExtras {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunExtras")
            .field("broker", &self.broker.as_ref().map(|b| b.name()))
            .field("credit_ledger", &self.credit_ledger.is_some())
            .field("verifier", &self.verifier.is_some())
            .field("tasks", &self.tasks.as_ref().map(Vec::len))
            .field("shutdown", &self.shutdown.is_some())
            .field("signal_handlers", &!self.no_signal_handlers)
            .finish()
    }
}

/// Runs the worker as `cli` says, with what `extras` provides: sets up logging, loads and checks
/// the tasks, serves metrics, connects the broker and runs until a shutdown signal (or the
/// `extras` token). Returns once the worker stopped gracefully.
pub async fn run_with(cli: Cli, extras: RunExtras) -> anyhow::Result<()> {
    logging::init(cli.log_format);
    let tasks = extras.tasks.unwrap_or_else(crate::registered_tasks);
    let tasks = prepare_tasks(&cli, tasks)?;
    if cli.command == Some(Command::Tasks) {
        print!("{}", describe_tasks(&tasks));
        return Ok(());
    }
    if tasks.is_empty() {
        return Err(CliError::NoTasks.into());
    }
    let verifier = match extras.verifier {
        Some(verifier) => Some(verifier),
        None => load_secret(&cli)?
            .map(|secret| Arc::new(Hs256Verifier::new(secret)) as Arc<dyn TokenVerifier>),
    };
    check_verifier(&tasks, verifier.is_some())?;

    let consumer_name = cli.consumer_name();
    let metrics = Metrics::new(&consumer_name);
    let shutdown = extras.shutdown.unwrap_or_default();
    if !extras.no_signal_handlers {
        let signals = signals::ShutdownSignals::install().map_err(CliError::Signals)?;
        signals::spawn_handler(signals, shutdown.clone(), cli.shutdown_grace);
    }
    let not_ready_on_shutdown = {
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            metrics.set_ready(false);
        })
    };
    let metrics_stop = CancellationToken::new();
    let metrics_server = match cli.metrics_addr {
        MetricsAddr::Off => None,
        MetricsAddr::On(addr) => {
            let bound = server::bind(addr)
                .await
                .map_err(|source| CliError::MetricsBind { addr, source })?;
            let local = bound.local_addr().unwrap_or(addr);
            tracing::info!(addr = %local, "serving /metrics, /healthz and /readyz");
            Some(tokio::spawn(
                bound.serve(metrics.clone(), metrics_stop.clone()),
            ))
        }
    };

    let result = async {
        let broker = match extras.broker {
            Some(broker) => broker,
            None => tokio::select! {
                broker = connect_backend(&cli.backend) => broker?,
                () = shutdown.cancelled() => {
                    tracing::info!("shut down before the broker was connected");
                    return Ok(());
                }
            },
        };
        let names: Vec<&str> = tasks.iter().map(|t| t.name()).collect();
        tracing::info!(
            backend = broker.name(),
            consumer = %consumer_name,
            tasks = %names.join(","),
            "starting worker"
        );
        start_worker(
            WorkerInputs {
                broker,
                tasks,
                consumer_name,
                verifier,
                credit_ledger: extras.credit_ledger,
                metrics: metrics.clone(),
                shutdown_grace: cli.shutdown_grace,
            },
            shutdown.clone(),
        )
        .await
    }
    .await;

    metrics.set_ready(false);
    not_ready_on_shutdown.abort();
    metrics_stop.cancel();
    if let Some(server) = metrics_server {
        if tokio::time::timeout(METRICS_STOP_TIMEOUT, server)
            .await
            .is_err()
        {
            tracing::warn!("the metrics endpoint did not stop in time");
        }
    }
    result
}

/// Everything the worker is built from.
struct WorkerInputs {
    broker: Arc<dyn Broker>,
    tasks: Vec<TaskDefinition>,
    consumer_name: String,
    verifier: Option<Arc<dyn TokenVerifier>>,
    credit_ledger: Option<Arc<dyn CreditLedger>>,
    metrics: Metrics,
    shutdown_grace: Duration,
}

/// Builds the worker and runs it until `shutdown` is cancelled and its work in flight finished.
async fn start_worker(inputs: WorkerInputs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut builder = Worker::builder()
        .broker(inputs.broker)
        .tasks(inputs.tasks)
        .consumer_name(inputs.consumer_name)
        .metrics(inputs.metrics)
        .shutdown_grace(inputs.shutdown_grace);
    if let Some(verifier) = inputs.verifier {
        builder = builder.verifier(verifier);
    }
    if let Some(ledger) = inputs.credit_ledger {
        builder = builder.credit_ledger(ledger);
    }
    let worker = builder.build()?;
    let report = worker.run(shutdown).await?;
    tracing::info!(?report, "worker stopped");
    Ok(())
}

/// Applies `--config` (when given) and checks every task, then keeps the `--tasks` selection.
pub fn prepare_tasks(
    cli: &Cli,
    mut tasks: Vec<TaskDefinition>,
) -> Result<Vec<TaskDefinition>, CliError> {
    match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| CliError::ReadConfig {
                path: path.clone(),
                source,
            })?;
            apply_overrides(&mut tasks, &text, &path.display().to_string())?;
        }
        None => {
            let errors: Vec<ConfigError> = tasks
                .iter()
                .filter_map(|t| t.config().validate().err())
                .flatten()
                .collect();
            if !errors.is_empty() {
                return Err(CliError::InvalidTaskConfig(errors));
            }
        }
    }
    select_tasks(tasks, &cli.tasks)
}

/// Keeps the tasks named in `selection` (all when it is empty), in their order.
fn select_tasks(
    tasks: Vec<TaskDefinition>,
    selection: &[String],
) -> Result<Vec<TaskDefinition>, CliError> {
    let wanted: Vec<&str> = selection
        .iter()
        .map(|name| name.trim())
        .filter(|name| !name.is_empty())
        .collect();
    if wanted.is_empty() {
        return Ok(tasks);
    }
    let mut unknown: Vec<String> = wanted
        .iter()
        .filter(|name| !tasks.iter().any(|t| t.name() == **name))
        .map(|name| (*name).to_owned())
        .collect();
    if !unknown.is_empty() {
        unknown.dedup();
        let known = tasks.iter().map(|t| t.name().to_owned()).collect();
        return Err(CliError::UnknownTasks { unknown, known });
    }
    Ok(tasks
        .into_iter()
        .filter(|t| wanted.contains(&t.name()))
        .collect())
}

/// The verification key from `--jwt-secret` or `--jwt-secret-file`, if either is given.
fn load_secret(cli: &Cli) -> Result<Option<Secret>, CliError> {
    if let Some(secret) = &cli.jwt_secret {
        if secret.expose().is_empty() {
            return Err(CliError::EmptySecret("--jwt-secret / WORKER_JWT_SECRET"));
        }
        return Ok(Some(secret.clone()));
    }
    let Some(path) = &cli.jwt_secret_file else {
        return Ok(None);
    };
    read_secret_file(path).map(Some)
}

/// Reads a key file, without one trailing `\n` or `\r\n` that editors add.
fn read_secret_file(path: &Path) -> Result<Secret, CliError> {
    let mut bytes = std::fs::read(path).map_err(|source| CliError::ReadSecret {
        path: path.to_owned(),
        source,
    })?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(CliError::EmptySecret(
            "--jwt-secret-file / WORKER_JWT_SECRET_FILE",
        ));
    }
    Ok(Secret::new(bytes))
}

/// Db tasks that check roles or charge credits need a verified sender; refuse to start without a
/// verifier rather than dead-letter every message as forbidden.
fn check_verifier(tasks: &[TaskDefinition], have_verifier: bool) -> Result<(), CliError> {
    if have_verifier {
        return Ok(());
    }
    let needing: Vec<String> = tasks
        .iter()
        .map(TaskDefinition::config)
        .filter(|c| {
            c.kind == TaskKind::Db && (!c.permission_roles.is_empty() || c.credits.is_some())
        })
        .map(|c| c.name.clone())
        .collect();
    if needing.is_empty() {
        Ok(())
    } else {
        Err(CliError::NoVerifier(needing))
    }
}
