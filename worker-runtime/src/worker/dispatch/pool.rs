//! The pool dispatcher, for shared subscriptions.
//!
//! One dispatch loop per runtime thread (no more than `concurrency`). A loop receives a batch when
//! everything it received before has started and a slot is free, and runs its deliveries'
//! handlers itself, as futures it polls, instead of spawning a tokio task for each: no task to
//! allocate, schedule and wake per message, while the loops still spread handlers over every
//! core. All loops draw from one semaphore of `concurrency` slots, so the bound holds across them;
//! each takes its slots from it in bulk and reuses them ([`slots`](super::slots)).
//!
//! A handler that blocks its thread (CPU-bound work outside `spawn_blocking`) holds up the other
//! handlers of its loop, as it would any task of that runtime thread.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::Semaphore;
use worker_core::Delivery;

use crate::task::Task;

use super::super::acks::{AckBatch, AckTo};
use super::slots::LoopSlots;
use super::{Dispatch, Runner, MAX_RECEIVE_BATCH, RECEIVE_RETRY_FIRST};

impl Dispatch {
    /// Starts the dispatch loops and returns once shutdown starts; the loops then wind down on
    /// their own (tracked by [`Dispatch::tracker`]).
    pub async fn pool<T: Task>(self: Arc<Self>) {
        let config = &self.env.config;
        let concurrency = config.concurrency.max(1);
        let loops = loop_count(concurrency);
        let slots = Arc::new(Semaphore::new(concurrency));
        let share = concurrency.div_ceil(loops);
        // A loop takes a quarter of its share of the receiver queue at a time: enough that a
        // receive is rare, few enough that the loops share the work evenly and that the broker
        // client refills its queue while they run (the slots bound what runs).
        let batch = (config.receiver_queue_size / (4 * loops)).clamp(1, MAX_RECEIVE_BATCH);
        let stopping = Arc::new(AtomicBool::new(false));
        for _ in 0..loops {
            let dispatch = self.clone();
            let slots = LoopSlots::new(slots.clone(), share);
            self.tracker
                .spawn(dispatch.dispatch_loop::<T>(slots, batch, stopping.clone()));
        }
        self.env.stopping.cancelled().await;
        stopping.store(true, Ordering::Release);
    }

    /// One dispatch loop: receives batches of up to `batch` and runs them, each delivery once it
    /// holds a slot of `slots`, until shutdown starts; then lets what runs finish. Aborting (the
    /// grace period is over, or the worker was dropped) ends it at once, dropping its handlers.
    ///
    /// `stopping` is set once shutdown starts. The loop checks it on every turn, a load of one
    /// word, and waits on the token itself only when it has nothing else to do: a cancellation
    /// future polled on every turn would take the token's locks twice per delivery.
    async fn dispatch_loop<T: Task>(
        self: Arc<Self>,
        slots: LoopSlots,
        batch: usize,
        stopping: Arc<AtomicBool>,
    ) {
        tokio::select! {
            biased;
            _ = self.abort.cancelled() => {}
            _ = self.run_loop::<T>(&slots, batch, &stopping) => {}
        }
    }

    async fn run_loop<T: Task>(&self, slots: &LoopSlots, batch: usize, stopping: &AtomicBool) {
        let env = &self.env;
        let mut stopped = pin!(env.stopping.cancelled());
        // Declared before `running`, whose handlers borrow it, so that it outlives them; dropped,
        // it hands over what it still holds.
        let acks = AckBatch::new(env.acks.clone());
        let context = env.context.for_one_runner();
        let runner = Runner {
            acks: AckTo::Batch(&acks),
            context: &context,
        };
        let mut running = FuturesUnordered::new();
        // Received, not started yet.
        let mut waiting: VecDeque<Delivery> = VecDeque::new();
        // A receive in flight survives the other events of the loop: dropping it would waste the
        // broker's work (and a network backend's round trip) each time a handler finishes.
        let mut receiving = None;
        let mut pause = RECEIVE_RETRY_FIRST;
        loop {
            if stopping.load(Ordering::Acquire) {
                break;
            }
            while !waiting.is_empty() {
                let Some(slot) = slots.try_take(waiting.len()) else {
                    break;
                };
                if let Some(delivery) = waiting.pop_front() {
                    running.push(self.handle::<T>(delivery, Some(slot), runner));
                }
            }
            slots.end_turn();
            // Receive once everything received has started and some slot is free.
            if waiting.is_empty() && receiving.is_none() && slots.any_free() {
                receiving = Some(Box::pin(self.receive(batch, pause)));
            }
            let wants_slot = !slots.holds_free() && (!waiting.is_empty() || receiving.is_none());
            tokio::select! {
                biased;
                Some(()) = running.next(), if !running.is_empty() => {
                    // A settled delivery is a unit of work: the loop yields to the runtime's
                    // other tasks (the broker connection, the ack flusher) every so often
                    // instead of running a whole batch in one go.
                    tokio::task::coop::consume_budget().await;
                }
                acquired = slots.wait_for_one(), if wants_slot => {
                    if !acquired {
                        break;
                    }
                }
                received = async { receiving.as_mut().expect("checked by the branch's condition").await },
                    if receiving.is_some() =>
                {
                    receiving = None;
                    match received {
                        Some((deliveries, next_pause)) => {
                            pause = next_pause;
                            waiting.extend(deliveries);
                        }
                        None => break,
                    }
                }
                // Nothing else is ready: hand the gathered acks over and the free slots back
                // before waiting (a receive may wait long on an idle topic, and slots held
                // meanwhile would keep the other loops' deliveries waiting).
                () = std::future::ready(()), if !acks.is_empty() || slots.holds_free() => {
                    acks.flush();
                    slots.give_back_all();
                }
                _ = &mut stopped => break,
            }
        }
        // Shutting down: nothing more starts; what runs may finish, within the grace period.
        drop(receiving);
        slots.give_back_all();
        self.never_started(waiting);
        acks.flush();
        // One at a time: a crash while the slowest handler finishes should not cost the others' acks.
        while running.next().await.is_some() {
            acks.flush();
        }
    }
}

/// How many dispatch loops a task runs: one per runtime thread, no more than its concurrency.
fn loop_count(concurrency: usize) -> usize {
    let threads = tokio::runtime::Handle::try_current()
        .map(|runtime| runtime.metrics().num_workers())
        .unwrap_or(1);
    threads.min(concurrency).max(1)
}
