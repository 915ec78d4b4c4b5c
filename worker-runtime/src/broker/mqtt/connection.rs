//! What every MQTT connection of this backend shares: how its rumqttc options are built, how long it
//! waits before reconnecting, and how client errors become [`BrokerError`]s.
//!
//! Each connection attempt gets a fresh rumqttc `EventLoop` and `AsyncClient`. rumqttc keeps requests
//! that sat in its channel when a connection broke and sends them on the next one; a packet
//! acknowledgement (PUBACK) queued for the old connection would then acknowledge whatever message the
//! broker gave that packet id on the new one. A fresh pair per connection makes requests of a dead
//! connection die with it, and each backend module resends what it still owes itself.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::ConnAck;
use rumqttc::v5::{AsyncClient, ConnectionError, EventLoop};
use worker_core::BrokerError;

use super::MqttOptions;

/// rumqttc refuses a keep-alive under 5 s (it panics), so shorter settings are raised to this.
const MIN_KEEP_ALIVE: Duration = Duration::from_secs(5);

/// How one connection identifies itself and what it asks of the broker.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionSpec {
    /// The client id (stable for consumers, unique for publishers).
    pub client_id: String,
    /// Whether the broker should keep the session (subscriptions, unacknowledged messages).
    pub persistent: bool,
    /// For persistent sessions: the most unacknowledged messages the broker may send at once.
    pub receive_maximum: u16,
    /// The capacity of rumqttc's request channel.
    pub request_capacity: usize,
    /// rumqttc's bound on our own unacknowledged publishes (it preallocates one slot per id).
    pub outgoing_inflight: u16,
}

/// A fresh client and event loop for one connection attempt.
pub(crate) fn open(options: &MqttOptions, spec: &ConnectionSpec) -> (AsyncClient, EventLoop) {
    let mut mqtt = rumqttc::v5::MqttOptions::new(&spec.client_id, &options.host, options.port);
    mqtt.set_keep_alive(options.keep_alive.max(MIN_KEEP_ALIVE))
        .set_clean_start(!spec.persistent)
        .set_manual_acks(true)
        .set_max_packet_size(Some(options.max_packet_bytes))
        .set_receive_maximum(Some(spec.receive_maximum.max(1)))
        .set_outgoing_inflight_upper_limit(spec.outgoing_inflight.max(1))
        .set_connection_timeout(options.connect_timeout.as_secs().max(1));
    if spec.persistent {
        let seconds = u32::try_from(options.session_expiry.as_secs()).unwrap_or(u32::MAX);
        mqtt.set_session_expiry_interval(Some(seconds));
    }
    if let Some(username) = &options.username {
        let password = options
            .password
            .as_ref()
            .map(|secret| secret.expose().to_owned())
            .unwrap_or_default();
        mqtt.set_credentials(username.clone(), password);
    }
    AsyncClient::new(mqtt, spec.request_capacity.max(1))
}

/// The largest packet the broker accepts, as it announced in its CONNACK, capped by our own limit.
pub(crate) fn packet_limit(options: &MqttOptions, connack: &ConnAck) -> u32 {
    connack
        .properties
        .as_ref()
        .and_then(|props| props.max_packet_size)
        .map_or(options.max_packet_bytes, |broker| {
            broker.min(options.max_packet_bytes)
        })
}

/// Exponential reconnect delays with jitter, reset once a connection succeeds.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Delays from `min` doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The next delay: the current step, jittered to 50–100 %.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        step.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// Starts again from the shortest delay.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A connection failure as a transient [`BrokerError`], naming the broker but never the credentials.
pub(crate) fn connection_error(options: &MqttOptions, error: ConnectionError) -> BrokerError {
    BrokerError::connection(
        "mqtt",
        format!("connection to {}:{}", options.host, options.port),
        error,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<Duration> = (0..5).map(|_| backoff.next_delay()).collect();
        let caps = [100, 200, 400, 400, 400].map(Duration::from_millis);
        for (delay, cap) in delays.iter().zip(caps) {
            assert!(
                *delay <= cap && *delay >= cap / 2,
                "{delay:?} not in [{cap:?}/2, {cap:?}]"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
