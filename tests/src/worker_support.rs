//! Helpers for tests that run a worker: start it in the background, stop it, and read a topic
//! (a dead-letter queue, say) through the broker trait alone.

use std::time::Duration;

use worker_runtime::worker::{CancellationToken, WorkerBuilder, WorkerError, WorkerReport};
use worker_runtime::{Broker, ConsumerType, Delivery, InitialPosition, SubscribeOptions, Topic};

/// A worker running in a background task.
pub struct RunningWorker {
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<WorkerReport, WorkerError>>,
}

impl RunningWorker {
    /// Builds and starts the worker; panics on a configuration error (tests configure it).
    pub fn start(builder: WorkerBuilder) -> Self {
        let worker = builder
            .build()
            .expect("the test's worker configuration is valid");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(worker.run(shutdown.clone()));
        RunningWorker { shutdown, handle }
    }

    /// Signals shutdown and waits for the worker's report.
    pub async fn stop(self) -> WorkerReport {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("the worker task did not panic")
            .expect("the worker stopped without error")
    }

    /// Kills the worker's task without a graceful shutdown, as a crash would (its subscriptions
    /// are dropped, unacked deliveries go back to the broker).
    pub fn kill(self) {
        self.handle.abort();
    }
}

/// Reads up to `count` messages from `topic` with a fresh subscription that starts at the earliest
/// message, waiting at most `within` (tokio time) for them, and acks them.
pub async fn read_topic(
    broker: &dyn Broker,
    topic: &str,
    count: usize,
    within: Duration,
) -> Vec<Delivery> {
    let subscription = format!("reader-{}", next_reader_id());
    read_subscription(broker, topic, &subscription, count, within).await
}

/// Like [`read_topic`], through the subscription named `subscription` (created at the earliest
/// message if it does not exist).
pub async fn read_subscription(
    broker: &dyn Broker,
    topic: &str,
    subscription: &str,
    count: usize,
    within: Duration,
) -> Vec<Delivery> {
    let topic = Topic::parse(topic).expect("a valid topic");
    let subscription = broker
        .subscribe(SubscribeOptions {
            topic,
            subscription: subscription.to_owned(),
            consumer_name: "test-reader".into(),
            consumer_type: ConsumerType::Shared,
            initial_position: InitialPosition::Earliest,
            receiver_queue_size: 1000,
        })
        .await
        .expect("subscribe the reader");
    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while read.len() < count {
        match tokio::time::timeout_at(deadline, subscription.receive(count - read.len())).await {
            Ok(Ok(batch)) => {
                let ids = batch.iter().map(|d| d.id.clone()).collect();
                subscription.ack(ids).await.expect("ack the reader's batch");
                read.extend(batch);
            }
            Ok(Err(error)) => panic!("reading {count} messages failed: {error}"),
            Err(_) => break,
        }
    }
    let _ = subscription.close().await;
    read
}

fn next_reader_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
