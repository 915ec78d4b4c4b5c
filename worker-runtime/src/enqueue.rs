//! Typed publishing of task messages: `my_task::enqueue(&broker, &payload)` and its builder form
//! `my_task::message(&payload).delay(..).key(..).auth_token(..).send(&broker)`.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use worker_core::{props, Broker, BrokerError, Message, MessageId, Topic};

use crate::task::Task;

/// Why a task message could not be enqueued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The payload could not be encoded as JSON.
    #[error("cannot encode the payload of task `{task}` as JSON")]
    Encode {
        /// The task.
        task: &'static str,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// The broker did not accept the message.
    #[error("cannot publish a message of task `{task}` to `{topic}`")]
    Publish {
        /// The task.
        task: &'static str,
        /// The topic.
        topic: String,
        /// The broker's error.
        #[source]
        source: BrokerError,
    },
}

/// Payload types a task's `enqueue` accepts: exactly the task's own payload type. A trait rather than
/// a plain parameter type so that a payload type that is not `Serialize` fails only where it is
/// enqueued, not where the task is declared.
#[doc(hidden)]
pub trait EncodeAs<P> {
    /// Encodes as JSON.
    fn encode_json(&self) -> Result<Vec<u8>, serde_json::Error>;
}

impl<P: Serialize> EncodeAs<P> for P {
    fn encode_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// `my_task::enqueue(&broker, "text")` for a task whose payload is a `String`.
impl EncodeAs<String> for str {
    fn encode_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// `my_task::enqueue(&broker, &items[..])` for a task whose payload is a `Vec`.
impl<T: Serialize> EncodeAs<Vec<T>> for [T] {
    fn encode_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// A task message being built; `send` publishes it to the task's topic.
#[must_use = "an Enqueue does nothing until `.send(&broker)` is awaited"]
pub struct Enqueue<T: Task> {
    payload: Result<Bytes, serde_json::Error>,
    message: Message,
    topic: Option<Topic>,
    task: PhantomData<fn() -> T>,
}

impl<T: Task> Enqueue<T> {
    /// A message carrying this payload, with a fresh stable message id.
    pub fn new<P: EncodeAs<T::Payload> + ?Sized>(payload: &P) -> Self {
        let message = Message::default()
            .with_property(props::MESSAGE_ID, uuid::Uuid::new_v4().to_string())
            .with_property(props::TASK, T::NAME)
            .with_property(
                props::ENQUEUED_AT,
                unix_millis(SystemTime::now()).to_string(),
            );
        Enqueue {
            payload: payload.encode_json().map(Bytes::from),
            message,
            topic: None,
            task: PhantomData,
        }
    }

    /// Deliver no earlier than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.message.deliver_at = Some(SystemTime::now() + delay);
        self
    }

    /// Deliver no earlier than `at`.
    pub fn deliver_at(mut self, at: SystemTime) -> Self {
        self.message.deliver_at = Some(at);
        self
    }

    /// The ordering key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.message.key = Some(key.into());
        self
    }

    /// An application property.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.message.properties.insert(name.into(), value.into());
        self
    }

    /// The signed token that names the sender and its roles (needed by db tasks).
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.message
            .properties
            .insert(props::AUTH_TOKEN.to_owned(), token.into());
        self
    }

    /// Use this stable message id instead of a fresh one (for idempotent re-sends).
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.message
            .properties
            .insert(props::MESSAGE_ID.to_owned(), id.into());
        self
    }

    /// Ask the worker to publish the handler's JSON result to this topic.
    pub fn reply_to(mut self, topic: &Topic) -> Self {
        self.message
            .properties
            .insert(props::REPLY_TO.to_owned(), topic.to_string());
        self
    }

    /// Publish to this topic instead of the task's configured one (when a worker's configuration
    /// file moved the task).
    pub fn to_topic(mut self, topic: Topic) -> Self {
        self.topic = Some(topic);
        self
    }

    /// The stable message id this message will carry.
    pub fn id(&self) -> &str {
        self.message.property(props::MESSAGE_ID).unwrap_or_default()
    }

    /// The message as it would be published, or the encoding error.
    pub fn into_message(self) -> Result<Message, EnqueueError> {
        let payload = self.payload.map_err(|source| EnqueueError::Encode {
            task: T::NAME,
            source,
        })?;
        Ok(Message {
            payload,
            ..self.message
        })
    }

    /// Publishes the message; resolves once the broker confirmed it.
    pub async fn send(mut self, broker: &dyn Broker) -> Result<MessageId, EnqueueError> {
        let topic = match self.topic.take() {
            Some(topic) => Cow::Owned(topic),
            None => T::topic(),
        };
        let message = self.into_message()?;
        broker
            .publish(&topic, message)
            .await
            .map_err(|source| EnqueueError::Publish {
                task: T::NAME,
                topic: topic.to_string(),
                source,
            })
    }
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub(crate) fn unix_millis(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
