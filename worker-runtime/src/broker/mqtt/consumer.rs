//! A consumer's background task: one connection after another, each with a fresh rumqttc event loop,
//! turning its events into deliveries and resubscribing on every CONNACK.

use std::sync::Arc;

use rumqttc::v5::mqttbytes::v5::{
    DisconnectReasonCode, Filter, Packet, Publish, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Event, EventLoop};
use rumqttc::Outgoing;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use worker_core::{BrokerError, Delivery, MessageId};

use super::codec;
use super::connection::{self, Backoff};
use super::subscription::{Held, Shared, DISCONNECT_WAIT};

/// Why a connection ended.
enum End {
    /// Cancelled, or closed with a DISCONNECT.
    Stopped,
    Lost(BrokerError),
}

/// The background task: one connection after another, until stopped.
pub(super) async fn run(
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
        defect: None,
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
