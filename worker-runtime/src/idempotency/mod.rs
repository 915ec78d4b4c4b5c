//! Effectively-once handling: a task with an `idempotency_window` has each handled message's
//! stable id recorded, and a copy of a message already recorded (a redelivery, a republish under
//! the same `wr-message-id`) is acknowledged without running the handler again.
//!
//! The record is written after the handler succeeded and before the ack: a crash between the two
//! means one extra run at most (the message comes back unrecorded). Records expire after the
//! window; a copy that arrives later runs again.
//!
//! Stores: [`MemoryIdempotencyStore`] (one worker's own, the default), [`ValkeyIdempotencyStore`]
//! (feature `valkey`) and [`PostgresIdempotencyStore`] (feature `postgres`) for many workers;
//! [`connect`] picks one by URL.

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "valkey")]
mod valkey;

use std::sync::Arc;
use std::time::Duration;

use worker_core::BoxFuture;

pub use memory::MemoryIdempotencyStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresIdempotencyStore;
#[cfg(feature = "valkey")]
pub use valkey::ValkeyIdempotencyStore;

/// Why the store could not answer. The worker gives the message back and tries again later.
#[derive(Debug, thiserror::Error)]
#[error("idempotency store: {0}")]
pub struct IdempotencyError(pub String);

/// Where handled messages are recorded.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Whether `message_id` of `task` was recorded as handled and has not expired.
    fn seen<'a>(
        &'a self,
        task: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, IdempotencyError>>;

    /// Records `message_id` of `task` as handled, for `window`.
    fn record<'a>(
        &'a self,
        task: &'a str,
        message_id: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<(), IdempotencyError>>;
}

/// The store `url` names: `redis://…`/`rediss://…` ([`ValkeyIdempotencyStore`]) or
/// `postgres://…`/`postgresql://…` ([`PostgresIdempotencyStore`]).
pub async fn connect(url: &str) -> Result<Arc<dyn IdempotencyStore>, IdempotencyError> {
    let scheme = crate::credits::url_scheme(url);
    match scheme {
        #[cfg(feature = "valkey")]
        "redis" | "rediss" => Ok(Arc::new(ValkeyIdempotencyStore::connect(url).await?)),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(PostgresIdempotencyStore::connect(url).await?)),
        #[cfg(not(feature = "valkey"))]
        "redis" | "rediss" => Err(IdempotencyError(
            "a valkey store needs the `valkey` feature of worker-runtime".into(),
        )),
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => Err(IdempotencyError(
            "a postgres store needs the `postgres` feature of worker-runtime".into(),
        )),
        _ => Err(IdempotencyError(format!(
            "idempotency url must start with redis://, rediss://, postgres:// or postgresql://, got {}",
            crate::credits::describe_scheme(scheme)
        ))),
    }
}
