//! Getting deliveries to handlers with bounded concurrency.
//!
//! - **Pool** (shared subscriptions, [`pool`]): a few dispatch loops, one per runtime thread, each
//!   receiving batches and running their handlers itself, `concurrency` at most across all loops.
//! - **Lanes** (key_shared, failover, exclusive, [`lanes`]): `concurrency` sequential lanes, a
//!   delivery's lane chosen by its key, so messages of one key run one after another, in order,
//!   retries included.

mod lanes;
mod pool;
mod slots;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use worker_core::{Delivery, MessageId};

use crate::context::WorkerSide;
use crate::task::Task;

use super::acks::AckTo;
use super::env::TaskEnv;
use super::pipeline::process;
use super::report::Count;
use super::settle::settle;
pub(crate) use slots::Slot;

/// The most deliveries taken from the broker in one call.
const MAX_RECEIVE_BATCH: usize = 512;
/// The first and longest pause after a failed receive.
const RECEIVE_RETRY_FIRST: Duration = Duration::from_millis(100);
const RECEIVE_RETRY_MAX: Duration = Duration::from_secs(5);

/// What the dispatchers share with the consumer loop that owns them.
pub(crate) struct Dispatch {
    pub env: Arc<TaskEnv>,
    /// Every dispatch loop and lane, so shutdown can wait for the handlers they run.
    pub tracker: TaskTracker,
    /// Cancelled when the grace period is over: unfinished handlers are dropped.
    pub abort: Arc<CancellationToken>,
    /// Ids of deliveries that were dropped unsettled, to be given back to the broker.
    pub unsettled: mpsc::UnboundedSender<MessageId>,
}

/// What a dispatch loop or lane lends the deliveries it runs.
#[derive(Clone, Copy)]
pub(crate) struct Runner<'a> {
    /// Where their acks go.
    pub acks: AckTo<'a>,
    /// The shared part of their handlers' contexts: a copy of the task's own per loop or lane,
    /// so that the reference count every delivery moves is not one that all threads move.
    pub context: &'a Arc<WorkerSide>,
}

/// Marks a delivery that must be given back if its handler is dropped before settling it.
struct Unsettled<'a> {
    id: Option<MessageId>,
    unsettled: &'a mpsc::UnboundedSender<MessageId>,
}

impl Unsettled<'_> {
    fn settled(mut self) {
        self.id = None;
    }
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            // The consumer loop gives these back after every handler ended.
            let _ = self.unsettled.send(id);
        }
    }
}

impl Dispatch {
    /// Runs one delivery to its settlement with what `runner` lends, unless aborted first.
    async fn handle<T: Task>(
        &self,
        delivery: Delivery,
        slot: Option<Slot<'_>>,
        runner: Runner<'_>,
    ) {
        let guard = Unsettled {
            id: Some(delivery.id.clone()),
            unsettled: &self.unsettled,
        };
        let env = &self.env;
        // While the circuit is open nothing starts; what was received waits here, spending no
        // attempt. Shutting down meanwhile gives it back (the guard).
        let pass = match env.breaker.try_pass() {
            Some(pass) => pass,
            None => tokio::select! {
                biased;
                pass = env.breaker.pass() => pass,
                _ = env.stopping.cancelled() => return,
            },
        };
        let _in_flight = env.metrics.in_flight();
        let run = async {
            let processed = process::<T>(env, &delivery, runner.context).await;
            env.breaker
                .record(pass, processed.verdict.circuit_outcome());
            settle(env, delivery, processed, slot, runner.acks).await;
        };
        // `run` first: a handler that finishes on its first poll never registers with the token.
        tokio::select! {
            biased;
            _ = run => guard.settled(),
            _ = self.abort.cancelled() => {}
        }
    }

    /// Gives back deliveries that were received but never started (shutdown came first).
    fn never_started(&self, deliveries: impl IntoIterator<Item = Delivery>) {
        for delivery in deliveries {
            let _ = self.unsettled.send(delivery.id);
        }
    }

    /// Receives a batch, pausing (with backoff) after failures; returns it with the pause the next
    /// failure starts from. `None` once shutdown starts.
    async fn receive(&self, max: usize, mut pause: Duration) -> Option<(Vec<Delivery>, Duration)> {
        let env = &self.env;
        loop {
            // While the circuit is open nothing is fetched: messages wait in the broker.
            tokio::select! {
                biased;
                _ = env.stopping.cancelled() => return None,
                _ = env.breaker.wait_unless_open() => {}
            }
            let received = tokio::select! {
                biased;
                _ = env.stopping.cancelled() => return None,
                received = env.subscription.receive(max) => received,
            };
            match received {
                Ok(deliveries) => {
                    let count = deliveries.len() as u64;
                    env.metrics.received(count);
                    env.counters.add(Count::Received, count);
                    return Some((deliveries, RECEIVE_RETRY_FIRST));
                }
                Err(error) => {
                    tracing::warn!(task = env.task, %error, ?pause, "receiving failed; trying again");
                    tokio::select! {
                        biased;
                        _ = env.stopping.cancelled() => return None,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(RECEIVE_RETRY_MAX);
                }
            }
        }
    }
}
