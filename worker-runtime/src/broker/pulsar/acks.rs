//! Grouped acknowledgements for one consumer.
//!
//! pulsar-rs sends one `CommandAck` frame per call, fire and forget, and has no public call that
//! acknowledges several positions in one frame. Two of its behaviours also shape what is safe:
//!
//! - The broker acknowledges whole *entries*. A batched entry holds several messages, and an
//!   individual ack of any one of them (pulsar-rs sends the batch index, which the broker ignores
//!   unless batch-index acks are enabled) removes the whole entry. So an entry is acknowledged
//!   only once every message in it has been acked by the runtime, as the Java client does.
//! - A cumulative ack of an entry acknowledges everything before it on the subscription. That is
//!   valid on exclusive and failover subscriptions only (the broker refuses it on shared ones),
//!   and only when every entry before it that was delivered here has been acked.
//!
//! [`AckTracker`] therefore collects acks between flushes (a short interval, or sooner once
//! enough are waiting) and turns them into as few frames as is safe: on exclusive and failover
//! subscriptions one cumulative ack per partition for the longest fully acked run of entries
//! from the oldest unacknowledged delivery, plus individual acks for acked entries beyond a gap;
//! on shared and key_shared subscriptions one individual ack per complete entry (fewer frames than
//! messages whenever producers batch). It holds no I/O; the subscription task sends the frames.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::naming::{EntryKey, PulsarMessageId};

/// Whether cumulative acks may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// Shared and key_shared subscriptions: individual acks only.
    Individual,
    /// Exclusive and failover subscriptions: one consumer receives the messages in order.
    Cumulative,
}

/// One ack frame to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckFrame {
    /// The entry to acknowledge.
    pub entry: EntryKey,
    /// Acknowledge everything up to and including it (on its partition).
    pub cumulative: bool,
}

#[derive(Debug)]
struct EntryState {
    /// Messages in the entry.
    batch_size: i32,
    /// Batch indexes acked so far (`-1` for an entry that is not batched).
    acked: BTreeSet<i32>,
    /// All messages acked, ack frame not sent yet.
    ready: bool,
    /// An individual ack frame went out for it already.
    sent: bool,
    /// Part of its partition's delivery sequence (cumulative mode only).
    in_sequence: bool,
}

impl EntryState {
    fn new(batch_size: i32) -> Self {
        EntryState {
            batch_size: batch_size.max(1),
            acked: BTreeSet::new(),
            ready: false,
            sent: false,
            in_sequence: false,
        }
    }

    fn complete(&self) -> bool {
        self.acked.len() >= usize::try_from(self.batch_size).unwrap_or(1)
    }
}

/// Collects the acks of one consumer and decides which frames to send. See the module docs.
#[derive(Debug)]
pub struct AckTracker {
    mode: AckMode,
    flush_at: usize,
    entries: HashMap<EntryKey, EntryState>,
    /// Entries in delivery order per partition (cumulative mode only).
    sequences: BTreeMap<i32, VecDeque<EntryKey>>,
    ready: usize,
}

impl AckTracker {
    /// A tracker that asks for a flush once `flush_at` entries are ready.
    pub fn new(mode: AckMode, flush_at: usize) -> Self {
        AckTracker {
            mode,
            flush_at: flush_at.max(1),
            entries: HashMap::new(),
            sequences: BTreeMap::new(),
            ready: 0,
        }
    }

    /// Records that a message was handed to the runtime.
    pub fn delivered(&mut self, id: &PulsarMessageId) {
        if self.mode != AckMode::Cumulative {
            return;
        }
        let key = id.entry_key();
        let state = self
            .entries
            .entry(key)
            .or_insert_with(|| EntryState::new(id.batch_size));
        if !state.in_sequence {
            state.in_sequence = true;
            self.sequences
                .entry(key.partition)
                .or_default()
                .push_back(key);
        }
    }

    /// Records the runtime's ack of one message.
    pub fn ack(&mut self, id: &PulsarMessageId) {
        let key = id.entry_key();
        let state = self
            .entries
            .entry(key)
            .or_insert_with(|| EntryState::new(id.batch_size));
        if state.ready || state.sent {
            return;
        }
        state.acked.insert(id.batch_index);
        if state.complete() {
            state.ready = true;
            self.ready += 1;
        }
    }

    /// Records the runtime's nack of one message, which makes the broker deliver its whole entry
    /// again, possibly to another consumer of a shared subscription.
    pub fn nack(&mut self, id: &PulsarMessageId) {
        let key = id.entry_key();
        let Some(state) = self.entries.get(&key) else {
            return;
        };
        // A shared subscription may hand the entry to another consumer: forget what was acked of
        // it here (it comes back whole). An ordered one redelivers it here, in sequence.
        if self.mode == AckMode::Individual && !state.ready && !state.sent {
            self.entries.remove(&key);
        }
    }

    /// The consumer was re-created: the broker delivers every unacknowledged entry again, so the
    /// old delivery order proves nothing any more. Acked entries are then acked individually.
    pub fn restart_sequences(&mut self) {
        self.sequences.clear();
        self.entries.retain(|_, state| {
            state.in_sequence = false;
            (state.ready || !state.acked.is_empty()) && !state.sent
        });
    }

    /// Whether enough acks are waiting to flush before the interval ends.
    pub fn should_flush(&self) -> bool {
        self.ready >= self.flush_at
    }

    /// Whether any ack is waiting.
    pub fn has_ready(&self) -> bool {
        self.ready > 0
    }

    /// Entries tracked (delivered or partly acked).
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.entries.len()
    }

    /// The frames to send now, forgetting what they cover.
    pub fn drain(&mut self) -> Vec<AckFrame> {
        let mut frames = Vec::new();
        if self.mode == AckMode::Cumulative {
            self.drain_prefixes(&mut frames);
        }
        // Everything else that is ready goes out individually.
        let mut individual: Vec<EntryKey> = self
            .entries
            .iter()
            .filter(|(_, state)| state.ready)
            .map(|(key, _)| *key)
            .collect();
        individual.sort_unstable();
        for key in individual {
            frames.push(AckFrame {
                entry: key,
                cumulative: false,
            });
            if let Some(state) = self.entries.get_mut(&key) {
                state.ready = false;
                state.sent = true;
                if !state.in_sequence {
                    self.entries.remove(&key);
                }
            }
        }
        self.ready = 0;
        frames
    }

    fn drain_prefixes(&mut self, frames: &mut Vec<AckFrame>) {
        for sequence in self.sequences.values_mut() {
            let mut highest: Option<EntryKey> = None;
            let mut unsent_in_run = false;
            while let Some(key) = sequence.front().copied() {
                let done = self
                    .entries
                    .get(&key)
                    .is_some_and(|state| state.ready || state.sent);
                if !done {
                    break;
                }
                sequence.pop_front();
                if let Some(state) = self.entries.remove(&key) {
                    unsent_in_run |= state.ready;
                }
                if highest.is_none_or(|h| (key.ledger, key.entry) > (h.ledger, h.entry)) {
                    highest = Some(key);
                }
            }
            if let (Some(entry), true) = (highest, unsent_in_run) {
                frames.push(AckFrame {
                    entry,
                    cumulative: true,
                });
            }
        }
        self.sequences.retain(|_, sequence| !sequence.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(entry: u64, batch_index: i32, batch_size: i32) -> PulsarMessageId {
        PulsarMessageId {
            partition: -1,
            ledger: 7,
            entry,
            batch_index,
            batch_size,
        }
    }

    fn single(entry: u64) -> PulsarMessageId {
        id(entry, -1, 1)
    }

    fn key(entry: u64) -> EntryKey {
        single(entry).entry_key()
    }

    fn individual(entry: u64) -> AckFrame {
        AckFrame {
            entry: key(entry),
            cumulative: false,
        }
    }

    fn cumulative(entry: u64) -> AckFrame {
        AckFrame {
            entry: key(entry),
            cumulative: true,
        }
    }

    #[test]
    fn shared_acks_are_grouped_until_drained() {
        let mut acks = AckTracker::new(AckMode::Individual, 3);
        acks.ack(&single(2));
        acks.ack(&single(1));
        assert!(acks.has_ready());
        assert!(!acks.should_flush());
        acks.ack(&single(3));
        assert!(acks.should_flush());
        assert_eq!(
            acks.drain(),
            vec![individual(1), individual(2), individual(3)]
        );
        assert!(acks.drain().is_empty());
        assert_eq!(acks.tracked(), 0);
    }

    #[test]
    fn a_batched_entry_is_acked_once_all_its_messages_are() {
        let mut acks = AckTracker::new(AckMode::Individual, 100);
        acks.ack(&id(5, 0, 3));
        acks.ack(&id(5, 2, 3));
        acks.ack(&id(5, 2, 3));
        assert!(
            acks.drain().is_empty(),
            "one message of the batch is unacked"
        );
        acks.ack(&id(5, 1, 3));
        assert_eq!(acks.drain(), vec![individual(5)]);
    }

    #[test]
    fn a_nack_on_a_shared_subscription_forgets_the_partial_batch() {
        let mut acks = AckTracker::new(AckMode::Individual, 100);
        acks.ack(&id(5, 0, 2));
        acks.nack(&id(5, 1, 2));
        assert_eq!(acks.tracked(), 0);
        // The entry comes back whole; both messages are acked again.
        acks.ack(&id(5, 1, 2));
        assert!(acks.drain().is_empty());
        acks.ack(&id(5, 0, 2));
        assert_eq!(acks.drain(), vec![individual(5)]);
    }

    #[test]
    fn in_order_acks_on_an_ordered_subscription_become_one_cumulative_ack() {
        let mut acks = AckTracker::new(AckMode::Cumulative, 100);
        for entry in 1..=4 {
            acks.delivered(&single(entry));
        }
        for entry in 1..=3 {
            acks.ack(&single(entry));
        }
        assert_eq!(acks.drain(), vec![cumulative(3)]);
        acks.ack(&single(4));
        assert_eq!(acks.drain(), vec![cumulative(4)]);
        assert_eq!(acks.tracked(), 0);
    }

    #[test]
    fn an_unacked_delivery_stops_the_cumulative_run_and_later_acks_go_individually() {
        let mut acks = AckTracker::new(AckMode::Cumulative, 100);
        for entry in 1..=5 {
            acks.delivered(&single(entry));
        }
        acks.ack(&single(1));
        acks.ack(&single(2));
        acks.ack(&single(4));
        assert_eq!(acks.drain(), vec![cumulative(2), individual(4)]);
        // Once 3 is acked, the run covers 3 and the already-sent 4: one cumulative ack of 4.
        acks.ack(&single(3));
        assert_eq!(acks.drain(), vec![cumulative(4)]);
        acks.ack(&single(5));
        assert_eq!(acks.drain(), vec![cumulative(5)]);
    }

    #[test]
    fn a_run_of_entries_already_acked_individually_needs_no_frame() {
        let mut acks = AckTracker::new(AckMode::Cumulative, 100);
        for entry in 1..=3 {
            acks.delivered(&single(entry));
        }
        acks.ack(&single(2));
        acks.ack(&single(3));
        assert_eq!(acks.drain(), vec![individual(2), individual(3)]);
        // Acking 1 advances the run over 1..3 and the cumulative ack names the highest entry.
        acks.ack(&single(1));
        assert_eq!(acks.drain(), vec![cumulative(3)]);
        assert!(acks.drain().is_empty());
    }

    #[test]
    fn cumulative_acks_wait_for_every_message_of_a_batch() {
        let mut acks = AckTracker::new(AckMode::Cumulative, 100);
        for index in 0..2 {
            acks.delivered(&id(1, index, 2));
        }
        acks.delivered(&single(2));
        acks.ack(&id(1, 0, 2));
        acks.ack(&single(2));
        assert_eq!(acks.drain(), vec![individual(2)]);
        acks.ack(&id(1, 1, 2));
        assert_eq!(acks.drain(), vec![cumulative(2)]);
    }

    #[test]
    fn partitions_have_their_own_runs() {
        let mut acks = AckTracker::new(AckMode::Cumulative, 100);
        let on = |partition, entry| PulsarMessageId {
            partition,
            ..single(entry)
        };
        acks.delivered(&on(0, 1));
        acks.delivered(&on(1, 1));
        acks.delivered(&on(0, 2));
        acks.ack(&on(0, 1));
        acks.ack(&on(0, 2));
        let frames = acks.drain();
        assert_eq!(
            frames,
            vec![AckFrame {
                entry: on(0, 2).entry_key(),
                cumulative: true
            }]
        );
    }

    #[test]
    fn after_a_restart_acked_entries_go_individually() {
        let mut acks = AckTracker::new(AckMode::Cumulative, 100);
        for entry in 1..=3 {
            acks.delivered(&single(entry));
        }
        acks.ack(&single(2));
        acks.restart_sequences();
        assert_eq!(acks.tracked(), 1, "only the acked entry is kept");
        assert_eq!(acks.drain(), vec![individual(2)]);
        assert_eq!(acks.tracked(), 0);
        // Redelivered after the restart, the sequence starts again.
        acks.delivered(&single(1));
        acks.delivered(&single(3));
        acks.ack(&single(1));
        acks.ack(&single(3));
        assert_eq!(acks.drain(), vec![cumulative(3)]);
    }

    #[test]
    fn an_ack_without_a_recorded_delivery_is_sent_individually() {
        let mut acks = AckTracker::new(AckMode::Cumulative, 100);
        acks.ack(&single(9));
        assert_eq!(acks.drain(), vec![individual(9)]);
    }
}
