//! One consumer of a subscription: a persistent MQTT session on a shared subscription, with manual
//! acknowledgements.
//!
//! The consumer's client id is stable (see [`super::naming`]), its session persistent (clean start
//! off, a session expiry), and rumqttc runs in manual-ack mode: a QoS 1 message is acknowledged
//! (PUBACK) only when the worker calls [`Subscription::ack`]. MQTT servers resend unacknowledged
//! messages only when the same session reconnects, never while a connection lives; a message is
//! therefore redelivered when this consumer (same subscription and consumer name) reconnects, not when
//! another consumer of the group is free.
//!
//! Consumers subscribe with at most QoS 1, also on `q2` topics: exactly once from the broker to a
//! consumer that acknowledges after handling is not possible anyway (a crash between the handler and
//! the acknowledgement means a redelivery), and rumqttc 0.25 forgets the QoS 2 handshakes it had open
//! when a connection breaks, so the broker's resent PUBREL after a reconnect fails the new connection
//! over and over.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use parking_lot::Mutex;
use rumqttc::v5::mqttbytes::v5::{
    DisconnectReasonCode, Filter, Packet, Publish, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use rumqttc::Outgoing;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;
use worker_core::{BoxFuture, BrokerError, Delivery, MessageId, SubscribeOptions, Subscription};

use super::connection::{self, Backoff, ConnectionSpec};
use super::{codec, naming, Inner};

/// Room in rumqttc's request channel for subscribe and disconnect requests beside the acks.
const CHANNEL_SLACK: usize = 16;
/// How long `close` waits for the DISCONNECT to go out.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

/// One consumer's attachment to an MQTT shared subscription. See the module docs.
pub struct MqttSubscription {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    stopped: Mutex<Option<oneshot::Receiver<()>>>,
}

struct Shared {
    spec: ConnectionSpec,
    broker: Arc<Inner>,
    filters: [String; 2],
    /// The QoS the consumer subscribes with (0 or 1).
    filter_qos: QoS,
    /// The QoS the topic is published with: nacked copies go out the same way.
    topic_qos: QoS,
    /// The topic as the task named it, reported on every delivery.
    topic_name: Arc<str>,
    redelivery_topic: String,
    /// Bound on deliveries waiting to be received; QoS 1 is bounded by the receive maximum already.
    buffer_limit: usize,
    state: Mutex<State>,
    notify: Notify,
}

#[derive(Default)]
struct State {
    /// The current connection's client; `None` between connections.
    client: Option<AsyncClient>,
    /// Counts connections; deliveries remember the one they arrived on.
    generation: u64,
    /// Whether the current connection got its CONNACK.
    connected: bool,
    /// Deliveries not handed out yet, in arrival order.
    ready: VecDeque<u64>,
    /// Every delivery not acknowledged yet, by local sequence number (the [`MessageId`]).
    held: HashMap<u64, Held>,
    next_seq: u64,
    closed: bool,
    /// Set when the broker refused the subscription after a reconnect.
    refused: Option<String>,
    /// Acks handed to rumqttc, by packet id, waiting until their PUBACK is written.
    ack_waiters: HashMap<u16, Vec<oneshot::Sender<()>>>,
    /// `close` waits here for the UNSUBACK of the redelivery filter.
    unsubscribed: Option<oneshot::Sender<()>>,
    dropped_qos0: u64,
}

struct Held {
    generation: u64,
    pkid: u16,
    qos: QoS,
    handed_out: bool,
    delivery: Delivery,
}

impl MqttSubscription {
    /// Connects a consumer and waits until the broker confirmed its subscription.
    pub(crate) async fn open(
        broker: Arc<Inner>,
        options: SubscribeOptions,
    ) -> Result<Self, BrokerError> {
        let topic_qos = super::qos_of(&options.topic);
        let receive_maximum = u16::try_from(options.receiver_queue_size.max(1)).unwrap_or(u16::MAX);
        let shared = Arc::new(Shared {
            spec: ConnectionSpec {
                client_id: naming::consumer_client_id(
                    &broker.options.client_id_prefix,
                    &options.subscription,
                    &options.consumer_name,
                ),
                persistent: true,
                receive_maximum,
                request_capacity: usize::from(receive_maximum) + CHANNEL_SLACK,
                outgoing_inflight: 8,
            },
            broker,
            filters: naming::share_filters(&options.topic, &options.subscription),
            filter_qos: if topic_qos == QoS::AtMostOnce {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            topic_qos,
            topic_name: Arc::from(options.topic.to_string()),
            redelivery_topic: naming::redelivery_topic(&options.topic, &options.subscription),
            buffer_limit: options.receiver_queue_size.max(1),
            state: Mutex::new(State::default()),
            notify: Notify::new(),
        });
        let cancel = CancellationToken::new();
        let (first_tx, first_rx) = oneshot::channel();
        let (stopped_tx, stopped_rx) = oneshot::channel();
        tokio::spawn({
            let shared = shared.clone();
            let cancel = cancel.clone();
            async move {
                run(shared, cancel, first_tx).await;
                let _ = stopped_tx.send(());
            }
        });
        let subscription = MqttSubscription {
            shared,
            cancel,
            stopped: Mutex::new(Some(stopped_rx)),
        };
        let options = &subscription.shared.broker.options;
        let limit = options.connect_timeout + options.operation_timeout;
        match tokio::time::timeout(limit, first_rx).await {
            Ok(Ok(Ok(()))) => Ok(subscription),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Err(_)) => Err(BrokerError::Closed("mqtt")),
            Err(_) => Err(BrokerError::Timeout {
                backend: "mqtt",
                operation: "subscribe",
                millis: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// The MQTT client id of this consumer's session.
    pub fn client_id(&self) -> &str {
        &self.shared.spec.client_id
    }

    /// Waits until deliveries are ready and takes up to `max` of them. Cancel-safe: nothing is taken
    /// until the future resolves.
    async fn receive_ready(&self, max: usize) -> Result<Vec<Delivery>, BrokerError> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.shared.state.lock();
                if state.closed {
                    return Err(BrokerError::Closed("mqtt"));
                }
                if let Some(reason) = &state.refused {
                    return Err(BrokerError::Rejected {
                        backend: "mqtt",
                        reason: reason.clone(),
                    });
                }
                let mut out = Vec::new();
                while out.len() < max.max(1) {
                    let Some(seq) = state.ready.pop_front() else {
                        break;
                    };
                    if let Some(held) = state.held.get_mut(&seq) {
                        held.handed_out = true;
                        out.push(held.delivery.clone());
                    }
                }
                if !out.is_empty() {
                    return Ok(out);
                }
            }
            notified.await;
        }
    }

    /// Republishes deliveries to the subscription's redelivery topic, then acknowledges the originals.
    /// A delivery whose copy was not confirmed, or reached no consumer, stays held and unacknowledged;
    /// the latter counts as an error only if `unread_is_error`.
    async fn give_back(&self, seqs: Vec<u64>, unread_is_error: bool) -> Result<(), BrokerError> {
        let taken: Vec<(u64, Held)> = {
            let mut state = self.shared.state.lock();
            let taken: Vec<(u64, Held)> = seqs
                .into_iter()
                .filter_map(|seq| state.held.remove(&seq).map(|held| (seq, held)))
                .collect();
            state
                .ready
                .retain(|seq| !taken.iter().any(|(taken, _)| taken == seq));
            taken
        };
        let copies = taken.iter().map(|(_, held)| self.republish(&held.delivery));
        let results = join_all(copies).await;
        let mut first_error = None;
        let mut waits = Vec::new();
        {
            let mut state = self.shared.state.lock();
            for ((seq, mut held), result) in taken.into_iter().zip(results) {
                let error = match result {
                    Ok(true) => {
                        waits.extend(acknowledge(&mut state, &held));
                        continue;
                    }
                    Ok(false) if !unread_is_error => None,
                    Ok(false) => Some(BrokerError::Rejected {
                        backend: "mqtt",
                        reason: format!(
                            "no consumer reads the redelivery topic `{}`; the original stays unacknowledged",
                            self.shared.redelivery_topic
                        ),
                    }),
                    Err(error) => Some(error),
                };
                held.handed_out = true;
                state.held.insert(seq, held);
                if let Some(error) = error {
                    first_error.get_or_insert(error);
                }
            }
        }
        flushed(waits, self.shared.broker.options.operation_timeout).await;
        first_error.map_or(Ok(()), Err)
    }

    /// Publishes a copy to the redelivery topic; `Ok(false)` when no consumer session reads it.
    async fn republish(&self, delivery: &Delivery) -> Result<bool, BrokerError> {
        let shared = &self.shared;
        let properties = codec::encode(
            &delivery.message,
            delivery.redelivery_count.saturating_add(1),
        )?;
        let confirmed = shared
            .broker
            .publisher(shared.topic_qos)
            .await?
            .publish(
                shared.redelivery_topic.clone(),
                shared.topic_qos,
                delivery.message.payload.clone(),
                properties,
                // No waiting: when no other consumer reads the redelivery topic (a closing last
                // consumer), the original is better kept in this session than retried for long.
                false,
            )
            .await?;
        Ok(confirmed.routed)
    }
}

/// Queues the PUBACK for a QoS 1 delivery if it arrived on the current connection, and returns what
/// resolves once the PUBACK is written to the socket. A delivery from an earlier connection cannot be
/// acknowledged any more: its packet id may name another message now. The broker resends it when the
/// session resumes, so it will be handled again (at least once).
fn acknowledge(state: &mut State, held: &Held) -> Option<oneshot::Receiver<()>> {
    if held.qos == QoS::AtMostOnce {
        return None;
    }
    if held.generation != state.generation || !state.connected {
        tracing::debug!(
            pkid = held.pkid,
            "ack of a delivery from an earlier connection dropped; the broker redelivers it"
        );
        return None;
    }
    let client = state.client.as_ref()?;
    let mut stub = Publish::new("", held.qos, Bytes::new(), None);
    stub.pkid = held.pkid;
    if let Err(error) = client.try_ack(&stub) {
        tracing::warn!(%error, pkid = held.pkid, "mqtt ack could not be queued; the broker redelivers the message");
        return None;
    }
    let (written, wait) = oneshot::channel();
    state
        .ack_waiters
        .entry(held.pkid)
        .or_default()
        .push(written);
    Some(wait)
}

/// Waits (bounded) until the PUBACKs are written. A connection that breaks first drops the waiters:
/// those messages are redelivered, which is what at least once allows.
async fn flushed(waits: Vec<oneshot::Receiver<()>>, limit: Duration) {
    if waits.is_empty() {
        return;
    }
    if tokio::time::timeout(limit, join_all(waits)).await.is_err() {
        tracing::warn!(
            "mqtt acks not written within {limit:?}; the broker may redeliver those messages"
        );
    }
}

impl Subscription for MqttSubscription {
    fn receive(&self, max: usize) -> BoxFuture<'_, Result<Vec<Delivery>, BrokerError>> {
        Box::pin(self.receive_ready(max))
    }

    /// Resolves once the PUBACKs are written to the socket (MQTT has no confirmation of an ack), or
    /// at once for deliveries of an earlier connection, which the broker redelivers.
    fn ack(&self, ids: Vec<MessageId>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut waits = Vec::new();
            {
                let mut state = self.shared.state.lock();
                for id in ids {
                    let Some(seq) = id.as_u64() else { continue };
                    let Some(held) = state.held.remove(&seq) else {
                        continue;
                    };
                    if !held.handed_out {
                        state.ready.retain(|s| *s != seq);
                    }
                    waits.extend(acknowledge(&mut state, &held));
                }
            }
            flushed(waits, self.shared.broker.options.operation_timeout).await;
            Ok(())
        })
    }

    fn nack(&self, ids: Vec<MessageId>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let seqs = ids.iter().filter_map(MessageId::as_u64).collect();
            self.give_back(seqs, true).await
        })
    }

    /// Leaves the subscription's redelivery topic, gives every unacknowledged delivery back to the
    /// group like [`Subscription::nack`], and disconnects. The session and its subscription to the
    /// topic stay, so that a consumer restarted under the same name resumes them; meanwhile the broker
    /// queues this consumer's share of new messages there. A delivery whose copy could not be
    /// published, or that no other consumer would read (this was the last one), stays in the
    /// session, as do messages that arrived during `close`.
    fn close(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let (client, unsubscribed) = {
                let mut state = self.shared.state.lock();
                if state.closed {
                    return Ok(());
                }
                state.closed = true;
                let (done, unsubscribed) = oneshot::channel();
                state.unsubscribed = Some(done);
                (state.client.clone(), unsubscribed)
            };
            self.shared.notify.notify_waiters();
            // Leave the redelivery topic first, so that the copies given back below go to the other
            // consumers of the group and not to this closing one. The main topic stays subscribed:
            // the session keeps queueing this consumer's share until it returns under its name.
            if let Some(client) = &client {
                if client
                    .try_unsubscribe(self.shared.filters[1].clone())
                    .is_ok()
                {
                    let limit = self.shared.broker.options.operation_timeout;
                    let _ = tokio::time::timeout(limit, unsubscribed).await;
                }
            }
            // Unacknowledged deliveries go back to the group, not only to this session's next life.
            let seqs: Vec<u64> = self.shared.state.lock().held.keys().copied().collect();
            // Without another consumer on the redelivery topic they stay in this session instead.
            let given_back = self.give_back(seqs, false).await;
            // The connection may have changed meanwhile: disconnect the current one.
            let client = self.shared.state.lock().client.clone();
            if let Some(client) = client {
                let _ = client.try_disconnect();
            }
            let stopped = self.stopped.lock().take();
            if let Some(stopped) = stopped {
                let _ = tokio::time::timeout(DISCONNECT_WAIT, stopped).await;
            }
            self.cancel.cancel();
            given_back
        })
    }
}

impl Drop for MqttSubscription {
    fn drop(&mut self) {
        // Like a crash: the connection drops without DISCONNECT and the session keeps its
        // unacknowledged messages for this consumer's return.
        self.cancel.cancel();
    }
}

/// Why a connection ended.
enum End {
    /// Cancelled, or closed with a DISCONNECT.
    Stopped,
    Lost(BrokerError),
}

/// The background task: one connection after another, until stopped.
async fn run(
    shared: Arc<Shared>,
    cancel: CancellationToken,
    first: oneshot::Sender<Result<(), BrokerError>>,
) {
    let options = shared.broker.options.clone();
    let mut first = Some(first);
    let mut backoff = Backoff::new(options.reconnect_delay_min, options.reconnect_delay_max);
    loop {
        let (client, mut events) = connection::open(&options, &shared.spec);
        {
            let mut state = shared.state.lock();
            state.generation += 1;
            state.connected = false;
            state.client = Some(client);
        }
        let end = drive(&shared, &mut events, &cancel, &mut first, &mut backoff).await;
        {
            let mut state = shared.state.lock();
            state.client = None;
            state.connected = false;
            // PUBACKs that were not written are lost with the connection.
            state.ack_waiters.clear();
            state.unsubscribed = None;
        }
        drop(events);
        match end {
            End::Stopped => break,
            End::Lost(error) => match first.take() {
                Some(first) => {
                    let _ = first.send(Err(error));
                    break;
                }
                None => {
                    tracing::warn!(%error, client_id = %shared.spec.client_id, "mqtt consumer connection lost; reconnecting")
                }
            },
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    shared.state.lock().closed = true;
    shared.notify.notify_waiters();
}

/// Polls one connection's event loop until it fails, disconnects on `close`, or is cancelled.
async fn drive(
    shared: &Shared,
    events: &mut EventLoop,
    cancel: &CancellationToken,
    first: &mut Option<oneshot::Sender<Result<(), BrokerError>>>,
    backoff: &mut Backoff,
) -> End {
    loop {
        let polled = tokio::select! {
            biased;
            _ = cancel.cancelled() => return End::Stopped,
            polled = events.poll() => polled,
        };
        match polled {
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // Read on until the broker closes the connection: dropping a socket with unread
                // data resets it, and the broker could then discard the acks it had not read yet.
                let _ = tokio::time::timeout(DISCONNECT_WAIT, async {
                    while events.poll().await.is_ok() {}
                })
                .await;
                return End::Stopped;
            }
            Ok(event) => handle(shared, event, first, backoff),
            Err(error) => {
                // Messages rumqttc read before the failure belong to this connection.
                let buffered: Vec<Event> = events.state.events.drain(..).collect();
                for event in buffered {
                    handle(shared, event, first, backoff);
                }
                return End::Lost(connection::connection_error(&shared.broker.options, error));
            }
        }
    }
}

fn handle(
    shared: &Shared,
    event: Event,
    first: &mut Option<oneshot::Sender<Result<(), BrokerError>>>,
    backoff: &mut Backoff,
) {
    match event {
        Event::Incoming(Packet::Publish(publish)) => receive_publish(shared, &publish),
        Event::Outgoing(Outgoing::PubAck(pkid)) => {
            let waiters = shared.state.lock().ack_waiters.remove(&pkid);
            for waiter in waiters.into_iter().flatten() {
                let _ = waiter.send(());
            }
        }
        Event::Incoming(Packet::UnsubAck(_)) => {
            if let Some(done) = shared.state.lock().unsubscribed.take() {
                let _ = done.send(());
            }
        }
        Event::Incoming(Packet::ConnAck(connack)) => {
            let mut state = shared.state.lock();
            state.connected = true;
            backoff.reset();
            // Deliveries from earlier connections stay: even when the session resumes, a broker that
            // restarted from its last save may have lost them, so these copies can be the only ones
            // left. If the broker still has them, they come twice (at least once).
            if !connack.session_present && first.is_none() {
                tracing::warn!(client_id = %shared.spec.client_id, "mqtt session was not resumed: the broker no longer holds the messages this consumer had not acknowledged");
            }
            // Subscribing again is harmless when the session kept the subscription, and needed when
            // the broker lost it.
            let filters = shared
                .filters
                .iter()
                .map(|path| Filter::new(path.clone(), shared.filter_qos));
            if let Some(client) = &state.client {
                if let Err(error) = client.try_subscribe_many(filters) {
                    tracing::warn!(%error, "mqtt subscribe could not be queued");
                }
            }
            if first.is_none() {
                tracing::info!(client_id = %shared.spec.client_id, session_present = connack.session_present, "mqtt consumer reconnected");
            }
        }
        Event::Incoming(Packet::SubAck(suback)) => {
            let refused: Vec<&SubscribeReasonCode> = suback
                .return_codes
                .iter()
                .filter(|code| !matches!(code, SubscribeReasonCode::Success(_)))
                .collect();
            let outcome = if refused.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "the broker refused the subscription {:?}: {refused:?}",
                    shared.filters
                ))
            };
            match (first.take(), outcome) {
                (Some(first), outcome) => {
                    let _ = first.send(outcome.map_err(|reason| BrokerError::Rejected {
                        backend: "mqtt",
                        reason,
                    }));
                }
                (None, Ok(())) => shared.state.lock().refused = None,
                (None, Err(reason)) => {
                    tracing::error!(%reason, "mqtt subscription refused after reconnect");
                    shared.state.lock().refused = Some(reason);
                    shared.notify.notify_waiters();
                }
            }
        }
        Event::Incoming(Packet::Disconnect(disconnect)) => {
            if disconnect.reason_code == DisconnectReasonCode::SessionTakenOver {
                tracing::error!(client_id = %shared.spec.client_id, "another mqtt client connected with this consumer's client id; consumer names must be unique per process");
            } else {
                tracing::warn!(reason = ?disconnect.reason_code, client_id = %shared.spec.client_id, "mqtt broker disconnected the consumer");
            }
        }
        _ => {}
    }
}

fn receive_publish(shared: &Shared, publish: &Publish) {
    let (message, redeliveries) = codec::decode(publish);
    let mut state = shared.state.lock();
    if publish.qos == QoS::AtMostOnce && state.ready.len() >= shared.buffer_limit {
        // Best effort: with nobody receiving, QoS 0 messages beyond the bound are dropped here
        // rather than growing the buffer.
        state.dropped_qos0 += 1;
        if state.dropped_qos0.is_power_of_two() {
            tracing::warn!(
                dropped = state.dropped_qos0,
                "mqtt consumer buffer full; QoS 0 messages dropped"
            );
        }
        return;
    }
    let seq = state.next_seq;
    state.next_seq += 1;
    let delivery = Delivery {
        id: MessageId::from_u64(seq),
        topic: shared.topic_name.clone(),
        message: Arc::new(message),
        redelivery_count: redeliveries.saturating_add(u32::from(publish.dup)),
        publish_time: None,
    };
    let generation = state.generation;
    state.held.insert(
        seq,
        Held {
            generation,
            pkid: publish.pkid,
            qos: publish.qos,
            handed_out: false,
            delivery,
        },
    );
    state.ready.push_back(seq);
    drop(state);
    shared.notify.notify_waiters();
}
