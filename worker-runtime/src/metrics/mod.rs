//! Worker metrics in the Prometheus text format, and the HTTP endpoints that serve them.
//!
//! [`Metrics`] is the registry of one worker process; [`Metrics::task`] registers a task once and
//! returns [`TaskMetrics`], pre-resolved handles whose every per-message operation is one or two
//! relaxed atomic additions: no label lookup, no allocation and no lock on the hot path.
//! [`server`] serves `GET /metrics`, `GET /healthz` and `GET /readyz`.
//!
//! # Series
//!
//! Per-message counters carry the `consumer` label (the worker's consumer name), so the counts of
//! several workers of one subscription stay apart even when they share a scrape target.
//!
//! | series | type | labels | meaning |
//! |---|---|---|---|
//! | `worker_messages_received_total` | counter | `task`, `consumer` | deliveries taken from the broker |
//! | `worker_messages_total` | counter | `task`, `consumer`, `outcome` | attempts that ended: `ok` (acked), `retried` (a retry was scheduled), `dead_lettered` (to the DLQ for any reason but `forbidden`), `forbidden` (to the DLQ because the sender's token or roles were refused), `duplicate` (handled before within the task's idempotency window: acked, not run); the outcomes do not overlap |
//! | `worker_dead_letters_total` | counter | `task`, `consumer`, `reason` | messages sent to the DLQ, by [`DeadLetterReason`](worker_core::DeadLetterReason) (every reason is pre-registered at zero) |
//! | `worker_timeouts_total` | counter | `task`, `consumer` | attempts cancelled by the per-attempt timeout |
//! | `worker_panics_total` | counter | `task`, `consumer` | attempts whose handler panicked |
//! | `worker_acks_dropped_total` | counter | `task`, `consumer` | acknowledgements given up on after the broker failed them for [`ACK_RETRY_LIMIT`](crate::worker::ACK_RETRY_LIMIT) (a transient error) or at once (any other): those messages are delivered and handled again |
//! | `worker_store_errors_total` | counter | `task`, `consumer`, `store` | deliveries that waited because a shared store did not answer: `credits` (the ledger), `idempotency` |
//! | `worker_circuit_state` | gauge | `task` | the circuit breaker: 0 closed, 1 half-open, 2 open |
//! | `worker_circuit_transitions_total` | counter | `task`, `to` | transitions to `closed`, `half_open`, `open` (pre-registered at zero) |
//! | `worker_backlog_messages` | gauge | `task`, `subscription` | messages waiting for the task's subscription, sampled from the broker every backlog interval (Valkey: the group's lag plus pending; Pulsar: the topic stats' `msgBacklog`, with the admin URL; the embedded broker: its own count; MQTT cannot tell, so none) |
//! | `worker_task_concurrency` | gauge | `task` | the task's configured concurrency per worker |
//! | `worker_task_timeout_seconds` | gauge | `task` | the task's per-attempt timeout |
//! | `worker_handler_duration_seconds` | histogram | `task` | time of one handler attempt, 100 µs to 5 min buckets |
//! | `worker_attempts` | histogram | `task` | the attempt number each handler run was (buckets 1, 2, 3, 5, 10, +Inf) |
//! | `worker_in_flight` | gauge | `task` | handler attempts running now |
//! | `worker_rate_limit_wait_seconds_total` | counter | `task` | time messages spent waiting for the rate limiter |
//! | `worker_rate_limit_waits_total` | counter | `task` | messages that had to wait for the rate limiter |
//! | `worker_credits_charged_total` | counter | `task`, `credit_type` | credits charged to senders (db tasks) |
//! | `worker_task_info` | gauge | `task`, `topic`, `consumer` | always 1; names the topic each task consumes |
//! | `worker_ready` | gauge | `consumer` | 1 while the worker is ready (as `/readyz`), else 0 |

mod atomic;
mod encode;
mod fanout;
mod route;
pub mod server;
pub(crate) mod striped;
mod task;
mod text;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

pub use fanout::FanoutMetrics;
pub use route::RouteMetrics;
pub use task::{InFlightGuard, SharedStore, TaskMetrics};
pub use text::CONTENT_TYPE;

use fanout::FanoutCells;
use route::RouteCells;
use task::TaskCells;

/// The metrics registry of one worker process. Cheap to clone: clones share the same series.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Registry>,
}

struct Registry {
    /// The consumer name, escaped for the exposition.
    consumer: String,
    ready: AtomicBool,
    /// Registered tasks by name. Locked only to register and to encode, never per message.
    tasks: Mutex<BTreeMap<String, Arc<TaskCells>>>,
    /// Registered bridge routes by name, likewise.
    routes: Mutex<BTreeMap<String, Arc<RouteCells>>>,
    /// Members of fanout brokers by name, likewise.
    fanout: Mutex<BTreeMap<String, Arc<FanoutCells>>>,
}

impl Metrics {
    /// An empty registry for the worker whose consumer name is `consumer`; not ready.
    pub fn new(consumer: &str) -> Self {
        Metrics {
            inner: Arc::new(Registry {
                consumer: text::escape_label_value(consumer),
                ready: AtomicBool::new(false),
                tasks: Mutex::new(BTreeMap::new()),
                routes: Mutex::new(BTreeMap::new()),
                fanout: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Registers task `task` consuming `topic` (once; later calls return the same handles and keep
    /// the first topic) and returns its handles. Every dead-letter reason series starts at zero.
    pub fn task(&self, task: &str, topic: &str) -> TaskMetrics {
        let mut tasks = self.inner.tasks.lock();
        let cells = tasks
            .entry(task.to_owned())
            .or_insert_with(|| Arc::new(TaskCells::new(task, topic)))
            .clone();
        TaskMetrics::from_cells(cells)
    }

    /// Registers bridge route `route` (once; later calls return the same handles).
    pub fn route(&self, route: &str) -> RouteMetrics {
        let mut routes = self.inner.routes.lock();
        let cells = routes
            .entry(route.to_owned())
            .or_insert_with(|| Arc::new(RouteCells::new(route)))
            .clone();
        RouteMetrics::from_cells(cells)
    }

    /// Registers the fanout member `broker` (once; later calls return the same handles).
    pub fn fanout_member(&self, broker: &str) -> FanoutMetrics {
        let mut members = self.inner.fanout.lock();
        let cells = members
            .entry(broker.to_owned())
            .or_insert_with(|| Arc::new(FanoutCells::new(broker)))
            .clone();
        FanoutMetrics::from_cells(cells)
    }

    /// The Prometheus text exposition (format 0.0.4) of every series.
    pub fn encode(&self) -> String {
        let tasks: Vec<Arc<TaskCells>> = self.inner.tasks.lock().values().cloned().collect();
        let routes: Vec<Arc<RouteCells>> = self.inner.routes.lock().values().cloned().collect();
        let fanout: Vec<Arc<FanoutCells>> = self.inner.fanout.lock().values().cloned().collect();
        encode::encode(
            &self.inner.consumer,
            self.is_ready(),
            &tasks,
            &routes,
            &fanout,
        )
    }

    /// Sets whether the worker is ready to take messages (what `/readyz` answers).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// Whether the worker is ready to take messages.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("consumer", &self.inner.consumer)
            .field("ready", &self.is_ready())
            .field("tasks", &self.inner.tasks.lock().len())
            .finish()
    }
}

#[cfg(test)]
mod tests;
