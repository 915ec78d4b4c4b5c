//! What every delivery of a task needs at hand, built once per task when the worker starts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use worker_core::{Broker, Capabilities, DelayedDelivery, Subscription, TaskConfig};

use crate::auth::TokenVerifier;
use crate::context::WorkerSide;
use crate::credits::CreditLedger;
use crate::metrics::{Metrics, TaskMetrics};
use crate::middleware::circuit_breaker::CircuitBreaker;
use crate::middleware::rate_limit::TaskLimiter;

use super::acks::AckSender;
use super::report::Counters;

/// Shared by every task of one worker.
pub(crate) struct WorkerShared {
    pub broker: Arc<dyn Broker>,
    pub capabilities: Capabilities,
    pub consumer: Arc<str>,
    pub verifier: Option<Arc<dyn TokenVerifier>>,
    pub ledger: Option<Arc<dyn CreditLedger>>,
    pub metrics: Metrics,
    pub grace: Duration,
    /// How often each task's backlog is sampled from the broker.
    pub backlog_interval: Duration,
    /// The store of global rate limits, if the worker has one.
    #[cfg(feature = "valkey")]
    pub global_rate_limits: Option<crate::middleware::rate_limit::GlobalRateLimits>,
    /// Where tasks with an idempotency window record handled messages.
    pub idempotency: Arc<dyn crate::idempotency::IdempotencyStore>,
    /// Tasks not subscribed yet; the worker is ready when it reaches zero.
    pub unsubscribed: AtomicUsize,
}

impl WorkerShared {
    /// Records that one more task is consuming; the last one makes the worker ready.
    pub fn subscribed(&self) {
        if self.unsubscribed.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.metrics.set_ready(true);
        }
    }
}

/// How a retry waits for its next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RetryMode {
    /// Republish with a delivery time; the broker holds it (shared subscriptions).
    BrokerDelayed,
    /// Republish after the worker held the delay itself, without a concurrency slot (backends
    /// without broker-side delay).
    WorkerDelayed,
    /// Hold the message, wait and run again in place, so per-key order holds (ordered
    /// subscription types).
    InPlace,
}

/// Everything one task's deliveries need.
pub(crate) struct TaskEnv {
    pub config: TaskConfig,
    /// The task's name, for logs and metric labels.
    pub task: &'static str,
    pub topic: Arc<str>,
    pub shared: Arc<WorkerShared>,
    pub subscription: Arc<dyn Subscription>,
    pub acks: AckSender,
    pub limiter: Option<TaskLimiter>,
    pub metrics: TaskMetrics,
    /// The part of every handler's context that all deliveries of the task share.
    pub context: Arc<WorkerSide>,
    pub counters: Counters,
    pub retry_mode: RetryMode,
    /// Cancelled when shutdown starts: stop fetching, stop waiting on retries and rate limits.
    pub stopping: CancellationToken,
    /// Gates fetching and starting deliveries while the task keeps failing.
    pub breaker: CircuitBreaker,
}

impl TaskEnv {
    pub fn retry_mode(config: &TaskConfig, capabilities: &Capabilities) -> RetryMode {
        if config.consumer_type.preserves_order() {
            RetryMode::InPlace
        } else if capabilities.delayed_delivery == DelayedDelivery::Native {
            RetryMode::BrokerDelayed
        } else {
            RetryMode::WorkerDelayed
        }
    }
}
