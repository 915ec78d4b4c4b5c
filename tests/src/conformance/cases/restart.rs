//! A broker restart in the middle of a stream.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use worker_runtime::{ConsumerType, Subscription};

use crate::conformance::support::{number, numbered, report, subscribe_options};
use crate::conformance::{CaseResult, Collector, Harness, Ledger};

const COUNT: u64 = 400;

/// How long the broker stays down.
const OUTAGE: Duration = Duration::from_secs(1);

/// No single publish may take longer than this, outage or not.
const PUBLISH_HANG: Duration = Duration::from_secs(20);

/// The consumer must receive again within this long after the broker is back.
const RESUME_LIMIT: Duration = Duration::from_secs(10);

/// A consumer receives and acks in its own task while a publisher sends 400 messages one at a
/// time. A third of the way through, the broker process is stopped for a second and started again;
/// the publisher keeps going (a failed publish is counted, not retried, and must fail transiently;
/// none may hang). Only publishes that returned `Ok` count as confirmed. The consumer must resume by
/// itself within 10 s of the restart; on a `durable` backend nothing confirmed may be lost. The
/// ledger is printed either way. Not applicable where the harness cannot stop its broker.
pub async fn broker_restart<H: Harness>(harness: &mut H) -> CaseResult {
    const CASE: &str = "broker_restart";
    if let Err(reason) = harness.restartable() {
        report(harness.backend(), CASE, format!("not applicable: {reason}"));
        return Ok(());
    }
    let topic = harness.topic(CASE).context("topic name")?;
    let consumer_client = harness.broker().await.context("connect the consumer")?;
    let durable = consumer_client.capabilities().durable;
    let subscription: Arc<dyn Subscription> = consumer_client
        .subscribe(subscribe_options(
            &topic,
            "workers",
            "c1",
            ConsumerType::Shared,
        ))
        .await
        .context("subscribe")?
        .into();
    let collector = Collector::start(subscription, 50, Duration::ZERO);

    let publisher = harness.broker().await.context("connect the publisher")?;
    let ledger = Arc::new(Mutex::new(Ledger::new()));
    let publishing = {
        let (ledger, topic) = (Arc::clone(&ledger), topic.clone());
        tokio::spawn(async move {
            let mut errors: Vec<String> = Vec::new();
            let mut longest = Duration::ZERO;
            for n in 0..COUNT {
                let started = Instant::now();
                let result =
                    tokio::time::timeout(PUBLISH_HANG, publisher.publish(&topic, numbered(n)))
                        .await
                        .map_err(|_| anyhow::anyhow!("publish {n} hung for {PUBLISH_HANG:?}"))?;
                longest = longest.max(started.elapsed());
                let failed = result.is_err();
                {
                    let mut ledger = ledger.lock().unwrap_or_else(PoisonError::into_inner);
                    match result {
                        Ok(_) => ledger.confirmed(n),
                        Err(error) => {
                            ledger.failed();
                            if !error.is_transient() {
                                bail!("publish {n} failed for good: {error}");
                            }
                            errors.push(error.to_string());
                        }
                    }
                }
                // Not retried; a short pause so that the outage does not eat every number.
                let pause = if failed { 50 } else { 2 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            anyhow::Ok((errors, longest))
        })
    };
    let confirmed = || {
        ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .confirmed_count()
    };

    let deadline = Instant::now() + Duration::from_secs(30);
    while confirmed() < (COUNT / 3) as usize {
        if Instant::now() >= deadline || publishing.is_finished() {
            bail!(
                "only {} publishes were confirmed before the restart",
                confirmed()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let received_before = collector.count();
    tokio::task::block_in_place(|| harness.stop_broker())?;
    let stopped = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    tokio::task::block_in_place(|| harness.start_broker())?;
    let restarted = Instant::now();

    let (errors, longest) = publishing.await.context("the publisher task")??;
    let confirmed_ledger = ledger
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let delivered_all = |arrivals: &[crate::conformance::Arrival]| {
        let mut check = confirmed_ledger.clone();
        check.delivered_all(arrivals.iter().filter_map(|a| number(&a.delivery).ok()));
        check.complete()
    };
    collector
        .wait_until(Duration::from_secs(30), delivered_all)
        .await;
    // Late duplicates show up now.
    tokio::time::sleep(harness.quiet_period()).await;
    let (arrivals, trouble) = collector.stop().await?;

    let mut ledger = confirmed_ledger;
    for arrival in &arrivals {
        ledger.delivered(number(&arrival.delivery)?);
    }
    let resumed = arrivals
        .iter()
        .map(|a| a.at)
        .filter(|at| *at > restarted)
        .min()
        .map(|at| at - restarted);
    report(
        harness.backend(),
        CASE,
        format!(
            "{ledger}; broker down {:.1?} after {received_before} received, consumer resumed {} \
             after the restart, longest publish {longest:.1?}, receive errors {} ack errors {}{}{}",
            restarted - stopped,
            resumed.map_or("never".to_owned(), |d| format!("{d:.2?}")),
            trouble.receive_errors,
            trouble.ack_errors,
            errors
                .first()
                .map_or(String::new(), |e| format!(", first publish error: {e}")),
            if durable {
                ""
            } else {
                " (durable not declared: loss allowed)"
            }
        ),
    );
    ensure!(
        resumed.is_some_and(|d| d < RESUME_LIMIT),
        "the consumer did not resume within {RESUME_LIMIT:?} of the restart"
    );
    if durable {
        ensure!(
            ledger.lost().is_empty(),
            "confirmed messages lost on a durable backend: {:?}",
            ledger.lost()
        );
    }
    Ok(())
}
