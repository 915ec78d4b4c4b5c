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
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;
use worker_core::{BoxFuture, BrokerError, Delivery, MessageId, SubscribeOptions, Subscription};

use super::connection::ConnectionSpec;
use super::{codec, consumer, naming, Inner};

/// Room in rumqttc's request channel for subscribe and disconnect requests beside the acks.
const CHANNEL_SLACK: usize = 16;
/// How long `close` waits for the DISCONNECT to go out.
pub(super) const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

/// One consumer's attachment to an MQTT shared subscription. See the module docs.
pub struct MqttSubscription {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    stopped: Mutex<Option<oneshot::Receiver<()>>>,
}

pub(super) struct Shared {
    pub(super) spec: ConnectionSpec,
    pub(super) broker: Arc<Inner>,
    pub(super) filters: [String; 2],
    /// The QoS the consumer subscribes with (0 or 1).
    pub(super) filter_qos: QoS,
    /// The QoS the topic is published with: nacked copies go out the same way.
    pub(super) topic_qos: QoS,
    /// The topic as the task named it, reported on every delivery.
    pub(super) topic_name: Arc<str>,
    pub(super) redelivery_topic: String,
    /// Bound on deliveries waiting to be received; QoS 1 is bounded by the receive maximum already.
    pub(super) buffer_limit: usize,
    pub(super) state: Mutex<State>,
    pub(super) notify: Notify,
}

#[derive(Default)]
pub(super) struct State {
    /// The current connection's client; `None` between connections.
    pub(super) client: Option<AsyncClient>,
    /// Counts connections; deliveries remember the one they arrived on.
    pub(super) generation: u64,
    /// Whether the current connection got its CONNACK.
    pub(super) connected: bool,
    /// Deliveries not handed out yet, in arrival order.
    pub(super) ready: VecDeque<u64>,
    /// Every delivery not acknowledged yet, by local sequence number (the [`MessageId`]).
    pub(super) held: HashMap<u64, Held>,
    pub(super) next_seq: u64,
    pub(super) closed: bool,
    /// Set when the broker refused the subscription after a reconnect.
    pub(super) refused: Option<String>,
    /// Acks handed to rumqttc, by packet id, waiting until their PUBACK is written.
    pub(super) ack_waiters: HashMap<u16, Vec<oneshot::Sender<()>>>,
    /// `close` waits here for the UNSUBACK of the redelivery filter.
    pub(super) unsubscribed: Option<oneshot::Sender<()>>,
    pub(super) dropped_qos0: u64,
}

pub(super) struct Held {
    pub(super) generation: u64,
    pub(super) pkid: u16,
    pub(super) qos: QoS,
    pub(super) handed_out: bool,
    pub(super) delivery: Delivery,
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
                consumer::run(shared, cancel, first_tx).await;
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
/// resolves once the client's event loop has taken the PUBACK out to send (into its write buffer:
/// not yet proof that it reached the socket). A delivery from an earlier connection cannot be
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

    /// Resolves once the client's event loop has taken the PUBACKs out to send, into its write
    /// buffer (MQTT has no confirmation of an ack), or at once for deliveries of an earlier
    /// connection, which the broker redelivers.
    fn ack(&self, ids: Vec<MessageId>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            // Oldest first: mosquitto looks an acked message up by scanning its in-flight list
            // from the oldest, so acks in arrival order are found at once, while acks in the
            // order handlers happened to finish cost the broker a long scan each.
            let mut seqs: Vec<u64> = ids.iter().filter_map(MessageId::as_u64).collect();
            seqs.sort_unstable();
            let mut waits = Vec::new();
            {
                let mut state = self.shared.state.lock();
                for seq in seqs {
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
