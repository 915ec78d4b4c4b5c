//! Who waits in `receive`, so that each message wakes at most one consumer and a shared batch can
//! be split between the consumers that are receiving.

use super::Consumer;

/// Where a consumer is in `receive`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WaitState {
    /// Not waiting (not in `receive`, or taking a batch right now).
    Idle,
    /// Waiting; whoever makes a message available to it wakes it.
    Waiting,
    /// Woken and about to look; needs no further wakeup.
    Woken,
}

/// Counts of the consumers in each [`WaitState`], kept in step with the consumers' own state.
#[derive(Debug, Default)]
pub(super) struct Waiters {
    waiting: usize,
    woken: usize,
}

impl Waiters {
    /// Consumers waiting to be woken.
    pub(super) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Consumers inside `receive`: the ones a shared batch is split between.
    pub(super) fn receiving(&self) -> usize {
        self.waiting + self.woken
    }

    /// Leaves whatever wait state the consumer was in, returning it.
    pub(super) fn reset(&mut self, consumer: &mut Consumer) -> WaitState {
        let previous = consumer.wait;
        match previous {
            WaitState::Waiting => self.waiting -= 1,
            WaitState::Woken => self.woken -= 1,
            WaitState::Idle => {}
        }
        consumer.wait = WaitState::Idle;
        previous
    }

    pub(super) fn register(&mut self, consumer: &mut Consumer) {
        self.reset(consumer);
        consumer.wait = WaitState::Waiting;
        self.waiting += 1;
    }

    /// Wakes a waiting consumer; does nothing to one that is not waiting or was woken already.
    pub(super) fn wake(&mut self, consumer: &mut Consumer) -> bool {
        if consumer.wait != WaitState::Waiting {
            return false;
        }
        consumer.wait = WaitState::Woken;
        self.waiting -= 1;
        self.woken += 1;
        consumer.notify.notify_one();
        true
    }
}
