//! The dispatch state of one named subscription: where it is in the topic's log, what it must
//! deliver again, what each consumer holds, and which consumers wait.
//!
//! Everything here runs under the topic's lock, so it is plain single-threaded bookkeeping. How the
//! consumers share the messages depends on the subscription's [`ConsumerType`]:
//! - `Shared`: a receiving consumer takes the next messages (redeliveries first, then the log);
//!   consumers that are in `receive` at the same time split what is available.
//! - `Failover` and `Exclusive`: only the first attached consumer takes; the others stand by.
//! - `KeyShared`: messages are routed into per-consumer queues by key (see `key_shared`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use worker_core::{BrokerError, ConsumerType, Delivery, MessageId};

use super::hash::FastMap;
use super::log::{Entry, Log};
use super::BACKEND;

use self::key_shared::{release, KeyOwner};
use self::wait::{WaitState, Waiters};

mod key_shared;
mod wait;

/// Names one attached consumer: its slot, and a topic-wide id that is never reused, so that a stale
/// handle can never act on a slot a later consumer took over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ConsumerKey {
    slot: usize,
    id: u64,
}

/// A message the subscription still has to deliver.
#[derive(Debug)]
struct Pending {
    entry: Entry,
    /// How many times it was delivered to this subscription and came back.
    redeliveries: u32,
    /// The digest of its key, once key_shared routing computed it.
    key_digest: Option<u64>,
}

impl Pending {
    fn fresh(entry: Entry) -> Self {
        Pending {
            entry,
            redeliveries: 0,
            key_digest: None,
        }
    }
}

/// A delivered, unacknowledged message.
#[derive(Debug)]
struct InFlight {
    pending: Pending,
    /// The slot of the consumer holding it.
    consumer: usize,
    /// When the ack timeout gives it back, if one is configured.
    deadline: Option<Instant>,
}

#[derive(Debug)]
struct Consumer {
    id: u64,
    name: String,
    notify: Arc<Notify>,
    /// The most deliveries it may hold unacknowledged (its receiver queue size).
    limit: usize,
    in_flight: usize,
    /// Where it is in `receive`.
    wait: WaitState,
    /// key_shared only: messages routed to this consumer, not yet received.
    queue: VecDeque<Pending>,
}

impl Consumer {
    fn room(&self) -> usize {
        self.limit.saturating_sub(self.in_flight)
    }
}

/// One named subscription of a topic.
#[derive(Debug)]
pub(super) struct SubState {
    name: String,
    kind: ConsumerType,
    /// The next log position this subscription has not taken yet.
    cursor: u64,
    /// Messages to deliver again (nacked, abandoned, timed out), keyed by log position so that they
    /// go out in log order and before anything newer.
    redeliver: BTreeMap<u64, Pending>,
    /// Delivered, unacknowledged messages by sequence number.
    in_flight: FastMap<u64, InFlight>,
    consumers: Vec<Option<Consumer>>,
    /// Slots of the attached consumers in attach order; the first is the active one for
    /// failover and exclusive subscriptions.
    live: Vec<usize>,
    waiters: Waiters,
    /// Messages in the key_shared consumer queues.
    queued: usize,
    key_owners: FastMap<u64, KeyOwner>,
    /// When the next ack-timeout scan is due.
    ack_scan_at: Option<Instant>,
    /// Where the next shared wakeup starts, so idle consumers take turns.
    next_wake: usize,
}

impl SubState {
    /// A subscription reading from `cursor` on.
    pub(super) fn new(name: String, kind: ConsumerType, cursor: u64) -> Self {
        SubState {
            name,
            kind,
            cursor,
            redeliver: BTreeMap::new(),
            in_flight: FastMap::default(),
            consumers: Vec::new(),
            live: Vec::new(),
            waiters: Waiters::default(),
            queued: 0,
            key_owners: FastMap::default(),
            ack_scan_at: None,
            next_wake: 0,
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn kind(&self) -> ConsumerType {
        self.kind
    }

    pub(super) fn cursor(&self) -> u64 {
        self.cursor
    }

    /// How many consumers are attached.
    pub(super) fn consumer_count(&self) -> usize {
        self.live.len()
    }

    /// How many deliveries are unacknowledged.
    pub(super) fn unacked(&self) -> usize {
        self.in_flight.len()
    }

    /// Messages not acknowledged yet: unread in the log, or held by this subscription.
    pub(super) fn backlog(&self, log_end: u64) -> usize {
        let unread = usize::try_from(log_end.saturating_sub(self.cursor)).unwrap_or(usize::MAX);
        unread + self.redeliver.len() + self.in_flight.len() + self.queued
    }

    /// When the next ack-timeout scan is due.
    pub(super) fn ack_deadline(&self) -> Option<Instant> {
        self.ack_scan_at
    }

    /// The entries this subscription holds outside the log (to redeliver, queued or unacked).
    pub(super) fn held(&self) -> impl Iterator<Item = &Entry> + '_ {
        let queued = self
            .consumers
            .iter()
            .flatten()
            .flat_map(|c| c.queue.iter().map(|p| &p.entry));
        self.redeliver
            .values()
            .map(|p| &p.entry)
            .chain(self.in_flight.values().map(|f| &f.pending.entry))
            .chain(queued)
    }

    /// Adds messages to deliver before the log (what a new `Earliest` subscription inherits).
    pub(super) fn seed(&mut self, entries: impl IntoIterator<Item = Entry>) {
        for entry in entries {
            let pos = entry.pos;
            self.redeliver
                .entry(pos)
                .or_insert_with(move || Pending::fresh(entry));
        }
    }

    /// Attaches a consumer, or explains why it may not attach.
    pub(super) fn attach(
        &mut self,
        topic: &str,
        name: &str,
        kind: ConsumerType,
        receiver_queue_size: usize,
        id: u64,
    ) -> Result<(ConsumerKey, Arc<Notify>), BrokerError> {
        if let Some(&first) = self.live.first() {
            if kind != self.kind {
                return Err(BrokerError::Rejected {
                    backend: BACKEND,
                    reason: format!(
                        "subscription `{}` on `{topic}` is {} with consumers attached; \
                         a {} consumer cannot join it",
                        self.name,
                        self.kind.as_str(),
                        kind.as_str()
                    ),
                });
            }
            if kind == ConsumerType::Exclusive {
                let holder = self.consumers[first]
                    .as_ref()
                    .map_or("another consumer", |c| c.name.as_str());
                return Err(BrokerError::Rejected {
                    backend: BACKEND,
                    reason: format!(
                        "subscription `{}` on `{topic}` is exclusive and `{holder}` is attached",
                        self.name
                    ),
                });
            }
        } else if kind != self.kind {
            // Like Pulsar, a subscription without consumers takes the type of the next one.
            self.kind = kind;
            self.key_owners.clear();
        }
        let notify = Arc::new(Notify::new());
        let consumer = Consumer {
            id,
            name: name.to_owned(),
            notify: Arc::clone(&notify),
            // A queue size of 0 would never let anything through; take it as "one at a time".
            limit: receiver_queue_size.max(1),
            in_flight: 0,
            wait: WaitState::Idle,
            queue: VecDeque::new(),
        };
        let slot = match self.consumers.iter().position(Option::is_none) {
            Some(slot) => {
                self.consumers[slot] = Some(consumer);
                slot
            }
            None => {
                self.consumers.push(Some(consumer));
                self.consumers.len() - 1
            }
        };
        if self.kind == ConsumerType::KeyShared {
            // Route what nobody has received yet again, now that the newcomer counts.
            self.unroute_queued();
        }
        self.live.push(slot);
        Ok((ConsumerKey { slot, id }, notify))
    }

    /// Detaches a consumer: what it held goes back to the subscription, counted as a redelivery
    /// when it had been delivered. A receive still running on its handle wakes up and sees it closed.
    pub(super) fn detach(&mut self, key: ConsumerKey) {
        let Some(mut consumer) = self.take_consumer(key) else {
            return;
        };
        self.waiters.reset(&mut consumer);
        self.live.retain(|&slot| slot != key.slot);
        let held: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.consumer == key.slot)
            .map(|(&seq, _)| seq)
            .collect();
        for seq in held {
            if let Some(flight) = self.in_flight.remove(&seq) {
                self.requeue(flight);
            }
        }
        for pending in consumer.queue {
            self.queued -= 1;
            self.redeliver.insert(pending.entry.pos, pending);
        }
        self.key_owners.retain(|_, owner| owner.slot != key.slot);
        consumer.notify.notify_one();
    }

    /// Takes up to `max` messages for one consumer: fewer if its receiver queue is nearly full, or
    /// (shared) if other consumers are receiving too, so that each gets a fair part. An empty
    /// batch means the consumer is now registered as waiting.
    pub(super) fn take(
        &mut self,
        key: ConsumerKey,
        max: usize,
        log: &mut Log,
        sole: bool,
        topic: &Arc<str>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let slot = self.slot_of(key)?;
        let room = match self.consumers.get_mut(slot) {
            Some(Some(c)) => {
                self.waiters.reset(c);
                c.room()
            }
            _ => 0,
        };
        let want = max.min(room);
        let mut batch = Vec::new();
        if want > 0 {
            match self.kind {
                ConsumerType::KeyShared => {
                    if self.queue_len(slot) < want {
                        self.pump(log, sole);
                    }
                    if let Some(Some(c)) = self.consumers.get_mut(slot) {
                        let count = want.min(c.queue.len());
                        batch.reserve_exact(count);
                        for pending in c.queue.drain(..count) {
                            deliver(
                                &mut self.in_flight,
                                &mut batch,
                                topic,
                                pending,
                                slot,
                                deadline,
                            );
                        }
                        c.in_flight += count;
                        self.queued -= count;
                    }
                    // Pumping may have routed messages to other waiting consumers.
                    self.wake_queued();
                }
                ConsumerType::Failover | ConsumerType::Exclusive
                    if self.live.first() != Some(&slot) => {}
                _ => {
                    let available = self.available(log);
                    let share = available.div_ceil(self.others_receiving() + 1);
                    let want = want.min(share);
                    batch.reserve_exact(want);
                    while batch.len() < want {
                        let Some(pending) = self.next_direct(log, sole) else {
                            break;
                        };
                        deliver(
                            &mut self.in_flight,
                            &mut batch,
                            topic,
                            pending,
                            slot,
                            deadline,
                        );
                    }
                    if let Some(Some(c)) = self.consumers.get_mut(slot) {
                        c.in_flight += batch.len();
                    }
                    // What is left belongs to the others.
                    self.wake_shared(self.available(log));
                }
            }
        }
        if batch.is_empty() {
            if let Some(Some(c)) = self.consumers.get_mut(slot) {
                self.waiters.register(c);
            }
        } else if deadline.is_some() && self.ack_scan_at.is_none() {
            self.ack_scan_at = deadline;
        }
        Ok(batch)
    }

    /// Acknowledges deliveries. Acknowledgement is per subscription, as in Pulsar: a delivery that
    /// timed out and went back, or was handed to another consumer meanwhile, is settled too.
    /// Ids this subscription does not hold are ignored.
    pub(super) fn ack(&mut self, key: ConsumerKey, ids: &[MessageId]) -> Result<(), BrokerError> {
        self.slot_of(key)?;
        for seq in ids.iter().filter_map(MessageId::as_u64) {
            match self.in_flight.remove(&seq) {
                Some(flight) => {
                    if let Some(Some(c)) = self.consumers.get_mut(flight.consumer) {
                        c.in_flight -= 1;
                    }
                    release(&mut self.key_owners, flight.pending.key_digest);
                }
                None => self.forget(seq),
            }
        }
        Ok(())
    }

    /// Gives deliveries of this consumer back for redelivery. Ids it does not hold are ignored.
    pub(super) fn nack(&mut self, key: ConsumerKey, ids: &[MessageId]) -> Result<(), BrokerError> {
        let slot = self.slot_of(key)?;
        for seq in ids.iter().filter_map(MessageId::as_u64) {
            if self.in_flight.get(&seq).is_some_and(|f| f.consumer == slot) {
                if let Some(flight) = self.in_flight.remove(&seq) {
                    self.requeue(flight);
                }
            }
        }
        Ok(())
    }

    /// Gives back deliveries whose ack timeout passed. Scans only when a deadline may have passed,
    /// and at most every sixteenth of the timeout, so a steady flow does not rescan constantly.
    /// Returns whether anything went back.
    pub(super) fn expire(&mut self, now: Instant, timeout: Duration) -> bool {
        match self.ack_scan_at {
            Some(at) if at <= now => {}
            _ => return false,
        }
        let expired: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline.is_some_and(|d| d <= now))
            .map(|(&seq, _)| seq)
            .collect();
        for seq in &expired {
            if let Some(flight) = self.in_flight.remove(seq) {
                self.requeue(flight);
            }
        }
        let tick = (timeout / 16).max(Duration::from_millis(1));
        let earliest_rescan = now.checked_add(tick).unwrap_or(now);
        self.ack_scan_at = self
            .in_flight
            .values()
            .filter_map(|f| f.deadline)
            .min()
            .map(|deadline| deadline.max(earliest_rescan));
        !expired.is_empty()
    }

    /// Wakes waiting consumers that can now take something.
    pub(super) fn wake_ready(&mut self, log: &mut Log, sole: bool) {
        if self.waiters.waiting() == 0 {
            return;
        }
        match self.kind {
            ConsumerType::KeyShared => {
                self.pump(log, sole);
                self.wake_queued();
            }
            ConsumerType::Failover | ConsumerType::Exclusive => {
                if self.available(log) == 0 {
                    return;
                }
                let active = self.live.first().copied();
                if let Some(Some(c)) = active.and_then(|slot| self.consumers.get_mut(slot)) {
                    if c.room() > 0 {
                        self.waiters.wake(c);
                    }
                }
            }
            ConsumerType::Shared => self.wake_shared(self.available(log)),
        }
    }

    /// Shared: wakes waiting consumers in turn, at most one per available message, since a woken
    /// consumer takes a whole batch.
    fn wake_shared(&mut self, mut available: usize) {
        let count = self.live.len();
        let start = self.next_wake;
        for i in 0..count {
            if available == 0 || self.waiters.waiting() == 0 {
                break;
            }
            let slot = self.live[(start + i) % count];
            if let Some(Some(c)) = self.consumers.get_mut(slot) {
                if c.room() > 0 && self.waiters.wake(c) {
                    available -= 1;
                    self.next_wake = (start + i + 1) % count;
                }
            }
        }
    }

    /// Wakes every waiting consumer, so that each looks again and recomputes when to wake.
    pub(super) fn wake_all(&mut self) {
        for c in self.consumers.iter_mut().flatten() {
            self.waiters.wake(c);
        }
    }

    /// Withdraws a receive that was dropped while waiting. Returns true when it had already been
    /// woken: that wakeup was meant for a message, and must go to someone else.
    pub(super) fn cancel_wait(&mut self, key: ConsumerKey) -> bool {
        match self.consumers.get_mut(key.slot) {
            Some(Some(c)) if c.id == key.id => self.waiters.reset(c) == WaitState::Woken,
            _ => false,
        }
    }

    fn slot_of(&self, key: ConsumerKey) -> Result<usize, BrokerError> {
        match self.consumers.get(key.slot) {
            Some(Some(c)) if c.id == key.id => Ok(key.slot),
            _ => Err(BrokerError::Closed(BACKEND)),
        }
    }

    fn take_consumer(&mut self, key: ConsumerKey) -> Option<Consumer> {
        let slot = self.consumers.get_mut(key.slot)?;
        if slot.as_ref().is_some_and(|c| c.id == key.id) {
            slot.take()
        } else {
            None
        }
    }

    /// Shared: how many other consumers are in `receive` with room for more, and so should get
    /// a part of what is available.
    fn others_receiving(&self) -> usize {
        if self.waiters.receiving() == 0 {
            return 0;
        }
        self.consumers
            .iter()
            .flatten()
            .filter(|c| c.wait != WaitState::Idle && c.room() > 0)
            .count()
    }

    fn queue_len(&self, slot: usize) -> usize {
        match self.consumers.get(slot) {
            Some(Some(c)) => c.queue.len(),
            _ => 0,
        }
    }

    /// Messages a shared, failover or exclusive consumer could take now.
    fn available(&self, log: &Log) -> usize {
        let unread = usize::try_from(log.end().saturating_sub(self.cursor)).unwrap_or(usize::MAX);
        self.redeliver.len().saturating_add(unread)
    }

    /// The next message for a shared, failover or exclusive consumer: redeliveries first.
    fn next_direct(&mut self, log: &mut Log, sole: bool) -> Option<Pending> {
        if let Some((_, pending)) = self.redeliver.pop_first() {
            return Some(pending);
        }
        if self.cursor >= log.end() {
            return None;
        }
        let entry = read(log, self.cursor, sole)?;
        self.cursor += 1;
        Some(Pending::fresh(entry))
    }

    /// Puts a delivery back for redelivery.
    fn requeue(&mut self, flight: InFlight) {
        if let Some(Some(c)) = self.consumers.get_mut(flight.consumer) {
            c.in_flight -= 1;
        }
        release(&mut self.key_owners, flight.pending.key_digest);
        let mut pending = flight.pending;
        pending.redeliveries = pending.redeliveries.saturating_add(1);
        self.redeliver.insert(pending.entry.pos, pending);
    }

    /// Drops an acknowledged message that is not in flight: one that went back after an ack
    /// timeout, or (key_shared) was routed to a queue meanwhile. Rare, so a scan is fine.
    fn forget(&mut self, seq: u64) {
        let found = self
            .redeliver
            .iter()
            .find(|(_, p)| p.entry.seq == seq)
            .map(|(&pos, _)| pos);
        if let Some(pos) = found {
            self.redeliver.remove(&pos);
            return;
        }
        for c in self.consumers.iter_mut().flatten() {
            if let Some(index) = c.queue.iter().position(|p| p.entry.seq == seq) {
                if let Some(pending) = c.queue.remove(index) {
                    self.queued -= 1;
                    release(&mut self.key_owners, pending.key_digest);
                }
                return;
            }
        }
    }
}

/// Reads the entry at `cursor`. The only subscription, reading at the front, moves the entry out
/// of the log instead of sharing it: the log would drop it right after anyway.
fn read(log: &mut Log, cursor: u64, sole: bool) -> Option<Entry> {
    if sole && cursor == log.base() {
        log.pop_front()
    } else {
        log.get(cursor).cloned()
    }
}

/// Hands one message to a consumer: into the batch, and into the unacknowledged set.
fn deliver(
    in_flight: &mut FastMap<u64, InFlight>,
    batch: &mut Vec<Delivery>,
    topic: &Arc<str>,
    pending: Pending,
    consumer: usize,
    deadline: Option<Instant>,
) {
    batch.push(Delivery {
        id: MessageId::from_u64(pending.entry.seq),
        topic: Arc::clone(topic),
        message: Arc::clone(&pending.entry.message),
        redelivery_count: pending.redeliveries,
        publish_time: Some(pending.entry.publish_time),
        defect: None,
    });
    in_flight.insert(
        pending.entry.seq,
        InFlight {
            pending,
            consumer,
            deadline,
        },
    );
}
