//! The per-worker rate limit: at most `messages` started per `window`, in this process.
//!
//! A generic cell rate algorithm (governor's direct limiter) shaped so that the limit holds for
//! *every* span of length `window`, not just on average: no window of that length ever sees more
//! than `messages` starts. (A token bucket that banked a whole window's worth would let nearly twice
//! the limit into one window.)
//!
//! Starts are spaced `window / messages` apart. Where that spacing is finer than tokio's timers can
//! follow (they fire on 1 ms ticks), a waiting worker could not keep up with it, so the limiter
//! allows a small burst `b` of the starts that fit in two milliseconds and spaces the rest `window / (messages − b + 1)`
//! apart: a window then holds at most `b − 1 + (messages − b + 1) = messages` starts.
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
pub(super) const MAX_WINDOW: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

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
    /// A limiter allowing `limit.messages` per `limit.window`, evenly spaced.
    ///
    /// The configuration is validated before it gets here; still, so that construction can never
    /// panic, `messages` 0 counts as 1, the replenishment interval `window / messages` is at least
    /// 1 ns, and windows longer than 100 years are shortened to 100 years.
    pub fn new(limit: RateLimit) -> Self {
        let messages = NonZeroU32::new(limit.messages).unwrap_or(NonZeroU32::MIN);
        let window = limit.window.min(MAX_WINDOW);
        let (period, burst) = spacing(window, messages);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(messages))
            .allow_burst(burst);
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
        // The usual case under the limit: no clock read of its own to time a wait that never was.
        if self.limiter.check().is_ok() {
            return Duration::ZERO;
        }
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

/// How late a waiting start may wake: tokio's timers fire on 1 ms ticks, so a sleep ends up to two
/// ticks after the instant asked for.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// The spacing of starts and the burst, such that no span of `window` holds more than `messages`.
fn spacing(window: Duration, messages: NonZeroU32) -> (Duration, NonZeroU32) {
    let window_nanos = window.as_nanos();
    let messages = u128::from(messages.get());
    let even = window_nanos.div_ceil(messages).max(1);
    let burst = TIMER_SLACK.as_nanos().div_ceil(even).clamp(1, messages);
    // Rounding up keeps the rate at or below the configured one.
    let period = window_nanos.div_ceil(messages - burst + 1).max(1);
    let period = Duration::from_nanos(u64::try_from(period).unwrap_or(u64::MAX));
    let burst = u32::try_from(burst)
        .ok()
        .and_then(NonZeroU32::new)
        .unwrap_or(NonZeroU32::MIN);
    (period, burst)
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

    use tokio::time::{sleep, Instant};

    use super::*;

    fn limiter(messages: u32, window_secs: u64) -> RateLimiter {
        RateLimiter::new(RateLimit {
            messages,
            window: Duration::from_secs(window_secs),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn starts_are_spaced_one_interval_apart() {
        let limiter = limiter(5, 1);
        assert_eq!(limiter.acquire().await, Duration::ZERO);
        let start = Instant::now();
        for _ in 0..4 {
            assert_eq!(limiter.acquire().await, Duration::from_millis(200));
        }
        assert_eq!(start.elapsed(), Duration::from_millis(800));
    }

    #[tokio::test(start_paused = true)]
    async fn try_acquire_does_not_wait() {
        let limiter = limiter(2, 1);
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire());
        sleep(Duration::from_millis(500)).await;
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire());
    }

    /// The number of `starts` in the busiest half-open span of length `window`.
    fn busiest_window(starts: &[Instant], window: Duration) -> usize {
        starts
            .iter()
            .map(|from| {
                starts
                    .iter()
                    .filter(|s| **s >= *from && **s < *from + window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn under_contention_no_window_holds_more_than_the_limit() {
        let limiter = limiter(5, 1);
        let starts = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let start = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..20 {
            let limiter = limiter.clone();
            let starts = starts.clone();
            workers.push(tokio::spawn(async move {
                loop {
                    limiter.acquire().await;
                    if start.elapsed() >= Duration::from_secs(10) {
                        break;
                    }
                    starts.lock().push(Instant::now());
                }
            }));
        }
        sleep(Duration::from_secs(10)).await;
        for worker in workers {
            worker.abort();
        }
        let starts = starts.lock().clone();
        // One every 200 ms from t = 0 until just before t = 10 s.
        assert_eq!(starts.len(), 50);
        assert_eq!(busiest_window(&starts, Duration::from_secs(1)), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn five_hundred_per_minute_as_in_the_docs() {
        let limiter = limiter(500, 60);
        let start = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..1000 {
            limiter.acquire().await;
            starts.push(Instant::now());
        }
        // One every 60 s / 500 = 120 ms.
        assert_eq!(starts[1] - starts[0], Duration::from_millis(120));
        assert_eq!(start.elapsed(), Duration::from_millis(120 * 999));
        assert_eq!(busiest_window(&starts, Duration::from_secs(60)), 500);
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_finer_than_the_timer_still_reaches_its_rate_and_holds() {
        let limiter = limiter(10_000, 1);
        let starts = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let start = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..8 {
            let limiter = limiter.clone();
            let starts = starts.clone();
            workers.push(tokio::spawn(async move {
                loop {
                    limiter.acquire().await;
                    if start.elapsed() >= Duration::from_secs(2) {
                        break;
                    }
                    starts.lock().push(Instant::now());
                }
            }));
        }
        sleep(Duration::from_secs(2)).await;
        for worker in workers {
            worker.abort();
        }
        let starts = starts.lock().clone();
        assert!(
            starts.len() >= 19_900,
            "only {} started in 2 s",
            starts.len()
        );
        // Count per 1 s span starting at each distinct millisecond (starts cluster on timer ticks).
        let mut ticks: Vec<Instant> = starts.clone();
        ticks.dedup();
        let busiest = ticks
            .iter()
            .map(|from| {
                starts
                    .iter()
                    .filter(|s| **s >= *from && **s < *from + Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0);
        assert!(busiest <= 10_000, "{busiest} starts in one second");
    }

    #[test]
    fn spacing_is_even_when_the_timer_can_follow_it() {
        let five = NonZeroU32::new(5).unwrap();
        assert_eq!(
            spacing(Duration::from_secs(1), five),
            (Duration::from_millis(200), NonZeroU32::MIN)
        );
        let many = NonZeroU32::new(10_000).unwrap();
        let (period, burst) = spacing(Duration::from_secs(1), many);
        assert_eq!(burst.get(), 20);
        assert_eq!(
            period,
            Duration::from_nanos(1_000_000_000u64.div_ceil(9_981))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_limiter_banks_nothing() {
        let limiter = limiter(3, 1);
        sleep(Duration::from_secs(30)).await;
        assert_eq!(limiter.acquire().await, Duration::ZERO);
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
        let start = Instant::now();
        for _ in 0..1000 {
            instant.acquire().await;
        }
        assert!(
            start.elapsed() <= Duration::from_micros(1),
            "1 ns apart at most"
        );
        let forever = RateLimiter::new(RateLimit {
            messages: 1,
            window: Duration::MAX,
        });
        assert!(forever.try_acquire());
        assert!(!forever.try_acquire());
        assert_eq!(forever.limit().window, Duration::MAX);
    }
}
