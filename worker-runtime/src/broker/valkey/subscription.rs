//! One consumer of a consumer group.
//!
//! Every delivery this consumer has in its hands is *held*: either buffered here (read or claimed
//! but not yet returned by `receive`) or handed out (returned, not yet acked or nacked). Everything
//! held is in this consumer's pending entries list (PEL) on the server, and a background keeper
//! renews the lease on all of it.
//!
//! Cancel safety: a `receive` dropped while its `XREADGROUP` was in flight may have made the server
//! add entries to this consumer's PEL whose reply nobody reads. The read marks the reader *dirty*
//! before it starts and clean only once the reply is buffered; the next `receive` on a dirty reader
//! drops that connection (it may still be blocked on the server) and re-reads the consumer's own
//! PEL from ID `0`, buffering every entry it does not already hold. A read that fails because the
//! connection broke is recovered the same way, and so is a consumer restarted under the same name.
//!
//! Redelivery counts are the server's per-entry delivery counters (minus one): 0 for a fresh read,
//! read with `XPENDING` for entries recovered or claimed, and raised by one on nack.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use worker_core::{
    BoxFuture, BrokerError, ConsumerType, Delivery, InitialPosition, MessageId, SubscribeOptions,
    Subscription,
};

use super::codec::{self, RawEntry};
use super::ownership::{Attempt, Ownership};
use super::{bad_reply, delayed, redis_code, scripts, with_timeout, Shared, TopicKeys, BACKEND};

/// The first and the longest pause before a `receive` tries again after connection trouble.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// A subscription of the Valkey backend: one named member of a consumer group.
pub(super) struct ValkeySubscription {
    inner: Arc<Inner>,
    keeper: tokio::task::JoinHandle<()>,
}

struct Inner {
    shared: Arc<Shared>,
    keys: TopicKeys,
    topic: Arc<str>,
    group: String,
    consumer: String,
    /// The subscription's `receiver_queue_size`: how many deliveries may wait in the buffer. As
    /// with Pulsar's receiver queue, deliveries handed out and not yet acked do not count: the
    /// caller bounds those by how much it takes.
    prefetch: usize,
    local: Mutex<Local>,
    reader: tokio::sync::Mutex<Reader>,
    /// A read ahead is running (see [`Inner::hand_out`]).
    reading_ahead: AtomicBool,
    /// When a blocking read last moved due delayed messages.
    last_due_check: Mutex<Option<Instant>>,
    closed: CancellationToken,
    /// For failover and exclusive subscriptions: whether this consumer is the active one.
    ownership: Option<Ownership>,
}

#[derive(Default)]
struct Local {
    buffer: VecDeque<Delivery>,
    held: HashMap<Arc<str>, Held>,
}

enum Held {
    Buffered,
    Handed(Delivery),
}

struct Reader {
    /// The connection for blocking reads, opened on demand.
    connection: Option<MultiplexedConnection>,
    /// This consumer's PEL may hold entries that are not held here.
    dirty: bool,
}

impl ValkeySubscription {
    /// Joins (creating it if needed) the consumer group `options.subscription` on the topic's
    /// stream, as consumer `options.consumer_name`.
    pub(super) async fn open(
        shared: Arc<Shared>,
        options: SubscribeOptions,
    ) -> Result<Self, BrokerError> {
        let keys = TopicKeys::of(&options.topic);
        let start = match options.initial_position {
            InitialPosition::Latest => "$",
            InitialPosition::Earliest => "0",
        };
        shared
            .ensure_group(&keys.stream, &options.subscription, start)
            .await?;
        let ownership = match options.consumer_type {
            ConsumerType::Failover | ConsumerType::Exclusive => Some(Ownership::new(
                &keys,
                &options.subscription,
                &options.consumer_name,
            )),
            ConsumerType::Shared | ConsumerType::KeyShared => None,
        };
        shared.register(&keys);
        let inner = Arc::new(Inner {
            shared,
            keys,
            topic: Arc::from(options.topic.to_string()),
            group: options.subscription,
            consumer: options.consumer_name,
            prefetch: options.receiver_queue_size.max(1),
            local: Mutex::new(Local::default()),
            // Dirty from the start: a consumer restarted under the same name gets back what its
            // previous run held, at once rather than after the visibility timeout.
            reader: tokio::sync::Mutex::new(Reader {
                connection: None,
                dirty: true,
            }),
            reading_ahead: AtomicBool::new(false),
            last_due_check: Mutex::new(None),
            closed: CancellationToken::new(),
            ownership,
        });
        if let Some(ownership) = &inner.ownership {
            // Become the active consumer at once if nobody is; a standby waits for the keeper.
            match ownership.attempt(&inner.shared).await? {
                Attempt::Owner => inner.take_over(ownership).await?,
                Attempt::HeldBy(holder) if options.consumer_type == ConsumerType::Exclusive => {
                    let holder = holder.split_once('@').map_or(&*holder, |(_, name)| name);
                    return Err(BrokerError::Rejected {
                        backend: BACKEND,
                        reason: format!(
                            "exclusive subscription `{}` on `{}` already has consumer `{holder}`",
                            inner.group, inner.topic
                        ),
                    });
                }
                Attempt::HeldBy(_) => {}
            }
        }
        let keeper = tokio::spawn(keep(Arc::clone(&inner)));
        Ok(ValkeySubscription { inner, keeper })
    }
}

impl Drop for ValkeySubscription {
    fn drop(&mut self) {
        // Dropped without close, like a consumer that died: what it held is taken over by others
        // after the visibility timeout, since nothing renews its lease any more.
        self.inner.closed.cancel();
        self.keeper.abort();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.unregister(&self.keys);
    }
}

impl Subscription for ValkeySubscription {
    fn receive(&self, max: usize) -> BoxFuture<'_, Result<Vec<Delivery>, BrokerError>> {
        Box::pin(Inner::receive(&self.inner, max.max(1)))
    }

    fn ack(&self, ids: Vec<MessageId>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(self.inner.ack(ids))
    }

    fn nack(&self, ids: Vec<MessageId>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(self.inner.nack(ids))
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.inner.closed.cancel();
            self.keeper.abort();
            self.inner.close().await
        })
    }

    /// The group's `lag` (entries not delivered to it yet) plus its pending entries, from
    /// `XINFO GROUPS`; `None` when the server cannot tell the lag (after entries were deleted
    /// from the middle of the stream).
    fn backlog(&self) -> BoxFuture<'_, Result<Option<u64>, BrokerError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("XINFO");
            cmd.arg("GROUPS").arg(&self.inner.keys.stream);
            let reply: redis::Value = self.inner.shared.query("backlog", &cmd).await?;
            Ok(codec::group_backlog(&reply, &self.inner.group))
        })
    }

    /// Closes, then deletes the consumer group (`XGROUP DESTROY`) with its pending entries. A
    /// stream cannot tell whether other consumers of the group still run: call it on groups of
    /// one consumer only.
    fn unsubscribe(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.close().await?;
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("DESTROY")
                .arg(&self.inner.keys.stream)
                .arg(&self.inner.group);
            self.inner
                .shared
                .query::<i64>("delete the consumer group", &cmd)
                .await
                .map(drop)
        })
    }
}

impl Inner {
    async fn receive(self: &Arc<Self>, max: usize) -> Result<Vec<Delivery>, BrokerError> {
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

    async fn recreate_group(&self) -> Result<(), BrokerError> {
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
    fn is_standby(&self) -> bool {
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
        let mut connection = match &reader.connection {
            Some(connection) => connection.clone(),
            None => {
                let connection = self.shared.dedicated_connection().await?;
                reader.connection = Some(connection.clone());
                connection
            }
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
        let read = with_timeout("receive", limit, cmd.query_async::<Value>(&mut connection));
        let reply = tokio::select! {
            () = self.closed.cancelled() => return Err(BrokerError::Closed(BACKEND)),
            reply = read => reply?,
        };
        let entries = codec::read_reply(reply).map_err(|e| bad_reply("receive", e))?;
        let fresh = entries
            .into_iter()
            .filter_map(|RawEntry { id, fields }| fields.map(|f| (id, f, 0)))
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
    async fn buffer_with_counts(&self, entries: Vec<RawEntry>) -> Result<(), BrokerError> {
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
                fields.map(|f| (id, f, count.saturating_sub(1)))
            })
            .collect();
        self.buffer(with_counts);
        Ok(())
    }

    /// Decodes entries into the back of the buffer, skipping any already held.
    #[allow(clippy::type_complexity)]
    fn buffer(&self, entries: Vec<(String, Vec<(Vec<u8>, Vec<u8>)>, u32)>) {
        // Decoded before locking, so that handing out is never held up by decoding.
        let decoded: Vec<(Arc<str>, Delivery)> = entries
            .into_iter()
            .map(|(id, fields, redelivery_count)| {
                let id: Arc<str> = Arc::from(id);
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

    async fn xack(&self, ids: &[impl redis::ToRedisArgs]) -> Result<(), BrokerError> {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&self.keys.stream).arg(&self.group).arg(ids);
        self.shared.query::<i64>("ack", &cmd).await.map(drop)
    }

    async fn ack(&self, ids: Vec<MessageId>) -> Result<(), BrokerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let keys: Vec<Cow<'_, str>> = ids.iter().map(held_text).collect();
        let texts: Vec<&str> = keys.iter().map(|k| k.as_ref()).collect();
        let acked = self.xack(&texts).await;
        let released: Vec<Held> = {
            let mut local = self.local.lock();
            let mut released = Vec::with_capacity(texts.len());
            let mut unbuffer = false;
            for text in &texts {
                if let Some(held) = local.held.remove(*text) {
                    unbuffer |= matches!(held, Held::Buffered);
                    released.push(held);
                }
            }
            if unbuffer {
                let Local { buffer, held } = &mut *local;
                buffer.retain(|d| held.contains_key(held_text(&d.id).as_ref()));
            }
            released
        };
        // Their messages are freed here, not while the buffer is locked.
        drop(released);
        // On failure the entries are forgotten all the same: no longer renewed, they are
        // reclaimed after the visibility timeout and delivered again (at least once), instead of
        // staying pending with this consumer for as long as it lives.
        acked
    }

    async fn nack(&self, ids: Vec<MessageId>) -> Result<(), BrokerError> {
        // Give them back to this consumer's buffer at once (they stay in its PEL), in order.
        let requeued: Vec<Delivery> = {
            let mut local = self.local.lock();
            let mut requeued = Vec::new();
            for id in &ids {
                let key = held_key(id);
                if let Some(held) = local.held.get_mut(&key) {
                    if let Held::Handed(delivery) = std::mem::replace(held, Held::Buffered) {
                        requeued.push(Delivery {
                            redelivery_count: delivery.redelivery_count.saturating_add(1),
                            ..delivery
                        });
                    }
                }
            }
            for delivery in requeued.iter().rev() {
                local.buffer.push_front(delivery.clone());
            }
            requeued
        };
        if requeued.is_empty() {
            return Ok(());
        }
        // Keep the server's delivery counter in step (the counter is the count plus one).
        let mut pipe = redis::pipe();
        for delivery in &requeued {
            pipe.cmd("XCLAIM")
                .arg(&self.keys.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(0)
                .arg(delivery.id.to_string())
                .arg("RETRYCOUNT")
                .arg(delivery.redelivery_count.saturating_add(1))
                .arg("JUSTID")
                .ignore();
        }
        if let Err(error) = self
            .shared
            .pipeline::<()>("count a redelivery", &pipe)
            .await
        {
            // The deliveries are back in the buffer either way; only the counter lags.
            tracing::debug!(%error, "valkey could not raise the delivery counter on nack");
        }
        Ok(())
    }

    async fn close(&self) -> Result<(), BrokerError> {
        // Waits for a receive in flight, which sees `closed` and returns.
        let mut reader = self.reader.lock().await;
        reader.connection = None;
        *self.local.lock() = Local::default();
        if let Some(ownership) = &self.ownership {
            if let Err(error) = ownership.release(&self.shared).await {
                // A standby takes over when the lock expires instead.
                tracing::warn!(stream = %self.keys.stream, %error,
                    "valkey could not give up the subscription's ownership");
            }
        }
        let mut invocation = scripts::RELEASE.prepare_invoke();
        invocation
            .key(&self.keys.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(millis(self.shared.options.visibility_timeout));
        match self
            .shared
            .invoke::<u64>("release on close", &invocation)
            .await
        {
            Ok(released) => {
                if released > 0 {
                    tracing::debug!(stream = %self.keys.stream, released,
                        "valkey gave unacked deliveries back on close");
                }
            }
            Err(error) => {
                // They still come back, after the visibility timeout.
                tracing::warn!(stream = %self.keys.stream, %error,
                    "valkey could not give deliveries back on close");
            }
        }
        Ok(())
    }

    /// Resets the idle time of everything held that this consumer still owns on the server, and
    /// forgets what it no longer owns (a buffered entry taken over elsewhere is not delivered).
    async fn renew(&self) -> Result<(), BrokerError> {
        let ids: Vec<Arc<str>> = self.local.lock().held.keys().cloned().collect();
        for chunk in ids.chunks(500) {
            let mut invocation = scripts::RENEW.prepare_invoke();
            invocation
                .key(&self.keys.stream)
                .arg(&self.group)
                .arg(&self.consumer);
            for id in chunk {
                invocation.arg(&**id);
            }
            let lost: Vec<String> = self.shared.invoke("renew leases", &invocation).await?;
            if lost.is_empty() {
                continue;
            }
            let mut local = self.local.lock();
            let mut unbuffer = false;
            for id in lost {
                match local.held.remove(id.as_str()) {
                    Some(Held::Buffered) => unbuffer = true,
                    Some(Held::Handed(_)) => {
                        // Acked by a receive whose ack future was dropped, or taken over by
                        // another consumer: either way no longer this consumer's to renew.
                        tracing::debug!(entry = %id, "valkey delivery no longer held here");
                    }
                    None => {}
                }
            }
            if unbuffer {
                let Local { buffer, held } = &mut *local;
                buffer.retain(|d| held.contains_key(held_text(&d.id).as_ref()));
            }
        }
        Ok(())
    }

    /// Claims entries that dead consumers left idle past the visibility timeout, while the buffer
    /// has room. `cursor` carries the scan position from one sweep to the next.
    async fn claim_abandoned(&self, cursor: &mut String) -> Result<(), BrokerError> {
        let options = &self.shared.options;
        for _ in 0..10 {
            let room = self.prefetch.saturating_sub(self.local.lock().buffer.len());
            if room == 0 {
                return Ok(());
            }
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(&self.keys.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(millis(options.visibility_timeout))
                .arg(&*cursor)
                .arg("COUNT")
                .arg(room.min(options.batch_size.max(1)));
            let reply: Value = self.shared.query("claim abandoned", &cmd).await?;
            let (next, entries) =
                codec::autoclaim_reply(reply).map_err(|e| bad_reply("claim abandoned", e))?;
            let fresh: Vec<RawEntry> = {
                let local = self.local.lock();
                entries
                    .into_iter()
                    .filter(|e| e.fields.is_some() && !local.held.contains_key(e.id.as_str()))
                    .collect()
            };
            if !fresh.is_empty() {
                tracing::debug!(stream = %self.keys.stream, consumer = %self.consumer,
                    claimed = fresh.len(), "valkey claimed abandoned deliveries");
            }
            self.buffer_with_counts(fresh).await?;
            *cursor = next;
            if cursor == "0-0" {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The keeper: keeps or seeks ownership (failover, exclusive), renews leases and claims
/// abandoned entries, every quarter of the visibility timeout, until the subscription closes or
/// drops.
async fn keep(inner: Arc<Inner>) {
    let period = (inner.shared.options.visibility_timeout / 4)
        .clamp(Duration::from_millis(20), Duration::from_secs(5));
    let mut cursor = "0-0".to_owned();
    loop {
        tokio::select! {
            () = inner.closed.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        if let Some(ownership) = &inner.ownership {
            inner.keep_ownership(ownership).await;
        }
        if let Err(error) = inner.renew().await {
            tracing::debug!(stream = %inner.keys.stream, %error, "valkey lease renewal failed");
        }
        if inner.is_standby() {
            // A standby must not take deliveries it may not hand out.
            continue;
        }
        match inner.claim_abandoned(&mut cursor).await {
            Ok(()) => {}
            Err(error) if redis_code(&error) == Some("NOGROUP") => {
                if let Err(error) = inner.recreate_group().await {
                    tracing::debug!(%error, "valkey could not create the consumer group");
                }
            }
            Err(error) => {
                tracing::debug!(stream = %inner.keys.stream, %error, "valkey claim sweep failed");
            }
        }
    }
}

impl Inner {
    /// Renews this consumer's ownership, takes it when free, or steps down when another consumer
    /// holds it.
    async fn keep_ownership(&self, ownership: &Ownership) {
        match ownership.attempt(&self.shared).await {
            Ok(Attempt::Owner) if ownership.is_active() => {}
            Ok(Attempt::Owner) => {
                if let Err(error) = self.take_over(ownership).await {
                    tracing::warn!(stream = %self.keys.stream, %error,
                        "valkey could not take over the subscription; will retry");
                }
            }
            Ok(Attempt::HeldBy(holder)) => {
                if ownership.is_active() {
                    tracing::warn!(stream = %self.keys.stream, group = %self.group, %holder,
                        "valkey subscription ownership lost to another consumer");
                    ownership.set_active(false);
                    // What waits in the buffer stays pending; the new owner claims it.
                    let mut local = self.local.lock();
                    let Local { buffer, held } = &mut *local;
                    for delivery in buffer.drain(..) {
                        held.remove(&held_key(&delivery.id));
                    }
                }
            }
            // Unknown: the lock's TTL decides, and the next attempt tells.
            Err(error) => {
                tracing::debug!(stream = %self.keys.stream, %error, "valkey ownership check failed");
            }
        }
    }

    /// Becomes the active consumer: first claims everything pending in the group, older than
    /// anything unread, so that it is delivered first and in order.
    async fn take_over(&self, ownership: &Ownership) -> Result<(), BrokerError> {
        let batch = self.shared.options.batch_size.max(1);
        let mut cursor = "0-0".to_owned();
        loop {
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(&self.keys.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(0)
                .arg(&cursor)
                .arg("COUNT")
                .arg(batch);
            let reply: Value = self.shared.query("take over pending", &cmd).await?;
            let (next, entries) =
                codec::autoclaim_reply(reply).map_err(|e| bad_reply("take over pending", e))?;
            let entries = entries.into_iter().filter(|e| e.fields.is_some()).collect();
            self.buffer_with_counts(entries).await?;
            if next == "0-0" {
                break;
            }
            cursor = next;
        }
        tracing::debug!(stream = %self.keys.stream, group = %self.group, consumer = %self.consumer,
            "valkey consumer is now the subscription's active one");
        ownership.set_active(true);
        Ok(())
    }
}

/// The key under which a delivery is held.
fn held_key(id: &MessageId) -> Arc<str> {
    Arc::from(held_text(id).as_ref())
}

/// The text of that key, borrowed where it can be (entry ids are always text).
fn held_text(id: &MessageId) -> Cow<'_, str> {
    match id.as_text() {
        Some(text) => Cow::Borrowed(text),
        None => Cow::Owned(id.to_string()),
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

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
