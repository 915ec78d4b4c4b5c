//! One topic: its log, its delayed messages and its subscriptions behind one lock, so that a
//! publish, a batch receive or a batch ack costs one lock acquisition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use worker_core::{BrokerError, Delivery, InitialPosition, Message, MessageId, SubscribeOptions};

use super::delay::{DelayQueue, Delayed};
use super::log::Log;
use super::stats::{SubscriptionStats, TopicStats};
use super::subscription::{ConsumerKey, SubState};
use super::BACKEND;

/// The limits a topic enforces, copied from the broker's options.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub(super) max_retained: usize,
    pub(super) ack_timeout: Option<Duration>,
}

/// What one attempt to receive found.
#[derive(Debug)]
pub(super) enum Attempt {
    /// Messages, at least one.
    Ready(Vec<Delivery>),
    /// Nothing yet: the consumer is registered as waiting and is woken when something arrives,
    /// but must look again by itself at this time (a delayed message or an ack timeout is due).
    Wait(Option<Instant>),
}

/// A topic, shared by the broker and by every subscription handle on it.
#[derive(Debug)]
pub(super) struct TopicShared {
    /// The topic's name as written, handed out with every delivery.
    name: Arc<str>,
    limits: Limits,
    state: Mutex<TopicState>,
}

#[derive(Debug, Default)]
struct TopicState {
    log: Log,
    delayed: DelayQueue,
    /// Subscriptions by index; a removed one leaves a hole that the next new one fills.
    subs: Vec<Option<SubState>>,
    sub_count: usize,
    next_seq: u64,
    next_consumer_id: u64,
    published: u64,
}

impl TopicShared {
    pub(super) fn new(name: Arc<str>, limits: Limits) -> Self {
        TopicShared {
            name,
            limits,
            state: Mutex::new(TopicState::default()),
        }
    }

    /// Stores a message, or refuses it when the topic is full. Returns its sequence number.
    pub(super) fn publish(
        &self,
        message: Arc<Message>,
        publish_time: SystemTime,
        due: Option<Instant>,
    ) -> Result<u64, BrokerError> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let retained = state.retained();
        if retained >= self.limits.max_retained {
            return Err(BrokerError::Full {
                topic: self.name.to_string(),
                retained,
                limit: self.limits.max_retained,
            });
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.published += 1;
        match due {
            Some(due) => {
                let sooner = state.delayed.next_due().is_none_or(|next| due < next);
                state.delayed.push(Delayed {
                    due,
                    seq,
                    message,
                    publish_time,
                });
                if sooner {
                    // Waiting receivers sleep until the earliest due time they knew of.
                    for sub in state.subs.iter_mut().flatten() {
                        sub.wake_all();
                    }
                }
            }
            None => {
                state.log.append(seq, message, publish_time);
                state.appended();
            }
        }
        Ok(seq)
    }

    /// Attaches a consumer, creating the subscription on first use.
    pub(super) fn subscribe(
        &self,
        options: &SubscribeOptions,
    ) -> Result<(usize, ConsumerKey, Arc<Notify>), BrokerError> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let existing = state.subs.iter().position(|sub| {
            sub.as_ref()
                .is_some_and(|sub| sub.name() == options.subscription)
        });
        let index = match existing {
            Some(index) => index,
            None => state.create_subscription(options),
        };
        let id = state.next_consumer_id;
        state.next_consumer_id += 1;
        let (sub, log, sole) = state.parts(index)?;
        let (key, notify) = sub.attach(
            &self.name,
            &options.consumer_name,
            options.consumer_type,
            options.receiver_queue_size,
            id,
        )?;
        sub.wake_ready(log, sole);
        state.trim();
        Ok((index, key, notify))
    }

    /// Takes a batch for one consumer, or registers it as waiting.
    pub(super) fn try_receive(
        &self,
        sub: usize,
        key: ConsumerKey,
        max: usize,
    ) -> Result<Attempt, BrokerError> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let ack_timeout = self.limits.ack_timeout;
        // Read the clock only when a timer can matter.
        let now = (ack_timeout.is_some() || !state.delayed.is_empty()).then(Instant::now);
        if let Some(now) = now {
            state.promote_due(now);
        }
        let (subscription, log, sole) = state.parts(sub)?;
        if let (Some(now), Some(timeout)) = (now, ack_timeout) {
            if subscription.expire(now, timeout) {
                subscription.wake_ready(log, sole);
            }
        }
        let deadline = now
            .zip(ack_timeout)
            .and_then(|(now, timeout)| now.checked_add(timeout));
        let batch = subscription.take(key, max, log, sole, &self.name, deadline)?;
        let ack_deadline = subscription.ack_deadline();
        let wake_at = earliest(ack_deadline, state.delayed.next_due());
        state.trim();
        Ok(if batch.is_empty() {
            Attempt::Wait(wake_at)
        } else {
            Attempt::Ready(batch)
        })
    }

    /// Withdraws a receive dropped while waiting, passing on a wakeup it had been sent.
    pub(super) fn cancel_wait(&self, sub: usize, key: ConsumerKey) {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        if let Ok((subscription, log, sole)) = state.parts(sub) {
            if subscription.cancel_wait(key) {
                subscription.wake_ready(log, sole);
                state.trim();
            }
        }
    }

    pub(super) fn ack(
        &self,
        sub: usize,
        key: ConsumerKey,
        ids: &[MessageId],
    ) -> Result<(), BrokerError> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let (subscription, log, sole) = state.parts(sub)?;
        subscription.ack(key, ids)?;
        // Acks make room in the consumer's receiver queue.
        subscription.wake_ready(log, sole);
        state.trim();
        Ok(())
    }

    pub(super) fn nack(
        &self,
        sub: usize,
        key: ConsumerKey,
        ids: &[MessageId],
    ) -> Result<(), BrokerError> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let (subscription, log, sole) = state.parts(sub)?;
        subscription.nack(key, ids)?;
        subscription.wake_ready(log, sole);
        state.trim();
        Ok(())
    }

    /// Detaches a consumer; its unacknowledged deliveries go to the others.
    pub(super) fn detach(&self, sub: usize, key: ConsumerKey) {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        if let Ok((subscription, log, sole)) = state.parts(sub) {
            subscription.detach(key);
            subscription.wake_ready(log, sole);
            state.trim();
        }
    }

    /// Removes a subscription that has no consumer attached. Returns whether it existed.
    /// [`Self::unsubscribe`] by the subscription's index.
    pub(super) fn unsubscribe_index(&self, index: usize) -> Result<bool, BrokerError> {
        let name = {
            let state = self.state.lock();
            match state.subs.get(index).and_then(Option::as_ref) {
                Some(sub) => sub.name().to_owned(),
                None => return Ok(false),
            }
        };
        self.unsubscribe(&name)
    }

    pub(super) fn unsubscribe(&self, name: &str) -> Result<bool, BrokerError> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let Some(index) = state
            .subs
            .iter()
            .position(|sub| sub.as_ref().is_some_and(|sub| sub.name() == name))
        else {
            return Ok(false);
        };
        let consumers = state.subs[index]
            .as_ref()
            .map_or(0, SubState::consumer_count);
        if consumers > 0 {
            return Err(BrokerError::Rejected {
                backend: BACKEND,
                reason: format!(
                    "subscription `{name}` on `{}` still has {consumers} consumer(s) attached",
                    self.name
                ),
            });
        }
        state.subs[index] = None;
        state.sub_count -= 1;
        state.trim();
        Ok(true)
    }

    pub(super) fn stats(&self) -> TopicStats {
        let state = self.state.lock();
        let end = state.log.end();
        let delayed = state.delayed.len();
        TopicStats {
            published: state.published,
            retained: state.retained(),
            delayed,
            subscriptions: state
                .subs
                .iter()
                .flatten()
                .map(|sub| SubscriptionStats {
                    name: sub.name().to_owned(),
                    consumer_type: sub.kind(),
                    consumers: sub.consumer_count(),
                    backlog: sub.backlog(end) + delayed,
                    unacked: sub.unacked(),
                })
                .collect(),
        }
    }

    /// [`Self::backlog`] by the subscription's index.
    pub(super) fn backlog_of_index(&self, index: usize) -> Option<usize> {
        let state = self.state.lock();
        let sub = state.subs.get(index)?.as_ref()?;
        Some(sub.backlog(state.log.end()) + state.delayed.len())
    }

    pub(super) fn backlog(&self, subscription: &str) -> Option<usize> {
        let state = self.state.lock();
        let sub = state
            .subs
            .iter()
            .flatten()
            .find(|s| s.name() == subscription)?;
        Some(sub.backlog(state.log.end()) + state.delayed.len())
    }

    /// Every retained message: in log order, then the delayed ones by due time.
    pub(super) fn peek(&self) -> Vec<Arc<Message>> {
        let state = self.state.lock();
        let mut by_pos = BTreeMap::new();
        let held = state.subs.iter().flatten().flat_map(SubState::held);
        for entry in state.log.iter().chain(held) {
            by_pos.entry(entry.pos).or_insert(&entry.message);
        }
        let mut messages: Vec<Arc<Message>> = by_pos.into_values().map(Arc::clone).collect();
        messages.extend(
            state
                .delayed
                .sorted()
                .into_iter()
                .map(|d| Arc::clone(&d.message)),
        );
        messages
    }
}

impl TopicState {
    /// One subscription, the log, and whether that subscription is the only one.
    fn parts(&mut self, index: usize) -> Result<(&mut SubState, &mut Log, bool), BrokerError> {
        let sole = self.sub_count == 1;
        let sub = self
            .subs
            .get_mut(index)
            .and_then(Option::as_mut)
            .ok_or(BrokerError::Closed(BACKEND))?;
        Ok((sub, &mut self.log, sole))
    }

    fn create_subscription(&mut self, options: &SubscribeOptions) -> usize {
        let cursor = match options.initial_position {
            InitialPosition::Earliest => self.log.base(),
            InitialPosition::Latest => self.log.end(),
        };
        let mut sub = SubState::new(options.subscription.clone(), options.consumer_type, cursor);
        if options.initial_position == InitialPosition::Earliest {
            // What the log no longer holds but another subscription has not acknowledged is
            // still retained, so the newcomer sees it too.
            let base = self.log.base();
            let inherited = self
                .subs
                .iter()
                .flatten()
                .flat_map(SubState::held)
                .filter(|entry| entry.pos < base)
                .cloned();
            sub.seed(inherited);
        }
        self.sub_count += 1;
        let index = match self.subs.iter().position(Option::is_none) {
            Some(index) => {
                self.subs[index] = Some(sub);
                index
            }
            None => {
                self.subs.push(Some(sub));
                self.subs.len() - 1
            }
        };
        self.trim();
        index
    }

    /// What the retention bound counts: with subscriptions, the largest backlog among them (as
    /// Pulsar's backlog quota does); without, everything the log holds. Delayed messages count
    /// either way.
    fn retained(&self) -> usize {
        let held = if self.sub_count == 0 {
            self.log.len()
        } else {
            let end = self.log.end();
            self.subs
                .iter()
                .flatten()
                .map(|sub| sub.backlog(end))
                .max()
                .unwrap_or(0)
        };
        held + self.delayed.len()
    }

    /// Drops the log's front once every subscription has read past it. Without subscriptions the
    /// log keeps everything, so a later subscription can start from the earliest message.
    fn trim(&mut self) {
        if let Some(min) = self.subs.iter().flatten().map(SubState::cursor).min() {
            self.log.trim_to(min);
        }
    }

    /// After the log grew: wakes whoever can take the new messages.
    fn appended(&mut self) {
        let sole = self.sub_count == 1;
        for sub in self.subs.iter_mut().flatten() {
            sub.wake_ready(&mut self.log, sole);
        }
        self.trim();
    }

    /// Moves delayed messages that are due into the log.
    fn promote_due(&mut self, now: Instant) {
        let mut any = false;
        while let Some(due) = self.delayed.pop_due(now) {
            self.log.append(due.seq, due.message, due.publish_time);
            any = true;
        }
        if any {
            self.appended();
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
