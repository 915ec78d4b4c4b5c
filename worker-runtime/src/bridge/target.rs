//! Where a route writes: a [`Target`] takes an item's message and resolves once the other side
//! confirmed it.

use std::sync::Arc;

use worker_core::{BoxFuture, Broker, BrokerError, Topic};

use super::source::Item;

/// Where a route writes to.
pub trait Target: Send + Sync {
    /// What the target is, for logs.
    fn describe(&self) -> String;

    /// Publishes the item's message; resolves once the target confirmed it.
    fn publish<'a>(&'a self, item: &'a Item) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The largest payload the target takes, if it has a limit.
    fn max_payload_bytes(&self) -> Option<usize> {
        None
    }
}

/// A topic on any backend (or the topic each item names, for Celery-source routes).
pub struct TopicTarget {
    broker: Arc<dyn Broker>,
    topic: Option<Topic>,
}

impl TopicTarget {
    /// Publishes to `topic` on `broker`; with `None`, to the topic each item names.
    pub fn new(broker: Arc<dyn Broker>, topic: Option<Topic>) -> Self {
        TopicTarget { broker, topic }
    }
}

impl Target for TopicTarget {
    fn describe(&self) -> String {
        match &self.topic {
            Some(topic) => format!("{} on {}", topic, self.broker.name()),
            None => format!("the mapped topics on {}", self.broker.name()),
        }
    }

    fn publish<'a>(&'a self, item: &'a Item) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let Some(topic) = item.topic.as_ref().or(self.topic.as_ref()) else {
                return Err(BrokerError::Rejected {
                    backend: self.broker.name(),
                    reason: "the message names no topic and the route has none".to_owned(),
                });
            };
            self.broker
                .publish(topic, item.message.clone())
                .await
                .map(drop)
        })
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        self.broker.capabilities().max_payload_bytes
    }
}
