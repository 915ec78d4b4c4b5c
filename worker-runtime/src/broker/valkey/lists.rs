//! Plain Redis lists as Python services use them for queues: producers `LPUSH`, consumers take
//! from the other end. [`ListQueue`] reads them with the reliable-queue pattern, so that nothing a
//! crashed reader held is lost: `LMOVE` each item into a processing list of the reader's own, and
//! remove it from there (`LREM`) only once whatever it was read for is done. Items a reader left in
//! its processing list when it died are moved back to the queue by [`ListQueue::recover`], which a
//! reader restarted under the same name calls first.
//!
//! A take whose reply is lost (the server or the connection died after the move, or the reply came
//! after the operation timeout) has moved items the reader never saw. The reader keeps count of
//! what it holds, and after a failed take it first looks in its processing list for the items it
//! does not hold and hands those out, before it takes anything new.
//!
//! Celery's Redis transport (kombu) keeps each queue as such a list too (`LPUSH` to publish,
//! `BRPOP` to consume), which is what the bridge's Celery routes read and write.

use std::collections::HashMap;

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
    /// command on the shared one), opened on first use. Locked for the whole of a take, so that
    /// takes run one at a time: a search for orphans must not count another take's items.
    blocking: Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// What this reader took and has not removed yet.
    holdings: std::sync::Mutex<Holdings>,
}

/// The items a reader took and has not removed, as a multiset of their bytes; and whether a take
/// failed after it may have moved items.
#[derive(Default)]
struct Holdings {
    items: HashMap<Bytes, usize, foldhash::fast::RandomState>,
    suspect: bool,
}

impl Holdings {
    fn hold(&mut self, items: &[Bytes]) {
        for item in items {
            *self.items.entry(item.clone()).or_default() += 1;
        }
    }

    fn release(&mut self, items: &[Bytes]) {
        for item in items {
            if let Some(count) = self.items.get_mut(item) {
                *count -= 1;
                if *count == 0 {
                    self.items.remove(item);
                }
            }
        }
    }

    fn held(&self) -> Vec<Bytes> {
        self.items
            .iter()
            .flat_map(|(item, count)| std::iter::repeat_n(item.clone(), *count))
            .collect()
    }
}

impl ListQueue {
    pub(super) fn new(shared: std::sync::Arc<Shared>, key: &str, reader: &str) -> Self {
        ListQueue {
            shared,
            key: key.to_owned(),
            processing: processing_key(key, reader),
            blocking: Mutex::new(None),
            holdings: std::sync::Mutex::new(Holdings::default()),
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
    /// they are taken again before anything newer. Returns how many. What this reader held is
    /// then held no more: call it when nothing taken is in flight (at start).
    pub async fn recover(&self) -> Result<u64, BrokerError> {
        let _taking = self.blocking.lock().await;
        let mut invocation = scripts::LIST_RECOVER.prepare_invoke();
        invocation.key(&self.processing).key(&self.key);
        let moved = self
            .shared
            .invoke::<u64>("recover the processing list", &invocation)
            .await?;
        *self.holdings() = Holdings::default();
        Ok(moved)
    }

    /// Takes up to `max` items, oldest first, into the processing list. Returns at once with what
    /// is there; when the queue is empty it waits up to the backend's block timeout for one item.
    /// After a take that failed, or was dropped before it returned, the items it may have moved
    /// come first (see the module's docs): nothing a take moved is lost to this reader.
    pub async fn take(&self, max: usize) -> Result<Vec<Bytes>, BrokerError> {
        let max = max.max(1);
        let mut blocking = self.blocking.lock().await;
        // Suspect until this take has counted what it got: what it moved is unaccounted for until
        // then, also when the take is dropped on the way.
        let suspect = std::mem::replace(&mut self.holdings().suspect, true);
        let taken = async {
            if suspect {
                let orphans = self.orphans(max).await?;
                if !orphans.is_empty() {
                    // There may be more than `max`: look again next time.
                    return Ok((orphans.len() == max, orphans));
                }
            }
            let taken = self.take_moving(max).await?;
            if !taken.is_empty() {
                return Ok((false, taken));
            }
            Ok((false, self.take_blocking(&mut blocking).await?))
        }
        .await;
        let mut holdings = self.holdings();
        match taken {
            Ok((more_orphans, items)) => {
                holdings.suspect = more_orphans;
                holdings.hold(&items);
                Ok(items)
            }
            Err(error) => {
                holdings.suspect = true;
                Err(error)
            }
        }
    }

    fn holdings(&self) -> std::sync::MutexGuard<'_, Holdings> {
        self.holdings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The items of the processing list this reader does not hold, at most `max`, oldest first.
    async fn orphans(&self, max: usize) -> Result<Vec<Bytes>, BrokerError> {
        let held = self.holdings().held();
        let mut invocation = scripts::LIST_ORPHANS.prepare_invoke();
        invocation.key(&self.processing).arg(max);
        for item in &held {
            invocation.arg(&item[..]);
        }
        let orphans: Vec<Vec<u8>> = self
            .shared
            .invoke("find orphaned list items", &invocation)
            .await?;
        if !orphans.is_empty() {
            tracing::warn!(
                list = %self.key,
                count = orphans.len(),
                "items a failed take had moved are handed out now"
            );
        }
        Ok(orphans.into_iter().map(Bytes::from).collect())
    }

    /// Moves what is there, without waiting.
    async fn take_moving(&self, max: usize) -> Result<Vec<Bytes>, BrokerError> {
        let mut invocation = scripts::LIST_TAKE.prepare_invoke();
        invocation.key(&self.key).key(&self.processing).arg(max);
        let taken: Vec<Vec<u8>> = self.shared.invoke("take list items", &invocation).await?;
        Ok(taken.into_iter().map(Bytes::from).collect())
    }

    /// One `BLMOVE` on the reader's own connection. The connection is put back only once the reply
    /// is in: a move dropped on the way closes it, so the server cannot move an item later for a
    /// reply nobody reads.
    async fn take_blocking(
        &self,
        slot: &mut Option<redis::aio::MultiplexedConnection>,
    ) -> Result<Vec<Bytes>, BrokerError> {
        let mut connection = match slot.take() {
            Some(connection) => connection,
            None => self.shared.dedicated_connection().await?,
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
            super::with_timeout("take list items", limit, cmd.query_async(&mut connection)).await;
        // On an error the connection may be broken: a new one is opened next time.
        let reply = reply?;
        *slot = Some(connection);
        match reply {
            Value::Nil => Ok(Vec::new()),
            Value::BulkString(item) => Ok(vec![Bytes::from(item)]),
            other => Err(bad_reply("take list items", format!("{other:?}"))),
        }
    }

    /// Removes items from the processing list: they are done. An item not found there (already
    /// removed, or moved back by a recovery) is skipped. They are held no more once the server
    /// confirmed (on an error they stay held: the caller tries again or they come back at start).
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
            .await?;
        self.holdings().release(items);
        Ok(())
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
