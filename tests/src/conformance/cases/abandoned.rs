//! A consumer process dies holding unacknowledged deliveries: its whole client is dropped without
//! closing anything. Where the backend declares `redelivers_abandoned`, another consumer gets them
//! within the harness's visibility timeout; elsewhere they must at least come back when a consumer
//! of the dead one's name returns (a resumed session), so that nothing is lost.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{ensure, Context as _};
use worker_runtime::ConsumerType;

use crate::conformance::support::{
    ack_all, numbered, numbers, receive_for, receive_up_to, report, subscribe_options,
};
use crate::conformance::{CaseResult, Harness, Ledger};

/// See the module docs.
pub async fn abandoned_redelivery<H: Harness>(harness: &mut H) -> CaseResult {
    const CASE: &str = "abandoned_redelivery";
    const COUNT: u64 = 10;
    let topic = harness.topic(CASE).context("topic name")?;
    let publisher = harness.broker().await.context("connect the publisher")?;
    let capabilities = publisher.capabilities();
    let options =
        |consumer: &str| subscribe_options(&topic, "workers", consumer, ConsumerType::Shared);

    let dying_client = harness.broker().await.context("connect")?;
    let dying = dying_client
        .subscribe(options("dying"))
        .await
        .context("subscribe")?;
    let mut ledger = Ledger::new();
    for n in 0..COUNT {
        publisher
            .publish(&topic, numbered(n))
            .await
            .context("publish")?;
        ledger.confirmed(n);
    }
    let held = receive_up_to(&*dying, COUNT as usize, harness.arrival_limit()).await?;
    ensure!(
        held.len() == COUNT as usize,
        "the first consumer should hold all {COUNT}, got {:?}",
        numbers(&held)?
    );

    let survivor_client = harness.broker().await.context("connect")?;
    let survivor = survivor_client
        .subscribe(options("survivor"))
        .await
        .context("subscribe")?;
    // The process dies: no ack, no close, its connections just go.
    drop(dying);
    drop(dying_client);
    let died = Instant::now();

    if capabilities.redelivers_abandoned {
        let limit = harness.abandoned_redelivery_limit();
        let got = receive_up_to(&*survivor, COUNT as usize, limit).await?;
        let waited = died.elapsed();
        ack_all(&*survivor, &got).await.context("ack")?;
        ledger.delivered_all(numbers(&got)?);
        let after = receive_for(&*survivor, harness.quiet_period()).await?;
        ack_all(&*survivor, &after).await.context("ack")?;
        ledger.delivered_all(numbers(&after)?);
        report(
            harness.backend(),
            CASE,
            format!(
                "{ledger}; another consumer got {} of {COUNT} within {waited:.1?} of the first \
                 one's death (limit {limit:?})",
                got.len()
            ),
        );
        ensure!(
            ledger.lost().is_empty(),
            "not redelivered within {limit:?}: {:?}",
            ledger.lost()
        );
        ensure!(ledger.duplicates() == 0, "redelivered more than once");
    } else {
        // Not declared: another consumer need not get them. Watch what it gets, then let a
        // consumer of the dead one's name return.
        let other = receive_for(&*survivor, harness.quiet_period()).await?;
        ack_all(&*survivor, &other).await.context("ack")?;
        ledger.delivered_all(numbers(&other)?);
        let to_other = other.len();
        let returning_client = harness.broker().await.context("connect")?;
        let returning = returning_client
            .subscribe(options("dying"))
            .await
            .context("subscribe under the dead consumer's name")?;
        let missing = ledger.lost().len();
        let got = receive_up_to(&*returning, missing, harness.arrival_limit()).await?;
        ack_all(&*returning, &got).await.context("ack")?;
        ledger.delivered_all(numbers(&got)?);
        let unique: BTreeSet<u64> = numbers(&got)?.into_iter().collect();
        report(
            harness.backend(),
            CASE,
            format!(
                "{ledger}; adapted (redelivers_abandoned not declared): another consumer got \
                 {to_other}, the returning consumer of the same name got {}",
                unique.len()
            ),
        );
        ensure!(
            ledger.lost().is_empty(),
            "lost even after the consumer returned: {:?}",
            ledger.lost()
        );
        returning.close().await.context("close")?;
    }
    survivor.close().await.context("close")?;
    Ok(())
}
