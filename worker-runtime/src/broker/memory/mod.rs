//! The embedded in-process broker, the default backend: `cargo run` and `cargo test` need nothing
//! installed.
//!
//! It behaves like a small, non-durable Pulsar:
//! - Topics are created on first use. Publishing stores the message and returns a per-topic
//!   sequence number as its id.
//! - Named subscriptions each see every message; the consumers of one subscription share them by
//!   [`ConsumerType`]: `Shared` (each message to one consumer; consumers receiving at the same
//!   time split a backlog, idle ones are woken in turn), `KeyShared` (one key to one consumer, in
//!   order), `Failover` (one active consumer, the others take over in attach order) and
//!   `Exclusive` (a second consumer is rejected).
//! - A message stays until every subscription acknowledged it. Without any subscription the topic
//!   keeps what is published, so a later `Earliest` subscription sees it; a `Latest` one starts
//!   after. Subscriptions outlive their consumers and keep collecting a backlog, until
//!   [`MemoryBroker::unsubscribe`].
//! - Nacked deliveries, those of a consumer that closes or is dropped, and (with
//!   [`MemoryBrokerOptions::ack_timeout`]) those left unacknowledged too long are delivered again,
//!   before newer messages, with their redelivery count raised.
//! - A message whose `deliver_at` lies ahead waits on tokio's clock, then joins the topic as if it
//!   were published at that moment (so a subscription created meanwhile gets it too).
//! - Each consumer holds at most its `receiver_queue_size` deliveries unacknowledged; `receive`
//!   waits while it is full. `receive(0)` is taken as `receive(1)`.
//!
//! Cost: one lock acquisition per publish, per `receive` batch and per `ack`/`nack` batch, and no
//! allocation per message beyond the shared `Arc<Message>` (plus the boxed future every
//! [`Broker`] call returns). A waiting consumer is woken only when something is there for it.
//!
//! Layout: [`MemoryBroker`] (this file) owns the topics, which `registry` finds by name; `topic`
//! keeps one topic's state under its lock: its message `log`, its `delay`ed messages, and the
//! dispatch state of each `subscription`; `consumer` is the handle a consumer receives through.

mod consumer;
mod delay;
mod hash;
mod log;
mod registry;
mod stats;
mod subscription;
mod topic;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use worker_core::{
    BoxFuture, Broker, BrokerError, Capabilities, ConsumerType, DelayedDelivery, Message,
    MessageId, SubscribeOptions, Subscription, Topic, DEFAULT_MAX_PAYLOAD_BYTES,
};

use self::consumer::MemorySubscription;
use self::registry::TopicRegistry;
use self::topic::{Limits, TopicShared};

pub use self::stats::{SubscriptionStats, TopicStats};

/// The backend name in errors and metrics.
const BACKEND: &str = "memory";

/// Limits and timers of a [`MemoryBroker`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryBrokerOptions {
    /// How many messages one topic may retain before publishing fails with
    /// [`BrokerError::Full`]. With subscriptions, the largest subscription backlog counts
    /// (unread, unacknowledged or delayed); without any, every message the topic holds.
    pub max_retained_per_topic: usize,
    /// The largest payload accepted; a larger one fails with [`BrokerError::Rejected`].
    pub max_payload_bytes: usize,
    /// Deliveries left unacknowledged this long go back to their subscription and are delivered
    /// again. `None` (the default) waits for an ack, a nack or the consumer going away.
    pub ack_timeout: Option<Duration>,
}

impl MemoryBrokerOptions {
    /// The default of [`Self::max_retained_per_topic`].
    pub const DEFAULT_MAX_RETAINED_PER_TOPIC: usize = 1_000_000;
}

impl Default for MemoryBrokerOptions {
    fn default() -> Self {
        MemoryBrokerOptions {
            max_retained_per_topic: Self::DEFAULT_MAX_RETAINED_PER_TOPIC,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            ack_timeout: None,
        }
    }
}

/// The embedded in-process broker. Cheap to clone: clones share the same topics.
///
/// ```
/// use worker_runtime::broker::MemoryBroker;
/// use worker_runtime::{Broker, ConsumerType, InitialPosition, Message, SubscribeOptions, Topic};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), worker_runtime::BrokerError> {
/// let broker = MemoryBroker::new();
/// let topic = Topic::parse("q1/demo/ns/jobs").expect("valid topic");
/// broker.publish(&topic, Message::new("hello")).await?;
/// let subscription = broker
///     .subscribe(SubscribeOptions {
///         topic: topic.clone(),
///         subscription: "workers".into(),
///         consumer_name: "worker-1".into(),
///         consumer_type: ConsumerType::Shared,
///         initial_position: InitialPosition::Earliest,
///         receiver_queue_size: 100,
///     })
///     .await?;
/// let batch = subscription.receive(10).await?;
/// assert_eq!(batch[0].payload().as_ref(), b"hello");
/// subscription.ack(batch.into_iter().map(|d| d.id).collect()).await?;
/// assert_eq!(broker.backlog(&topic, "workers"), Some(0));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    options: MemoryBrokerOptions,
    /// Topics by name. `Topic` equality is equality of the written form (`Display` is one-to-one),
    /// and looking up by `Topic` spares formatting a string on every publish.
    topics: RwLock<TopicRegistry>,
}

impl MemoryBroker {
    /// A broker with the default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// A broker with these options.
    pub fn with_options(options: MemoryBrokerOptions) -> Self {
        MemoryBroker {
            inner: Arc::new(Inner {
                options,
                topics: RwLock::default(),
            }),
        }
    }

    /// The options it was created with.
    pub fn options(&self) -> &MemoryBrokerOptions {
        &self.inner.options
    }

    /// A snapshot of a topic, or `None` if it was never used.
    pub fn stats(&self, topic: &Topic) -> Option<TopicStats> {
        Some(self.existing(topic)?.stats())
    }

    /// How many messages a subscription has not acknowledged yet (including delayed ones that will
    /// reach it), or `None` if there is no such subscription.
    pub fn backlog(&self, topic: &Topic, subscription: &str) -> Option<usize> {
        self.existing(topic)?.backlog(subscription)
    }

    /// The messages a topic retains, without consuming them: in topic order, then the delayed
    /// ones by due time. Handy to read a dead-letter topic nobody subscribes to.
    pub fn peek(&self, topic: &Topic) -> Vec<Arc<Message>> {
        self.existing(topic).map_or_else(Vec::new, |t| t.peek())
    }

    /// Removes a subscription and drops its backlog. Fails with [`BrokerError::Rejected`] while a
    /// consumer is attached; returns whether the subscription existed.
    pub fn unsubscribe(&self, topic: &Topic, subscription: &str) -> Result<bool, BrokerError> {
        match self.existing(topic) {
            Some(t) => t.unsubscribe(subscription),
            None => Ok(false),
        }
    }

    fn existing(&self, topic: &Topic) -> Option<Arc<TopicShared>> {
        self.inner.topics.read().get(topic).cloned()
    }

    /// Runs `f` on a topic, creating it on first use. The common case holds only the read lock
    /// and touches no reference count.
    fn with_topic<R>(&self, topic: &Topic, f: impl FnOnce(&TopicShared) -> R) -> R {
        if let Some(shared) = self.inner.topics.read().get(topic) {
            return f(shared);
        }
        f(&self.create(topic))
    }

    /// The topic, created on first use.
    fn topic(&self, topic: &Topic) -> Arc<TopicShared> {
        match self.existing(topic) {
            Some(shared) => shared,
            None => self.create(topic),
        }
    }

    fn create(&self, topic: &Topic) -> Arc<TopicShared> {
        let limits = self.limits();
        let mut topics = self.inner.topics.write();
        let shared =
            topics.get_or_insert_with(topic, || TopicShared::new(topic.to_string().into(), limits));
        Arc::clone(shared)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_retained: self.inner.options.max_retained_per_topic,
            ack_timeout: self.inner.options.ack_timeout,
        }
    }

    fn publish_now(&self, topic: &Topic, message: Message) -> Result<MessageId, BrokerError> {
        let limit = self.inner.options.max_payload_bytes;
        if message.payload.len() > limit {
            return Err(BrokerError::Rejected {
                backend: BACKEND,
                reason: format!(
                    "payload of {} bytes exceeds the limit of {limit} bytes",
                    message.payload.len()
                ),
            });
        }
        let publish_time = SystemTime::now();
        let due = message
            .deliver_at
            .and_then(|at| delay::due_instant(at, publish_time));
        let message = Arc::new(message);
        self.with_topic(topic, |shared| shared.publish(message, publish_time, due))
            .map(MessageId::from_u64)
    }
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("options", &self.inner.options)
            .field("topics", &self.inner.topics.read().len())
            .finish()
    }
}

impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: false,
            delayed_delivery: DelayedDelivery::Native,
            history: true,
            consumer_types: &[
                ConsumerType::Shared,
                ConsumerType::KeyShared,
                ConsumerType::Failover,
                ConsumerType::Exclusive,
            ],
            key_ordering: true,
            nack_redelivery: true,
            redelivers_abandoned: true,
            max_payload_bytes: Some(self.inner.options.max_payload_bytes),
        }
    }

    fn publish<'a>(
        &'a self,
        topic: &'a Topic,
        message: Message,
    ) -> BoxFuture<'a, Result<MessageId, BrokerError>> {
        Box::pin(async move { self.publish_now(topic, message) })
    }

    fn subscribe<'a>(
        &'a self,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, BrokerError>> {
        Box::pin(async move {
            if options.subscription.is_empty() {
                return Err(BrokerError::Rejected {
                    backend: BACKEND,
                    reason: "the subscription name is empty".to_owned(),
                });
            }
            let topic = self.topic(&options.topic);
            let (sub, key, notify) = topic.subscribe(&options)?;
            let subscription: Box<dyn Subscription> =
                Box::new(MemorySubscription::new(topic, sub, key, notify));
            Ok(subscription)
        })
    }
}
