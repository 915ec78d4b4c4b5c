//! What travels through a broker: an outgoing [`Message`], an incoming [`Delivery`], and the broker's
//! [`MessageId`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

/// String properties (headers) of a message. Ordered, so that they print and compare predictably.
pub type Properties = BTreeMap<String, String>;

/// A message to publish, or the content of one that was delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// The body, opaque bytes (JSON for task payloads).
    pub payload: Bytes,
    /// Properties (headers). The framework's own live under the names in [`crate::props`].
    pub properties: Properties,
    /// The ordering and routing key, if any: messages of one key keep their order where the
    /// subscription type promises it.
    pub key: Option<String>,
    /// Deliver no earlier than this time. Backends without broker-side delay declare so in their
    /// [`crate::Capabilities`], and the runtime then holds the delay itself.
    pub deliver_at: Option<SystemTime>,
}

impl Message {
    /// A message with this payload and nothing else set.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Message {
            payload: payload.into(),
            ..Message::default()
        }
    }

    /// Sets one property, returning the message (builder style).
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// Sets the key, returning the message (builder style).
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the earliest delivery time, returning the message (builder style).
    pub fn with_deliver_at(mut self, at: SystemTime) -> Self {
        self.deliver_at = Some(at);
        self
    }

    /// The value of one property.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name).map(String::as_str)
    }
}

/// The identifier a broker gave a stored message. It changes with every republish; the stable,
/// logical id of a message is the [`crate::props::MESSAGE_ID`] property instead.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(IdRepr);

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum IdRepr {
    Number(u64),
    Text(Arc<str>),
}

impl MessageId {
    /// An id that is a number (the embedded broker's sequence numbers).
    pub fn from_u64(n: u64) -> Self {
        MessageId(IdRepr::Number(n))
    }

    /// An id that is text (a stream entry id, an encoded ledger position, …).
    pub fn from_text(text: impl Into<Arc<str>>) -> Self {
        MessageId(IdRepr::Text(text.into()))
    }

    /// The number, if this id is one.
    pub fn as_u64(&self) -> Option<u64> {
        match &self.0 {
            IdRepr::Number(n) => Some(*n),
            IdRepr::Text(_) => None,
        }
    }

    /// The text, if this id is text.
    pub fn as_text(&self) -> Option<&str> {
        match &self.0 {
            IdRepr::Number(_) => None,
            IdRepr::Text(t) => Some(t),
        }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            IdRepr::Number(n) => write!(f, "{n}"),
            IdRepr::Text(t) => f.write_str(t),
        }
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// A message handed to a consumer. It stays unacknowledged until the consumer acks it by [`Self::id`];
/// if the consumer goes away first, the broker delivers it again.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The broker's id of this stored message; what [`crate::Subscription::ack`] takes.
    pub id: MessageId,
    /// The topic it was consumed from, as the task named it.
    pub topic: Arc<str>,
    /// The message itself, shared rather than copied.
    pub message: Arc<Message>,
    /// How many times the broker delivered it before (0 on first delivery). Informational only: it
    /// lives in broker memory on some backends and resets when the broker restarts. The framework
    /// counts attempts in [`crate::props::ATTEMPT`] instead.
    pub redelivery_count: u32,
    /// When the broker stored it, where the backend knows.
    pub publish_time: Option<SystemTime>,
    /// Why the backend could not read this message faithfully, if it could not (a property field
    /// that does not parse, say). The runtime never runs such a message: it dead-letters it as
    /// [`crate::DeadLetterReason::DecodeError`] with this text, keeping what the backend could read
    /// in [`Self::message`].
    pub defect: Option<Arc<str>>,
}

impl Delivery {
    /// The payload bytes.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// The value of one property.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.message.property(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_builders_set_what_they_say() {
        let at = SystemTime::UNIX_EPOCH;
        let m = Message::new("x")
            .with_property("a", "1")
            .with_key("k")
            .with_deliver_at(at);
        assert_eq!(m.payload, Bytes::from_static(b"x"));
        assert_eq!(m.property("a"), Some("1"));
        assert_eq!(m.key.as_deref(), Some("k"));
        assert_eq!(m.deliver_at, Some(at));
    }

    #[test]
    fn message_ids_display_and_compare() {
        assert_eq!(MessageId::from_u64(7).to_string(), "7");
        assert_eq!(MessageId::from_text("1-0").to_string(), "1-0");
        assert_eq!(MessageId::from_u64(7).as_u64(), Some(7));
        assert_eq!(MessageId::from_text("1-0").as_text(), Some("1-0"));
        assert_ne!(MessageId::from_u64(1), MessageId::from_text("1"));
    }
}
