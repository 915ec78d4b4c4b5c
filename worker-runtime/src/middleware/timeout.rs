//! The per-attempt time limit.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use worker_core::format_duration;

/// An attempt ran longer than its limit and was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {}", format_duration(*.limit))]
pub struct Elapsed {
    limit: Duration,
}

impl Elapsed {
    /// The limit that passed.
    pub fn limit(&self) -> Duration {
        self.limit
    }
}

/// Runs `f` for at most `limit`.
///
/// If `f` has not finished when `limit` has passed, it is dropped (cancelled at its current `.await`)
/// and [`Elapsed`] is returned. This is [`tokio::time::timeout`] with an error that names the limit;
/// like it, it follows tokio's clock, so paused-time tests are exact. Work `f` handed to other tasks
/// (`tokio::spawn`, `spawn_blocking`) is not cancelled with it.
pub async fn with_timeout<F: Future>(limit: Duration, f: F) -> Result<F::Output, Elapsed> {
    timeout_from(Instant::now(), limit, f).await
}

/// [`with_timeout`] for an attempt that started at `started` (its deadline is `started + limit`).
///
/// The timer is made only once `f` has to wait: most attempts of a fast handler end on their
/// first poll and never need one, and a timer costs a clock read, a handle to the runtime's timer
/// and its registration.
pub(crate) async fn timeout_from<F: Future>(
    started: Instant,
    limit: Duration,
    f: F,
) -> Result<F::Output, Elapsed> {
    // A limit past the clock's range is no limit.
    let deadline = started.checked_add(limit);
    let mut f = pin!(f);
    let mut timer = pin!(None::<Sleep>);
    poll_fn(|cx| {
        if let Poll::Ready(output) = f.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        if timer.is_none() {
            let Some(deadline) = deadline else {
                return Poll::Pending;
            };
            timer.set(Some(tokio::time::sleep_until(deadline)));
        }
        match timer.as_mut().as_pin_mut() {
            Some(sleep) => sleep.poll(cx).map(|()| Err(Elapsed { limit })),
            None => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use tokio::time::{sleep, Instant};

    use super::*;

    /// Sets its flag when dropped, to observe that a future was cancelled.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_attempt_is_cancelled_exactly_at_the_limit() {
        let dropped = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicBool::new(false));
        let guard = DropFlag(dropped.clone());
        let done = finished.clone();
        let start = Instant::now();

        let result = with_timeout(Duration::from_secs(1), async move {
            let _guard = guard;
            sleep(Duration::from_secs(2)).await;
            done.store(true, Ordering::SeqCst);
        })
        .await;

        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let error = result.unwrap_err();
        assert_eq!(error.limit(), Duration::from_secs(1));
        assert_eq!(error.to_string(), "timed out after 1s");
        assert!(
            dropped.load(Ordering::SeqCst),
            "the attempt was not dropped"
        );
        // Let virtual time run past the handler's own deadline: it must never finish.
        sleep(Duration::from_secs(5)).await;
        assert!(!finished.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_attempt_passes_through_with_its_output() {
        let start = Instant::now();
        let result = with_timeout(Duration::from_secs(1), async {
            sleep(Duration::from_millis(300)).await;
            42
        })
        .await;
        assert_eq!(result, Ok(42));
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_the_attempts_start_not_from_its_first_wait() {
        let started = Instant::now();
        sleep(Duration::from_millis(600)).await;
        let result = timeout_from(
            started,
            Duration::from_secs(1),
            sleep(Duration::from_secs(2)),
        )
        .await;
        assert!(result.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_ready_at_once_passes_even_past_its_deadline() {
        // Polled first, as tokio's own timeout does: a finished attempt is never an error.
        let started = Instant::now();
        sleep(Duration::from_secs(2)).await;
        assert_eq!(
            timeout_from(started, Duration::from_secs(1), async { 7 }).await,
            Ok(7)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_past_the_clocks_range_is_no_limit() {
        let result = with_timeout(Duration::MAX, async {
            sleep(Duration::from_secs(3600)).await;
            "done"
        })
        .await;
        assert_eq!(result, Ok("done"));
    }

    #[tokio::test(start_paused = true)]
    async fn sub_second_limits_are_named_in_milliseconds() {
        let error = with_timeout(Duration::from_millis(250), std::future::pending::<()>())
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "timed out after 250ms");
    }
}
