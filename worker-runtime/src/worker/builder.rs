//! [`Worker`] and its builder: which broker, which tasks, and the services db tasks need.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use worker_core::{Broker, BrokerError, ConfigError, RateLimitScope};

use crate::auth::{CachingVerifier, TokenVerifier, DEFAULT_TOKEN_CACHE_SIZE};
use crate::credits::CreditLedger;
use crate::idempotency::{IdempotencyStore, MemoryIdempotencyStore};
use crate::metrics::Metrics;
#[cfg(feature = "valkey")]
use crate::middleware::rate_limit::GlobalRateLimits;
use crate::task::TaskDefinition;

use super::consumer_name::default_consumer_name;
use super::env::WorkerShared;
use super::report::WorkerReport;
use super::run::TaskRun;

/// How often each task's backlog is sampled by default.
pub const DEFAULT_BACKLOG_INTERVAL: Duration = Duration::from_secs(15);

/// The default time in-flight handlers get to finish after a shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Why a worker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No broker was given to the builder.
    #[error("no broker configured: call `.broker(..)` on the worker builder")]
    NoBroker,
    /// No task was given to the builder.
    #[error("no tasks to run: declare a task with #[pulsar_io_task] or #[pulsar_db_task] and pass it to the worker")]
    NoTasks,
    /// Two tasks share a name.
    #[error("task `{0}` is given twice")]
    DuplicateTask(String),
    /// Task configuration values are invalid.
    #[error("invalid configuration:\n{}", list(.0))]
    InvalidConfig(Vec<ConfigError>),
    /// A db task checks roles but the worker has no token verifier.
    #[error("task `{task}` checks roles {roles:?} but the worker has no token verification key (set --jwt-secret or WORKER_JWT_SECRET)")]
    MissingVerifier {
        /// The task.
        task: String,
        /// Its permitted roles.
        roles: Vec<String>,
    },
    /// A db task charges credits but the worker has no credit ledger.
    #[error("task `{task}` charges `{credit_type}` credits but the worker has no credit ledger")]
    MissingLedger {
        /// The task.
        task: String,
        /// The credit type it charges.
        credit_type: String,
    },
    /// A task limits its rate across all workers but the worker has no shared store for it.
    #[error(
        "task `{task}` has rate_limit_scope = \"global\" but the worker has no store for global rate limits (set --rate-limit-url or WORKER_RATE_LIMIT_URL to a Valkey)"
    )]
    MissingGlobalRateLimits {
        /// The task.
        task: String,
    },
    /// The backend cannot serve the task's consumer type.
    #[error("task `{task}` asks for a `{consumer_type}` subscription, which the {backend} backend does not support")]
    UnsupportedConsumerType {
        /// The task.
        task: String,
        /// The backend.
        backend: &'static str,
        /// The consumer type asked for.
        consumer_type: &'static str,
    },
    /// Subscribing to a task's topic failed.
    #[error("task `{task}` cannot subscribe to `{topic}`")]
    Subscribe {
        /// The task.
        task: String,
        /// The topic.
        topic: String,
        /// The broker's error.
        #[source]
        source: BrokerError,
    },
    /// A task's consumer loop ended abnormally.
    #[error("task `{task}` stopped: {message}")]
    TaskFailed {
        /// The task.
        task: String,
        /// What happened.
        message: String,
    },
}

fn list(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Builds a [`Worker`].
#[derive(Default)]
pub struct WorkerBuilder {
    broker: Option<Arc<dyn Broker>>,
    tasks: Vec<TaskDefinition>,
    consumer_name: Option<String>,
    verifier: Option<Arc<dyn TokenVerifier>>,
    ledger: Option<Arc<dyn CreditLedger>>,
    metrics: Option<Metrics>,
    shutdown_grace: Option<Duration>,
    backlog_interval: Option<Duration>,
    #[cfg(feature = "valkey")]
    global_rate_limits: Option<GlobalRateLimits>,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
}

impl WorkerBuilder {
    /// The broker to consume from and publish retries and dead letters to.
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Adds one task.
    pub fn task(mut self, task: TaskDefinition) -> Self {
        self.tasks.push(task);
        self
    }

    /// Adds several tasks (e.g. [`crate::registered_tasks`]).
    pub fn tasks(mut self, tasks: impl IntoIterator<Item = TaskDefinition>) -> Self {
        self.tasks.extend(tasks);
        self
    }

    /// This worker's consumer name; default `{hostname}-{pid}`.
    pub fn consumer_name(mut self, name: impl Into<String>) -> Self {
        self.consumer_name = Some(name.into());
        self
    }

    /// Verifies the tokens of db tasks' messages. Each distinct token is verified once and its
    /// principal cached until the token expires ([`CachingVerifier`]).
    pub fn verifier(mut self, verifier: Arc<dyn TokenVerifier>) -> Self {
        self.verifier = Some(Arc::new(CachingVerifier::new(
            verifier,
            DEFAULT_TOKEN_CACHE_SIZE,
        )));
        self
    }

    /// Where db tasks charge credits.
    pub fn credit_ledger(mut self, ledger: Arc<dyn CreditLedger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Where to record metrics; default a fresh registry.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The shared store of the rate limits of tasks with `rate_limit_scope = "global"`.
    #[cfg(feature = "valkey")]
    pub fn global_rate_limits(mut self, limits: GlobalRateLimits) -> Self {
        self.global_rate_limits = Some(limits);
        self
    }

    /// Where tasks with an `idempotency_window` record handled messages (default: a
    /// [`MemoryIdempotencyStore`] of this worker's own, which other workers do not see).
    pub fn idempotency_store(mut self, store: Arc<dyn IdempotencyStore>) -> Self {
        self.idempotency = Some(store);
        self
    }

    /// How often each task's backlog is read from the broker into `worker_backlog_messages`
    /// (default [`DEFAULT_BACKLOG_INTERVAL`]).
    pub fn backlog_interval(mut self, every: Duration) -> Self {
        self.backlog_interval = Some(every.max(Duration::from_millis(100)));
        self
    }

    /// How long in-flight handlers may run after shutdown starts; default 30 s.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = Some(grace);
        self
    }

    /// Checks everything that can be checked before connecting, reporting every problem.
    pub fn build(self) -> Result<Worker, WorkerError> {
        let broker = self.broker.ok_or(WorkerError::NoBroker)?;
        if self.tasks.is_empty() {
            return Err(WorkerError::NoTasks);
        }
        let mut names = HashSet::new();
        let mut config_errors = Vec::new();
        for task in &self.tasks {
            if !names.insert(task.name().to_owned()) {
                return Err(WorkerError::DuplicateTask(task.name().to_owned()));
            }
            if let Err(errors) = task.config().validate() {
                config_errors.extend(errors);
            }
        }
        if !config_errors.is_empty() {
            return Err(WorkerError::InvalidConfig(config_errors));
        }
        let capabilities = broker.capabilities();
        for task in &self.tasks {
            let config = task.config();
            if config.needs_sender() && self.verifier.is_none() {
                return Err(WorkerError::MissingVerifier {
                    task: config.name.clone(),
                    roles: config.permission_roles.clone(),
                });
            }
            if let (Some(cost), None) = (&config.credits, &self.ledger) {
                return Err(WorkerError::MissingLedger {
                    task: config.name.clone(),
                    credit_type: cost.credit_type.clone(),
                });
            }
            #[cfg(feature = "valkey")]
            let has_global = self.global_rate_limits.is_some();
            #[cfg(not(feature = "valkey"))]
            let has_global = false;
            if config.rate_limit_scope == RateLimitScope::Global
                && config.rate_limit.is_some()
                && !has_global
            {
                return Err(WorkerError::MissingGlobalRateLimits {
                    task: config.name.clone(),
                });
            }
            if !capabilities.consumer_types.contains(&config.consumer_type) {
                return Err(WorkerError::UnsupportedConsumerType {
                    task: config.name.clone(),
                    backend: broker.name(),
                    consumer_type: config.consumer_type.as_str(),
                });
            }
        }
        let consumer: Arc<str> = self
            .consumer_name
            .unwrap_or_else(default_consumer_name)
            .into();
        let metrics = self.metrics.unwrap_or_else(|| Metrics::new(&consumer));
        Ok(Worker {
            shared: WorkerShared {
                broker,
                capabilities,
                consumer,
                verifier: self.verifier,
                ledger: self.ledger,
                metrics,
                grace: self.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE),
                backlog_interval: self.backlog_interval.unwrap_or(DEFAULT_BACKLOG_INTERVAL),
                #[cfg(feature = "valkey")]
                global_rate_limits: self.global_rate_limits,
                idempotency: self
                    .idempotency
                    .unwrap_or_else(|| Arc::new(MemoryIdempotencyStore::new())),
                unsubscribed: AtomicUsize::new(self.tasks.len()),
            },
            tasks: self.tasks,
        })
    }
}

/// A configured worker, ready to run its tasks.
pub struct Worker {
    shared: WorkerShared,
    tasks: Vec<TaskDefinition>,
}

impl Worker {
    /// Starts building a worker.
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::default()
    }

    /// The tasks this worker runs.
    pub fn tasks(&self) -> &[TaskDefinition] {
        &self.tasks
    }

    /// The metrics this worker records.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Runs every task until `shutdown` is cancelled (the metrics report ready once every task has
    /// subscribed), then stops fetching, lets in-flight handlers
    /// finish within the grace period, gives the rest back to the broker, flushes acks and returns.
    ///
    /// If one task's consumer fails (it cannot subscribe), the others are stopped the same way and
    /// the error is returned.
    pub async fn run(self, shutdown: CancellationToken) -> Result<WorkerReport, WorkerError> {
        let stop = shutdown.child_token();
        let shared = Arc::new(self.shared);
        let mut running = tokio::task::JoinSet::new();
        for (index, task) in self.tasks.iter().enumerate() {
            let run = TaskRun::new(task.config().clone(), shared.clone(), stop.clone());
            let name = task.name().to_owned();
            let consume = task.run(run);
            running.spawn(async move { (index, name, consume.await) });
        }
        let mut reports = Vec::with_capacity(self.tasks.len());
        let mut first_error = None;
        while let Some(joined) = running.join_next().await {
            let outcome = match joined {
                Ok((index, _, Ok(task_report))) => Ok((index, task_report)),
                Ok((_, _, Err(error))) => Err(error),
                Err(join_error) => Err(WorkerError::TaskFailed {
                    task: "(unknown)".to_owned(),
                    message: join_error.to_string(),
                }),
            };
            match outcome {
                Ok(indexed) => reports.push(indexed),
                Err(error) => {
                    // Stop the other tasks gracefully; report the first failure.
                    stop.cancel();
                    first_error.get_or_insert(error);
                }
            }
        }
        reports.sort_by_key(|(index, _)| *index);
        let report = WorkerReport {
            tasks: reports.into_iter().map(|(_, r)| r).collect(),
        };
        shared.metrics.set_ready(false);
        match first_error {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("consumer", &self.shared.consumer)
            .field("broker", &self.shared.broker.name())
            .field(
                "tasks",
                &self.tasks.iter().map(|t| t.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}
