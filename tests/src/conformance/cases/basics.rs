//! Publish and consume with properties and key; acknowledged messages never come back; nacked
//! ones do.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use worker_runtime::{ConsumerType, Message, Subscription};

use crate::conformance::support::{
    ack_all, number, numbered, numbers, receive_for, receive_up_to, report, subscribe_options,
};
use crate::conformance::{CaseResult, Harness};

/// Ten messages with properties (one empty, one not ASCII) and keys (one without) arrive intact:
/// payload, properties, key, topic name, and a redelivery count of 0.
pub async fn publish_and_consume<H: Harness>(harness: &mut H) -> CaseResult {
    const CASE: &str = "publish_and_consume";
    const COUNT: u64 = 10;
    let broker = harness.broker().await.context("connect")?;
    let topic = harness.topic(CASE).context("topic name")?;
    let subscription = broker
        .subscribe(subscribe_options(
            &topic,
            "workers",
            "c1",
            ConsumerType::Shared,
        ))
        .await
        .context("subscribe")?;
    let sent: Vec<Message> = (0..COUNT)
        .map(|n| {
            let message = numbered(n)
                .with_property("wr-message-id", format!("id-{n}"))
                .with_property("greeting", "grüße ✓")
                .with_property("empty", "");
            // The last one has no key: "no key" must arrive as no key.
            if n + 1 < COUNT {
                message.with_key(format!("key-{}", n % 3))
            } else {
                message
            }
        })
        .collect();
    for message in &sent {
        broker
            .publish(&topic, message.clone())
            .await
            .context("publish")?;
    }
    let got = receive_up_to(&*subscription, sent.len(), harness.arrival_limit()).await?;
    let got_numbers = numbers(&got)?;
    let unique: BTreeSet<u64> = got_numbers.iter().copied().collect();
    let mut extra_properties = BTreeSet::new();
    for delivery in &got {
        let n = number(delivery)?;
        let expected = usize::try_from(n)
            .ok()
            .and_then(|i| sent.get(i))
            .with_context(|| format!("a delivery numbered {n}, which was never published"))?;
        ensure!(
            delivery.payload() == &expected.payload,
            "message {n}: payload changed"
        );
        ensure!(
            delivery.message.key == expected.key,
            "message {n}: key {:?} arrived as {:?}",
            expected.key,
            delivery.message.key
        );
        for (name, value) in &expected.properties {
            ensure!(
                delivery.property(name) == Some(value.as_str()),
                "message {n}: property `{name}` = {value:?} arrived as {:?}",
                delivery.property(name)
            );
        }
        extra_properties.extend(
            delivery
                .message
                .properties
                .keys()
                .filter(|name| !expected.properties.contains_key(*name))
                .cloned(),
        );
        ensure!(
            *delivery.topic == *topic.to_string(),
            "message {n}: delivered from topic `{}`, published to `{topic}`",
            delivery.topic
        );
        ensure!(
            delivery.redelivery_count == 0,
            "message {n}: first delivery has redelivery count {}",
            delivery.redelivery_count
        );
    }
    ack_all(&*subscription, &got).await.context("ack")?;
    report(
        harness.backend(),
        CASE,
        format!(
            "published {COUNT} delivered {} unique {}; payload, properties and key intact{}",
            got.len(),
            unique.len(),
            if extra_properties.is_empty() {
                String::new()
            } else {
                format!(" (backend added properties {extra_properties:?})")
            }
        ),
    );
    ensure!(
        unique.len() == sent.len() && got.len() == sent.len(),
        "expected each of {COUNT} messages once, got {got_numbers:?}"
    );
    subscription.close().await.context("close")?;
    Ok(())
}

/// Acknowledged messages never come back: not to the consumer that reattaches under the same name
/// on a new client (a resumed session), nor to a new consumer of the subscription. A message
/// published afterwards does arrive, once, which shows the two are really listening.
pub async fn ack_is_final<H: Harness>(harness: &mut H) -> CaseResult {
    const CASE: &str = "ack_is_final";
    const COUNT: u64 = 5;
    let topic = harness.topic(CASE).context("topic name")?;
    let first_client = harness.broker().await.context("connect")?;
    let first = first_client
        .subscribe(subscribe_options(
            &topic,
            "workers",
            "c1",
            ConsumerType::Shared,
        ))
        .await
        .context("subscribe")?;
    for n in 0..COUNT {
        first_client
            .publish(&topic, numbered(n))
            .await
            .context("publish")?;
    }
    let got = receive_up_to(&*first, COUNT as usize, harness.arrival_limit()).await?;
    ensure!(
        got.len() == COUNT as usize,
        "expected {COUNT} deliveries, got {:?}",
        numbers(&got)?
    );
    ack_all(&*first, &got).await.context("ack")?;
    first.close().await.context("close")?;
    drop(first);
    drop(first_client);

    let client = harness.broker().await.context("connect again")?;
    let resumed = client
        .subscribe(subscribe_options(
            &topic,
            "workers",
            "c1",
            ConsumerType::Shared,
        ))
        .await
        .context("subscribe under the same name")?;
    let newcomer = client
        .subscribe(subscribe_options(
            &topic,
            "workers",
            "c2",
            ConsumerType::Shared,
        ))
        .await
        .context("subscribe a new consumer")?;
    let quiet = harness.quiet_period();
    let (came_back_resumed, came_back_new) = tokio::join!(
        receive_for(&*resumed, quiet),
        receive_for(&*newcomer, quiet)
    );
    let came_back: Vec<u64> = numbers(&came_back_resumed?)?
        .into_iter()
        .chain(numbers(&came_back_new?)?)
        .collect();

    // The probe: one more message reaches one of the two, once.
    client
        .publish(&topic, numbered(COUNT))
        .await
        .context("publish the probe")?;
    let probe = receive_on_either(&*resumed, &*newcomer, COUNT, harness.arrival_limit()).await?;

    report(
        harness.backend(),
        CASE,
        format!(
            "acked {COUNT}, came back after reattaching {}, probe delivered {} time(s)",
            came_back.len(),
            probe.iter().filter(|n| **n == COUNT).count()
        ),
    );
    ensure!(
        came_back.is_empty(),
        "acknowledged messages came back: {came_back:?}"
    );
    ensure!(
        probe == [COUNT],
        "the probe published after reattaching should arrive once, got {probe:?}"
    );
    resumed.close().await.context("close")?;
    newcomer.close().await.context("close")?;
    Ok(())
}

/// Receives (and acks) on both subscriptions until message `probe` arrived on one of them and
/// nothing more came for a moment, or `limit` passed; returns the numbers received.
async fn receive_on_either(
    a: &dyn Subscription,
    b: &dyn Subscription,
    probe: u64,
    limit: Duration,
) -> anyhow::Result<Vec<u64>> {
    const SLICE: Duration = Duration::from_millis(100);
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut found: Option<Instant> = None;
    while Instant::now() < deadline && found.is_none_or(|at| at.elapsed() < SLICE * 3) {
        let (from_a, from_b) =
            tokio::join!(receive_up_to(a, 10, SLICE), receive_up_to(b, 10, SLICE));
        let (from_a, from_b) = (from_a?, from_b?);
        ack_all(a, &from_a).await.context("ack")?;
        ack_all(b, &from_b).await.context("ack")?;
        got.extend(numbers(&from_a)?);
        got.extend(numbers(&from_b)?);
        if found.is_none() && got.contains(&probe) {
            found = Some(Instant::now());
        }
    }
    Ok(got)
}

/// A nacked message comes back soon (declared `nack_redelivery`), intact; once acknowledged it stays
/// away. Its redelivery count is reported, not required: some backends cannot know it.
pub async fn nack_redelivers<H: Harness>(harness: &mut H) -> CaseResult {
    const CASE: &str = "nack_redelivers";
    let broker = harness.broker().await.context("connect")?;
    let capabilities = broker.capabilities();
    let topic = harness.topic(CASE).context("topic name")?;
    let subscription = broker
        .subscribe(subscribe_options(
            &topic,
            "workers",
            "c1",
            ConsumerType::Shared,
        ))
        .await
        .context("subscribe")?;
    for n in 0..3 {
        let message = numbered(n).with_key("k").with_property("kept", "yes");
        broker.publish(&topic, message).await.context("publish")?;
    }
    let got = receive_up_to(&*subscription, 3, harness.arrival_limit()).await?;
    ensure!(
        got.len() == 3,
        "expected 3 deliveries, got {:?}",
        numbers(&got)?
    );
    let (nacked, acked): (Vec<_>, Vec<_>) = got
        .into_iter()
        .partition(|d| number(d).is_ok_and(|n| n == 1));
    subscription
        .nack(nacked.iter().map(|d| d.id.clone()).collect())
        .await
        .context("nack")?;
    ack_all(&*subscription, &acked).await.context("ack")?;

    let limit = if capabilities.nack_redelivery {
        harness.arrival_limit()
    } else {
        harness.quiet_period()
    };
    let again = receive_up_to(&*subscription, 1, limit).await?;
    ack_all(&*subscription, &again).await.context("ack")?;
    let after = receive_for(&*subscription, harness.quiet_period()).await?;
    ack_all(&*subscription, &after).await.context("ack")?;
    let counts: Vec<u32> = again.iter().map(|d| d.redelivery_count).collect();
    report(
        harness.backend(),
        CASE,
        format!(
            "nacked 1, came back {} time(s) with redelivery count {counts:?}, then {} more{}",
            again.len(),
            after.len(),
            if capabilities.nack_redelivery {
                ""
            } else {
                " (nack_redelivery not declared: coming back not required)"
            }
        ),
    );
    if capabilities.nack_redelivery {
        let back = again
            .first()
            .context("the nacked message did not come back")?;
        ensure!(
            number(back)? == 1,
            "expected the nacked message 1 back, got {}",
            number(back)?
        );
        ensure!(
            back.message.key.as_deref() == Some("k") && back.property("kept") == Some("yes"),
            "the redelivered message lost its key or properties: {:?}",
            back.message
        );
    }
    ensure!(
        after.is_empty(),
        "messages came back after they were acknowledged: {:?}",
        numbers(&after)?
    );
    subscription.close().await.context("close")?;
    Ok(())
}
