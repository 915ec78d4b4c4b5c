//! The building blocks the worker pipeline composes, one module each.

pub mod backoff;
pub mod dead_letter;
pub mod panic;
pub mod rate_limit;
pub mod retry;
pub mod timeout;

pub use backoff::{jittered, retry_delay};
pub use dead_letter::{dead_letter_message, sanitize_error, DeadLetter, MAX_DLQ_ERROR_LEN};
pub use panic::{catch_panic, PanicError};
pub use rate_limit::RateLimiter;
pub use retry::{decide, decide_jittered, RetryDecision};
pub use timeout::{with_timeout, Elapsed};
