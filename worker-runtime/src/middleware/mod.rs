//! The building blocks the worker pipeline composes, one module each, in the order a message meets
//! them:
//!
//! - [`auth`]: the role check of db tasks ([`authorize`]);
//! - [`rate_limit`]: at most n messages started per window ([`RateLimiter`]);
//! - [`timeout`]: the per-attempt limit ([`with_timeout`]);
//! - [`panic`](mod@panic): a panicking handler becomes a failed attempt ([`catch_panic`]);
//! - [`retry`]: after a failure, retry or dead-letter ([`decide`]), with the delay from
//! - [`backoff`]: exponential backoff with jitter, arithmetic only ([`retry_delay`]);
//! - [`dead_letter`]: the dead-letter copy of a message and its sanitized error text
//!   ([`dead_letter_message`], [`sanitize_error`]).
//!
//! Each is a plain function or a small type with no knowledge of brokers or of the others, so each is
//! tested on its own; randomness (jitter) is a parameter and time is tokio's, so the tests are
//! deterministic under paused time.

pub mod auth;
pub mod backoff;
pub mod circuit_breaker;
pub mod dead_letter;
pub mod panic;
pub mod rate_limit;
pub mod retry;
pub mod timeout;

pub use auth::authorize;
pub use backoff::{jittered, retry_delay};
pub use dead_letter::{dead_letter_message, sanitize_error, DeadLetter, MAX_DLQ_ERROR_LEN};
pub use panic::{catch_panic, PanicError};
pub use rate_limit::RateLimiter;
pub use retry::{decide, decide_jittered, RetryDecision};
pub use timeout::{with_timeout, Elapsed};
