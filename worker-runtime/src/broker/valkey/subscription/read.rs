//! Reading: handing out what is buffered, reading new entries (blocking, or ahead of need),
//! and recovering this consumer's own pending entries after a dropped or failed read.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use tokio::time::Instant;
use worker_core::{BrokerError, Delivery};

use super::{held_key, held_text, millis, Held, Inner, Reader};
use crate::broker::valkey::codec::{self, RawEntry};
use crate::broker::valkey::read_connection::ReadConnection;
use crate::broker::valkey::resp::StreamEntry;
use crate::broker::valkey::{bad_reply, delayed, redis_code, BACKEND};

/// The first and the longest pause before a `receive` tries again after connection trouble.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

impl Inner {
    pub(super) async fn receive(
        self: &Arc<Self>,
        max: usize,
    ) -> Result<Vec<Delivery>, BrokerError> {
        // What is buffered needs no reader: a read ahead in flight does not hold it up.
        if !self.closed.is_cancelled() && !self.is_standby() {
            if let Some(batch) = self.hand_out(max) {
                return Ok(batch);
            }
        }
        let mut reader = self.reader.lock().await;
        let mut pause = RETRY_MIN;
        loop {
            if self.closed.is_cancelled() {
                return Err(BrokerError::Closed(BACKEND));
            }
            if let Some(ownership) = self.ownership.as_ref().filter(|o| !o.is_active()) {
                // A standby reads nothing until it is elected.
                ownership.wait_active(&self.closed).await;
                continue;
            }
            if let Some(batch) = self.hand_out(max) {
                return Ok(batch);
            }
            let step = if reader.dirty {
                self.recover(&mut reader).await
            } else {
                self.read_new(&mut reader, max, Wait::Block).await
            };
            match step {
                Ok(()) => pause = RETRY_MIN,
                Err(error) if matches!(redis_code(&error), Some("NOGROUP" | "UNBLOCKED")) => {
                    // The server lost the group (restarted without persistence, or the key was
                    // deleted, which also ends a blocked read with UNBLOCKED): create it again,
                    // from the start of whatever the stream holds.
                    tracing::warn!(stream = %self.keys.stream, group = %self.group,
                        "valkey consumer group vanished; creating it again");
                    reader.connection = None;
                    if let Err(error) = self.recreate_group().await {
                        tracing::warn!(%error, "valkey could not create the consumer group");
                        self.pause(&mut pause).await;
                    }
                }
                Err(error) if error.is_transient() => {
                    tracing::warn!(stream = %self.keys.stream, %error,
                        "valkey receive failed; retrying");
                    reader.connection = None;
                    self.pause(&mut pause).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn pause(&self, pause: &mut Duration) {
        tokio::select! {
            () = self.closed.cancelled() => {}
            () = tokio::time::sleep(*pause) => {}
        }
        *pause = (*pause * 2).min(RETRY_MAX);
    }

    pub(super) async fn recreate_group(&self) -> Result<(), BrokerError> {
        self.shared
            .ensure_group(&self.keys.stream, &self.group, "0")
            .await
    }

    /// Takes up to `max` buffered deliveries and, when that leaves the buffer running low, starts
    /// a read ahead so that the next batch is on its way before the buffer runs dry.
    fn hand_out(self: &Arc<Self>, max: usize) -> Option<Vec<Delivery>> {
        let (batch, low) = self.take_buffered(max)?;
        if low && !self.reading_ahead.swap(true, Ordering::AcqRel) {
            tokio::spawn(Arc::clone(self).read_ahead());
        }
        Some(batch)
    }

    /// One read of what is already in the stream, without blocking, into the buffer: keeps a
    /// consumer that drains a backlog from waiting a whole round trip (and the server's work for
    /// a batch) each time its buffer empties. Best effort: on any trouble it leaves the reader as
    /// `receive` expects it (dirty, or without a connection) and `receive` deals with it.
    async fn read_ahead(self: Arc<Self>) {
        let mut reader = self.reader.lock().await;
        let wanted = {
            let local = self.local.lock();
            let room = self.prefetch.saturating_sub(local.buffer.len());
            (local.buffer.len() < self.low_water()).then_some(room)
        };
        if let Some(room) = wanted.filter(|_| !reader.dirty && !self.is_standby()) {
            if let Err(error) = self.read_new(&mut reader, room, Wait::No).await {
                if error.is_transient() {
                    reader.connection = None;
                }
                tracing::debug!(stream = %self.keys.stream, %error, "valkey read ahead failed");
            }
        }
        self.reading_ahead.store(false, Ordering::Release);
    }

    /// Whether a blocking read should move due delayed messages first: at most once per
    /// [`super::ValkeyOptions::delayed_poll_interval`], as often as the maintenance task does,
    /// so that a consumer reading back to back does not pay a round trip for it each time.
    fn due_check_is_due(&self) -> bool {
        let now = Instant::now();
        let mut last = self.last_due_check.lock();
        match *last {
            Some(at) if now.duration_since(at) < self.shared.options.delayed_poll_interval => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Whether this consumer waits as a standby of a failover or exclusive subscription.
    pub(super) fn is_standby(&self) -> bool {
        self.ownership.as_ref().is_some_and(|o| !o.is_active())
    }

    /// Below this many buffered deliveries a read ahead starts.
    fn low_water(&self) -> usize {
        self.prefetch / 2
    }

    /// Reads new entries (`>`) into the buffer; with [`Wait::Block`] it waits up to the block
    /// timeout for some to arrive.
    async fn read_new(
        &self,
        reader: &mut Reader,
        max: usize,
        wait: Wait,
    ) -> Result<(), BrokerError> {
        let options = &self.shared.options;
        if wait == Wait::Block && self.due_check_is_due() {
            // Serve what became due first; the maintenance task covers the time spent blocked.
            if let Err(error) = delayed::move_due(&self.shared, &self.keys).await {
                if error.is_transient() {
                    return Err(error);
                }
                tracing::warn!(stream = %self.keys.stream, %error, "valkey delay mover failed");
            }
        }
        let connection = match &mut reader.connection {
            Some(connection) => connection,
            None => reader
                .connection
                .insert(ReadConnection::open(&self.shared).await?),
        };
        // Ask for what the caller wants and enough beyond it to fill the prefetch: the caller
        // may take only a few at a time (a worker's dispatch loop takes a share of the queue),
        // and the surplus waits in the buffer for the next receives instead of costing a round
        // trip each.
        let count = self
            .prefetch
            .saturating_sub(self.local.lock().buffer.len())
            .max(max);
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if wait == Wait::Block {
            // `BLOCK 0` would wait forever.
            cmd.arg("BLOCK").arg(millis(options.block_timeout).max(1));
        }
        cmd.arg("STREAMS").arg(&self.keys.stream).arg(">");
        // From here until the reply is buffered, the server may have delivered entries we do not
        // hold: if this future is dropped, the next receive recovers them from the PEL.
        reader.dirty = true;
        let limit = options.block_timeout + options.operation_timeout;
        let entries = tokio::select! {
            () = self.closed.cancelled() => return Err(BrokerError::Closed(BACKEND)),
            entries = connection.read(&cmd, limit) => entries?,
        };
        let fresh = entries
            .into_iter()
            .filter_map(|StreamEntry { id, fields }| Some((entry_id(&id)?, fields?, 0)))
            .collect();
        self.buffer(fresh);
        reader.dirty = false;
        Ok(())
    }

    /// Buffers every entry of this consumer's PEL that is not held here.
    async fn recover(&self, reader: &mut Reader) -> Result<(), BrokerError> {
        // A cancelled read may still be blocked on the old connection.
        reader.connection = None;
        let batch = self.shared.options.batch_size.max(1);
        let mut cursor = "0".to_owned();
        loop {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(&self.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(batch)
                .arg("STREAMS")
                .arg(&self.keys.stream)
                .arg(&cursor);
            let reply: Value = self.shared.query("recover pending", &cmd).await?;
            let entries = codec::read_reply(reply).map_err(|e| bad_reply("recover pending", e))?;
            let Some(last) = entries.last() else {
                break;
            };
            cursor = last.id.clone();
            let (present, deleted): (Vec<_>, Vec<_>) = {
                let local = self.local.lock();
                entries
                    .into_iter()
                    .filter(|e| !local.held.contains_key(e.id.as_str()))
                    .partition(|e| e.fields.is_some())
            };
            if !deleted.is_empty() {
                // Pending, but trimmed or deleted from the stream: nothing left to deliver.
                let ids: Vec<String> = deleted.into_iter().map(|e| e.id).collect();
                self.xack(&ids).await?;
            }
            self.buffer_with_counts(present).await?;
        }
        if cursor != "0" {
            tracing::debug!(stream = %self.keys.stream, consumer = %self.consumer,
                "valkey recovered this consumer's pending entries");
        }
        reader.dirty = false;
        Ok(())
    }

    /// Buffers entries that were delivered before (recovered or claimed), with their counters.
    pub(super) async fn buffer_with_counts(
        &self,
        entries: Vec<RawEntry>,
    ) -> Result<(), BrokerError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for entry in &entries {
            pipe.cmd("XPENDING")
                .arg(&self.keys.stream)
                .arg(&self.group)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1);
        }
        let replies: Vec<Value> = self.shared.pipeline("read delivery counts", &pipe).await?;
        let with_counts = entries
            .into_iter()
            .zip(replies.into_iter().map(delivery_count))
            .filter_map(|(RawEntry { id, fields }, count)| {
                fields.map(|f| (Arc::from(id), f, count.saturating_sub(1)))
            })
            .collect();
        self.buffer(with_counts);
        Ok(())
    }

    /// Decodes entries (id, fields, redelivery count) into the back of the buffer, skipping any
    /// already held.
    #[allow(clippy::type_complexity)]
    fn buffer<B: AsRef<[u8]> + Into<Bytes>>(&self, entries: Vec<(Arc<str>, Vec<(B, B)>, u32)>) {
        // Decoded before locking, so that handing out is never held up by decoding.
        let decoded: Vec<(Arc<str>, Delivery)> = entries
            .into_iter()
            .map(|(id, fields, redelivery_count)| {
                let delivery = codec::decode(&self.topic, &id, fields, redelivery_count);
                (id, delivery)
            })
            .collect();
        let mut local = self.local.lock();
        for (id, delivery) in decoded {
            if local.held.contains_key(&id) {
                continue;
            }
            local.held.insert(id, Held::Buffered);
            local.buffer.push_back(delivery);
        }
    }

    /// Up to `max` buffered deliveries, now handed out, and whether the buffer runs low: fewer
    /// than the low-water mark left.
    fn take_buffered(&self, max: usize) -> Option<(Vec<Delivery>, bool)> {
        let mut local = self.local.lock();
        if local.buffer.is_empty() {
            return None;
        }
        let count = max.min(local.buffer.len());
        let batch: Vec<Delivery> = local.buffer.drain(..count).collect();
        for delivery in &batch {
            let handed = Held::Handed(delivery.clone());
            match local.held.get_mut(held_text(&delivery.id).as_ref()) {
                Some(held) => *held = handed,
                None => {
                    local.held.insert(held_key(&delivery.id), handed);
                }
            }
        }
        // Low even when empty: the next batch then travels while this one is handled, instead of
        // after it, in the next receive.
        let low = local.buffer.len() < self.low_water();
        Some((batch, low))
    }
}

/// An entry id as the buffer keeps it; `None` (and a warning) for one that is no text, which a
/// server never sends.
fn entry_id(id: &[u8]) -> Option<Arc<str>> {
    match std::str::from_utf8(id) {
        Ok(id) => Some(Arc::from(id)),
        Err(_) => {
            tracing::warn!(id = %id.escape_ascii(), "valkey sent an entry id that is no text; skipped");
            None
        }
    }
}

/// Whether a read waits on the server for entries to arrive.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Up to the block timeout.
    Block,
    /// Not at all: what is there now, possibly nothing.
    No,
}

/// The delivery counter in one `XPENDING key group id id 1` reply (`[[id, consumer, idle,
/// count]]`), or 1 when the entry is no longer pending.
fn delivery_count(reply: Value) -> u32 {
    let Value::Array(rows) = reply else {
        return 1;
    };
    let Some(Value::Array(row)) = rows.into_iter().next() else {
        return 1;
    };
    match row.get(3) {
        Some(Value::Int(count)) => u32::try_from(*count).unwrap_or(u32::MAX),
        _ => 1,
    }
}
