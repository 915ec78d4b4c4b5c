//! The global rate limit: one limit for all workers of a task, kept in Valkey.
//!
//! The same cell rate algorithm as the local limiter, run by a Lua script on the server so that
//! every worker takes its starts from one theoretical arrival time (`wr:ratelimit:{task}`, in
//! microseconds of the server's clock, `TIME`, so workers' clocks do not matter): a start is
//! allowed when the arrival time lies no more than `burst − 1` spacings ahead, and moves it one
//! spacing on. Starts are spaced `window / (messages − burst + 1)` apart with a burst of the
//! starts that fit in [`SLACK`], so no span of `window` holds more than `messages` starts, across
//! all workers. A worker told to wait sleeps that long and asks again; if Valkey cannot be reached
//! it waits and asks again rather than start unlimited.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use worker_core::RateLimit;

/// The burst covers starts that fit in this long: a worker's sleep ends a few milliseconds late,
/// and each ask is a round trip.
pub const SLACK: Duration = Duration::from_millis(5);

/// KEYS: the task's arrival-time key. ARGV: spacing (µs), burst, key expiry (ms). Returns 0 when
/// a start was taken, else how many µs to wait before asking again.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local spacing = tonumber(ARGV[1])
local tolerance = (tonumber(ARGV[2]) - 1) * spacing
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return wait end
redis.call('SET', KEYS[1], tat + spacing, 'PX', ARGV[3])
return 0
"#,
    )
});

/// Where the global limits live: one Valkey, shared by every worker.
#[derive(Clone)]
pub struct GlobalRateLimits {
    connection: ConnectionManager,
}

impl GlobalRateLimits {
    /// Connects to `url` (`redis://…` or `rediss://…`).
    pub async fn connect(url: &str) -> Result<Self, redis::RedisError> {
        if url.starts_with("rediss:") {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let connection = ConnectionManager::new_with_config(client, config).await?;
        Ok(GlobalRateLimits { connection })
    }

    /// The limiter of `task`, allowing `limit` for all workers together.
    pub fn limiter(&self, task: &str, limit: RateLimit) -> GlobalRateLimiter {
        let limit = RateLimit {
            window: limit.window.min(super::local::MAX_WINDOW),
            ..limit
        };
        let (spacing, burst) = spacing(limit);
        GlobalRateLimiter {
            connection: self.connection.clone(),
            key: format!("wr:ratelimit:{task}"),
            spacing,
            burst,
            expiry: limit.window.saturating_mul(2).max(Duration::from_secs(1)),
            limit,
        }
    }
}

impl std::fmt::Debug for GlobalRateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalRateLimits").finish_non_exhaustive()
    }
}

/// One task's share of [`GlobalRateLimits`].
#[derive(Clone)]
pub struct GlobalRateLimiter {
    connection: ConnectionManager,
    key: String,
    spacing: Duration,
    burst: u32,
    expiry: Duration,
    limit: RateLimit,
}

/// The spacing of starts and the burst, such that no span of `window` holds more than `messages`
/// (the same shape as the local limiter's, with [`SLACK`]).
fn spacing(limit: RateLimit) -> (Duration, u32) {
    let messages = u128::from(limit.messages.max(1));
    let window = limit.window.as_nanos().max(1);
    let even = window.div_ceil(messages).max(1);
    let burst = SLACK.as_nanos().div_ceil(even).clamp(1, messages);
    // Whole microseconds, rounded up: the script counts in them, and rounding down would let a
    // few more starts into a window than allowed.
    let spacing_micros = window.div_ceil(messages - burst + 1).div_ceil(1000).max(1);
    (
        Duration::from_micros(u64::try_from(spacing_micros).unwrap_or(u64::MAX)),
        u32::try_from(burst).unwrap_or(1),
    )
}

impl GlobalRateLimiter {
    /// The limit it enforces.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Waits until a start is allowed for this task across all workers and takes it, returning
    /// how long it waited. Dropping it while it waits never lets more starts through (at worst
    /// one taken start goes unused).
    pub async fn acquire(&self) -> Duration {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let mut invocation = TAKE.prepare_invoke();
            invocation
                .key(&self.key)
                .arg(u64::try_from(self.spacing.as_micros()).unwrap_or(u64::MAX))
                .arg(self.burst)
                .arg(u64::try_from(self.expiry.as_millis()).unwrap_or(u64::MAX));
            let mut connection = self.connection.clone();
            let asked = tokio::time::timeout(
                Duration::from_secs(5),
                invocation.invoke_async::<u64>(&mut connection),
            )
            .await;
            match asked {
                Ok(Ok(0)) => return started.elapsed(),
                Ok(Ok(wait_micros)) => {
                    pause = Duration::from_millis(50);
                    tokio::time::sleep(Duration::from_micros(wait_micros)).await;
                }
                Ok(Err(error)) => {
                    tracing::warn!(key = %self.key, %error, ?pause, "the global rate limit cannot be read; waiting");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(_) => {
                    tracing::warn!(key = %self.key, ?pause, "the global rate limit did not answer; waiting");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

impl std::fmt::Debug for GlobalRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalRateLimiter")
            .field("key", &self.key)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_keeps_every_window_within_the_limit() {
        for (messages, window) in [(20, 1_000u64), (1_000, 1_000), (5, 60_000), (10_000, 1_000)] {
            let limit = RateLimit {
                messages,
                window: Duration::from_millis(window),
            };
            let (spacing, burst) = spacing(limit);
            // The most starts in any span [t, t + window): the burst's extra ones, then one per
            // spacing.
            let most = u128::from(burst - 1) + limit.window.as_nanos().div_ceil(spacing.as_nanos());
            assert!(
                most <= u128::from(messages) && burst >= 1,
                "{messages}/{window}ms: spacing {spacing:?}, burst {burst}: {most} starts"
            );
        }
    }
}
