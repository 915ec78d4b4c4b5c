//! Rate limits: at most `messages` started per `window`, in *any* span of that length.
//!
//! - [`local`]: per worker, in this process ([`RateLimiter`], governor's cell rate algorithm).
//! - [`valkey`] (feature `valkey`): all workers of a task together ([`GlobalRateLimiter`]), the
//!   same algorithm run by a Lua script on a shared Valkey, on the server's clock.
//!
//! [`TaskLimiter`] is what the pipeline holds: one or the other, as the task's `rate_limit_scope`
//! says.

pub mod local;
#[cfg(feature = "valkey")]
pub mod valkey;

use std::time::Duration;

pub use local::RateLimiter;
#[cfg(feature = "valkey")]
pub use valkey::{GlobalRateLimiter, GlobalRateLimits};

/// A task's rate limiter, local to the worker or shared by every worker of the task.
#[derive(Debug)]
pub enum TaskLimiter {
    /// This worker's own.
    Local(RateLimiter),
    /// Shared through Valkey.
    #[cfg(feature = "valkey")]
    Global(GlobalRateLimiter),
}

impl TaskLimiter {
    /// Waits until a start is allowed and takes it, returning how long it waited. Cancel-safe: a
    /// start is taken only when this returns.
    pub async fn acquire(&self) -> Duration {
        match self {
            TaskLimiter::Local(limiter) => limiter.acquire().await,
            #[cfg(feature = "valkey")]
            TaskLimiter::Global(limiter) => limiter.acquire().await,
        }
    }
}
