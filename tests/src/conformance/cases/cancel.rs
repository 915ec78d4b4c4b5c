//! Cancel safety of `receive`: receive futures dropped at random points lose nothing.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context as _};
use worker_runtime::ConsumerType;

use crate::conformance::support::{
    ack_all, numbered, numbers, receive_for, report, subscribe_options,
};
use crate::conformance::{CaseResult, Harness, Ledger};

const COUNT: u64 = 300;

/// A publisher sends 300 messages at a trickle while the consumer calls `receive` under random
/// time limits from 0 (polled once, then dropped) to 3 ms, so that many receives are dropped while
/// waiting, and some just as messages arrive. Every confirmed message must still be delivered
/// (lost = 0); duplicates are counted and reported.
pub async fn receive_cancel_safety<H: Harness>(harness: &mut H) -> CaseResult {
    const CASE: &str = "receive_cancel_safety";
    let topic = harness.topic(CASE).context("topic name")?;
    let consumer = harness.broker().await.context("connect")?;
    let subscription = consumer
        .subscribe(subscribe_options(
            &topic,
            "workers",
            "c1",
            ConsumerType::Shared,
        ))
        .await
        .context("subscribe")?;
    let publisher = harness.broker().await.context("connect the publisher")?;
    let ledger = Arc::new(Mutex::new(Ledger::new()));
    let publishing = {
        let (ledger, topic) = (Arc::clone(&ledger), topic.clone());
        tokio::spawn(async move {
            for n in 0..COUNT {
                let result = publisher.publish(&topic, numbered(n)).await;
                {
                    let mut ledger = ledger.lock().unwrap_or_else(PoisonError::into_inner);
                    match result {
                        Ok(_) => ledger.confirmed(n),
                        Err(_) => ledger.failed(),
                    }
                }
                if n % 3 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos() as u64 | 1);
    let mut random = XorShift(seed);
    let mut cancelled = 0_usize;
    let mut delivered: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = publishing.is_finished() && {
            let ledger = ledger.lock().unwrap_or_else(PoisonError::into_inner);
            let mut check = ledger.clone();
            check.delivered_all(delivered.iter().copied());
            check.complete()
        };
        if done || Instant::now() >= deadline {
            break;
        }
        let roll = random.next();
        let wait = if roll.is_multiple_of(4) {
            Duration::ZERO
        } else {
            Duration::from_micros(roll % 3000)
        };
        let max = (roll >> 20) as usize % 7 + 1;
        match tokio::time::timeout(wait, subscription.receive(max)).await {
            Ok(batch) => {
                let batch = batch.context("receive")?;
                ack_all(&*subscription, &batch).await.context("ack")?;
                delivered.extend(numbers(&batch)?);
            }
            Err(_) => cancelled += 1,
        }
    }
    publishing.await.context("the publisher task")?;
    // Anything late (a duplicate) shows up now.
    let late = receive_for(&*subscription, harness.quiet_period()).await?;
    ack_all(&*subscription, &late).await.context("ack")?;
    delivered.extend(numbers(&late)?);

    let mut ledger = ledger
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    ledger.delivered_all(delivered);
    report(
        harness.backend(),
        CASE,
        format!("{ledger}; receives dropped before they resolved {cancelled} (seed {seed})"),
    );
    ensure!(ledger.lost().is_empty(), "lost {:?}", ledger.lost());
    ensure!(
        cancelled >= 20,
        "only {cancelled} receives were dropped: the case did not test much"
    );
    subscription.close().await.context("close")?;
    Ok(())
}

/// A tiny xorshift generator: random enough to spread the cancellation points; the seed is printed
/// so that a failing run's sequence of limits can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
