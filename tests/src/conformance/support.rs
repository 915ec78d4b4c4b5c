//! Small helpers the cases share: numbered messages, subscribe options, bounded receives and the
//! summary line.

use std::fmt::Display;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use worker_runtime::{
    BrokerError, ConsumerType, Delivery, InitialPosition, Message, MessageId, SubscribeOptions,
    Subscription, Topic,
};

/// The property that carries a test message's number.
pub const NUMBER: &str = "conformance-n";

/// The largest batch one `receive` asks for.
const BATCH: usize = 100;

/// A message carrying its number `n` in [`NUMBER`] and in its payload.
pub fn numbered(n: u64) -> Message {
    Message::new(format!("payload-{n}")).with_property(NUMBER, n.to_string())
}

/// The number a test message carries.
pub fn number(delivery: &Delivery) -> anyhow::Result<u64> {
    delivery
        .property(NUMBER)
        .and_then(|text| text.parse().ok())
        .with_context(|| {
            format!(
                "delivery {} has no number in its `{NUMBER}` property",
                delivery.id
            )
        })
}

/// The numbers of a batch of deliveries, in delivery order.
pub fn numbers(deliveries: &[Delivery]) -> anyhow::Result<Vec<u64>> {
    deliveries.iter().map(number).collect()
}

/// The broker ids of a batch of deliveries, for `ack` and `nack`.
pub fn ids(deliveries: &[Delivery]) -> Vec<MessageId> {
    deliveries.iter().map(|d| d.id.clone()).collect()
}

/// Options for consumer `consumer` of `subscription` on `topic`, reading from the earliest
/// position, with a prefetch of 100.
pub fn subscribe_options(
    topic: &Topic,
    subscription: &str,
    consumer: &str,
    consumer_type: ConsumerType,
) -> SubscribeOptions {
    SubscribeOptions {
        topic: topic.clone(),
        subscription: subscription.to_owned(),
        consumer_name: consumer.to_owned(),
        consumer_type,
        initial_position: InitialPosition::Earliest,
        receiver_queue_size: 100,
    }
}

/// Receives until `want` deliveries arrived or `limit` passed, and returns what arrived. A failed
/// `receive` ends it with that error. The receive in flight when `limit` passes is dropped, which
/// the [`Subscription`] contract allows.
pub async fn receive_up_to(
    subscription: &dyn Subscription,
    want: usize,
    limit: Duration,
) -> Result<Vec<Delivery>, BrokerError> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let max = (want - got.len()).min(BATCH);
        match tokio::time::timeout(left, subscription.receive(max)).await {
            Ok(batch) => got.extend(batch?),
            Err(_) => break,
        }
    }
    Ok(got)
}

/// Receives everything that arrives within `wait` (nothing, on a quiet subscription).
pub async fn receive_for(
    subscription: &dyn Subscription,
    wait: Duration,
) -> Result<Vec<Delivery>, BrokerError> {
    receive_up_to(subscription, usize::MAX, wait).await
}

/// Acknowledges a batch of deliveries.
pub async fn ack_all(
    subscription: &dyn Subscription,
    deliveries: &[Delivery],
) -> Result<(), BrokerError> {
    if deliveries.is_empty() {
        return Ok(());
    }
    subscription.ack(ids(deliveries)).await
}

/// Prints the one-line summary of a case on a backend: `conformance[valkey] restart: …`.
pub fn report(backend: &str, case: &str, text: impl Display) {
    println!("conformance[{backend}] {case}: {text}");
}
