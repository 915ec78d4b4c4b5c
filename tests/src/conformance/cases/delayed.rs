//! Delayed delivery: a message with `deliver_at` 1.5 s ahead, and one without, published together.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Context as _};
use worker_runtime::{ConsumerType, DelayedDelivery};

use crate::conformance::support::{ack_all, number, numbered, report, subscribe_options};
use crate::conformance::{CaseResult, Harness};

const DELAY: Duration = Duration::from_millis(1500);

/// Clock and timer granularity the backends may round to.
const EARLY_TOLERANCE: Duration = Duration::from_millis(50);

/// With `delayed_delivery == Native` the delayed message arrives no earlier than its time (within
/// 50 ms) and within the arrival limit after it, and the undelayed one arrives first. With
/// `Unsupported` both must arrive, and the delay observed is only reported.
pub async fn delayed_delivery<H: Harness>(harness: &mut H) -> CaseResult {
    const CASE: &str = "delayed_delivery";
    let broker = harness.broker().await.context("connect")?;
    let native = broker.capabilities().delayed_delivery == DelayedDelivery::Native;
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
    let due = SystemTime::now() + DELAY;
    let started = Instant::now();
    broker
        .publish(&topic, numbered(0).with_deliver_at(due))
        .await
        .context("publish the delayed message")?;
    broker
        .publish(&topic, numbered(1))
        .await
        .context("publish the undelayed message")?;

    // Arrival times (wall clock, to compare with `due`), in arrival order.
    let mut arrivals: Vec<(u64, SystemTime, Duration)> = Vec::new();
    let deadline = Instant::now() + DELAY + harness.arrival_limit();
    while arrivals.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(batch) = tokio::time::timeout(left, subscription.receive(2)).await else {
            break;
        };
        let batch = batch.context("receive")?;
        let now = SystemTime::now();
        for delivery in &batch {
            arrivals.push((number(delivery)?, now, started.elapsed()));
        }
        ack_all(&*subscription, &batch).await.context("ack")?;
    }
    let delayed = arrivals.iter().find(|(n, _, _)| *n == 0);
    let undelayed = arrivals.iter().find(|(n, _, _)| *n == 1);
    let shown = |a: Option<&(u64, SystemTime, Duration)>| {
        a.map_or("never".to_owned(), |(_, _, after)| format!("{after:.2?}"))
    };
    report(
        harness.backend(),
        CASE,
        format!(
            "delayed by {DELAY:?}: arrived after {}, undelayed after {}{}",
            shown(delayed),
            shown(undelayed),
            if native {
                ""
            } else {
                " (adapted: delayed_delivery Unsupported, the delay is the runtime's to hold)"
            }
        ),
    );
    let (_, delayed_at, _) = delayed.context("the delayed message never arrived")?;
    undelayed.context("the undelayed message never arrived")?;
    if native {
        ensure!(
            *delayed_at + EARLY_TOLERANCE >= due,
            "the delayed message arrived {:?} before its time",
            due.duration_since(*delayed_at).unwrap_or_default()
        );
        ensure!(
            arrivals.first().is_some_and(|(n, _, _)| *n == 1),
            "the delayed message overtook the undelayed one"
        );
    }
    subscription.close().await.context("close")?;
    Ok(())
}
