//! The lanes dispatcher, for ordered subscriptions (key_shared, failover, exclusive):
//! `concurrency` sequential lanes, a delivery's lane chosen by its key, so that messages of one key
//! run one after another, in order, retries included.

use std::hash::BuildHasher;
use std::sync::Arc;

use tokio::sync::mpsc;
use worker_core::Delivery;

use crate::task::Task;

use super::super::acks::AckTo;
use super::{Dispatch, Runner, MAX_RECEIVE_BATCH, RECEIVE_RETRY_FIRST};

impl Dispatch {
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
            let Some((deliveries, pause)) = self.receive(MAX_RECEIVE_BATCH, receive_pause).await
            else {
                break;
            };
            receive_pause = pause;
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
                        self.never_started(std::iter::once(delivery).chain(deliveries));
                        break 'consume;
                    }
                }
            }
        }
        // Dropping the senders lets each lane finish; lanes give back what they did not start.
    }

    /// One sequential lane.
    async fn lane<T: Task>(self: Arc<Self>, mut queue: mpsc::Receiver<Delivery>) {
        let context = self.env.context.for_one_runner();
        loop {
            let delivery = tokio::select! {
                biased;
                _ = self.env.stopping.cancelled() => break,
                delivery = queue.recv() => match delivery {
                    Some(delivery) => delivery,
                    None => return,
                },
            };
            let runner = Runner {
                acks: AckTo::Flusher(&self.env.acks),
                context: &context,
            };
            self.handle::<T>(delivery, None, runner).await;
        }
        queue.close();
        while let Some(delivery) = queue.recv().await {
            self.never_started([delivery]);
        }
    }
}
