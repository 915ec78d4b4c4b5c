//! The building blocks the worker pipeline composes, one module each.

pub mod backoff;
pub mod retry;

pub use backoff::{jittered, retry_delay};
pub use retry::{decide, decide_jittered, RetryDecision};
