//! The handle one consumer receives through. It waits without holding the topic's lock, and gives
//! its unacknowledged deliveries back when it is closed or dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;
use worker_core::{BoxFuture, BrokerError, Delivery, MessageId, Subscription};

use super::subscription::ConsumerKey;
use super::topic::{Attempt, TopicShared};
use super::BACKEND;

/// One consumer attached to a subscription of a [`super::MemoryBroker`] topic.
#[derive(Debug)]
pub(super) struct MemorySubscription {
    topic: Arc<TopicShared>,
    sub: usize,
    key: ConsumerKey,
    /// Signalled when messages become available to this consumer, or when it is detached.
    notify: Arc<Notify>,
    closed: AtomicBool,
}

impl MemorySubscription {
    pub(super) fn new(
        topic: Arc<TopicShared>,
        sub: usize,
        key: ConsumerKey,
        notify: Arc<Notify>,
    ) -> Self {
        MemorySubscription {
            topic,
            sub,
            key,
            notify,
            closed: AtomicBool::new(false),
        }
    }

    /// Cancel-safe: messages are taken and returned in the same poll, under the lock, so a future
    /// dropped at its only await point (the wait) has taken nothing.
    async fn receive_batch(&self, max: usize) -> Result<Vec<Delivery>, BrokerError> {
        // Asking for nothing would return at once forever; the trait promises at least one.
        let max = max.max(1);
        loop {
            self.ensure_open()?;
            let wake_at = match self.topic.try_receive(self.sub, self.key, max)? {
                Attempt::Ready(batch) => return Ok(batch),
                Attempt::Wait(wake_at) => wake_at,
            };
            let mut guard = WaitGuard {
                subscription: self,
                armed: true,
            };
            wait(&self.notify, wake_at).await;
            // Woken by a publish or an ack of another task, tokio would run this one next on that
            // task's thread, where no idle thread can take it from: the consumers of a drain would
            // take turns on one thread. Yielding once lets an idle thread take it. Still armed:
            // dropped here, the wakeup passes on to another consumer.
            tokio::task::yield_now().await;
            guard.armed = false;
        }
    }

    fn ensure_open(&self) -> Result<(), BrokerError> {
        if self.closed.load(Ordering::Acquire) {
            Err(BrokerError::Closed(BACKEND))
        } else {
            Ok(())
        }
    }

    fn detach(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.topic.detach(self.sub, self.key);
        }
    }
}

/// Waits for a wakeup, or until `wake_at` when a timer is due.
async fn wait(notify: &Notify, wake_at: Option<Instant>) {
    match wake_at {
        Some(at) => {
            tokio::select! {
                () = notify.notified() => {}
                () = tokio::time::sleep_until(at) => {}
            }
        }
        None => notify.notified().await,
    }
}

/// Withdraws a receive dropped while it waits, so that a wakeup it was sent reaches another
/// consumer instead of being lost with it.
struct WaitGuard<'a> {
    subscription: &'a MemorySubscription,
    armed: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let subscription = self.subscription;
            subscription
                .topic
                .cancel_wait(subscription.sub, subscription.key);
        }
    }
}

impl Subscription for MemorySubscription {
    fn receive(&self, max: usize) -> BoxFuture<'_, Result<Vec<Delivery>, BrokerError>> {
        Box::pin(self.receive_batch(max))
    }

    fn ack(&self, ids: Vec<MessageId>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.ensure_open()?;
            self.topic.ack(self.sub, self.key, &ids)
        })
    }

    fn nack(&self, ids: Vec<MessageId>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.ensure_open()?;
            self.topic.nack(self.sub, self.key, &ids)
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.detach();
            Ok(())
        })
    }

    fn backlog(&self) -> BoxFuture<'_, Result<Option<u64>, BrokerError>> {
        Box::pin(async move { Ok(self.topic.backlog_of_index(self.sub).map(|n| n as u64)) })
    }

    fn unsubscribe(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.detach();
            self.topic.unsubscribe_index(self.sub).map(drop)
        })
    }
}

impl Drop for MemorySubscription {
    /// Dropping is closing: unacknowledged deliveries go to the other consumers.
    fn drop(&mut self) {
        self.detach();
    }
}
