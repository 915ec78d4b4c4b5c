//! A topic's log: the messages in the order they became deliverable, each at a position.
//!
//! Subscriptions read it through a cursor (a position). The front is cut off as soon as every
//! subscription's cursor has passed it; what a subscription read and has not acknowledged it keeps
//! itself, so a slow message never pins the log.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use worker_core::Message;

/// One stored message. Cloning it shares the message (one reference count), never the payload.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    /// The id given to the publisher, in publish order.
    pub(super) seq: u64,
    /// Where it sits in the log. Differs from publish order only for delayed messages, which join
    /// the log when they are due.
    pub(super) pos: u64,
    /// The message, shared by every subscription and delivery.
    pub(super) message: Arc<Message>,
    /// When it was published.
    pub(super) publish_time: SystemTime,
}

/// The retained tail of a topic's log.
#[derive(Debug, Default)]
pub(super) struct Log {
    entries: VecDeque<Entry>,
    /// The position of `entries[0]`.
    base: u64,
}

impl Log {
    /// The position of the oldest retained entry.
    pub(super) fn base(&self) -> u64 {
        self.base
    }

    /// The position the next appended entry gets.
    pub(super) fn end(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    /// How many entries are retained.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Appends a message at [`Self::end`].
    pub(super) fn append(&mut self, seq: u64, message: Arc<Message>, publish_time: SystemTime) {
        let pos = self.end();
        self.entries.push_back(Entry {
            seq,
            pos,
            message,
            publish_time,
        });
    }

    /// The entry at `pos`, if it is retained.
    pub(super) fn get(&self, pos: u64) -> Option<&Entry> {
        let index = usize::try_from(pos.checked_sub(self.base)?).ok()?;
        self.entries.get(index)
    }

    /// Removes and returns the oldest entry.
    pub(super) fn pop_front(&mut self) -> Option<Entry> {
        let entry = self.entries.pop_front()?;
        self.base += 1;
        Some(entry)
    }

    /// Drops every entry before `pos`.
    pub(super) fn trim_to(&mut self, pos: u64) {
        let count = pos.saturating_sub(self.base).min(self.entries.len() as u64);
        if count > 0 {
            // `count` is at most `entries.len()`, so it fits in usize.
            self.entries.drain(..count as usize);
            self.base += count;
        }
    }

    /// The retained entries, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_survive_trimming() {
        let mut log = Log::default();
        for seq in 0..5 {
            log.append(seq, Arc::new(Message::new("x")), SystemTime::UNIX_EPOCH);
        }
        assert_eq!((log.base(), log.end(), log.len()), (0, 5, 5));
        log.trim_to(2);
        assert_eq!((log.base(), log.end()), (2, 5));
        assert!(log.get(1).is_none());
        assert_eq!(log.get(3).map(|e| e.seq), Some(3));
        assert_eq!(log.pop_front().map(|e| e.pos), Some(2));
        log.trim_to(100);
        assert_eq!((log.base(), log.end(), log.len()), (5, 5, 0));
        assert!(log.get(5).is_none());
    }
}
