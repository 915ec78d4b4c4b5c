//! A consumer running in its own task: it receives, records and acknowledges everything that
//! arrives, while the case publishes, restarts the broker or watches other consumers.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use worker_runtime::{BrokerError, Delivery, Subscription};

use super::support::ids;

/// One delivery and when it arrived.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// When `receive` returned it.
    pub at: Instant,
    /// The delivery itself.
    pub delivery: Delivery,
}

/// What a collector saw besides deliveries.
#[derive(Clone, Debug, Default)]
pub struct Trouble {
    /// `receive` calls that failed with a transient error (and were tried again).
    pub receive_errors: usize,
    /// `ack` calls that failed (their deliveries may come again).
    pub ack_errors: usize,
    /// The last error seen, for the report.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Seen {
    arrivals: Vec<Arrival>,
    trouble: Trouble,
}

/// A task that keeps receiving from one subscription, acknowledging every batch. Stops (dropping
/// the receive in flight) on [`Collector::stop`] or when dropped.
pub struct Collector {
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<Result<(), BrokerError>>,
}

impl Collector {
    /// Starts receiving batches of up to `batch` deliveries, pausing `pace` after each (a handler
    /// taking its time, which lets other consumers of a shared subscription have a turn).
    /// Transient receive errors are counted and tried again; any other ends the task.
    pub fn start(subscription: Arc<dyn Subscription>, batch: usize, pace: Duration) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn(run(subscription, Arc::clone(&seen), batch.max(1), pace));
        Collector { seen, task }
    }

    /// A copy of everything that arrived so far.
    pub fn arrivals(&self) -> Vec<Arrival> {
        lock(&self.seen).arrivals.clone()
    }

    /// How many deliveries arrived so far.
    pub fn count(&self) -> usize {
        lock(&self.seen).arrivals.len()
    }

    /// Waits until `done` holds for what arrived so far, the task ended, or `limit` passed.
    /// Returns whether `done` held.
    pub async fn wait_until(&self, limit: Duration, done: impl Fn(&[Arrival]) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if done(&lock(&self.seen).arrivals) {
                return true;
            }
            if self.task.is_finished() || Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the task and returns everything that arrived and the trouble it met; fails with the
    /// error that ended the task early, if one did.
    pub async fn stop(mut self) -> anyhow::Result<(Vec<Arrival>, Trouble)> {
        self.task.abort();
        match (&mut self.task).await {
            Ok(Err(error)) => {
                return Err(anyhow::Error::new(error).context("the consumer's receive failed"))
            }
            Err(join) if join.is_panic() => anyhow::bail!("the consumer task panicked: {join}"),
            _ => {}
        }
        let mut seen = lock(&self.seen);
        Ok((
            std::mem::take(&mut seen.arrivals),
            std::mem::take(&mut seen.trouble),
        ))
    }
}

/// Waits until the collectors together received at least `total` deliveries, or `limit` passed.
/// Returns whether they did.
pub async fn wait_for_total(collectors: &[Collector], total: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if collectors.iter().map(Collector::count).sum::<usize>() >= total {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    subscription: Arc<dyn Subscription>,
    seen: Arc<Mutex<Seen>>,
    batch: usize,
    pace: Duration,
) -> Result<(), BrokerError> {
    loop {
        let deliveries = match subscription.receive(batch).await {
            Ok(deliveries) => deliveries,
            Err(error) if error.is_transient() => {
                {
                    let mut seen = lock(&seen);
                    seen.trouble.receive_errors += 1;
                    seen.trouble.last_error = Some(error.to_string());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        let at = Instant::now();
        lock(&seen)
            .arrivals
            .extend(deliveries.iter().map(|delivery| Arrival {
                at,
                delivery: delivery.clone(),
            }));
        if let Err(error) = subscription.ack(ids(&deliveries)).await {
            let mut seen = lock(&seen);
            seen.trouble.ack_errors += 1;
            seen.trouble.last_error = Some(error.to_string());
        }
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
}

/// The lock, also after a panic elsewhere poisoned it (the data is plain records).
fn lock(seen: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(PoisonError::into_inner)
}
