//! Delayed delivery: a message whose `deliver_at` lies ahead waits here, ordered by due time, and
//! joins the topic's log when it is due. Times are on tokio's clock, so paused-time tests can
//! advance through a delay instead of sleeping.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use worker_core::Message;

/// How far ahead a wait is capped when `deliver_at` is further than tokio's clock can express.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

/// A message waiting for its delivery time.
#[derive(Debug)]
pub(super) struct Delayed {
    pub(super) due: Instant,
    pub(super) seq: u64,
    pub(super) message: Arc<Message>,
    pub(super) publish_time: SystemTime,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    /// Reversed, so that the max-heap yields the earliest due time (then the earliest publish).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// The delayed messages of one topic.
#[derive(Debug, Default)]
pub(super) struct DelayQueue {
    heap: BinaryHeap<Delayed>,
}

impl DelayQueue {
    pub(super) fn push(&mut self, delayed: Delayed) {
        self.heap.push(delayed);
    }

    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// When the next message is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|d| d.due)
    }

    /// Removes the next message if it is due at `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Delayed> {
        if self.next_due()? <= now {
            self.heap.pop()
        } else {
            None
        }
    }

    /// The waiting messages, earliest due first.
    pub(super) fn sorted(&self) -> Vec<&Delayed> {
        let mut all: Vec<&Delayed> = self.heap.iter().collect();
        all.sort_by(|a, b| b.cmp(a));
        all
    }
}

/// Converts a wall-clock delivery time into tokio's clock, measured from `now` (the publish time).
/// `None` when it is not in the future, so the message is delivered at once.
pub(super) fn due_instant(at: SystemTime, now: SystemTime) -> Option<Instant> {
    let wait = at.duration_since(now).ok().filter(|wait| !wait.is_zero())?;
    let start = Instant::now();
    Some(
        start
            .checked_add(wait)
            .or_else(|| start.checked_add(FAR_FUTURE))
            .unwrap_or(start),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delayed(due: Instant, seq: u64) -> Delayed {
        Delayed {
            due,
            seq,
            message: Arc::new(Message::new("x")),
            publish_time: SystemTime::UNIX_EPOCH,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn converts_wall_clock_times_to_tokio_time() {
        let now = SystemTime::now();
        assert_eq!(due_instant(now, now), None);
        assert_eq!(due_instant(now - Duration::from_secs(5), now), None);
        let start = Instant::now();
        assert_eq!(
            due_instant(now + Duration::from_secs(5), now),
            Some(start + Duration::from_secs(5))
        );
        // A time beyond what the clock can add is capped, not a panic.
        let far = now + Duration::from_secs(u64::MAX / 4);
        assert!(due_instant(far, now).is_some_and(|due| due > start));
    }

    #[tokio::test(start_paused = true)]
    async fn yields_messages_in_due_order_only_when_due() {
        let start = Instant::now();
        let mut queue = DelayQueue::default();
        queue.push(delayed(start + Duration::from_secs(2), 1));
        queue.push(delayed(start + Duration::from_secs(1), 2));
        queue.push(delayed(start + Duration::from_secs(1), 0));
        assert_eq!(queue.next_due(), Some(start + Duration::from_secs(1)));
        let order: Vec<u64> = queue.sorted().iter().map(|d| d.seq).collect();
        assert_eq!(order, [0, 2, 1]);
        assert!(queue.pop_due(start).is_none());
        let due: Vec<u64> = std::iter::from_fn(|| queue.pop_due(start + Duration::from_secs(1)))
            .map(|d| d.seq)
            .collect();
        assert_eq!(due, [0, 2]);
        assert_eq!(queue.len(), 1);
        assert!(!queue.is_empty());
    }
}
