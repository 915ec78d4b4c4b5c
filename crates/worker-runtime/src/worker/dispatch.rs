//! Getting deliveries to handlers with bounded concurrency.
//!
//! - **Pool** (shared subscriptions): deliveries are fetched in batches of up to
//!   `receiver_queue_size` (at most one batch waits in the worker), and each runs as its own tokio
//!   task once it holds one of `concurrency` permits, so handlers spread over every core and one
//!   slow message blocks nothing.
//! - **Lanes** (key_shared, failover, exclusive): `concurrency` sequential lanes, a delivery's lane
//!   chosen by its key, so messages of one key run one after another, in order, retries included.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use worker_core::{Delivery, MessageId};

use crate::task::Task;

use super::env::TaskEnv;
use super::pipeline::process;
use super::report::Counters;
use super::settle::settle;

/// The most deliveries taken from the broker in one call.
const MAX_RECEIVE_BATCH: usize = 512;
/// The first and longest pause after a failed receive.
const RECEIVE_RETRY_FIRST: Duration = Duration::from_millis(100);
const RECEIVE_RETRY_MAX: Duration = Duration::from_secs(5);

/// What the dispatchers share with the consumer loop that owns them.
pub(crate) struct Dispatch {
    pub env: Arc<TaskEnv>,
    /// Every handler task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled when the grace period is over: unfinished handlers are dropped.
    pub abort: Arc<CancellationToken>,
    /// Ids of deliveries that were dropped unsettled, to be given back to the broker.
    pub unsettled: mpsc::UnboundedSender<MessageId>,
}

/// Marks a delivery that must be given back if its handler is dropped before settling it.
struct Unsettled {
    id: Option<MessageId>,
    unsettled: mpsc::UnboundedSender<MessageId>,
}

impl Unsettled {
    fn settled(mut self) {
        self.id = None;
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            // The consumer loop gives these back after every handler ended.
            let _ = self.unsettled.send(id);
        }
    }
}

impl Dispatch {
    /// Runs one delivery to its settlement, unless aborted first.
    async fn handle<T: Task>(&self, delivery: Delivery, permit: Option<OwnedSemaphorePermit>) {
        let guard = Unsettled {
            id: Some(delivery.id.clone()),
            unsettled: self.unsettled.clone(),
        };
        let env = &self.env;
        let _in_flight = env.metrics.in_flight();
        let run = async {
            let processed = process::<T>(env, &delivery).await;
            settle(env, delivery, processed, permit).await;
        };
        // `run` first: a handler that finishes on its first poll never registers with the token.
        tokio::select! {
            biased;
            _ = run => guard.settled(),
            _ = self.abort.cancelled() => {}
        }
    }

    /// Takes deliveries until shutdown starts: the pool dispatcher.
    pub async fn pool<T: Task>(self: Arc<Self>) {
        let env = &self.env;
        let permits = Arc::new(Semaphore::new(env.config.concurrency));
        let mut receive_pause = RECEIVE_RETRY_FIRST;
        'consume: loop {
            let first = tokio::select! {
                biased;
                _ = env.stopping.cancelled() => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            // Prefetch up to the receiver queue size: a network broker then answers one request
            // per batch, not one per free slot, while the permits still bound what runs.
            let max = env.config.receiver_queue_size.clamp(1, MAX_RECEIVE_BATCH);
            let Some(deliveries) = self.receive(max, &mut receive_pause).await else {
                break;
            };
            let mut first = Some(first);
            let mut deliveries = deliveries.into_iter();
            while let Some(delivery) = deliveries.next() {
                let permit = match first.take() {
                    Some(permit) => permit,
                    None => match permits.clone().try_acquire_owned() {
                        Ok(permit) => permit,
                        Err(_) => tokio::select! {
                            biased;
                            _ = env.stopping.cancelled() => {
                                // Never started: give them back now.
                                for id in std::iter::once(delivery).chain(deliveries).map(|d| d.id) {
                                    let _ = self.unsettled.send(id);
                                }
                                break 'consume;
                            }
                            permit = permits.clone().acquire_owned() => match permit {
                                Ok(permit) => permit,
                                Err(_) => break 'consume,
                            },
                        },
                    },
                };
                let dispatch = self.clone();
                self.tracker
                    .spawn(async move { dispatch.handle::<T>(delivery, Some(permit)).await });
            }
        }
    }

    /// Takes deliveries until shutdown starts: the lanes dispatcher, for ordered subscriptions.
    pub async fn lanes<T: Task>(self: Arc<Self>) {
        let env = &self.env;
        let lane_count = env.config.concurrency.max(1);
        let lane_capacity = (env.config.receiver_queue_size / lane_count).max(1);
        let mut lanes = Vec::with_capacity(lane_count);
        for _ in 0..lane_count {
            let (sender, receiver) = mpsc::channel::<Delivery>(lane_capacity);
            lanes.push(sender);
            let dispatch = self.clone();
            self.tracker.spawn(dispatch.lane::<T>(receiver));
        }
        let hasher = std::collections::hash_map::RandomState::new();
        let mut next_unkeyed = 0usize;
        let mut receive_pause = RECEIVE_RETRY_FIRST;
        'consume: loop {
            let Some(deliveries) = self.receive(MAX_RECEIVE_BATCH, &mut receive_pause).await else {
                break;
            };
            let mut deliveries = deliveries.into_iter();
            while let Some(delivery) = deliveries.next() {
                let lane = match &delivery.message.key {
                    Some(key) => (hasher.hash_one(key) as usize) % lane_count,
                    None => {
                        next_unkeyed = (next_unkeyed + 1) % lane_count;
                        next_unkeyed
                    }
                };
                let slot = tokio::select! {
                    biased;
                    _ = env.stopping.cancelled() => None,
                    slot = lanes[lane].reserve() => slot.ok(),
                };
                match slot {
                    Some(slot) => slot.send(delivery),
                    None => {
                        // Shutting down (or the lane ended): these never started.
                        for id in std::iter::once(delivery).chain(deliveries).map(|d| d.id) {
                            let _ = self.unsettled.send(id);
                        }
                        break 'consume;
                    }
                }
            }
        }
        // Dropping the senders lets each lane finish; lanes give back what they did not start.
    }

    /// One sequential lane.
    async fn lane<T: Task>(self: Arc<Self>, mut queue: mpsc::Receiver<Delivery>) {
        loop {
            let delivery = tokio::select! {
                biased;
                _ = self.env.stopping.cancelled() => break,
                delivery = queue.recv() => match delivery {
                    Some(delivery) => delivery,
                    None => return,
                },
            };
            self.handle::<T>(delivery, None).await;
        }
        queue.close();
        while let Some(delivery) = queue.recv().await {
            let _ = self.unsettled.send(delivery.id);
        }
    }

    /// Receives a batch, pausing (with backoff) after failures. `None` once shutdown starts.
    async fn receive(&self, max: usize, pause: &mut Duration) -> Option<Vec<Delivery>> {
        let env = &self.env;
        loop {
            let received = tokio::select! {
                biased;
                _ = env.stopping.cancelled() => return None,
                received = env.subscription.receive(max) => received,
            };
            match received {
                Ok(deliveries) => {
                    *pause = RECEIVE_RETRY_FIRST;
                    let count = deliveries.len() as u64;
                    env.metrics.received(count);
                    Counters::add(&env.counters.received, count);
                    return Some(deliveries);
                }
                Err(error) => {
                    tracing::warn!(task = env.task, %error, pause = ?*pause, "receiving failed; trying again");
                    tokio::select! {
                        biased;
                        _ = env.stopping.cancelled() => return None,
                        _ = tokio::time::sleep(*pause) => {}
                    }
                    *pause = (*pause * 2).min(RECEIVE_RETRY_MAX);
                }
            }
        }
    }
}
