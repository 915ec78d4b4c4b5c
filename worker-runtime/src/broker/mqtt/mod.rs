//! The MQTT 5 backend (rumqttc), for brokers such as mosquitto.
//!
//! # Mapping
//!
//! - `q0/…` and `non-persistent://…` publish with QoS 0, `q1/…` and `persistent://…` with QoS 1,
//!   `q2/…` with QoS 2. The MQTT topic is the path `tenant/namespace/name` ([`naming`] has the
//!   exact rules), so the scheme only selects the QoS.
//! - A subscription `s` is the MQTT shared subscription `$share/s/tenant/namespace/name`: each
//!   message goes to one consumer of the group. Other consumer types are not offered.
//! - The payload travels raw; every message property is an MQTT 5 user property, and the key the
//!   user property `wr-mqtt-key` ([`codec`]).
//! - MQTT 5 request/response is honoured: a message that carries a Response Topic (and Correlation
//!   Data) gets its handler's result published there at QoS 1, with the same Correlation Data, as
//!   well as to `wr-reply-to` if it names one. The handler sees them as the properties
//!   `wr-mqtt-response-topic` and `wr-mqtt-correlation-data` (hex).
//! - A message without `wr-message-id` gets a stable id derived from its content
//!   (a SHA-256 of its topic, payload and properties), since MQTT gives a stored message no identity of its own.
//!
//! # Guarantees, and what MQTT cannot keep
//!
//! - **Publish** resolves when the broker acknowledged the message: PUBACK for QoS 1, PUBCOMP for
//!   QoS 2, taken out to send by the client's event loop for QoS 0. While the broker is unreachable, up to
//!   [`MqttOptions::max_pending_publishes`] publishes wait and are sent after the reconnect; a publish
//!   fails with a transient [`BrokerError::Timeout`] after [`MqttOptions::operation_timeout`], never
//!   hangs. A publish whose acknowledgement was lost with the connection is sent again, so the broker
//!   can store it twice (at least once); for QoS 2 this breaks exactly-once only when the connection
//!   dies between the broker's PUBREL handling and our PUBCOMP.
//! - **Consumers** keep a persistent session (clean start off, a session expiry, a client id that is
//!   stable per subscription and consumer name) and acknowledge manually: a message is acknowledged
//!   only on [`Subscription::ack`]. The broker redelivers unacknowledged messages when **the same
//!   consumer** reconnects, never to another consumer of the group: an abandoned consumer's messages
//!   wait in its session until a consumer with its name returns or the session expires.
//! - mosquitto (2.0) keeps routing a share of new messages to the sessions of group members that are
//!   offline, and queues them there. Consumer names must be stable across restarts, and a retired
//!   name keeps its share until its session expires ([`MqttOptions::session_expiry`]).
//! - **nack** republishes a copy to a topic only this subscription's group reads
//!   (`…/_redeliver/s`, see [`naming`]) and then acknowledges the original, because MQTT has no
//!   negative acknowledgement. The copy goes to the back of the queue, carries a redelivery count,
//!   and may reach any consumer of the group. If the copy is not confirmed, the original stays
//!   unacknowledged. `close` leaves the redelivery topic (so the copies skip the closing consumer),
//!   gives back every unacknowledged delivery the same way, and disconnects; the consumer's session
//!   and its subscription to the topic stay for its return. Dropping a subscription without `close`
//!   behaves like a crash: its unacknowledged messages wait in its session.
//! - **ack** resolves once the client's event loop has taken the PUBACK out to send, into its write
//!   buffer, so a crash right after it may still lose the PUBACK and the message comes again (at
//!   least once); MQTT does not confirm acks. An ack of a delivery that arrived on an earlier
//!   connection is not sent (the packet id may name another message now); the broker redelivers
//!   that message when the session resumes.
//! - **No history**: MQTT keeps messages only for sessions that subscribed before the message was
//!   published; a message published while no consumer of a subscription ever subscribed is dropped.
//!   When no subscription at all matched, the broker says so ("no matching subscribers") and, with
//!   [`MqttOptions::wait_for_subscriber`] (the default), publish retries and then fails with a
//!   transient timeout instead of reporting success. Start workers (once) before producers.
//! - **No broker-side delay**: `deliver_at` is ignored; the runtime holds delays.
//! - **No key ordering**: shared subscriptions spread messages of a key over all consumers.
//! - **Durability** is the broker's. mosquitto 2.0 (`persistence true`) acknowledges a message before
//!   it saves it: acknowledged messages survive a graceful restart (it saves on SIGTERM), but a crash
//!   loses what it acknowledged since its last autosave — with `autosave_on_changes true` and
//!   `autosave_interval 1`, typically the latest message. So [`Capabilities::durable`] is
//!   [`MqttOptions::durable_acks`], `false` by default. mosquitto also silently drops QoS 1/2 messages
//!   beyond `max_queued_messages` per session (default 1000): raise it.
//! - mosquitto 2.0 does not restore shared subscriptions from its persistence file. After a restart a
//!   subscription receives nothing until one of its consumers reconnected and subscribed again (they
//!   do so by themselves within the reconnect backoff); a message published in between matches no
//!   subscription. With [`MqttOptions::wait_for_subscriber`] the publisher notices ("no matching
//!   subscribers") and publishes it again until a subscription matches — but only if *no*
//!   subscription matched: a topic read by several subscriptions can lose such messages for the
//!   subscriptions that had not resubscribed yet.
//!
//! `MqttBroker` keeps one publishing connection for QoS 0 and 1, one more (opened on first use) for
//! QoS 2, and one connection per consumer. Every connection runs in a background task that reconnects
//! with exponential backoff.

pub mod codec;
mod connection;
mod consumer;
pub mod naming;
mod publisher;
mod subscription;
mod tracker;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::OnceCell;
use worker_core::{
    BoxFuture, Broker, BrokerError, Capabilities, ConsumerType, DelayedDelivery, Message,
    MessageId, SubscribeOptions, Subscription, Topic,
};

use publisher::Publisher;
pub use subscription::MqttSubscription;

/// A secret string (a password) that never appears in `Debug` or `Display` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, for handing to the client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(\"***\")")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How to reach an MQTT 5 broker, and the limits of this backend's connections.
#[derive(Clone, Debug)]
pub struct MqttOptions {
    /// Broker host name or address.
    pub host: String,
    /// Broker TCP port (plain MQTT; TLS is not enabled in this build).
    pub port: u16,
    /// User name, if the broker requires one.
    pub username: Option<String>,
    /// Password; never printed.
    pub password: Option<Secret>,
    /// Prefix of every client id this backend uses (`{prefix}c~subscription~consumer` for consumers).
    pub client_id_prefix: String,
    /// Keep-alive interval (at least 5 s).
    pub keep_alive: Duration,
    /// How long the broker keeps a consumer's session (its subscription and unacknowledged and
    /// queued messages) after the consumer disconnected.
    pub session_expiry: Duration,
    /// Limit for establishing a connection (TCP and CONNACK).
    pub connect_timeout: Duration,
    /// Limit for a publish (including the wait for a free slot) and for a subscribe.
    pub operation_timeout: Duration,
    /// The largest MQTT packet sent or accepted; the broker's own limit applies too.
    pub max_packet_bytes: u32,
    /// How many publishes may wait for the broker's acknowledgement at once, per publishing
    /// connection; further publishes wait for a slot (bounded buffering while disconnected).
    pub max_pending_publishes: usize,
    /// Shortest wait before a reconnect.
    pub reconnect_delay_min: Duration,
    /// Longest wait before a reconnect.
    pub reconnect_delay_max: Duration,
    /// When the broker reports that a QoS 1/2 publish matched no subscription, the message went
    /// nowhere. With `true` (the default) the publish is sent again with backoff until a subscription
    /// matches, and fails with a transient [`BrokerError::Timeout`] after
    /// [`Self::operation_timeout`]; with `false` it succeeds and the message is dropped, as MQTT does.
    pub wait_for_subscriber: bool,
    /// Whether the broker writes a QoS 1/2 message to disk before acknowledging it; this is what
    /// [`Capabilities::durable`] reports. mosquitto 2.0 does not: it saves snapshots (`autosave_*`),
    /// so a crash loses what it acknowledged since the last one (a graceful restart loses nothing).
    /// Defaults to `false`.
    pub durable_acks: bool,
}

impl MqttOptions {
    /// Options for a broker at `host:port`, everything else at its default.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        MqttOptions {
            host: host.into(),
            port,
            ..MqttOptions::default()
        }
    }

    /// Sets user name and password, returning the options (builder style).
    pub fn with_credentials(mut self, username: impl Into<String>, password: Secret) -> Self {
        self.username = Some(username.into());
        self.password = Some(password);
        self
    }
}

impl Default for MqttOptions {
    fn default() -> Self {
        MqttOptions {
            host: "127.0.0.1".to_owned(),
            port: 1883,
            username: None,
            password: None,
            client_id_prefix: "wr-".to_owned(),
            keep_alive: Duration::from_secs(30),
            session_expiry: Duration::from_secs(24 * 60 * 60),
            connect_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
            max_packet_bytes: 16 * 1024 * 1024,
            max_pending_publishes: 1024,
            reconnect_delay_min: Duration::from_millis(100),
            reconnect_delay_max: Duration::from_secs(5),
            wait_for_subscriber: true,
            durable_acks: false,
        }
    }
}

/// The MQTT 5 backend. See the [module docs](self) for the mapping and what it can promise.
///
/// ```no_run
/// # async fn demo() -> Result<(), worker_runtime::BrokerError> {
/// use worker_runtime::broker::mqtt::{MqttBroker, MqttOptions};
/// use worker_runtime::{Broker, Message, Topic};
///
/// let broker = MqttBroker::connect(MqttOptions::new("127.0.0.1", 1883)).await?;
/// let topic = Topic::parse("q1/prod/ingest/raw-data").expect("valid topic");
/// broker.publish(&topic, Message::new("hello")).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MqttBroker {
    inner: Arc<Inner>,
}

/// What the broker handle and its subscriptions share.
pub(crate) struct Inner {
    options: Arc<MqttOptions>,
    /// Publishes QoS 0 and 1.
    at_least_once: Publisher,
    /// Publishes QoS 2, on its own connection: rumqttc may reuse the packet id of a QoS 2 publish
    /// that still waits for its PUBCOMP once QoS 1 acknowledgements overtook it, and the broker
    /// would take the new publish for a duplicate.
    exactly_once: OnceCell<Publisher>,
}

impl Inner {
    async fn publisher(&self, qos: QoS) -> Result<&Publisher, BrokerError> {
        if qos != QoS::ExactlyOnce {
            return Ok(&self.at_least_once);
        }
        self.exactly_once
            .get_or_try_init(|| Publisher::connect(self.options.clone(), "q2"))
            .await
    }
}

impl MqttBroker {
    /// Connects to the broker and returns once it accepted the first connection. Later connection
    /// losses are repaired in the background.
    pub async fn connect(options: MqttOptions) -> Result<Self, BrokerError> {
        if options.host.is_empty() {
            return Err(BrokerError::Connection {
                backend: "mqtt",
                message: "no broker host configured".to_owned(),
                source: None,
            });
        }
        let options = Arc::new(options);
        let at_least_once = Publisher::connect(options.clone(), "q1").await?;
        Ok(MqttBroker {
            inner: Arc::new(Inner {
                options,
                at_least_once,
                exactly_once: OnceCell::new(),
            }),
        })
    }

    /// The options this broker was connected with.
    pub fn options(&self) -> &MqttOptions {
        &self.inner.options
    }

    /// Opens a subscription and returns the concrete type (the [`Broker`] trait returns it boxed).
    pub async fn subscribe_mqtt(
        &self,
        options: SubscribeOptions,
    ) -> Result<MqttSubscription, BrokerError> {
        if options.consumer_type != ConsumerType::Shared {
            return Err(BrokerError::Unsupported {
                backend: "mqtt",
                feature: format!(
                    "{} subscriptions (MQTT shared subscriptions are shared only)",
                    options.consumer_type.as_str()
                ),
            });
        }
        for (what, name) in [
            ("subscription", &options.subscription),
            ("consumer", &options.consumer_name),
        ] {
            if name.is_empty() {
                return Err(BrokerError::Rejected {
                    backend: "mqtt",
                    reason: format!("the {what} name must not be empty"),
                });
            }
        }
        MqttSubscription::open(self.inner.clone(), options).await
    }
}

impl fmt::Debug for MqttBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttBroker")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// The QoS a topic's scheme asks for.
pub(crate) fn qos_of(topic: &Topic) -> QoS {
    match topic.scheme().qos() {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Room kept in a packet for the topic name and properties when declaring the payload limit.
const PACKET_HEADROOM: usize = 64 * 1024;

/// The largest payload accepted: the packet limit covers the topic and properties too, so part
/// of it is kept for them.
pub(crate) fn payload_limit(options: &MqttOptions) -> usize {
    (options.max_packet_bytes as usize).saturating_sub(PACKET_HEADROOM)
}

impl Broker for MqttBroker {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // mosquitto acknowledges before it saves: acknowledged messages survive a graceful
            // restart, but a crash loses those since its last autosave.
            durable: self.inner.options.durable_acks,
            delayed_delivery: DelayedDelivery::Unsupported,
            history: false,
            consumer_types: &[ConsumerType::Shared],
            key_ordering: false,
            nack_redelivery: true,
            // Unacknowledged messages wait in the abandoned consumer's own session.
            redelivers_abandoned: false,
            max_payload_bytes: Some(payload_limit(&self.inner.options)),
        }
    }

    fn publish<'a>(
        &'a self,
        topic: &'a Topic,
        message: Message,
    ) -> BoxFuture<'a, Result<MessageId, BrokerError>> {
        Box::pin(async move {
            let qos = qos_of(topic);
            let properties = codec::encode(&message, 0)?;
            let confirmed = self
                .inner
                .publisher(qos)
                .await?
                .publish(
                    naming::mqtt_topic(topic),
                    qos,
                    message.payload,
                    properties,
                    self.inner.options.wait_for_subscriber,
                )
                .await?;
            if !confirmed.routed {
                tracing::debug!(%topic, "no subscription matched; the mqtt broker dropped the message");
            }
            Ok(MessageId::from_u64(confirmed.id))
        })
    }

    fn subscribe<'a>(
        &'a self,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, BrokerError>> {
        Box::pin(async move {
            let subscription = self.subscribe_mqtt(options).await?;
            Ok(Box::new(subscription) as Box<dyn Subscription>)
        })
    }

    fn wants_reply(&self, request: &Message) -> bool {
        request.property(codec::RESPONSE_TOPIC).is_some()
    }

    /// Publishes `reply` at QoS 1 to the request's Response Topic, as is (a raw MQTT topic, not a
    /// framework topic name), with the request's Correlation Data, as MQTT 5 request/response asks.
    fn publish_reply<'a>(
        &'a self,
        request: &'a Message,
        mut reply: Message,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let Some(topic) = request.property(codec::RESPONSE_TOPIC) else {
                return Err(BrokerError::Rejected {
                    backend: "mqtt",
                    reason: "the request has no response topic".to_owned(),
                });
            };
            if topic.is_empty() || topic.contains(['+', '#']) {
                return Err(BrokerError::Rejected {
                    backend: "mqtt",
                    reason: format!("response topic {topic:?} is not a topic one can publish to"),
                });
            }
            if let Some(data) = request.property(codec::CORRELATION_DATA) {
                reply
                    .properties
                    .insert(codec::CORRELATION_DATA.to_owned(), data.to_owned());
            }
            let properties = codec::encode(&reply, 0)?;
            self.inner
                .publisher(QoS::AtLeastOnce)
                .await?
                .publish(
                    topic.to_owned(),
                    QoS::AtLeastOnce,
                    reply.payload,
                    properties,
                    self.inner.options.wait_for_subscriber,
                )
                .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_prints() {
        let options = MqttOptions::new("h", 1).with_credentials("u", Secret::new("hunter2"));
        let printed = format!("{options:?} {}", Secret::new("hunter2"));
        assert!(!printed.contains("hunter2"), "{printed}");
        assert_eq!(
            options.password.as_ref().map(Secret::expose),
            Some("hunter2")
        );
    }

    #[test]
    fn schemes_select_the_qos() {
        let qos = |text: &str| qos_of(&Topic::parse(text).expect("valid topic"));
        assert_eq!(qos("q0/a/b/c"), QoS::AtMostOnce);
        assert_eq!(qos("non-persistent://a/b/c"), QoS::AtMostOnce);
        assert_eq!(qos("q1/a/b/c"), QoS::AtLeastOnce);
        assert_eq!(qos("persistent://a/b/c"), QoS::AtLeastOnce);
        assert_eq!(qos("q2/a/b/c"), QoS::ExactlyOnce);
    }
}
