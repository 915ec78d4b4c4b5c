//! The one trait pair every backend implements: [`Broker`] publishes and opens [`Subscription`]s.

use std::future::Future;
use std::pin::Pin;

use crate::error::BrokerError;
use crate::message::{Delivery, Message, MessageId};
use crate::topic::Topic;

/// A boxed, sendable future: what the object-safe broker traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How the consumers of one subscription share its messages.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerType {
    /// Each message goes to one of the consumers, round robin; no order.
    #[default]
    Shared,
    /// Like shared, but all messages of one key go to the same consumer, in order.
    KeyShared,
    /// One active consumer; the others take over when it goes away. Ordered.
    Failover,
    /// Only one consumer may attach. Ordered.
    Exclusive,
}

impl ConsumerType {
    /// Whether this type promises order (per key or overall), so retries must happen in place.
    pub fn preserves_order(self) -> bool {
        !matches!(self, ConsumerType::Shared)
    }

    /// The snake_case name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerType::Shared => "shared",
            ConsumerType::KeyShared => "key_shared",
            ConsumerType::Failover => "failover",
            ConsumerType::Exclusive => "exclusive",
        }
    }

    /// Parses the name written by [`Self::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Shared,
            Self::KeyShared,
            Self::Failover,
            Self::Exclusive,
        ]
        .into_iter()
        .find(|t| t.as_str() == text)
    }
}

/// Where a new subscription starts reading.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum InitialPosition {
    /// Only messages published after the subscription was created.
    Latest,
    /// Every message the topic still retains.
    #[default]
    Earliest,
}

impl InitialPosition {
    /// The snake_case name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            InitialPosition::Latest => "latest",
            InitialPosition::Earliest => "earliest",
        }
    }

    /// Parses the name written by [`Self::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "latest" => Some(InitialPosition::Latest),
            "earliest" => Some(InitialPosition::Earliest),
            _ => None,
        }
    }
}

/// What a consumer asks for when it subscribes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The topic to consume.
    pub topic: Topic,
    /// The subscription name; consumers with the same name share its messages.
    pub subscription: String,
    /// This consumer's name, unique per worker process.
    pub consumer_name: String,
    /// How consumers of the subscription share messages.
    pub consumer_type: ConsumerType,
    /// Where a new subscription starts.
    pub initial_position: InitialPosition,
    /// How many messages the backend may hold ready for this consumer before it asks for them
    /// (prefetch). On Pulsar and Valkey deliveries already returned by `receive` and not yet acked
    /// do not count against it; on MQTT, whose receive maximum bounds unacknowledged messages,
    /// they do.
    pub receiver_queue_size: usize,
}

/// How a backend handles [`Message::deliver_at`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayedDelivery {
    /// The broker holds the message until it is due; a waiting message holds no worker resource.
    Native,
    /// The broker ignores the time; the runtime must hold the delay itself.
    Unsupported,
}

/// What a backend can and cannot promise, declared once and checked by the conformance suite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Acknowledged publishes survive a broker restart.
    pub durable: bool,
    /// How `deliver_at` is handled.
    pub delayed_delivery: DelayedDelivery,
    /// A new subscription with [`InitialPosition::Earliest`] sees messages published before it existed.
    pub history: bool,
    /// Consumer types the backend honours.
    pub consumer_types: &'static [ConsumerType],
    /// Messages of one key are delivered in publish order on ordered consumer types.
    pub key_ordering: bool,
    /// Nacked messages come back.
    pub nack_redelivery: bool,
    /// Unacked messages of a consumer that went away are delivered to another.
    pub redelivers_abandoned: bool,
    /// The largest payload the backend accepts, if it has a limit.
    pub max_payload_bytes: Option<usize>,
}

/// A broker: publishes messages and opens subscriptions. One implementation per backend.
///
/// Implementations are cheap to share (`Arc<dyn Broker>`), and every future they return is `Send`.
pub trait Broker: Send + Sync + 'static {
    /// The backend's short name (`memory`, `pulsar`, `valkey`, `mqtt`).
    fn name(&self) -> &'static str;

    /// What this backend can promise.
    fn capabilities(&self) -> Capabilities;

    /// Publishes one message. Resolves once the broker has confirmed it stored the message (for
    /// durable topics) or accepted it (for best-effort ones).
    fn publish<'a>(
        &'a self,
        topic: &'a Topic,
        message: Message,
    ) -> BoxFuture<'a, Result<MessageId, BrokerError>>;

    /// Opens a subscription as one consumer of it.
    fn subscribe<'a>(
        &'a self,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, BrokerError>>;

    /// Whether `request` asks for its result in this backend's own terms (MQTT 5's Response
    /// Topic), beside the framework's `wr-reply-to` that every backend carries. Most backends have
    /// no such thing: the default is `false`.
    fn wants_reply(&self, request: &Message) -> bool {
        let _ = request;
        false
    }

    /// Publishes `reply` where `request` asked for it in this backend's own terms (see
    /// [`Self::wants_reply`]), with whatever the backend sends back to correlate the two.
    fn publish_reply<'a>(
        &'a self,
        request: &'a Message,
        reply: Message,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let _ = (request, reply);
        Box::pin(async move {
            Err(BrokerError::Unsupported {
                backend: self.name(),
                feature: "replies addressed by the backend's own properties".to_owned(),
            })
        })
    }
}

/// One consumer's attachment to a subscription.
///
/// A delivery stays unacknowledged until [`Subscription::ack`]; a nacked one, or any unacked one
/// when the subscription is closed or dropped, is delivered again (to this or another consumer).
pub trait Subscription: Send + Sync {
    /// Waits until at least one message is available and returns up to `max` of them.
    ///
    /// Must be cancel-safe: dropping the future before it resolves loses no message.
    fn receive(&self, max: usize) -> BoxFuture<'_, Result<Vec<Delivery>, BrokerError>>;

    /// Acknowledges deliveries: they will not be delivered again.
    fn ack(&self, ids: Vec<MessageId>) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Gives deliveries back: they will be delivered again soon.
    fn nack(&self, ids: Vec<MessageId>) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Detaches the consumer. Unacked deliveries go back to the subscription.
    fn close(&self) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// How many messages wait for this subscription (published and not acknowledged yet, those
    /// handed out included), where the backend can tell; `None` where it cannot (MQTT), or until
    /// it is configured to (Pulsar needs its admin URL).
    fn backlog(&self) -> BoxFuture<'_, Result<Option<u64>, BrokerError>> {
        Box::pin(async { Ok(None) })
    }

    /// Detaches the consumer and deletes the subscription with its backlog, so the broker keeps
    /// nothing more for it (for short-lived subscriptions such as a replay's). Fails while other
    /// consumers are attached, where the backend can tell. Backends that cannot delete a
    /// subscription say so ([`BrokerError::Unsupported`]), after closing.
    fn unsubscribe(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.close().await?;
            Err(BrokerError::Unsupported {
                backend: "this backend",
                feature: "deleting a subscription".to_owned(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_type_names_round_trip() {
        for t in [
            ConsumerType::Shared,
            ConsumerType::KeyShared,
            ConsumerType::Failover,
            ConsumerType::Exclusive,
        ] {
            assert_eq!(ConsumerType::parse(t.as_str()), Some(t));
        }
        assert!(!ConsumerType::Shared.preserves_order());
        assert!(ConsumerType::KeyShared.preserves_order());
        assert_eq!(
            InitialPosition::parse("latest"),
            Some(InitialPosition::Latest)
        );
        assert_eq!(InitialPosition::parse("first"), None);
    }
}
