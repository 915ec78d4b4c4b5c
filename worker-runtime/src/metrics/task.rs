//! The series of one task and the pre-resolved handles the pipeline updates per message.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::RwLock;
use worker_core::DeadLetterReason;

use super::atomic::{nanos, Buckets, DurationSum, Histogram, HistogramSnapshot};
use super::striped::Striped;
use super::text::escape_label_value;

/// Handler durations in nanoseconds: 100 µs to 5 min.
pub(super) static HANDLER_DURATION: Buckets = Buckets {
    bounds: &[
        100_000,
        250_000,
        500_000,
        1_000_000,
        2_500_000,
        5_000_000,
        10_000_000,
        25_000_000,
        50_000_000,
        100_000_000,
        250_000_000,
        500_000_000,
        1_000_000_000,
        2_500_000_000,
        5_000_000_000,
        10_000_000_000,
        30_000_000_000,
        60_000_000_000,
        120_000_000_000,
        300_000_000_000,
    ],
    labels: &[
        "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
        "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "120", "300",
    ],
    divisor: 1e9,
};

/// Attempt numbers.
pub(super) static ATTEMPTS: Buckets = Buckets {
    bounds: &[1, 2, 3, 5, 10],
    labels: &["1", "2", "3", "5", "10"],
    divisor: 1.0,
};

/// The position of `reason` in [`DeadLetterReason::ALL`] and in [`TaskCells::dead_letters`].
fn reason_index(reason: DeadLetterReason) -> usize {
    match reason {
        DeadLetterReason::DecodeError => 0,
        DeadLetterReason::PayloadTooLarge => 1,
        DeadLetterReason::Forbidden => 2,
        DeadLetterReason::InsufficientCredits => 3,
        DeadLetterReason::PermanentError => 4,
        DeadLetterReason::RetriesExhausted => 5,
    }
}

/// Every series of one task. Label values are stored escaped, ready for the exposition.
pub(super) struct TaskCells {
    pub(super) task: String,
    pub(super) topic: String,
    /// The cells every delivery updates, one copy per thread stripe: read them through
    /// [`Self::received`], [`Self::ok`], [`Self::in_flight`] and the snapshots.
    hot: Striped<HotCells>,
    pub(super) retried: AtomicU64,
    pub(super) duplicates: AtomicU64,
    /// One counter per reason, in [`DeadLetterReason::ALL`] order.
    pub(super) dead_letters: [AtomicU64; DeadLetterReason::ALL.len()],
    pub(super) timeouts: AtomicU64,
    pub(super) panics: AtomicU64,
    pub(super) acks_dropped: AtomicU64,
    /// Shared stores that failed to answer: the credit ledger, the idempotency store.
    pub(super) store_errors: [AtomicU64; 2],
    /// The circuit breaker's state: 0 closed, 1 half-open, 2 open.
    pub(super) circuit_state: AtomicI64,
    /// Transitions to closed, half-open and open.
    pub(super) circuit_transitions: [AtomicU64; 3],
    /// The task's configured concurrency per worker.
    pub(super) concurrency: AtomicU64,
    /// The task's per-attempt timeout, in nanoseconds.
    pub(super) timeout: AtomicU64,
    /// The task's subscription, escaped; empty until the task runs.
    pub(super) subscription: RwLock<String>,
    /// What waits for the subscription, as last sampled; -1 while unknown.
    pub(super) backlog: AtomicI64,
    pub(super) rate_limit_wait: DurationSum,
    pub(super) rate_limit_waits: AtomicU64,
    pub(super) credits: CreditCounters,
}

impl TaskCells {
    pub(super) fn new(task: &str, topic: &str) -> Self {
        TaskCells {
            task: escape_label_value(task),
            topic: escape_label_value(topic),
            hot: Striped::new(|| HotCells {
                received: AtomicU64::new(0),
                ok: AtomicU64::new(0),
                in_flight: AtomicI64::new(0),
                handler_duration: Histogram::new(&HANDLER_DURATION),
                attempts: Histogram::new(&ATTEMPTS),
            }),
            retried: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            dead_letters: Default::default(),
            timeouts: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            acks_dropped: AtomicU64::new(0),
            store_errors: Default::default(),
            circuit_state: AtomicI64::new(0),
            circuit_transitions: Default::default(),
            concurrency: AtomicU64::new(0),
            timeout: AtomicU64::new(0),
            subscription: RwLock::new(String::new()),
            backlog: AtomicI64::new(-1),
            rate_limit_wait: DurationSum::default(),
            rate_limit_waits: AtomicU64::new(0),
            credits: CreditCounters::default(),
        }
    }

    /// Deliveries taken from the broker.
    pub(super) fn received(&self) -> u64 {
        self.hot.total(|h| h.received.load(Relaxed))
    }

    /// Attempts that succeeded.
    pub(super) fn ok(&self) -> u64 {
        self.hot.total(|h| h.ok.load(Relaxed))
    }

    /// Handler attempts running now (a stripe alone may be negative: an attempt can end on
    /// another thread than it started on).
    pub(super) fn in_flight(&self) -> i64 {
        self.hot.all().map(|h| h.in_flight.load(Relaxed)).sum()
    }

    pub(super) fn handler_duration(&self) -> HistogramSnapshot {
        Histogram::merged_snapshot(
            &HANDLER_DURATION,
            self.hot.all().map(|h| &h.handler_duration),
        )
    }

    pub(super) fn attempts(&self) -> HistogramSnapshot {
        Histogram::merged_snapshot(&ATTEMPTS, self.hot.all().map(|h| &h.attempts))
    }

    /// The dead-letter count of `reason`.
    pub(super) fn dead_letters_of(&self, reason: DeadLetterReason) -> u64 {
        self.dead_letters[reason_index(reason)].load(Relaxed)
    }
}

/// The cells of [`TaskCells`] that every delivery updates.
struct HotCells {
    received: AtomicU64,
    ok: AtomicU64,
    in_flight: AtomicI64,
    handler_duration: Histogram,
    attempts: Histogram,
}

/// Credits charged, by credit type. A task nearly always charges one type, so the first type seen
/// is kept in a lock-free slot; any other type goes to a small locked list.
#[derive(Default)]
pub(super) struct CreditCounters {
    first: OnceLock<CreditSeries>,
    more: RwLock<Vec<CreditSeries>>,
}

pub(super) struct CreditSeries {
    /// The credit type, escaped.
    pub(super) credit_type: String,
    raw_type: Box<str>,
    /// Charged by every delivery of a db task that charges credits: striped.
    total: Striped<AtomicU64>,
}

impl CreditSeries {
    fn new(credit_type: &str, amount: u64) -> Self {
        let series = CreditSeries {
            credit_type: escape_label_value(credit_type),
            raw_type: credit_type.into(),
            total: Striped::default(),
        };
        series.add(amount);
        series
    }

    fn add(&self, amount: u64) {
        self.total.local().fetch_add(amount, Relaxed);
    }

    fn total(&self) -> u64 {
        self.total.total(|t| t.load(Relaxed))
    }
}

impl CreditCounters {
    fn add(&self, credit_type: &str, amount: u64) {
        let mut created = false;
        let first = self.first.get_or_init(|| {
            created = true;
            CreditSeries::new(credit_type, amount)
        });
        if created {
            return;
        }
        if &*first.raw_type == credit_type {
            first.add(amount);
            return;
        }
        if let Some(series) = self
            .more
            .read()
            .iter()
            .find(|s| &*s.raw_type == credit_type)
        {
            series.add(amount);
            return;
        }
        let mut more = self.more.write();
        match more.iter().find(|s| &*s.raw_type == credit_type) {
            Some(series) => series.add(amount),
            None => more.push(CreditSeries::new(credit_type, amount)),
        }
    }

    /// `(escaped credit type, total)` of every type charged so far.
    pub(super) fn snapshot(&self) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> = self
            .first
            .get()
            .into_iter()
            .map(|s| (s.credit_type.clone(), s.total()))
            .collect();
        all.extend(
            self.more
                .read()
                .iter()
                .map(|s| (s.credit_type.clone(), s.total())),
        );
        all.sort();
        all
    }
}

/// The pre-resolved metric handles of one task, from [`Metrics::task`](super::Metrics::task).
/// Cheap to clone; every method is lock-free and allocation-free (except the first
/// [`credits_charged`](Self::credits_charged) of a credit type).
#[derive(Clone)]
pub struct TaskMetrics {
    cells: Arc<TaskCells>,
}

impl TaskMetrics {
    pub(super) fn from_cells(cells: Arc<TaskCells>) -> Self {
        TaskMetrics { cells }
    }

    /// Counts `n` deliveries taken from the broker.
    pub fn received(&self, n: u64) {
        self.cells.hot.local().received.fetch_add(n, Relaxed);
    }

    /// Counts an attempt that succeeded (outcome `ok`).
    pub fn ok(&self) {
        self.cells.hot.local().ok.fetch_add(1, Relaxed);
    }

    /// Counts an attempt that failed and was scheduled for a retry (outcome `retried`).
    pub fn retried(&self) {
        self.cells.retried.fetch_add(1, Relaxed);
    }

    /// Counts a delivery of a message handled before, acked without running (outcome
    /// `duplicate`).
    pub fn duplicate(&self) {
        self.cells.duplicates.fetch_add(1, Relaxed);
    }

    /// Counts a message sent to the DLQ for `reason`: outcome `forbidden` for
    /// [`DeadLetterReason::Forbidden`], outcome `dead_lettered` for every other reason.
    pub fn dead_lettered(&self, reason: DeadLetterReason) {
        self.cells.dead_letters[reason_index(reason)].fetch_add(1, Relaxed);
    }

    /// Counts an attempt cancelled by the per-attempt timeout.
    pub fn timed_out(&self) {
        self.cells.timeouts.fetch_add(1, Relaxed);
    }

    /// Counts an attempt whose handler panicked.
    pub fn panicked(&self) {
        self.cells.panics.fetch_add(1, Relaxed);
    }

    /// Records the task's configured concurrency, per-attempt timeout and subscription, which
    /// the alert on latency near the timeout, the in-flight panel and the backlog series use.
    pub fn configured(&self, concurrency: usize, timeout: Duration, subscription: &str) {
        self.cells
            .concurrency
            .store(u64::try_from(concurrency).unwrap_or(u64::MAX), Relaxed);
        self.cells.timeout.store(nanos(timeout), Relaxed);
        *self.cells.subscription.write() = escape_label_value(subscription);
    }

    /// Records what waits for the task's subscription, as the broker told (`None`: it cannot).
    pub fn backlog(&self, backlog: Option<u64>) {
        let value = backlog.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        self.cells.backlog.store(value, Relaxed);
    }

    /// Counts a shared store that failed to answer for a delivery (which then waits).
    pub fn store_error(&self, store: SharedStore) {
        self.cells.store_errors[store as usize].fetch_add(1, Relaxed);
    }

    /// Counts `n` acknowledgements given up on after the broker kept failing them: those
    /// deliveries will be delivered and handled again.
    pub fn acks_dropped(&self, n: u64) {
        self.cells.acks_dropped.fetch_add(n, Relaxed);
    }

    /// Records how long one handler attempt took.
    pub fn handler_duration(&self, d: Duration) {
        self.cells.hot.local().handler_duration.observe(nanos(d));
    }

    /// Records which attempt (1 for the first) a handler run was.
    pub fn attempt(&self, attempt: u32) {
        self.cells.hot.local().attempts.observe(u64::from(attempt));
    }

    /// Counts one handler attempt as running until the returned guard is dropped.
    pub fn in_flight(&self) -> InFlightGuard<'_> {
        self.cells.hot.local().in_flight.fetch_add(1, Relaxed);
        InFlightGuard { cells: &self.cells }
    }

    /// Records that a message waited `d` for the rate limiter; a zero wait is not counted.
    pub fn rate_limit_wait(&self, d: Duration) {
        if !d.is_zero() {
            self.cells.rate_limit_wait.add(d);
            self.cells.rate_limit_waits.fetch_add(1, Relaxed);
        }
    }

    /// Counts `amount` credits of `credit_type` charged. Lock-free for the task's first credit
    /// type; the series of a type is created on its first charge.
    pub fn credits_charged(&self, credit_type: &str, amount: u64) {
        self.cells.credits.add(credit_type, amount);
    }
}

impl fmt::Debug for TaskMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskMetrics")
            .field("task", &self.cells.task)
            .field("topic", &self.cells.topic)
            .finish_non_exhaustive()
    }
}

/// Keeps a task's `worker_in_flight` gauge one higher while it lives.
#[must_use = "the in-flight gauge goes down again when the guard is dropped"]
pub struct InFlightGuard<'a> {
    // Borrowed, not shared: no reference count to touch twice per delivery.
    cells: &'a TaskCells,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.cells.hot.local().in_flight.fetch_sub(1, Relaxed);
    }
}

impl fmt::Debug for InFlightGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlightGuard")
            .field("task", &self.cells.task)
            .finish()
    }
}

impl crate::middleware::circuit_breaker::CircuitObserver for TaskMetrics {
    fn transition(&self, to: crate::middleware::circuit_breaker::CircuitState) {
        self.cells.circuit_state.store(to as i64, Relaxed);
        self.cells.circuit_transitions[to as usize].fetch_add(1, Relaxed);
    }
}

/// The shared stores a delivery may wait on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedStore {
    /// The credit ledger.
    Credits = 0,
    /// The idempotency store.
    Idempotency = 1,
}

impl SharedStore {
    /// The `store` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SharedStore::Credits => "credits",
            SharedStore::Idempotency => "idempotency",
        }
    }
}
