//! The effective configuration of one task: what the attribute said, with defaults filled in and any
//! start-up overrides applied.

use std::time::Duration;

use serde::Serialize;

use crate::broker::{ConsumerType, InitialPosition};
use crate::duration::format_duration;
use crate::topic::Topic;

/// Which attribute declared the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// `#[pulsar_io_task]`: no role check, no credits.
    Io,
    /// `#[pulsar_db_task]`: role check and optional credit charging.
    Db,
}

/// At most `messages` started per `window`, per worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    /// Messages per window; at least 1.
    pub messages: u32,
    /// The window; longer than zero.
    #[serde(serialize_with = "as_duration_text")]
    pub window: Duration,
}

/// Whom a task's rate limit binds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitScope {
    /// Each worker on its own: `n` workers start up to `n` times the limit together.
    #[default]
    Worker,
    /// All workers of the task together, through a shared store (Valkey).
    Global,
}

impl RateLimitScope {
    /// The snake_case name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitScope::Worker => "worker",
            RateLimitScope::Global => "global",
        }
    }

    /// Parses the name written by [`Self::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "worker" => Some(RateLimitScope::Worker),
            "global" => Some(RateLimitScope::Global),
            _ => None,
        }
    }
}

/// How failed attempts are retried: delay n = min(`max_delay`, `retry_delay` × `backoff`^(n−1)),
/// spread by ±`jitter` (a fraction).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 means dead-letter after the first failure.
    pub max_retries: u32,
    /// The exponential base, at least 1.
    pub backoff: f64,
    /// The delay before the first retry.
    #[serde(serialize_with = "as_duration_text")]
    pub retry_delay: Duration,
    /// The largest delay.
    #[serde(serialize_with = "as_duration_text")]
    pub max_delay: Duration,
    /// Random spread of each delay, as a fraction in `[0, 1)`: 0.1 means ±10 %.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            backoff: 2.0,
            retry_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(600),
            jitter: 0.1,
        }
    }
}

/// A task's circuit breaker: when it opens, how long it stays open, how many messages probe it.
///
/// It opens after `consecutive_failures` failed deliveries in a row, or when at least
/// `failure_rate` of the deliveries that ended in the last `window` failed (once `min_calls` did);
/// either trigger may be left out, not both. A failure is a retryable handler error, a panic, a
/// timeout or exhausted retries; permanent errors (bad payloads, refused senders) are not. While
/// open the task takes no messages; after `cooldown`, `probes` messages run (half-open): if they
/// succeed it closes, if one fails it opens again.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CircuitPolicy {
    /// Failed deliveries in a row that open it.
    pub consecutive_failures: Option<u32>,
    /// The share of failed deliveries in the window that opens it, in (0, 1].
    pub failure_rate: Option<f64>,
    /// Deliveries the window must hold before the rate counts.
    pub min_calls: u32,
    /// How far back the rate looks.
    #[serde(serialize_with = "as_duration_text")]
    pub window: Duration,
    /// How long it stays open before probing.
    #[serde(serialize_with = "as_duration_text")]
    pub cooldown: Duration,
    /// Messages that probe it when half-open; all must succeed to close it.
    pub probes: u32,
}

/// The defaults of the circuit breaker's keys that only refine a trigger.
pub const DEFAULT_CIRCUIT_MIN_CALLS: u32 = 20;
/// See [`CircuitPolicy::window`].
pub const DEFAULT_CIRCUIT_WINDOW: Duration = Duration::from_secs(60);
/// See [`CircuitPolicy::cooldown`].
pub const DEFAULT_CIRCUIT_COOLDOWN: Duration = Duration::from_secs(30);
/// See [`CircuitPolicy::probes`].
pub const DEFAULT_CIRCUIT_PROBES: u32 = 1;

impl CircuitPolicy {
    /// A breaker with these triggers and the defaults for the rest.
    pub fn new(consecutive_failures: Option<u32>, failure_rate: Option<f64>) -> Self {
        CircuitPolicy {
            consecutive_failures,
            failure_rate,
            min_calls: DEFAULT_CIRCUIT_MIN_CALLS,
            window: DEFAULT_CIRCUIT_WINDOW,
            cooldown: DEFAULT_CIRCUIT_COOLDOWN,
            probes: DEFAULT_CIRCUIT_PROBES,
        }
    }
}

/// What one message of a db task costs its sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CreditCost {
    /// The kind of credit (`"db_credits"`).
    pub credit_type: String,
    /// How many per message; at least 1.
    pub amount: u64,
}

/// The effective configuration of a task.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskConfig {
    /// The task's name: the handler fn's name.
    pub name: String,
    /// Which attribute declared it.
    pub kind: TaskKind,
    /// The topic consumed.
    pub topic: Topic,
    /// Where exhausted or permanent failures go.
    pub dlq_topic: Topic,
    /// The subscription shared by every worker of the task.
    pub subscription: String,
    /// The per-worker rate limit, if any.
    pub rate_limit: Option<RateLimit>,
    /// The retry policy.
    pub retry: RetryPolicy,
    /// The limit on one attempt.
    #[serde(serialize_with = "as_duration_text")]
    pub timeout: Duration,
    /// Handlers of this task running at once per worker.
    pub concurrency: usize,
    /// Prefetch: messages a worker may hold before it asks for more.
    pub receiver_queue_size: usize,
    /// How workers share the subscription.
    pub consumer_type: ConsumerType,
    /// Where a new subscription starts.
    pub initial_position: InitialPosition,
    /// Roles of which the sender must hold one (db tasks); empty means no role check.
    pub permission_roles: Vec<String>,
    /// Credits charged per message (db tasks), if any.
    pub credits: Option<CreditCost>,
    /// The largest payload accepted; larger ones are dead-lettered as `payload_too_large`.
    pub max_payload_bytes: usize,
    /// The task's circuit breaker, if it has one.
    pub circuit: Option<CircuitPolicy>,
    /// Whom [`Self::rate_limit`] binds: each worker, or all workers together.
    pub rate_limit_scope: RateLimitScope,
    /// How long a handled message's stable id is remembered, so that a redelivered or
    /// republished copy is acked without running the handler again; `None`: no such check.
    #[serde(serialize_with = "as_optional_duration_text")]
    pub idempotency_window: Option<Duration>,
}

/// The default rate window when only `rate_limit` is given.
pub const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(60);
/// The default limit per attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default prefetch.
pub const DEFAULT_RECEIVER_QUEUE_SIZE: usize = 1000;
/// The default payload limit, Pulsar's default maximum message size.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 5 * 1024 * 1024;
/// The longest `idempotency_window`: records are kept no longer than a year (and a day).
pub const MAX_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(366 * 24 * 60 * 60);

impl TaskConfig {
    /// A configuration with every default: dlq `{topic}-dlq`, subscription = name, no rate limit,
    /// 3 retries with base 2 from 1 s capped at 10 min, 30 s timeout, concurrency = cores (at least
    /// 4), prefetch 1000, shared, earliest.
    pub fn new(name: impl Into<String>, kind: TaskKind, topic: Topic) -> Self {
        let name = name.into();
        TaskConfig {
            dlq_topic: topic.default_dlq(),
            subscription: name.clone(),
            name,
            kind,
            topic,
            rate_limit: None,
            retry: RetryPolicy::default(),
            timeout: DEFAULT_TIMEOUT,
            concurrency: default_concurrency(),
            receiver_queue_size: DEFAULT_RECEIVER_QUEUE_SIZE,
            consumer_type: ConsumerType::default(),
            initial_position: InitialPosition::default(),
            permission_roles: Vec::new(),
            credits: None,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            circuit: None,
            rate_limit_scope: RateLimitScope::Worker,
            idempotency_window: None,
        }
    }

    /// Whether each message must carry a verified sender: a db task that checks roles or charges
    /// credits.
    pub fn needs_sender(&self) -> bool {
        self.kind == TaskKind::Db && (!self.permission_roles.is_empty() || self.credits.is_some())
    }

    /// Checks every value, returning every problem found (each naming its key).
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut fail = |key: &'static str, message: String| {
            errors.push(ConfigError {
                task: self.name.clone(),
                key,
                message,
            })
        };
        if self.dlq_topic == self.topic {
            fail(
                "dlq_topic",
                format!("must differ from topic `{}`", self.topic),
            );
        }
        if self.subscription.trim().is_empty() {
            fail("subscription", "must not be empty".into());
        }
        if let Some(limit) = self.rate_limit {
            if limit.messages == 0 {
                fail("rate_limit", "must be at least 1".into());
            }
            if limit.window.is_zero() {
                fail("rate_window", "must be longer than zero".into());
            }
        }
        let retry = &self.retry;
        if !(retry.backoff.is_finite() && retry.backoff >= 1.0) {
            fail(
                "backoff",
                format!("must be a number of at least 1, not {}", retry.backoff),
            );
        }
        if retry.retry_delay.is_zero() {
            fail("retry_delay", "must be longer than zero".into());
        }
        if retry.max_delay < retry.retry_delay {
            fail(
                "max_delay",
                format!(
                    "{} is shorter than retry_delay {}",
                    format_duration(retry.max_delay),
                    format_duration(retry.retry_delay)
                ),
            );
        }
        if !(0.0..1.0).contains(&retry.jitter) {
            fail("jitter", format!("must be in [0, 1), not {}", retry.jitter));
        }
        if self.timeout.is_zero() {
            fail("timeout", "must be longer than zero".into());
        }
        if self.concurrency == 0 {
            fail("concurrency", "must be at least 1".into());
        }
        if self.receiver_queue_size == 0 {
            fail("receiver_queue_size", "must be at least 1".into());
        }
        if self.max_payload_bytes == 0 {
            fail("max_payload_bytes", "must be at least 1".into());
        }
        if let Some(cost) = &self.credits {
            if cost.amount == 0 {
                fail("credit_amount", "must be at least 1".into());
            }
            if cost.credit_type.trim().is_empty() {
                fail("credit_type", "must not be empty".into());
            }
        }
        if let Some(circuit) = &self.circuit {
            if circuit.consecutive_failures.is_none() && circuit.failure_rate.is_none() {
                fail(
                    "circuit_failures",
                    "or `circuit_failure_rate` must be given for the circuit breaker to open"
                        .into(),
                );
            }
            if circuit.consecutive_failures == Some(0) {
                fail("circuit_failures", "must be at least 1".into());
            }
            if let Some(rate) = circuit.failure_rate {
                if !(rate > 0.0 && rate <= 1.0) {
                    fail(
                        "circuit_failure_rate",
                        format!("must be in (0, 1], not {rate}"),
                    );
                }
            }
            if circuit.min_calls == 0 {
                fail("circuit_min_calls", "must be at least 1".into());
            }
            if circuit.window.is_zero() {
                fail("circuit_window", "must be longer than zero".into());
            }
            if circuit.cooldown.is_zero() {
                fail("circuit_cooldown", "must be longer than zero".into());
            }
            if circuit.probes == 0 {
                fail("circuit_probes", "must be at least 1".into());
            }
        }
        if self.rate_limit_scope == RateLimitScope::Global && self.rate_limit.is_none() {
            fail(
                "rate_limit_scope",
                "has no effect without `rate_limit`, the limit all workers share".into(),
            );
        }
        if let Some(window) = self.idempotency_window {
            if window.is_zero() {
                fail("idempotency_window", "must be longer than zero".into());
            } else if window > MAX_IDEMPOTENCY_WINDOW {
                fail(
                    "idempotency_window",
                    format!(
                        "must be at most 366 days, got {}",
                        crate::duration::format_duration(window)
                    ),
                );
            }
        }
        if self.kind == TaskKind::Io
            && (!self.permission_roles.is_empty() || self.credits.is_some())
        {
            fail(
                "permission_roles",
                "roles and credits apply only to db tasks (#[pulsar_db_task])".into(),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// The default concurrency: the number of cores, at least 4.
///
/// Read once per process: asking the system reads cgroup files each time, and every task config
/// (built on each enqueue) starts from this value.
pub fn default_concurrency() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    });
    cores.max(4)
}

/// A configuration value that is not acceptable, naming the task and the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("task `{task}`: `{key}` {message}")]
pub struct ConfigError {
    /// The task whose configuration is wrong.
    pub task: String,
    /// The key at fault.
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn as_optional_duration_text<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.collect_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

fn as_duration_text<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_duration(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TaskConfig {
        TaskConfig::new("t", TaskKind::Io, Topic::parse("q1/a/b/c").unwrap())
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = config();
        assert_eq!(c.dlq_topic.to_string(), "q1/a/b/c-dlq");
        assert_eq!(c.subscription, "t");
        assert_eq!(c.retry.max_retries, 3);
        assert_eq!(c.retry.backoff, 2.0);
        assert_eq!(c.retry.retry_delay, Duration::from_secs(1));
        assert_eq!(c.retry.max_delay, Duration::from_secs(600));
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert!(c.concurrency >= 4);
        assert_eq!(c.receiver_queue_size, 1000);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn validation_reports_every_bad_key() {
        let mut c = config();
        c.dlq_topic = c.topic.clone();
        c.timeout = Duration::ZERO;
        c.retry.backoff = 0.5;
        c.rate_limit = Some(RateLimit {
            messages: 0,
            window: Duration::ZERO,
        });
        let keys: Vec<&str> = c.validate().unwrap_err().iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            [
                "dlq_topic",
                "rate_limit",
                "rate_window",
                "backoff",
                "timeout"
            ]
        );
    }

    #[test]
    fn an_idempotency_window_is_bounded() {
        let mut c = config();
        c.idempotency_window = Some(MAX_IDEMPOTENCY_WINDOW);
        assert!(c.validate().is_ok());
        c.idempotency_window = Some(Duration::from_secs(u64::MAX));
        let errors = c.validate().unwrap_err();
        assert_eq!(errors[0].key, "idempotency_window");
        assert!(
            errors[0].to_string().contains("at most 366 days"),
            "{}",
            errors[0]
        );
        c.idempotency_window = Some(Duration::ZERO);
        assert_eq!(c.validate().unwrap_err()[0].key, "idempotency_window");
    }

    #[test]
    fn errors_name_task_and_key() {
        let mut c = config();
        c.concurrency = 0;
        let errors = c.validate().unwrap_err();
        assert_eq!(
            errors[0].to_string(),
            "task `t`: `concurrency` must be at least 1"
        );
    }
}
