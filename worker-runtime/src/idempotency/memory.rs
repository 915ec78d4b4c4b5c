//! Handled messages remembered in this process: enough for one worker (and tests); with several,
//! use a shared store.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use worker_core::BoxFuture;

use super::{IdempotencyError, IdempotencyStore};

/// Records in memory, expiring on tokio's clock; expired ones are swept as new ones come in.
#[derive(Default)]
pub struct MemoryIdempotencyStore {
    records: Mutex<Records>,
}

#[derive(Default)]
struct Records {
    until: HashMap<(String, String), Instant>,
    /// When to sweep expired records next.
    next_sweep: Option<Instant>,
}

impl MemoryIdempotencyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl IdempotencyStore for MemoryIdempotencyStore {
    fn seen<'a>(
        &'a self,
        task: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, IdempotencyError>> {
        let now = Instant::now();
        let seen = self
            .records
            .lock()
            .until
            .get(&(task.to_owned(), message_id.to_owned()))
            .is_some_and(|until| *until > now);
        Box::pin(async move { Ok(seen) })
    }

    fn record<'a>(
        &'a self,
        task: &'a str,
        message_id: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<(), IdempotencyError>> {
        let now = Instant::now();
        let mut records = self.records.lock();
        if records.next_sweep.is_none_or(|at| at <= now) {
            records.until.retain(|_, until| *until > now);
            records.next_sweep = Some(now + window);
        }
        records
            .until
            .insert((task.to_owned(), message_id.to_owned()), now + window);
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn records_hold_for_their_window() {
        let store = MemoryIdempotencyStore::new();
        assert!(!store.seen("t", "m").await.expect("seen"));
        store
            .record("t", "m", Duration::from_secs(60))
            .await
            .expect("record");
        assert!(store.seen("t", "m").await.expect("seen"));
        assert!(!store.seen("other", "m").await.expect("seen"));
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(!store.seen("t", "m").await.expect("seen"), "expired");
    }
}
