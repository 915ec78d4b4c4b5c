//! Order within a key, where the backend promises it (`key_ordering` and an ordered consumer type
//! it supports); elsewhere only that every keyed message arrives.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use worker_runtime::{ConsumerType, Subscription};

use crate::conformance::support::{number, numbered, report, subscribe_options};
use crate::conformance::{wait_for_total, Arrival, CaseResult, Collector, Harness, Ledger};

const KEYS: u64 = 4;
const PER_KEY: u64 = 50;

/// Four keys, fifty messages each, published interleaved and one at a time (so publish order is
/// defined). With `key_ordering` declared, the case subscribes with the first ordered consumer
/// type the backend supports (key-shared, failover, exclusive), two consumers where the type
/// admits two, and checks per consumer and key that first deliveries come in publish order; for
/// key-shared also that a key stays with one consumer, for failover that only one consumer is
/// active. Without it, it uses a shared subscription and checks only that everything arrives.
pub async fn key_order<H: Harness>(harness: &mut H) -> CaseResult {
    const CASE: &str = "key_order";
    let topic = harness.topic(CASE).context("topic name")?;
    let publisher = harness.broker().await.context("connect the publisher")?;
    let capabilities = publisher.capabilities();
    let ordered = [
        ConsumerType::KeyShared,
        ConsumerType::Failover,
        ConsumerType::Exclusive,
    ]
    .into_iter()
    .find(|t| capabilities.consumer_types.contains(t))
    .filter(|_| capabilities.key_ordering);
    let consumer_type = ordered.unwrap_or(ConsumerType::Shared);
    let consumers: &[&str] = if consumer_type == ConsumerType::Exclusive {
        &["c1"]
    } else {
        &["c1", "c2"]
    };
    let mut clients = Vec::new();
    let mut collectors = Vec::new();
    for consumer in consumers {
        let client = harness.broker().await.context("connect")?;
        let subscription: Arc<dyn Subscription> = client
            .subscribe(subscribe_options(
                &topic,
                "workers",
                consumer,
                consumer_type,
            ))
            .await
            .with_context(|| format!("subscribe {}", consumer_type.as_str()))?
            .into();
        collectors.push(Collector::start(subscription, 10, Duration::from_millis(1)));
        clients.push(client);
    }
    let mut ledger = Ledger::new();
    for i in 0..PER_KEY {
        for key in 0..KEYS {
            let n = i * KEYS + key;
            let message = numbered(n)
                .with_key(format!("k{key}"))
                .with_property("seq", i.to_string());
            publisher
                .publish(&topic, message)
                .await
                .context("publish")?;
            ledger.confirmed(n);
        }
    }
    let total = (KEYS * PER_KEY) as usize;
    wait_for_total(&collectors, total, harness.arrival_limit()).await;
    let mut per_consumer: Vec<Vec<Arrival>> = Vec::new();
    for collector in collectors {
        per_consumer.push(collector.stop().await?.0);
    }

    // Per consumer: the keys it got, and whether each key's first deliveries were in order.
    let mut disorder = Vec::new();
    let mut keys_of: Vec<BTreeSet<u64>> = Vec::new();
    for (consumer, arrivals) in consumers.iter().zip(&per_consumer) {
        let mut seen = BTreeSet::new();
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        for arrival in arrivals {
            let n = number(&arrival.delivery)?;
            ledger.delivered(n);
            if !seen.insert(n) {
                continue;
            }
            let (key, seq) = (n % KEYS, n / KEYS);
            if let Some(previous) = last.insert(key, seq) {
                if seq < previous {
                    disorder.push(format!("{consumer}: k{key} #{seq} after #{previous}"));
                }
            }
        }
        keys_of.push(last.keys().copied().collect());
    }
    let split_keys: Vec<u64> = (0..KEYS)
        .filter(|key| keys_of.iter().filter(|keys| keys.contains(key)).count() > 1)
        .collect();
    let counts: Vec<usize> = per_consumer.iter().map(Vec::len).collect();
    let how = match ordered {
        Some(t) => format!(
            "{} consumers of a {} subscription",
            consumers.len(),
            t.as_str()
        ),
        None => format!(
            "adapted ({}): shared subscription, order not checked",
            if capabilities.key_ordering {
                "no ordered consumer type declared"
            } else {
                "key_ordering not declared"
            }
        ),
    };
    report(
        harness.backend(),
        CASE,
        format!(
            "{ledger}; {how}; per consumer {counts:?}, keys split across consumers {split_keys:?}, \
             out of order {}",
            disorder.len()
        ),
    );
    ensure!(ledger.lost().is_empty(), "lost {:?}", ledger.lost());
    if ordered.is_some() {
        ensure!(
            disorder.is_empty(),
            "order within a key broken: {disorder:?}"
        );
    }
    match ordered {
        Some(ConsumerType::KeyShared) => {
            ensure!(
                split_keys.is_empty(),
                "keys served by two consumers: {split_keys:?}"
            )
        }
        Some(ConsumerType::Failover) => ensure!(
            counts.iter().filter(|c| **c > 0).count() == 1,
            "more than one failover consumer was active: {counts:?}"
        ),
        _ => {}
    }
    Ok(())
}
