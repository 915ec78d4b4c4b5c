//! key_shared routing. Messages go into per-consumer queues by key. A key with messages
//! outstanding at a consumer (queued or unacknowledged) stays with it, so that a consumer joining
//! never gets a key's later messages while another still works on earlier ones; a key with nothing
//! outstanding goes where its hash points among the attached consumers. Messages without a key
//! promise no order and are spread by position.

use std::collections::hash_map::DefaultHasher;
use std::hash::{BuildHasher, BuildHasherDefault};

use super::{read, Pending, SubState};
use crate::broker::memory::hash::FastMap;
use crate::broker::memory::log::Log;

/// Digests message keys for key_shared routing. Fixed keys, so that routing is the same from run to
/// run; keys only choose a consumer, nothing is indexed by them.
type KeyDigest = BuildHasherDefault<DefaultHasher>;

/// Which consumer a key is bound to while it has messages outstanding there.
#[derive(Debug)]
pub(super) struct KeyOwner {
    pub(super) slot: usize,
    pub(super) outstanding: usize,
}

impl SubState {
    /// Routes every redelivery, then everything unread in the log, to its consumer.
    pub(super) fn pump(&mut self, log: &mut Log, sole: bool) {
        if self.live.is_empty() {
            return;
        }
        for (_, pending) in std::mem::take(&mut self.redeliver) {
            self.route(pending);
        }
        while self.cursor < log.end() {
            let Some(entry) = read(log, self.cursor, sole) else {
                break;
            };
            self.cursor += 1;
            self.route(Pending::fresh(entry));
        }
    }

    /// Queues one message for the consumer its key is bound or hashed to. Messages
    /// without a key promise no order and are spread by position.
    fn route(&mut self, mut pending: Pending) {
        let count = self.live.len() as u64;
        if count == 0 {
            self.redeliver.insert(pending.entry.pos, pending);
            return;
        }
        if pending.key_digest.is_none() {
            pending.key_digest = pending
                .entry
                .message
                .key
                .as_deref()
                .map(|key| KeyDigest::default().hash_one(key));
        }
        let slot = match pending.key_digest {
            Some(digest) => {
                let hashed = self.live[(digest % count) as usize];
                let owner = self.key_owners.entry(digest).or_insert(KeyOwner {
                    slot: hashed,
                    outstanding: 0,
                });
                owner.outstanding += 1;
                owner.slot
            }
            None => self.live[(pending.entry.pos % count) as usize],
        };
        match self.consumers.get_mut(slot) {
            Some(Some(c)) => {
                // A redelivery is older than what the queue may hold already: keep log order.
                if c.queue
                    .back()
                    .is_some_and(|last| last.entry.pos > pending.entry.pos)
                {
                    let at = c.queue.partition_point(|p| p.entry.pos < pending.entry.pos);
                    c.queue.insert(at, pending);
                } else {
                    c.queue.push_back(pending);
                }
                self.queued += 1;
            }
            // Owners are always attached (detach removes its keys); keep the message regardless.
            _ => {
                release(&mut self.key_owners, pending.key_digest);
                self.redeliver.insert(pending.entry.pos, pending);
            }
        }
    }

    /// Takes back every queued message so that it is routed again.
    pub(super) fn unroute_queued(&mut self) {
        for c in self.consumers.iter_mut().flatten() {
            for pending in c.queue.drain(..) {
                release(&mut self.key_owners, pending.key_digest);
                self.redeliver.insert(pending.entry.pos, pending);
            }
        }
        self.queued = 0;
    }

    /// Wakes waiting consumers that have queued messages and room for them.
    pub(super) fn wake_queued(&mut self) {
        if self.waiters.waiting() == 0 {
            return;
        }
        for &slot in &self.live {
            if let Some(Some(c)) = self.consumers.get_mut(slot) {
                if !c.queue.is_empty() && c.room() > 0 {
                    self.waiters.wake(c);
                }
            }
        }
    }
}

/// Counts one outstanding message of a key as settled; the key is free once none is left.
pub(super) fn release(owners: &mut FastMap<u64, KeyOwner>, digest: Option<u64>) {
    let Some(digest) = digest else {
        return;
    };
    if let Some(owner) = owners.get_mut(&digest) {
        owner.outstanding = owner.outstanding.saturating_sub(1);
        if owner.outstanding == 0 {
            owners.remove(&digest);
        }
    }
}
