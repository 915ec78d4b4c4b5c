//! Plain Redis lists as Python services use them for queues: producers `LPUSH`, consumers take
//! from the other end. [`ListQueue`] reads them with the reliable-queue pattern, so that nothing a
//! crashed reader held is lost: `LMOVE` each item into a processing list of the reader's own, and
//! remove it from there (`LREM`) only once whatever it was read for is done. Items a reader left in
//! its processing list when it died are moved back to the queue by [`ListQueue::recover`], which a
//! reader restarted under the same name calls first.
//!
//! Celery's Redis transport (kombu) keeps each queue as such a list too (`LPUSH` to publish,
//! `BRPOP` to consume), which is what the bridge's Celery routes read and write.

use bytes::Bytes;
use redis::Value;
use tokio::sync::Mutex;
use worker_core::BrokerError;

use super::{bad_reply, scripts, Shared};

/// A Redis list read as a reliable queue by one named reader, or written to as a producer.
pub struct ListQueue {
    shared: std::sync::Arc<Shared>,
    key: String,
    processing: String,
    /// The reader's own connection for blocking moves (a blocking command would stall every other
    /// command on the shared one); opened on first use.
    blocking: Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl ListQueue {
    pub(super) fn new(shared: std::sync::Arc<Shared>, key: &str, reader: &str) -> Self {
        ListQueue {
            shared,
            key: key.to_owned(),
            processing: processing_key(key, reader),
            blocking: Mutex::new(None),
        }
    }

    /// The list's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key of this reader's processing list.
    pub fn processing_key(&self) -> &str {
        &self.processing
    }

    /// Moves every item this reader's processing list still holds (from a run that ended before
    /// removing them) back to the end of the queue that is read next, oldest last read first, so
    /// they are taken again before anything newer. Returns how many.
    pub async fn recover(&self) -> Result<u64, BrokerError> {
        let mut invocation = scripts::LIST_RECOVER.prepare_invoke();
        invocation.key(&self.processing).key(&self.key);
        self.shared
            .invoke::<u64>("recover the processing list", &invocation)
            .await
    }

    /// Takes up to `max` items, oldest first, into the processing list. Returns at once with what
    /// is there; when the queue is empty it waits up to the backend's block timeout for one item.
    pub async fn take(&self, max: usize) -> Result<Vec<Bytes>, BrokerError> {
        let mut invocation = scripts::LIST_TAKE.prepare_invoke();
        invocation
            .key(&self.key)
            .key(&self.processing)
            .arg(max.max(1));
        let taken: Vec<Vec<u8>> = self.shared.invoke("take list items", &invocation).await?;
        if !taken.is_empty() {
            return Ok(taken.into_iter().map(Bytes::from).collect());
        }
        self.take_blocking().await
    }

    /// One `BLMOVE` on the reader's own connection.
    async fn take_blocking(&self) -> Result<Vec<Bytes>, BrokerError> {
        let mut guard = self.blocking.lock().await;
        let connection = match guard.as_mut() {
            Some(connection) => connection,
            None => guard.insert(self.shared.dedicated_connection().await?),
        };
        let block = self.shared.options.block_timeout;
        let mut cmd = redis::cmd("BLMOVE");
        cmd.arg(&self.key)
            .arg(&self.processing)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(block.as_secs_f64());
        let limit = block + self.shared.options.operation_timeout;
        let reply =
            super::with_timeout("take list items", limit, cmd.query_async(connection)).await;
        match reply {
            Ok(Value::Nil) => Ok(Vec::new()),
            Ok(Value::BulkString(item)) => Ok(vec![Bytes::from(item)]),
            Ok(other) => Err(bad_reply("take list items", format!("{other:?}"))),
            Err(error) => {
                // The connection may be broken: open a new one next time.
                *guard = None;
                Err(error)
            }
        }
    }

    /// Removes items from the processing list: they are done. An item not found there (already
    /// removed, or moved back by a recovery) is skipped.
    pub async fn remove(&self, items: &[Bytes]) -> Result<(), BrokerError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for item in items {
            // From the oldest end, where the oldest taken items sit.
            pipe.cmd("LREM")
                .arg(&self.processing)
                .arg(-1)
                .arg(&item[..])
                .ignore();
        }
        self.shared
            .pipeline::<()>("remove done list items", &pipe)
            .await
    }

    /// Pushes items onto the queue as a producer does (`LPUSH`), in order: the first is taken
    /// first.
    pub async fn push(&self, items: &[&[u8]]) -> Result<(), BrokerError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("LPUSH");
        cmd.arg(&self.key);
        for item in items {
            cmd.arg(*item);
        }
        self.shared
            .query::<u64>("push list items", &cmd)
            .await
            .map(drop)
    }

    /// How many items wait in the queue.
    pub async fn waiting(&self) -> Result<u64, BrokerError> {
        let mut cmd = redis::cmd("LLEN");
        cmd.arg(&self.key);
        self.shared.query("list length", &cmd).await
    }
}

impl std::fmt::Debug for ListQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListQueue")
            .field("key", &self.key)
            .field("processing", &self.processing)
            .finish_non_exhaustive()
    }
}

/// `{key}:processing:{reader}`: one processing list per reader, so that a recovery moves back only
/// what this reader held.
fn processing_key(key: &str, reader: &str) -> String {
    format!("{key}:processing:{reader}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reader_has_a_processing_list_of_its_own() {
        assert_eq!(
            processing_key("orders", "host-0"),
            "orders:processing:host-0"
        );
        assert_ne!(processing_key("orders", "a"), processing_key("orders", "b"));
    }
}
