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
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use worker_core::{
    BoxFuture, BrokerError, ConsumerType, Delivery, InitialPosition, MessageId, SubscribeOptions,
    Subscription,
};

use super::codec;
use super::ownership::{Attempt, Ownership};
use super::read_connection::ReadConnection;
use super::{Shared, TopicKeys, BACKEND};

mod keeper;
mod read;
mod settle;

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
    connection: Option<ReadConnection>,
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
        let keeper = tokio::spawn(keeper::keep(Arc::clone(&inner)));
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

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
