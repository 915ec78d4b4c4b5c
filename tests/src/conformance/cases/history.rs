//! Where a new subscription starts: an `Earliest` subscription created after some messages were
//! published sees them where the backend declares `history`, and in any case everything published
//! after it subscribed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use worker_runtime::ConsumerType;

use crate::conformance::support::{
    ack_all, numbered, numbers, receive_for, receive_up_to, report, subscribe_options,
};
use crate::conformance::{CaseResult, Harness};

const BEFORE: u64 = 5;
const AFTER: u64 = 5;

/// An "anchor" subscription exists from the start (so that the early messages have somewhere to
/// go on every backend); five messages are published; then a second subscription is created at
/// `Earliest`, and five more are published. The anchor gets all ten. The late subscription gets the
/// last five, and the first five too where `history` is declared; without it, how many of them it
/// got is only reported.
pub async fn earliest_position<H: Harness>(harness: &mut H) -> CaseResult {
    const CASE: &str = "earliest_position";
    let broker = harness.broker().await.context("connect")?;
    let history = broker.capabilities().history;
    let topic = harness.topic(CASE).context("topic name")?;
    let anchor = broker
        .subscribe(subscribe_options(
            &topic,
            "anchor",
            "c1",
            ConsumerType::Shared,
        ))
        .await
        .context("subscribe the anchor")?;
    for n in 0..BEFORE {
        broker
            .publish(&topic, numbered(n))
            .await
            .context("publish")?;
    }
    let late = broker
        .subscribe(subscribe_options(
            &topic,
            "late",
            "c1",
            ConsumerType::Shared,
        ))
        .await
        .context("subscribe late")?;
    for n in BEFORE..BEFORE + AFTER {
        broker
            .publish(&topic, numbered(n))
            .await
            .context("publish")?;
    }
    let all: BTreeSet<u64> = (0..BEFORE + AFTER).collect();
    let after: BTreeSet<u64> = (BEFORE..BEFORE + AFTER).collect();

    let anchor_got = receive_up_to(&*anchor, all.len(), harness.arrival_limit()).await?;
    ack_all(&*anchor, &anchor_got).await.context("ack")?;
    let anchor_got: BTreeSet<u64> = numbers(&anchor_got)?.into_iter().collect();

    // The late subscription: until what it must get arrived, then a moment for the rest.
    let must: &BTreeSet<u64> = if history { &all } else { &after };
    let mut late_got = BTreeSet::new();
    let deadline = Instant::now() + harness.arrival_limit();
    while !must.is_subset(&late_got) && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch = receive_up_to(&*late, all.len(), left.min(Duration::from_millis(200))).await?;
        ack_all(&*late, &batch).await.context("ack")?;
        late_got.extend(numbers(&batch)?);
    }
    let rest = receive_for(&*late, Duration::from_millis(300)).await?;
    ack_all(&*late, &rest).await.context("ack")?;
    late_got.extend(numbers(&rest)?);
    let early_seen = late_got.iter().filter(|n| **n < BEFORE).count();
    report(
        harness.backend(),
        CASE,
        format!(
            "anchor got {} of {}; late subscription got {} of {AFTER} published after it and \
             {early_seen} of {BEFORE} published before it{}",
            anchor_got.len(),
            all.len(),
            late_got.intersection(&after).count(),
            if history {
                ""
            } else {
                " (adapted: history not declared, the earlier ones are not required)"
            }
        ),
    );
    ensure!(
        anchor_got == all,
        "the anchor subscription missed messages: got {anchor_got:?}"
    );
    ensure!(
        must.is_subset(&late_got),
        "the late subscription should have got {must:?}, got {late_got:?}"
    );
    anchor.close().await.context("close")?;
    late.close().await.context("close")?;
    Ok(())
}
