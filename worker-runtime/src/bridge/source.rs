//! Where a route reads: a [`Source`] hands out [`Item`]s and is told when each is done.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::time::Instant;
use worker_core::{
    props, BoxFuture, BrokerError, DeadLetterReason, Message, MessageId, Subscription, Topic,
};

/// One message read from a source, on its way to the target.
#[derive(Debug)]
pub struct Item {
    /// The message to forward, its stable id set (`wr-message-id`).
    pub message: Message,
    /// How the source knows the item again when it is done.
    pub receipt: Receipt,
    /// The topic this item goes to when the source decides it (a Celery task's mapped topic);
    /// `None` to use the target's own.
    pub topic: Option<Topic>,
    /// Why the item cannot be forwarded, if it cannot: it goes to the route's dead-letter topic.
    pub defect: Option<(DeadLetterReason, String)>,
    /// When the message entered the source, where the source can tell.
    pub published: Option<SystemTime>,
    /// When the route read it.
    pub read_at: Instant,
}

impl Item {
    /// The message's stable id.
    pub fn message_id(&self) -> &str {
        self.message.property(props::MESSAGE_ID).unwrap_or_default()
    }

    /// The ordering key, if any.
    pub fn key(&self) -> Option<&str> {
        self.message.key.as_deref()
    }
}

/// How a source finds an item again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Receipt {
    /// A broker delivery, acked by its id.
    Delivery(MessageId),
    /// A list item, removed from the reader's processing list by its bytes.
    ListItem(Bytes),
}

impl Receipt {
    /// The id shown in a dead-letter copy's `wr-dlq-original-message-id`.
    pub fn shown_id(&self) -> MessageId {
        match self {
            Receipt::Delivery(id) => id.clone(),
            Receipt::ListItem(_) => MessageId::from_text("list-item"),
        }
    }
}

/// Where a route reads from.
pub trait Source: Send + Sync {
    /// What the source is, for logs and dead-letter copies (`q1/t/ns/orders`, `valkey list orders`).
    fn describe(&self) -> String;

    /// Waits for items and returns up to `max` of them. The route keeps the future alive until it
    /// resolves (it need not be cancel-safe).
    fn read(&self, max: usize) -> BoxFuture<'_, Result<Vec<Item>, BrokerError>>;

    /// The items are done: the target confirmed their copies (or the dead-letter topic did).
    fn done(&self, receipts: Vec<Receipt>) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Stops reading; items not done come back to the source (now or when read again).
    fn close(&self) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// How many messages wait in the source, if it can tell.
    fn lag(&self) -> BoxFuture<'_, Result<Option<u64>, BrokerError>> {
        Box::pin(async { Ok(None) })
    }

    /// Whether the source hands out each key's messages in order, so that the route must keep it.
    fn ordered(&self) -> bool {
        false
    }
}

/// A subscription of a topic on any backend.
pub struct TopicSource {
    subscription: Arc<dyn Subscription>,
    topic: Topic,
    ordered: bool,
}

impl TopicSource {
    /// Reads `topic` through `subscription`; `ordered` when its consumer type keeps each key's
    /// order (key_shared, failover, exclusive).
    pub fn new(subscription: Arc<dyn Subscription>, topic: Topic, ordered: bool) -> Self {
        TopicSource {
            subscription,
            topic,
            ordered,
        }
    }
}

impl Source for TopicSource {
    fn describe(&self) -> String {
        self.topic.to_string()
    }

    fn read(&self, max: usize) -> BoxFuture<'_, Result<Vec<Item>, BrokerError>> {
        Box::pin(async move {
            let deliveries = self.subscription.receive(max).await?;
            Ok(deliveries.into_iter().map(Item::from_delivery).collect())
        })
    }

    fn done(&self, receipts: Vec<Receipt>) -> BoxFuture<'_, Result<(), BrokerError>> {
        let ids = receipts
            .into_iter()
            .filter_map(|receipt| match receipt {
                Receipt::Delivery(id) => Some(id),
                Receipt::ListItem(_) => None,
            })
            .collect();
        self.subscription.ack(ids)
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.subscription.close()
    }

    fn lag(&self) -> BoxFuture<'_, Result<Option<u64>, BrokerError>> {
        self.subscription.backlog()
    }

    fn ordered(&self) -> bool {
        self.ordered
    }
}
