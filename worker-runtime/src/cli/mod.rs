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
//! | `--consumer-name` | `WORKER_CONSUMER_NAME` | `{hostname}-{n}` | unique per running copy, the same across its restarts ([`default_consumer_name`]) |
//! | `--tasks` | `WORKER_TASKS` | every task | comma-separated subset to run |
//! | `--metrics-addr` | `WORKER_METRICS_ADDR` | `0.0.0.0:9090` | `/metrics`, `/healthz`, `/readyz`; `off` disables |
//! | `--config` | `WORKER_CONFIG` | none | TOML overrides of task settings, see [`config_file`] |
//! | `--log-format` | `WORKER_LOG_FORMAT` | `pretty` | `pretty` or `json`, on stderr; `RUST_LOG` filters (default `info`) |
//! | `--jwt-secret` | `WORKER_JWT_SECRET` | none | HS256 key verifying senders' tokens; never printed |
//! | `--jwt-secret-file` | `WORKER_JWT_SECRET_FILE` | none | the same key read from a file |
//! | `--shutdown-grace` | `WORKER_SHUTDOWN_GRACE` | `30s` | time work in flight may take after SIGINT/SIGTERM |
//! | `--backlog-interval` | `WORKER_BACKLOG_INTERVAL` | `15s` | how often each task's backlog is read from the broker |
//! | `--credits-url` | `WORKER_CREDITS_URL` | none | the credit ledger every worker shares: `redis://…`, `rediss://…` or `postgres://…` |
//! | `--rate-limit-url` | `WORKER_RATE_LIMIT_URL` | none | the Valkey holding `rate_limit_scope = "global"` limits |
//! | `--idempotency-url` | `WORKER_IDEMPOTENCY_URL` | each worker's memory | where `idempotency_window` tasks record handled messages |
//!
//! Each backend's own flags ([`BackendArgs`]); durations are written `"500ms"`, `"30s"`, `"2m"`:
//!
//! | flag | environment | default | |
//! |---|---|---|---|
//! | `--pulsar-host` | `PULSAR_HOST` | `pulsar://localhost:6650` | `pulsar+ssl://…` for TLS |
//! | `--pulsar-api-key` | `PULSAR_API_KEY` | none | token (JWT) authentication; never printed |
//! | `--pulsar-listener` | `PULSAR_LISTENER` | none | not supported by the client: a start-up error |
//! | `--pulsar-tls-ca-file` | `PULSAR_TLS_CA_FILE` | none | PEM certificate authorities to trust |
//! | `--pulsar-admin-url` | `PULSAR_ADMIN_URL` | none | the admin REST API, read for the backlog gauge |
//! | `--pulsar-operation-timeout` | `PULSAR_OPERATION_TIMEOUT` | `30s` | one request to the broker |
//! | `--pulsar-connection-timeout` | `PULSAR_CONNECTION_TIMEOUT` | `10s` | opening one connection |
//! | `--pulsar-ack-group-time` | `PULSAR_ACK_GROUP_TIME` | `100ms` | how long acks wait to be sent together |
//! | `--pulsar-batching` | `PULSAR_BATCHING` | off | batch produced messages without key or delay |
//! | `--pulsar-batch-size` | `PULSAR_BATCH_SIZE` | `100` | messages per batch (at least 2) |
//! | `--pulsar-batch-delay` | `PULSAR_BATCH_DELAY` | `5ms` | how long a batch may wait to fill |
//! | `--pulsar-compression` | `PULSAR_COMPRESSION` | `none` | `none`, `lz4` or `zstd` |
//! | `--valkey-url` | `VALKEY_URL` | `redis://127.0.0.1:6379` | `redis://:password@host:port/db`, `rediss://…` for TLS; the password is never printed |
//! | `--valkey-visibility-timeout` | `VALKEY_VISIBILITY_TIMEOUT` | `30s` | when a dead worker's messages go to live ones |
//! | `--valkey-tls-ca-file` | `VALKEY_TLS_CA_FILE` | none | PEM certificate authority for `rediss://` |
//! | `--mqtt-host` | `MQTT_HOST` | `localhost` | |
//! | `--mqtt-port` | `MQTT_PORT` | `1883` | |
//! | `--mqtt-username` | `MQTT_USERNAME` | none | |
//! | `--mqtt-password` | `MQTT_PASSWORD` | none | needs `--mqtt-username`; never printed |
//! | `--mqtt-client-id-prefix` | `MQTT_CLIENT_ID_PREFIX` | `wr-` | prefix of every MQTT client id |
//!
//! With `--backend pulsar` nothing of target `pulsar::connection` is logged at trace level,
//! whatever `RUST_LOG` says, because pulsar-rs logs its frames, token included, at trace level.
//!
//! Subcommands: `worker tasks` prints every task's effective configuration and exits; `worker dlq
//! TASK [--replay]` lists or replays a task's dead letters; `worker credits grant|balance|history`
//! operates the ledger of `--credits-url`; `worker bridge [replay]` forwards along the routes of
//! the `[bridge]` section of `--config`. A bad flag, file or task
//! setting stops the binary at start with a message naming it. SIGINT or SIGTERM stops taking
//! messages and lets work in flight finish within the grace period, then the process exits with
//! status 0; a second signal exits at once with status 130.

mod args;
mod backend;
mod bridge;
pub mod config_file;
mod credits;
mod dlq;
mod error;
mod extras;
mod listing;
pub mod logging;
mod prepare;
pub mod signals;
mod stores;
#[cfg(test)]
mod test_tasks;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use worker_core::Broker;

pub use crate::worker::default_consumer_name;
pub use args::{
    parse_from, BridgeAction, BridgeArgs, Cli, Command, CreditsCommand, DlqArgs, MetricsAddr,
    ReplayArgs,
};
pub use backend::{
    connect_backend, BackendArgs, BackendKind, MqttArgs, PulsarArgs, PulsarCompression, ValkeyArgs,
};
pub use config_file::{apply_overrides, ConfigFileError, ConfigProblem};
pub use error::CliError;
pub use extras::RunExtras;
pub use listing::describe_tasks;
pub use logging::{LevelCap, LogFormat};
pub use prepare::prepare_tasks;

use crate::auth::Hs256Verifier;
use crate::auth::TokenVerifier;
use crate::credits::CreditLedger;
use crate::metrics::{server, Metrics};
use crate::worker::Worker;
use crate::TaskDefinition;
use prepare::{check_verifier, load_secret};

/// How long the metrics endpoint may take to finish its requests after the worker stopped.
const METRICS_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Parses the process's command line and runs [`run_with`]; `--help` and flag errors print and
/// exit as usual.
pub async fn run() -> anyhow::Result<()> {
    run_with(Cli::parse(), RunExtras::default()).await
}

/// The HS256 verifier of the key the command line names, if it names one.
fn load_verifier(cli: &Cli) -> Result<Option<Arc<dyn TokenVerifier>>, CliError> {
    Ok(load_secret(cli)?
        .map(|secret| Arc::new(Hs256Verifier::new(secret)) as Arc<dyn TokenVerifier>))
}

/// Runs the worker as `cli` says, with what `extras` provides: sets up logging, loads and checks
/// the tasks, serves metrics, connects the broker and runs until a shutdown signal (or the
/// `extras` token). Returns once the worker stopped gracefully.
pub async fn run_with(cli: Cli, mut extras: RunExtras) -> anyhow::Result<()> {
    logging::init_with_caps(cli.log_format, cli.backend.log_caps());
    let tasks = extras.tasks.take().unwrap_or_else(crate::registered_tasks);
    let tasks = prepare_tasks(&cli, tasks)?;
    match &cli.command {
        Some(Command::Tasks) => {
            print!("{}", describe_tasks(&tasks));
            return Ok(());
        }
        Some(Command::Bridge(args)) => {
            return bridge::run(&cli, args, &extras).await;
        }
        Some(Command::Credits(command)) => {
            let ledger = match extras.credit_ledger.take() {
                Some(ledger) => ledger,
                None => match &cli.credits_url {
                    Some(url) => stores::credit_ledger(url).await?,
                    None => return Err(CliError::CreditsNeedUrl.into()),
                },
            };
            return credits::run(command, &*ledger).await;
        }
        Some(Command::Dlq(args)) => {
            let verifier = match extras.verifier.take() {
                Some(verifier) => Some(verifier),
                None => load_verifier(&cli)?,
            };
            let broker = match extras.broker.take() {
                Some(broker) => broker,
                None => connect_backend(&cli.backend).await?,
            };
            return dlq::run(args, &tasks, broker, verifier.as_deref()).await;
        }
        None => {}
    }
    if tasks.is_empty() {
        return Err(CliError::NoTasks.into());
    }
    let verifier = match extras.verifier.take() {
        Some(verifier) => Some(verifier),
        None => load_verifier(&cli)?,
    };
    check_verifier(&tasks, verifier.is_some())?;

    let consumer_name = cli.consumer_name();
    let service = Service::start(&cli, &consumer_name, &extras).await?;
    let (metrics, shutdown) = (service.metrics.clone(), service.shutdown.clone());
    let result = async {
        let broker = match extras.broker.take() {
            Some(broker) => broker,
            None => tokio::select! {
                broker = connect_backend(&cli.backend) => broker?,
                () = shutdown.cancelled() => {
                    tracing::info!("shut down before the broker was connected");
                    return Ok(());
                }
            },
        };
        let credit_ledger = match (extras.credit_ledger.take(), &cli.credits_url) {
            (Some(ledger), _) => Some(ledger),
            (None, Some(url)) => Some(stores::credit_ledger(url).await?),
            (None, None) => None,
        };
        let idempotency = match &cli.idempotency_url {
            Some(url) => Some(stores::idempotency(url).await?),
            None => None,
        };
        let global_rate_limits = match &cli.rate_limit_url {
            Some(url) => Some(stores::global_rate_limits(url).await?),
            None => None,
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
                credit_ledger,
                idempotency,
                global_rate_limits,
                metrics,
                shutdown_grace: cli.shutdown_grace,
                backlog_interval: cli.backlog_interval,
            },
            shutdown,
        )
        .await
    }
    .await;
    service.finish().await;
    result
}

/// What the long-running commands (the worker, the bridge) share: shutdown on a signal (or the
/// extras' token), `/metrics` served, readiness cleared as soon as shutdown begins.
pub(crate) struct Service {
    pub(crate) metrics: Metrics,
    pub(crate) shutdown: CancellationToken,
    metrics_stop: CancellationToken,
    metrics_server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    not_ready_on_shutdown: tokio::task::JoinHandle<()>,
}

impl Service {
    pub(crate) async fn start(
        cli: &Cli,
        consumer_name: &str,
        extras: &RunExtras,
    ) -> Result<Self, CliError> {
        let metrics = Metrics::new(consumer_name);
        let shutdown = extras.shutdown.clone().unwrap_or_default();
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
        Ok(Service {
            metrics,
            shutdown,
            metrics_stop,
            metrics_server,
            not_ready_on_shutdown,
        })
    }

    /// Not ready any more; stops serving `/metrics`.
    pub(crate) async fn finish(self) {
        self.metrics.set_ready(false);
        self.not_ready_on_shutdown.abort();
        self.metrics_stop.cancel();
        if let Some(server) = self.metrics_server {
            if tokio::time::timeout(METRICS_STOP_TIMEOUT, server)
                .await
                .is_err()
            {
                tracing::warn!("the metrics endpoint did not stop in time");
            }
        }
    }
}

/// Everything the worker is built from.
struct WorkerInputs {
    broker: Arc<dyn Broker>,
    tasks: Vec<TaskDefinition>,
    consumer_name: String,
    verifier: Option<Arc<dyn TokenVerifier>>,
    credit_ledger: Option<Arc<dyn CreditLedger>>,
    idempotency: Option<Arc<dyn crate::idempotency::IdempotencyStore>>,
    global_rate_limits: Option<stores::GlobalLimits>,
    metrics: Metrics,
    shutdown_grace: Duration,
    backlog_interval: Duration,
}

/// Builds the worker and runs it until `shutdown` is cancelled and its work in flight finished.
async fn start_worker(inputs: WorkerInputs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut builder = Worker::builder()
        .broker(inputs.broker)
        .tasks(inputs.tasks)
        .consumer_name(inputs.consumer_name)
        .metrics(inputs.metrics)
        .shutdown_grace(inputs.shutdown_grace)
        .backlog_interval(inputs.backlog_interval);
    if let Some(verifier) = inputs.verifier {
        builder = builder.verifier(verifier);
    }
    if let Some(ledger) = inputs.credit_ledger {
        builder = builder.credit_ledger(ledger);
    }
    if let Some(store) = inputs.idempotency {
        builder = builder.idempotency_store(store);
    }
    builder = stores::with_global_rate_limits(builder, inputs.global_rate_limits);
    let worker = builder.build()?;
    let report = worker.run(shutdown).await?;
    tracing::info!(?report, "worker stopped");
    Ok(())
}
