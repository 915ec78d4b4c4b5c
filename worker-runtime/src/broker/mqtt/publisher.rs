//! One publishing connection: publishes resolve when the broker acknowledged them, survive reconnects,
//! and are bounded in number.
//!
//! The connection keeps no session on the broker (clean start): whatever was not confirmed when a
//! connection broke is published again on the next one, so a message whose acknowledgement was lost
//! on the way can reach the broker twice (at least once). Callers wait at most the operation timeout;
//! a publish whose caller gave up is not sent again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use rumqttc::v5::mqttbytes::v5::{
    Packet, PubAckReason, PubCompReason, PubRecReason, Publish, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use rumqttc::Outgoing;
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use worker_core::BrokerError;

use super::connection::{self, Backoff, ConnectionSpec};
use super::tracker::{Confirmed, Desync, Entry, Tracker};
use super::MqttOptions;

/// Room in rumqttc's request channel beyond the bound on pending publishes, so that handing a
/// publish to it never finds it full.
const CHANNEL_SLACK: usize = 16;
/// First wait before publishing again a message that matched no subscription.
const UNROUTED_RETRY_MIN: Duration = Duration::from_millis(50);
/// Longest wait between such attempts.
const UNROUTED_RETRY_MAX: Duration = Duration::from_secs(1);

/// A publishing connection and its background task. Dropping it stops the task; publishes still
/// waiting then fail with [`BrokerError::Closed`].
pub(crate) struct Publisher {
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

struct Shared {
    options: Arc<MqttOptions>,
    spec: ConnectionSpec,
    state: Mutex<State>,
    permits: Arc<Semaphore>,
    next_id: AtomicU64,
}

struct State {
    /// The current connection's client; `None` between connections.
    client: Option<AsyncClient>,
    /// The largest packet the broker accepts.
    packet_limit: u32,
    tracker: Tracker,
    closed: bool,
}

impl Publisher {
    /// Starts a publishing connection and waits for its first CONNACK.
    pub(crate) async fn connect(
        options: Arc<MqttOptions>,
        role: &str,
    ) -> Result<Self, BrokerError> {
        let bound = options.max_pending_publishes.max(1);
        let spec = ConnectionSpec {
            client_id: super::naming::publisher_client_id(&options.client_id_prefix, role),
            persistent: false,
            receive_maximum: 1,
            request_capacity: bound + CHANNEL_SLACK,
            outgoing_inflight: u16::try_from(bound).unwrap_or(u16::MAX),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                client: None,
                packet_limit: options.max_packet_bytes,
                tracker: Tracker::default(),
                closed: false,
            }),
            permits: Arc::new(Semaphore::new(bound)),
            next_id: AtomicU64::new(1),
            options,
            spec,
        });
        let cancel = CancellationToken::new();
        let (first_tx, first_rx) = oneshot::channel();
        tokio::spawn(run(shared.clone(), cancel.clone(), first_tx));
        let publisher = Publisher { shared, cancel };
        let limit = publisher.shared.options.connect_timeout + Duration::from_secs(1);
        match tokio::time::timeout(limit, first_rx).await {
            Ok(Ok(Ok(()))) => Ok(publisher),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Err(_)) => Err(BrokerError::Closed("mqtt")),
            Err(_) => Err(BrokerError::Timeout {
                backend: "mqtt",
                operation: "connect",
                millis: millis(limit),
            }),
        }
    }

    /// Publishes one message and waits until the broker acknowledged it: PUBACK for QoS 1, PUBCOMP
    /// for QoS 2, taken out to send by the client's event loop for QoS 0. Gives up after the
    /// operation timeout.
    ///
    /// With `wait_for_subscriber`, a QoS 1/2 message that the broker reports as matching no
    /// subscription (so it went nowhere) is published again, with backoff, until one matches or the
    /// timeout passes; without it, such a publish returns with [`Confirmed::routed`] false.
    pub(crate) async fn publish(
        &self,
        topic: String,
        qos: QoS,
        payload: Bytes,
        properties: PublishProperties,
        wait_for_subscriber: bool,
    ) -> Result<Confirmed, BrokerError> {
        let options = &self.shared.options;
        let deadline = Instant::now() + options.operation_timeout;
        let mut backoff = Backoff::new(UNROUTED_RETRY_MIN, UNROUTED_RETRY_MAX);
        loop {
            let confirmed = self
                .publish_once(&topic, qos, &payload, &properties, deadline)
                .await?;
            if confirmed.routed || qos == QoS::AtMostOnce || !wait_for_subscriber {
                return Ok(confirmed);
            }
            let delay = backoff.next_delay();
            if Instant::now() + delay >= deadline {
                return Err(BrokerError::Timeout {
                    backend: "mqtt",
                    operation: "publish (no subscription matched the topic)",
                    millis: millis(options.operation_timeout),
                });
            }
            tracing::debug!(%topic, ?delay, "no subscription matched; publishing again");
            tokio::time::sleep(delay).await;
        }
    }

    async fn publish_once(
        &self,
        topic: &str,
        qos: QoS,
        payload: &Bytes,
        properties: &PublishProperties,
        deadline: Instant,
    ) -> Result<Confirmed, BrokerError> {
        let payload_limit = super::payload_limit(&self.shared.options);
        if payload.len() > payload_limit {
            return Err(BrokerError::Rejected {
                backend: "mqtt",
                reason: format!(
                    "the payload of {} bytes is over the limit of {payload_limit}",
                    payload.len()
                ),
            });
        }
        let limit = self.shared.state.lock().packet_limit;
        // rumqttc fails the whole connection on an oversized packet and would resend it forever, so
        // it never gets that far.
        let size = Publish::new(topic, qos, payload.clone(), Some(properties.clone())).size();
        if size > limit as usize {
            return Err(BrokerError::Rejected {
                backend: "mqtt",
                reason: format!(
                    "the publish packet would be {size} bytes, over the limit of {limit}"
                ),
            });
        }
        let timeout = self.shared.options.operation_timeout;
        let timed_out = || BrokerError::Timeout {
            backend: "mqtt",
            operation: "publish",
            millis: millis(timeout),
        };
        // Bounded buffering: while the broker is away, at most `max_pending_publishes` wait.
        let permit =
            match tokio::time::timeout_at(deadline, self.shared.permits.clone().acquire_owned())
                .await
            {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return Err(BrokerError::Closed("mqtt")),
                Err(_) => return Err(timed_out()),
            };
        let (reply, outcome) = oneshot::channel();
        let entry = Entry {
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            topic: topic.to_owned(),
            qos,
            payload: payload.clone(),
            properties: properties.clone(),
            reply,
            _permit: Some(permit),
            released: false,
        };
        {
            let mut state = self.shared.state.lock();
            if state.closed {
                return Err(BrokerError::Closed("mqtt"));
            }
            hand_over(&mut state, entry);
        }
        match tokio::time::timeout_at(deadline, outcome).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BrokerError::Closed("mqtt")),
            Err(_) => Err(timed_out()),
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Puts a publish into the current connection's request channel, or keeps it for the next one.
fn hand_over(state: &mut State, entry: Entry) {
    let Some(client) = &state.client else {
        state.tracker.unsent.push_back(entry);
        return;
    };
    let sent = client.try_publish_with_properties(
        entry.topic.clone(),
        entry.qos,
        false,
        entry.payload.clone(),
        entry.properties.clone(),
    );
    match sent {
        Ok(()) => state.tracker.queued(entry),
        Err(error) => {
            // Only possible if the channel were full or its event loop gone; the next connection
            // sends it.
            tracing::warn!(%error, "mqtt publish could not be queued; it waits for the next connection");
            state.tracker.unsent.push_back(entry);
        }
    }
}

/// Why a connection ended.
enum End {
    Cancelled,
    Lost(BrokerError),
}

/// The background task: one connection after another, until cancelled.
async fn run(
    shared: Arc<Shared>,
    cancel: CancellationToken,
    first: oneshot::Sender<Result<(), BrokerError>>,
) {
    let mut first = Some(first);
    let mut backoff = Backoff::new(
        shared.options.reconnect_delay_min,
        shared.options.reconnect_delay_max,
    );
    loop {
        let (client, mut events) = connection::open(&shared.options, &shared.spec);
        {
            let mut state = shared.state.lock();
            state.client = Some(client);
            let waiting: Vec<Entry> = state.tracker.unsent.drain(..).collect();
            for entry in waiting {
                hand_over(&mut state, entry);
            }
        }
        let end = drive(&shared, &mut events, &cancel, &mut first, &mut backoff).await;
        {
            let mut state = shared.state.lock();
            state.client = None;
            state.tracker.requeue();
        }
        drop(events);
        match end {
            End::Cancelled => break,
            End::Lost(error) => match first.take() {
                Some(first) => {
                    let _ = first.send(Err(error));
                }
                None => {
                    tracing::warn!(%error, client_id = %shared.spec.client_id, "mqtt publisher connection lost; reconnecting")
                }
            },
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    let mut state = shared.state.lock();
    state.closed = true;
    state.tracker.fail_all(|| BrokerError::Closed("mqtt"));
}

/// Polls one connection's event loop until it fails or the task is cancelled.
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
            _ = cancel.cancelled() => return End::Cancelled,
            polled = events.poll() => polled,
        };
        match polled {
            Ok(event) => {
                if let Err(desync) = handle(shared, event, first, backoff) {
                    return End::Lost(BrokerError::backend(
                        "mqtt",
                        "publisher bookkeeping",
                        desync,
                    ));
                }
            }
            Err(error) => {
                // Events rumqttc buffered before the failure still describe this connection's packets
                // (a PUBACK read just before the socket broke is a real confirmation).
                let buffered: Vec<Event> = events.state.events.drain(..).collect();
                for event in buffered {
                    if handle(shared, event, first, backoff).is_err() {
                        break;
                    }
                }
                return End::Lost(connection::connection_error(&shared.options, error));
            }
        }
    }
}

/// Applies one event to the bookkeeping. An error means the connection must be dropped.
fn handle(
    shared: &Shared,
    event: Event,
    first: &mut Option<oneshot::Sender<Result<(), BrokerError>>>,
    backoff: &mut Backoff,
) -> Result<(), Desync> {
    let mut state = shared.state.lock();
    match event {
        Event::Outgoing(Outgoing::Publish(pkid)) => state.tracker.on_sent(pkid)?,
        Event::Outgoing(Outgoing::AwaitAck(pkid)) => state.tracker.on_collision(pkid)?,
        Event::Incoming(Packet::ConnAck(connack)) => {
            state.packet_limit = connection::packet_limit(&shared.options, &connack);
            backoff.reset();
            match first.take() {
                Some(first) => {
                    let _ = first.send(Ok(()));
                }
                None => {
                    tracing::info!(client_id = %shared.spec.client_id, "mqtt publisher reconnected")
                }
            }
        }
        Event::Incoming(Packet::PubAck(ack)) => {
            let outcome = match ack.reason {
                PubAckReason::Success => Ok(true),
                PubAckReason::NoMatchingSubscribers => Ok(false),
                reason => Err(refused("PUBACK", reason)),
            };
            state.tracker.on_puback(ack.pkid, outcome);
        }
        Event::Incoming(Packet::PubRec(rec)) => {
            let failed = !matches!(
                rec.reason,
                PubRecReason::Success | PubRecReason::NoMatchingSubscribers
            );
            let outcome = if failed {
                Err(refused("PUBREC", rec.reason))
            } else {
                Ok(())
            };
            state.tracker.on_pubrec(rec.pkid, outcome);
            if failed {
                // rumqttc does not free the in-flight slot of a refused QoS 2 publish; a new
                // connection starts with a clean count.
                return Err(Desync("the broker refused a QoS 2 publish"));
            }
        }
        Event::Incoming(Packet::PubComp(comp)) => {
            let ok = comp.reason == PubCompReason::Success;
            let outcome = if ok {
                Ok(true)
            } else {
                Err(refused("PUBCOMP", comp.reason))
            };
            state.tracker.on_pubcomp(comp.pkid, outcome);
            if !ok {
                return Err(Desync("the broker lost a QoS 2 exchange"));
            }
        }
        Event::Incoming(Packet::Disconnect(disconnect)) => {
            tracing::warn!(reason = ?disconnect.reason_code, client_id = %shared.spec.client_id, "mqtt broker disconnected the publisher");
        }
        _ => {}
    }
    Ok(())
}

fn refused(packet: &str, reason: impl std::fmt::Debug) -> BrokerError {
    BrokerError::Rejected {
        backend: "mqtt",
        reason: format!("the broker answered {packet} with {reason:?}"),
    }
}
