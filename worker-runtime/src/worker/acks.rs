//! Grouped acknowledgements: handlers hand their acks to one flusher per subscription, which sends
//! whatever has accumulated as one `ack` call. Under load that is one broker round trip per many
//! messages; when idle, an ack goes out at once.
//!
//! A dispatch loop of the pool gathers its own handlers' acks in an [`AckBatch`] first and hands
//! them over whole, whenever it has nothing else ready to do or the batch is full: one message to
//! the flusher, and one wake-up of it, per batch instead of per delivery.
//!
//! An ack the broker fails with a transient error (the connection dropped, a restarted server still
//! loading its data) is sent again with backoff for up to [`ACK_RETRY_LIMIT`], with whatever
//! queued meanwhile; only then, or at once for any other error, is it given up on and counted in
//! `worker_acks_dropped_total`. A dropped ack costs a redelivery and a second run, which at least
//! once allows but which a broker restart must not multiply by the number of acks in flight.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use worker_core::{MessageId, Subscription};

use crate::metrics::TaskMetrics;

/// The most acks sent in one call.
const MAX_ACK_BATCH: usize = 4096;

/// How long acks failed by transient errors are sent again before they are dropped.
pub const ACK_RETRY_LIMIT: Duration = Duration::from_secs(30);

/// The first and the longest pause between attempts to send failed acks.
const ACK_RETRY_FIRST: Duration = Duration::from_millis(100);
const ACK_RETRY_MAX: Duration = Duration::from_secs(2);

/// The most acks an [`AckBatch`] gathers before it hands them over.
const ACK_BATCH_FLUSH_AT: usize = 256;

/// What the flusher receives: one ack, or a dispatch loop's batch.
enum Acks {
    One(MessageId),
    Many(Vec<MessageId>),
}

/// Where handlers send the ids of deliveries to acknowledge.
#[derive(Clone)]
pub(crate) struct AckSender(mpsc::UnboundedSender<Acks>);

impl AckSender {
    /// Queues one ack. Returns false if the flusher is gone (the id is then redelivered later,
    /// which at-least-once allows).
    pub fn ack(&self, id: MessageId) -> bool {
        self.0.send(Acks::One(id)).is_ok()
    }

    fn ack_many(&self, ids: Vec<MessageId>) -> bool {
        self.0.send(Acks::Many(ids)).is_ok()
    }
}

/// One dispatch loop's acks, gathered to be handed to the flusher together. Whatever it still
/// holds when dropped is handed over then, so an ack is never lost with the loop.
pub(crate) struct AckBatch {
    // Only the loop and the handlers it polls touch it, all on one thread at a time: the lock is
    // never contended, and it is what lets those handlers borrow the batch across awaits.
    ids: Mutex<Vec<MessageId>>,
    sender: AckSender,
}

impl AckBatch {
    pub fn new(sender: AckSender) -> Self {
        AckBatch {
            ids: Mutex::new(Vec::new()),
            sender,
        }
    }

    /// Adds one ack, handing the batch over if it is full.
    pub fn ack(&self, id: MessageId) {
        let mut ids = self.ids.lock();
        ids.push(id);
        if ids.len() >= ACK_BATCH_FLUSH_AT {
            let full = std::mem::take(&mut *ids);
            drop(ids);
            self.sender.ack_many(full);
        }
    }

    /// Whether nothing waits to be handed over.
    pub fn is_empty(&self) -> bool {
        self.ids.lock().is_empty()
    }

    /// Hands over what was gathered.
    pub fn flush(&self) {
        let ids = std::mem::take(&mut *self.ids.lock());
        if !ids.is_empty() {
            self.sender.ack_many(ids);
        }
    }
}

impl Drop for AckBatch {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Where a settled delivery's ack goes.
#[derive(Clone, Copy)]
pub(crate) enum AckTo<'a> {
    /// Straight to the flusher.
    Flusher(&'a AckSender),
    /// Into the batch of the dispatch loop that ran it.
    Batch(&'a AckBatch),
}

impl AckTo<'_> {
    /// Acks one delivery, by way of the batch or the flusher.
    pub fn ack(self, id: MessageId) {
        match self {
            AckTo::Flusher(sender) => {
                sender.ack(id);
            }
            AckTo::Batch(batch) => batch.ack(id),
        }
    }
}

/// Starts the flusher of one subscription. It ends, after flushing everything queued, once every
/// [`AckSender`] is dropped.
pub(crate) fn start_ack_flusher(
    subscription: Arc<dyn Subscription>,
    task: &'static str,
    metrics: TaskMetrics,
) -> (AckSender, JoinHandle<()>) {
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let flusher = tokio::spawn(async move {
        let mut received = Vec::new();
        while receiver.recv_many(&mut received, MAX_ACK_BATCH).await > 0 {
            let mut ids = Vec::new();
            for acks in received.drain(..) {
                match acks {
                    Acks::One(id) => ids.push(id),
                    Acks::Many(batch) if ids.is_empty() => ids = batch,
                    Acks::Many(batch) => ids.extend(batch),
                }
            }
            send_acks(&*subscription, &mut receiver, ids, task, &metrics).await;
        }
    });
    (AckSender(sender), flusher)
}

/// Sends `ids`, retrying transient failures (with what queued meanwhile) until [`ACK_RETRY_LIMIT`].
async fn send_acks(
    subscription: &dyn Subscription,
    queued: &mut mpsc::UnboundedReceiver<Acks>,
    mut ids: Vec<MessageId>,
    task: &'static str,
    metrics: &TaskMetrics,
) {
    let deadline = Instant::now() + ACK_RETRY_LIMIT;
    let mut pause = ACK_RETRY_FIRST;
    let mut retried = false;
    loop {
        let error = match subscription.ack(ids.clone()).await {
            Ok(()) => {
                if retried {
                    tracing::info!(task, count = ids.len(), "acknowledgements went through");
                }
                return;
            }
            Err(error) => error,
        };
        if !error.is_transient() || Instant::now() + pause > deadline {
            // The messages will be delivered and handled again: at least once still holds.
            tracing::warn!(task, count = ids.len(), %error, "acknowledging deliveries failed; they will be redelivered");
            metrics.acks_dropped(ids.len() as u64);
            return;
        }
        if !retried {
            tracing::warn!(task, count = ids.len(), %error, "acknowledging deliveries failed; trying again");
            retried = true;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(ACK_RETRY_MAX);
        // Acks that queued meanwhile go along with the next try.
        while ids.len() < MAX_ACK_BATCH {
            match queued.try_recv() {
                Ok(Acks::One(id)) => ids.push(id),
                Ok(Acks::Many(batch)) => ids.extend(batch),
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use parking_lot::Mutex;
    use worker_core::{BoxFuture, BrokerError, Delivery};

    use super::*;
    use crate::metrics::Metrics;

    /// A subscription whose acks fail with `error` the first `failures` times.
    struct FailingAcks {
        failures: AtomicUsize,
        error: fn() -> BrokerError,
        acked: Mutex<Vec<MessageId>>,
        calls: AtomicUsize,
    }

    impl FailingAcks {
        fn new(failures: usize, error: fn() -> BrokerError) -> Arc<Self> {
            Arc::new(FailingAcks {
                failures: AtomicUsize::new(failures),
                error,
                acked: Mutex::new(Vec::new()),
                calls: AtomicUsize::new(0),
            })
        }
    }

    impl Subscription for FailingAcks {
        fn receive(&self, _max: usize) -> BoxFuture<'_, Result<Vec<Delivery>, BrokerError>> {
            Box::pin(std::future::pending())
        }
        fn ack(&self, ids: Vec<MessageId>) -> BoxFuture<'_, Result<(), BrokerError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let fail = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if !fail {
                self.acked.lock().extend(ids);
            }
            Box::pin(async move {
                if fail {
                    Err((self.error)())
                } else {
                    Ok(())
                }
            })
        }
        fn nack(&self, _ids: Vec<MessageId>) -> BoxFuture<'_, Result<(), BrokerError>> {
            Box::pin(async { Ok(()) })
        }
        fn close(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
            Box::pin(async { Ok(()) })
        }
    }

    fn loading() -> BrokerError {
        BrokerError::Connection {
            backend: "valkey",
            message: "ack: LOADING Redis is loading the dataset in memory".to_owned(),
            source: None,
        }
    }

    fn refused() -> BrokerError {
        BrokerError::Rejected {
            backend: "valkey",
            reason: "no such group".to_owned(),
        }
    }

    fn dropped_of(metrics: &Metrics) -> String {
        metrics
            .encode()
            .lines()
            .find(|l| l.starts_with("worker_acks_dropped_total{"))
            .map(str::to_owned)
            .unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_with_what_queued_meanwhile() {
        let metrics = Metrics::new("c");
        let subscription = FailingAcks::new(3, loading);
        let (sender, flusher) = start_ack_flusher(
            subscription.clone(),
            "jobs",
            metrics.task("jobs", "q1/t/ns/jobs"),
        );
        sender.ack(MessageId::from_u64(1));
        tokio::time::sleep(Duration::from_millis(150)).await;
        sender.ack(MessageId::from_u64(2));
        drop(sender);
        flusher.await.expect("the flusher ends");
        let mut acked = subscription.acked.lock().clone();
        acked.sort();
        assert_eq!(acked, [MessageId::from_u64(1), MessageId::from_u64(2)]);
        assert!(
            dropped_of(&metrics).ends_with(" 0"),
            "{}",
            dropped_of(&metrics)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn acks_are_dropped_and_counted_after_the_limit_or_at_once_when_not_transient() {
        let metrics = Metrics::new("c");
        let task = metrics.task("jobs", "q1/t/ns/jobs");
        let down = FailingAcks::new(usize::MAX, loading);
        let started = Instant::now();
        let (sender, flusher) = start_ack_flusher(down.clone(), "jobs", task.clone());
        sender.ack(MessageId::from_u64(1));
        drop(sender);
        flusher.await.expect("the flusher ends");
        let took = started.elapsed();
        assert!(
            took <= ACK_RETRY_LIMIT && took >= ACK_RETRY_LIMIT - ACK_RETRY_MAX,
            "gave up after {took:?}"
        );
        assert!(
            dropped_of(&metrics).ends_with(" 1"),
            "{}",
            dropped_of(&metrics)
        );

        let refusing = FailingAcks::new(1, refused);
        let (sender, flusher) = start_ack_flusher(refusing.clone(), "jobs", task);
        sender.ack(MessageId::from_u64(2));
        drop(sender);
        flusher.await.expect("the flusher ends");
        assert_eq!(refusing.calls.load(Ordering::SeqCst), 1, "not retried");
        assert!(
            dropped_of(&metrics).ends_with(" 2"),
            "{}",
            dropped_of(&metrics)
        );
    }
}
