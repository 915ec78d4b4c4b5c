//! How consumers and subscriptions share a topic: a shared subscription splits the load, separate
//! subscriptions each get everything, and undeclared consumer types are refused at subscribe.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use worker_runtime::{BrokerError, ConsumerType, Subscription};

use crate::conformance::support::{
    ack_all, number, numbered, numbers, receive_up_to, report, subscribe_options,
};
use crate::conformance::{unique_name, wait_for_total, CaseResult, Collector, Harness, Ledger};

/// Two consumers of one shared subscription, each on its own client, split 200 messages: each
/// message is delivered exactly once, and both get some.
pub async fn shared_split<H: Harness>(harness: &mut H) -> CaseResult {
    const CASE: &str = "shared_split";
    const COUNT: u64 = 200;
    let topic = harness.topic(CASE).context("topic name")?;
    let publisher = harness.broker().await.context("connect the publisher")?;
    let mut clients = Vec::new();
    let mut collectors = Vec::new();
    for consumer in ["c1", "c2"] {
        let client = harness.broker().await.context("connect")?;
        let subscription: Arc<dyn Subscription> = client
            .subscribe(subscribe_options(
                &topic,
                "workers",
                consumer,
                ConsumerType::Shared,
            ))
            .await
            .context("subscribe")?
            .into();
        // Small batches and a short pause per batch, like handlers doing some work.
        collectors.push(Collector::start(subscription, 10, Duration::from_millis(2)));
        clients.push(client);
    }
    let mut ledger = Ledger::new();
    for n in 0..COUNT {
        publisher
            .publish(&topic, numbered(n))
            .await
            .context("publish")?;
        ledger.confirmed(n);
    }
    wait_for_total(&collectors, COUNT as usize, harness.arrival_limit()).await;
    // Time for a duplicate to show up.
    tokio::time::sleep(harness.quiet_period()).await;
    let mut per_consumer = Vec::new();
    for collector in collectors {
        let (arrivals, _) = collector.stop().await?;
        per_consumer.push(arrivals.len());
        for arrival in &arrivals {
            ledger.delivered(number(&arrival.delivery)?);
        }
    }
    report(
        harness.backend(),
        CASE,
        format!(
            "{ledger}; c1 got {} c2 got {}",
            per_consumer[0], per_consumer[1]
        ),
    );
    ensure!(ledger.lost().is_empty(), "lost {:?}", ledger.lost());
    ensure!(
        ledger.duplicates() == 0,
        "some messages were delivered twice"
    );
    ensure!(
        per_consumer.iter().all(|n| *n > 0),
        "one consumer got everything: {per_consumer:?}"
    );
    Ok(())
}

/// Two subscriptions of one topic each receive all 50 messages, once.
pub async fn fan_out<H: Harness>(harness: &mut H) -> CaseResult {
    const CASE: &str = "fan_out";
    const COUNT: u64 = 50;
    let topic = harness.topic(CASE).context("topic name")?;
    let publisher = harness.broker().await.context("connect the publisher")?;
    let mut subscriptions = Vec::new();
    for name in ["sub-a", "sub-b"] {
        let client = harness.broker().await.context("connect")?;
        let subscription = client
            .subscribe(subscribe_options(&topic, name, "c1", ConsumerType::Shared))
            .await
            .context("subscribe")?;
        subscriptions.push((name, client, subscription));
    }
    for n in 0..COUNT {
        publisher
            .publish(&topic, numbered(n))
            .await
            .context("publish")?;
    }
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for (name, _client, subscription) in &subscriptions {
        let got = receive_up_to(&**subscription, COUNT as usize, harness.arrival_limit()).await?;
        ack_all(&**subscription, &got).await.context("ack")?;
        let mut ledger = Ledger::new();
        (0..COUNT).for_each(|n| ledger.confirmed(n));
        ledger.delivered_all(numbers(&got)?);
        lines.push(format!("{name}: {ledger}"));
        if !ledger.lost().is_empty() || ledger.duplicates() > 0 {
            failures.push(format!("{name}: {ledger}"));
        }
    }
    report(harness.backend(), CASE, lines.join("; "));
    ensure!(
        failures.is_empty(),
        "each subscription should get every message once: {failures:?}"
    );
    for (_, _, subscription) in subscriptions {
        subscription.close().await.context("close")?;
    }
    Ok(())
}

/// Each declared consumer type is accepted; every other one is refused at subscribe with
/// `Unsupported` or `Rejected`. Where `Exclusive` is declared, a second consumer of an exclusive
/// subscription is refused (with any error; which one is reported).
pub async fn consumer_types<H: Harness>(harness: &mut H) -> CaseResult {
    const CASE: &str = "consumer_types";
    let broker = harness.broker().await.context("connect")?;
    let declared = broker.capabilities().consumer_types;
    let topic = harness.topic(CASE).context("topic name")?;
    let mut outcome: BTreeMap<&str, String> = BTreeMap::new();
    let mut failures = Vec::new();
    for consumer_type in [
        ConsumerType::Shared,
        ConsumerType::KeyShared,
        ConsumerType::Failover,
        ConsumerType::Exclusive,
    ] {
        let options = subscribe_options(&topic, &unique_name("types"), "c1", consumer_type);
        let is_declared = declared.contains(&consumer_type);
        let name = consumer_type.as_str();
        match broker.subscribe(options.clone()).await {
            Ok(subscription) if is_declared => {
                let mut text = "accepted".to_owned();
                if consumer_type == ConsumerType::Exclusive {
                    let second =
                        subscribe_options(&topic, &options.subscription, "c2", consumer_type);
                    match broker.subscribe(second).await {
                        Ok(other) => {
                            failures.push("a second exclusive consumer was admitted".to_owned());
                            other.close().await.context("close")?;
                        }
                        Err(error) => {
                            text = format!("accepted, a second consumer refused ({})", kind(&error))
                        }
                    }
                }
                subscription.close().await.context("close")?;
                outcome.insert(name, text);
            }
            Ok(subscription) => {
                failures.push(format!("{name} is not declared but was accepted"));
                subscription.close().await.context("close")?;
                outcome.insert(name, "accepted although undeclared".to_owned());
            }
            Err(error) if is_declared => {
                failures.push(format!("{name} is declared but refused: {error}"));
                outcome.insert(name, format!("refused ({})", kind(&error)));
            }
            Err(error) => {
                if !matches!(
                    error,
                    BrokerError::Unsupported { .. } | BrokerError::Rejected { .. }
                ) {
                    failures.push(format!(
                        "{name} refused with {} instead of unsupported or rejected: {error}",
                        kind(&error)
                    ));
                }
                outcome.insert(name, format!("refused ({})", kind(&error)));
            }
        }
    }
    let declared_names: Vec<&str> = declared.iter().map(|t| t.as_str()).collect();
    report(
        harness.backend(),
        CASE,
        format!("declared {declared_names:?}; {outcome:?}"),
    );
    ensure!(failures.is_empty(), "{failures:?}");
    Ok(())
}

/// The variant of a broker error, for reports.
fn kind(error: &BrokerError) -> &'static str {
    match error {
        BrokerError::Connection { .. } => "connection",
        BrokerError::Timeout { .. } => "timeout",
        BrokerError::Full { .. } => "full",
        BrokerError::Rejected { .. } => "rejected",
        BrokerError::Unsupported { .. } => "unsupported",
        BrokerError::Closed(_) => "closed",
        BrokerError::Backend { .. } => "backend",
    }
}
