//! The circuit breaker that gates a task's receive loop.
//!
//! - **Closed**: messages run. A failed delivery (a retryable error, a panic, a timeout, exhausted
//!   retries) counts; a success resets the run of failures; permanent errors (a bad payload, a
//!   refused sender) and deliveries given back without an attempt do not count. It opens after
//!   [`CircuitPolicy::consecutive_failures`] failures in a row, or when the failed share of the
//!   deliveries that ended within [`CircuitPolicy::window`] reaches
//!   [`CircuitPolicy::failure_rate`] (once [`CircuitPolicy::min_calls`] ended).
//! - **Open**: nothing is fetched and nothing starts; messages wait in the broker, spending no
//!   attempt. After [`CircuitPolicy::cooldown`] it turns half-open.
//! - **Half-open**: [`CircuitPolicy::probes`] messages run. When all succeed it closes; when one
//!   fails it opens again for another cooldown.
//!
//! Publishing failures feed it too, configured or not: a retry or dead-letter copy the broker
//! refuses [`PUBLISH_FAILURES_TO_OPEN`] times in a row opens it for [`PUBLISH_COOLDOWN`] (or the
//! task's cooldown), so a worker whose broker is down stops taking messages instead of spinning.
//!
//! Time is tokio's, so tests run it in paused time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use worker_core::CircuitPolicy;

/// Publishes of retries or dead-letter copies that fail in a row before the breaker opens.
pub const PUBLISH_FAILURES_TO_OPEN: u32 = 5;
/// How long the breaker stays open after publishing failures, for a task without a breaker of
/// its own.
pub const PUBLISH_COOLDOWN: Duration = Duration::from_secs(10);

/// The breaker's state, as `worker_circuit_state` exposes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    /// Messages run.
    Closed = 0,
    /// A few probe messages run.
    HalfOpen = 1,
    /// Nothing runs until the cooldown is over.
    Open = 2,
}

impl CircuitState {
    /// The label value of `worker_circuit_transitions_total{to}`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }
}

/// How one delivery ended, for the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The handler succeeded.
    Success,
    /// A retryable failure, a panic, a timeout, or retries exhausted.
    Failure,
    /// Neither: a permanent error, or given back without an attempt.
    Neutral,
}

/// Where transitions are reported.
pub trait CircuitObserver: Send + Sync {
    /// The breaker moved to `to`.
    fn transition(&self, to: CircuitState);
}

/// One task's breaker. See the [module docs](self).
pub struct CircuitBreaker {
    policy: Option<CircuitPolicy>,
    state: Mutex<Inner>,
    /// Whether `state` is closed, readable without the lock: every delivery asks, and while all is
    /// well the answer needs neither the lock nor a waiter on `changed`.
    closed: AtomicBool,
    changed: Notify,
    observer: Box<dyn CircuitObserver>,
    task: &'static str,
}

struct Inner {
    state: CircuitState,
    /// When it last opened, and for how long.
    opened_at: Instant,
    cooldown: Duration,
    /// Failed deliveries in a row.
    failures_in_a_row: u32,
    /// Failed publishes in a row.
    publish_failures_in_a_row: u32,
    /// Deliveries that ended within the window: when, and whether they failed.
    window: VecDeque<(Instant, bool)>,
    /// Half-open: probes handed out, and how many of them succeeded.
    probes_out: u32,
    probes_passed: u32,
}

/// Permission to run one delivery; say how it ended with [`CircuitBreaker::record`].
#[derive(Debug)]
#[must_use = "record how the delivery ended"]
pub struct Pass {
    probe: bool,
}

impl CircuitBreaker {
    /// A closed breaker for `task`; without a `policy` only publishing failures open it.
    pub fn new(
        task: &'static str,
        policy: Option<CircuitPolicy>,
        observer: Box<dyn CircuitObserver>,
    ) -> Self {
        CircuitBreaker {
            policy,
            state: Mutex::new(Inner {
                state: CircuitState::Closed,
                opened_at: Instant::now(),
                cooldown: Duration::ZERO,
                failures_in_a_row: 0,
                publish_failures_in_a_row: 0,
                window: VecDeque::new(),
                probes_out: 0,
                probes_passed: 0,
            }),
            closed: AtomicBool::new(true),
            changed: Notify::new(),
            observer,
            task,
        }
    }

    /// The state now.
    pub fn state(&self) -> CircuitState {
        self.state.lock().state
    }

    /// Waits while the breaker is open, so that nothing is fetched meanwhile.
    pub async fn wait_unless_open(&self) {
        if self.is_closed() {
            return;
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let reopens = {
                let mut inner = self.state.lock();
                match self.cooled_down(&mut inner) {
                    CircuitState::Open => inner.opened_at + inner.cooldown,
                    _ => return,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(reopens) => {}
                _ = changed => {}
            }
        }
    }

    /// Waits until a delivery may run: at once when closed, after the cooldown when open, and
    /// when half-open as one of the probes (or once the probes decided).
    pub async fn pass(&self) -> Pass {
        if let Some(pass) = self.try_pass() {
            return pass;
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait_until = {
                let mut inner = self.state.lock();
                match self.cooled_down(&mut inner) {
                    CircuitState::Closed => return Pass { probe: false },
                    CircuitState::HalfOpen => {
                        let probes = self.probes();
                        if inner.probes_out < probes {
                            inner.probes_out += 1;
                            return Pass { probe: true };
                        }
                        None
                    }
                    CircuitState::Open => Some(inner.opened_at + inner.cooldown),
                }
            };
            match wait_until {
                Some(at) => tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = changed => {}
                },
                None => changed.await,
            }
        }
    }

    /// A pass at once when the breaker is closed, without taking its lock; `None` otherwise
    /// (then [`pass`](Self::pass) waits for one).
    pub fn try_pass(&self) -> Option<Pass> {
        self.is_closed().then_some(Pass { probe: false })
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Records how the delivery `pass` let run ended.
    pub fn record(&self, pass: Pass, outcome: Outcome) {
        let counted = match outcome {
            // Without a policy of its own the breaker counts no handler outcome.
            Outcome::Failure if self.policy.is_some() => Outcome::Failure,
            Outcome::Failure => Outcome::Neutral,
            other => other,
        };
        // Only probes and the outcomes a policy counts change anything: the rest take no lock.
        if !pass.probe && (self.policy.is_none() || counted == Outcome::Neutral) {
            return;
        }
        let mut inner = self.state.lock();
        if pass.probe {
            if inner.state != CircuitState::HalfOpen {
                return;
            }
            if counted == Outcome::Failure {
                let cooldown = self.cooldown();
                self.move_to(&mut inner, CircuitState::Open, cooldown);
                return;
            }
            // A neutral probe says nothing against the task: it counts as passed.
            inner.probes_passed += 1;
            if inner.probes_passed >= self.probes() {
                self.move_to(&mut inner, CircuitState::Closed, Duration::ZERO);
            }
            return;
        }
        if inner.state != CircuitState::Closed || counted == Outcome::Neutral {
            return;
        }
        let Some(policy) = self.policy else {
            return;
        };
        let failed = counted == Outcome::Failure;
        inner.failures_in_a_row = if failed {
            inner.failures_in_a_row + 1
        } else {
            0
        };
        let now = Instant::now();
        let window = policy.window;
        inner.window.push_back((now, failed));
        while inner
            .window
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > window)
        {
            inner.window.pop_front();
        }
        let in_a_row = policy
            .consecutive_failures
            .is_some_and(|limit| inner.failures_in_a_row >= limit);
        let by_rate = policy.failure_rate.is_some_and(|rate| {
            let calls = inner.window.len();
            let failures = inner.window.iter().filter(|(_, failed)| *failed).count();
            calls >= policy.min_calls as usize && failures as f64 >= rate * calls as f64
        });
        if in_a_row || by_rate {
            self.move_to(&mut inner, CircuitState::Open, policy.cooldown);
        }
    }

    /// Records whether publishing a retry or a dead-letter copy succeeded.
    pub fn record_publish(&self, ok: bool) {
        let mut inner = self.state.lock();
        if ok {
            inner.publish_failures_in_a_row = 0;
            return;
        }
        inner.publish_failures_in_a_row += 1;
        let tripped = inner.publish_failures_in_a_row >= PUBLISH_FAILURES_TO_OPEN;
        if tripped && inner.state != CircuitState::Open {
            inner.publish_failures_in_a_row = 0;
            let cooldown = self.policy.map_or(PUBLISH_COOLDOWN, |p| p.cooldown);
            self.move_to(&mut inner, CircuitState::Open, cooldown);
        }
    }

    fn probes(&self) -> u32 {
        self.policy.map_or(1, |p| p.probes.max(1))
    }

    fn cooldown(&self) -> Duration {
        self.policy.map_or(PUBLISH_COOLDOWN, |p| p.cooldown)
    }

    /// The state, moved to half-open first if the cooldown is over.
    fn cooled_down(&self, inner: &mut Inner) -> CircuitState {
        if inner.state == CircuitState::Open && Instant::now() >= inner.opened_at + inner.cooldown {
            self.move_to(inner, CircuitState::HalfOpen, Duration::ZERO);
        }
        inner.state
    }

    fn move_to(&self, inner: &mut Inner, to: CircuitState, cooldown: Duration) {
        inner.state = to;
        self.closed
            .store(to == CircuitState::Closed, Ordering::Release);
        inner.probes_out = 0;
        inner.probes_passed = 0;
        match to {
            CircuitState::Open => {
                inner.opened_at = Instant::now();
                inner.cooldown = cooldown;
                tracing::warn!(
                    task = self.task,
                    ?cooldown,
                    "circuit open: taking no messages"
                );
            }
            CircuitState::HalfOpen => {
                tracing::info!(
                    task = self.task,
                    probes = self.probes(),
                    "circuit half-open: probing"
                );
            }
            CircuitState::Closed => {
                inner.failures_in_a_row = 0;
                inner.window.clear();
                tracing::info!(task = self.task, "circuit closed: taking messages again");
            }
        }
        self.observer.transition(to);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[derive(Default, Clone)]
    struct Seen(Arc<Mutex<Vec<CircuitState>>>);

    impl CircuitObserver for Seen {
        fn transition(&self, to: CircuitState) {
            self.0.lock().push(to);
        }
    }

    fn breaker(policy: Option<CircuitPolicy>) -> (Arc<CircuitBreaker>, Seen) {
        let seen = Seen::default();
        let breaker = Arc::new(CircuitBreaker::new("t", policy, Box::new(seen.clone())));
        (breaker, seen)
    }

    fn consecutive(n: u32) -> CircuitPolicy {
        let mut policy = CircuitPolicy::new(Some(n), None);
        policy.cooldown = Duration::from_secs(30);
        policy.probes = 2;
        policy
    }

    async fn run(breaker: &CircuitBreaker, outcome: Outcome) {
        let pass = breaker.pass().await;
        breaker.record(pass, outcome);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_a_row_open_it_and_a_success_resets_the_count() {
        let (breaker, seen) = breaker(Some(consecutive(3)));
        for outcome in [Outcome::Failure, Outcome::Failure, Outcome::Success] {
            run(&breaker, outcome).await;
        }
        // Permanent errors do not count.
        for _ in 0..5 {
            run(&breaker, Outcome::Neutral).await;
        }
        run(&breaker, Outcome::Failure).await;
        run(&breaker, Outcome::Failure).await;
        assert_eq!(breaker.state(), CircuitState::Closed);
        run(&breaker, Outcome::Failure).await;
        assert_eq!(breaker.state(), CircuitState::Open);
        assert_eq!(*seen.0.lock(), [CircuitState::Open]);
    }

    #[tokio::test(start_paused = true)]
    async fn while_open_nothing_passes_until_the_cooldown_then_probes_close_it() {
        let (breaker, seen) = breaker(Some(consecutive(1)));
        run(&breaker, Outcome::Failure).await;
        let opened = Instant::now();
        // Three deliveries wait; two pass as probes once the cooldown is over.
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let breaker = breaker.clone();
                tokio::spawn(async move {
                    let pass = breaker.pass().await;
                    (Instant::now(), pass)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(
            waiting.iter().all(|w| !w.is_finished()),
            "nothing passes while open"
        );
        breaker.wait_unless_open().await;
        assert!(opened.elapsed() >= Duration::from_secs(30));
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let finished: Vec<bool> = waiting.iter().map(|w| w.is_finished()).collect();
        assert_eq!(
            finished.iter().filter(|f| **f).count(),
            2,
            "two probes: {finished:?}"
        );
        let mut passes = Vec::new();
        let mut third = None;
        for handle in waiting {
            if handle.is_finished() {
                passes.push(handle.await.expect("pass").1);
            } else {
                third = Some(handle);
            }
        }
        for pass in passes {
            breaker.record(pass, Outcome::Success);
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
        let (_, pass) = third.expect("a third").await.expect("pass");
        breaker.record(pass, Outcome::Success);
        assert_eq!(
            *seen.0.lock(),
            [
                CircuitState::Open,
                CircuitState::HalfOpen,
                CircuitState::Closed
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_for_another_cooldown() {
        let (breaker, seen) = breaker(Some(consecutive(1)));
        run(&breaker, Outcome::Failure).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        let pass = breaker.pass().await;
        breaker.record(pass, Outcome::Failure);
        assert_eq!(breaker.state(), CircuitState::Open);
        let reopened = Instant::now();
        let pass = breaker.pass().await;
        assert!(reopened.elapsed() >= Duration::from_secs(30));
        breaker.record(pass, Outcome::Success);
        assert_eq!(
            *seen.0.lock(),
            [
                CircuitState::Open,
                CircuitState::HalfOpen,
                CircuitState::Open,
                CircuitState::HalfOpen
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_rate_over_the_minimum_calls_opens_it_and_old_calls_leave_the_window() {
        let mut policy = CircuitPolicy::new(None, Some(0.5));
        policy.min_calls = 4;
        policy.window = Duration::from_secs(10);
        let (breaker, _) = breaker(Some(policy));
        for outcome in [Outcome::Failure, Outcome::Failure, Outcome::Success] {
            run(&breaker, outcome).await;
        }
        // Three calls: below the minimum, whatever the rate.
        assert_eq!(breaker.state(), CircuitState::Closed);
        tokio::time::sleep(Duration::from_secs(11)).await;
        // The old calls left the window: 1 failure in 4 is below half.
        for outcome in [
            Outcome::Success,
            Outcome::Success,
            Outcome::Success,
            Outcome::Failure,
        ] {
            run(&breaker, outcome).await;
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
        run(&breaker, Outcome::Failure).await;
        run(&breaker, Outcome::Failure).await;
        // 3 failures in 6.
        assert_eq!(breaker.state(), CircuitState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn publishing_failures_open_even_a_breaker_without_a_policy() {
        let (breaker, seen) = breaker(None);
        for _ in 0..20 {
            run(&breaker, Outcome::Failure).await;
        }
        assert_eq!(
            breaker.state(),
            CircuitState::Closed,
            "handler failures are not its business"
        );
        for _ in 0..PUBLISH_FAILURES_TO_OPEN - 1 {
            breaker.record_publish(false);
        }
        breaker.record_publish(true);
        for _ in 0..PUBLISH_FAILURES_TO_OPEN - 1 {
            breaker.record_publish(false);
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
        breaker.record_publish(false);
        assert_eq!(breaker.state(), CircuitState::Open);
        assert!(breaker.try_pass().is_none(), "no pass at once while open");
        let opened = Instant::now();
        let pass = breaker.pass().await;
        assert_eq!(opened.elapsed(), PUBLISH_COOLDOWN);
        assert!(
            breaker.try_pass().is_none(),
            "no pass at once while half-open: the probes are counted"
        );
        breaker.record(pass, Outcome::Success);
        assert!(
            breaker.try_pass().is_some_and(|pass| !pass.probe),
            "closed again: a pass at once"
        );
        assert_eq!(
            *seen.0.lock(),
            [
                CircuitState::Open,
                CircuitState::HalfOpen,
                CircuitState::Closed
            ]
        );
    }
}
