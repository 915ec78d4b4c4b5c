//! The per-worker rate limit: at most `messages` started per `window`.
//!
//! A generic cell rate algorithm (governor's direct limiter): one permit is replenished every
//! `window / messages`, and up to `messages` permits can be banked, so a worker that was idle may
//! start a whole window's worth at once and is then held to the steady rate. Over any span `t` at
//! most `messages + t / (window / messages)` messages start.
//!
//! The limiter reads tokio's clock, not the system's, so that it follows paused time in tests and
//! its waits are tokio timers.

use std::num::NonZeroU32;
use std::ops::Add;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::Quota;
use worker_core::RateLimit;

/// The longest window honoured. Governor counts in `u64` nanoseconds (584 years); a longer
/// configured window is shortened to this, which is no limit anyone can tell apart.
const MAX_WINDOW: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

type Limiter =
    governor::RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>;

/// A rate limiter for one task in one worker. Cheap to clone: clones share the same permits.
///
/// Taking a permit is a lock-free compare-and-swap on one atomic; only waiting involves a timer.
#[derive(Clone)]
pub struct RateLimiter {
    limiter: Arc<Limiter>,
    limit: RateLimit,
}

impl RateLimiter {
    /// A limiter allowing `limit.messages` per `limit.window`, with a burst of `limit.messages`.
    ///
    /// The configuration is validated before it gets here; still, so that construction can never
    /// panic, `messages` 0 counts as 1, the replenishment interval `window / messages` is at least
    /// 1 ns, and windows longer than 100 years are shortened to 100 years.
    pub fn new(limit: RateLimit) -> Self {
        let messages = NonZeroU32::new(limit.messages).unwrap_or(NonZeroU32::MIN);
        let window = limit.window.min(MAX_WINDOW);
        // `window / messages` truncates to whole nanoseconds: the rate is at most 1 ns per
        // message faster than configured.
        let period = (window / messages.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(messages))
            .allow_burst(messages);
        RateLimiter {
            limiter: Arc::new(governor::RateLimiter::direct_with_clock(quota, TokioClock)),
            limit,
        }
    }

    /// The limit this limiter was built from.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes a permit without waiting, if one is available now.
    pub fn try_acquire(&self) -> bool {
        self.limiter.check().is_ok()
    }

    /// Waits until a permit is available and takes it, returning how long it waited (zero when a
    /// permit was available at once).
    ///
    /// Cancel-safe: a permit is taken only at the moment this returns, so dropping the future while
    /// it waits takes nothing. Waiters are not queued: when several wait, whichever is polled first
    /// after a permit frees up takes it.
    pub async fn acquire(&self) -> Duration {
        let start = tokio::time::Instant::now();
        loop {
            match self.limiter.check() {
                Ok(()) => return start.elapsed(),
                Err(not_until) => {
                    tokio::time::sleep_until(not_until.earliest_possible().0).await;
                }
            }
        }
    }
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// Governor's view of tokio's clock. `tokio::time::Instant::now()` is the system's monotonic clock,
/// except in tests with paused time, where it is the virtual one.
#[derive(Clone, Copy, Debug, Default)]
struct TokioClock;

impl Clock for TokioClock {
    type Instant = TokioInstant;

    fn now(&self) -> TokioInstant {
        TokioInstant(tokio::time::Instant::now())
    }
}

/// A tokio instant that governor can compute with (its traits cannot be implemented on tokio's type
/// directly).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TokioInstant(tokio::time::Instant);

impl Add<Nanos> for TokioInstant {
    type Output = TokioInstant;

    fn add(self, other: Nanos) -> TokioInstant {
        // Governor adds at most 584 years to the instant the limiter was created; overflowing an
        // `Instant` that way is not possible on any supported platform, but must not panic either.
        let offset = Duration::from_nanos(other.as_u64());
        TokioInstant(self.0.checked_add(offset).unwrap_or(self.0))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        Nanos::from(self.0.saturating_duration_since(earlier.0))
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        let offset = Duration::from_nanos(duration.as_u64());
        TokioInstant(self.0.checked_sub(offset).unwrap_or(self.0))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::time::{sleep, Instant};

    use super::*;

    fn limiter(messages: u32, window_secs: u64) -> RateLimiter {
        RateLimiter::new(RateLimit {
            messages,
            window: Duration::from_secs(window_secs),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_the_limit_passes_and_the_next_waits_one_interval() {
        let limiter = limiter(5, 1);
        for _ in 0..5 {
            assert_eq!(limiter.acquire().await, Duration::ZERO);
        }
        let start = Instant::now();
        assert_eq!(limiter.acquire().await, Duration::from_millis(200));
        assert_eq!(start.elapsed(), Duration::from_millis(200));
        assert_eq!(limiter.acquire().await, Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn try_acquire_does_not_wait() {
        let limiter = limiter(2, 1);
        assert!(limiter.try_acquire());
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire());
        sleep(Duration::from_millis(500)).await;
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire());
    }

    #[tokio::test(start_paused = true)]
    async fn ten_seconds_of_contention_start_at_most_the_burst_plus_the_rate() {
        let limiter = limiter(5, 1);
        let started = Arc::new(AtomicU32::new(0));
        let start = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..20 {
            let limiter = limiter.clone();
            let started = started.clone();
            workers.push(tokio::spawn(async move {
                loop {
                    limiter.acquire().await;
                    if start.elapsed() > Duration::from_secs(10) {
                        break;
                    }
                    started.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        sleep(Duration::from_secs(10)).await;
        let at_ten_seconds = started.load(Ordering::SeqCst);
        for worker in workers {
            worker.abort();
        }
        // The burst of 5 at t = 0, then one every 200 ms up to and including t = 10 s.
        assert!(at_ten_seconds <= 5 * 10 + 5, "{at_ten_seconds} started");
        assert!(at_ten_seconds >= 5 * 10, "{at_ten_seconds} started");
    }

    #[tokio::test(start_paused = true)]
    async fn five_hundred_per_minute_as_in_the_docs() {
        let limiter = limiter(500, 60);
        let start = Instant::now();
        for _ in 0..500 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        // Then one every 60 s / 500 = 120 ms.
        assert_eq!(limiter.acquire().await, Duration::from_millis(120));
        for _ in 0..499 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_limiter_banks_at_most_one_burst() {
        let limiter = limiter(3, 1);
        sleep(Duration::from_secs(30)).await;
        for _ in 0..3 {
            assert_eq!(limiter.acquire().await, Duration::ZERO);
        }
        assert!(!limiter.try_acquire());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_takes_no_permit() {
        let limiter = limiter(1, 1);
        limiter.acquire().await;
        let waited = tokio::time::timeout(Duration::from_millis(500), limiter.acquire()).await;
        assert!(waited.is_err());
        // The permit that frees at t = 1 s is still there for the next caller.
        assert_eq!(limiter.acquire().await, Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn degenerate_limits_do_not_panic() {
        let zero = RateLimiter::new(RateLimit {
            messages: 0,
            window: Duration::from_secs(1),
        });
        assert!(zero.try_acquire());
        assert!(!zero.try_acquire());
        let instant = RateLimiter::new(RateLimit {
            messages: u32::MAX,
            window: Duration::ZERO,
        });
        for _ in 0..1000 {
            assert!(instant.try_acquire());
        }
        let forever = RateLimiter::new(RateLimit {
            messages: 1,
            window: Duration::MAX,
        });
        assert!(forever.try_acquire());
        assert!(!forever.try_acquire());
        assert_eq!(forever.limit().window, Duration::MAX);
    }
}
