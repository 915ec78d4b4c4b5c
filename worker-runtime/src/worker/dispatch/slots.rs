//! The concurrency slots of the pool's dispatch loops.
//!
//! A task's `concurrency` slots live in one semaphore that all its loops share: that is what bounds
//! them together. Taking a permit from it and giving it back for every delivery, though, moves the
//! semaphore's state (and its waiters' lock) from core to core on every delivery, and once permits
//! are short they pass from loop to loop one at a time, with a wake-up each. So a loop takes slots
//! in bulk into its own [`LoopSlots`], keeps the ones its deliveries free for its next deliveries,
//! and gives back to the shared semaphore:
//!
//! - at the end of every turn, whatever it holds free beyond its share (`keep`), so that a loop
//!   kept busy cannot hoard the slots another loop's deliveries wait for;
//! - all it holds free when it is about to wait (nothing to start, nothing finished), so that an
//!   idle loop holds none;
//! - a slot a delivery releases early (a retry waiting out its delay in the worker), at once.
//!
//! No loop ever waits for a slot while holding free ones, and a loop takes from the shared
//! semaphore whatever its received deliveries can use, so nothing it received waits behind its
//! share while slots are free elsewhere.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::{Semaphore, TryAcquireError};

/// The slots one dispatch loop holds. See the [module docs](self).
pub(crate) struct LoopSlots {
    shared: Arc<Semaphore>,
    /// Slots taken from `shared` (and forgotten there) that no delivery uses. Only the loop and
    /// the deliveries it polls touch it, one thread at a time: an atomic only to be shareable.
    free: AtomicUsize,
    /// How many free slots the loop keeps from one turn to the next.
    keep: usize,
}

impl LoopSlots {
    /// The slots of a loop drawing from `shared`, keeping up to `keep` free between turns.
    pub fn new(shared: Arc<Semaphore>, keep: usize) -> Self {
        LoopSlots {
            shared,
            free: AtomicUsize::new(0),
            keep,
        }
    }

    /// A slot for one delivery: one the loop holds, else one taken from the shared semaphore
    /// together with as many more as are free there, up to `wanted` in all. `None` if no slot is
    /// free anywhere.
    pub fn try_take(&self, wanted: usize) -> Option<Slot<'_>> {
        if self.free.load(Relaxed) == 0 {
            let available = self.shared.available_permits().min(wanted.max(1));
            if available == 0 {
                return None;
            }
            let taken = u32::try_from(available)
                .ok()
                .and_then(|n| self.shared.try_acquire_many(n).ok())
                // Another loop took some meanwhile: one is enough to go on.
                .or_else(|| self.shared.try_acquire().ok())?;
            let count = taken.num_permits();
            taken.forget();
            self.free.fetch_add(count, Relaxed);
        }
        self.free.fetch_sub(1, Relaxed);
        Some(Slot {
            loop_slots: Some(self),
        })
    }

    /// Waits until the shared semaphore has a slot and holds it free; false if it was closed.
    ///
    /// A loop that had to wait was woken by another loop giving slots back, and tokio runs a task
    /// woken from a runtime thread next on that thread, in a slot no idle thread can take it from:
    /// the two loops would take turns on one thread while the other idles (on the embedded
    /// broker, 1.1 cores busy of two). So a woken loop yields once, to the back of its thread's
    /// run queue, where an idle thread takes it from. The slot is held free before that: a loop
    /// that drops this future at the yield keeps it.
    pub async fn wait_for_one(&self) -> bool {
        let woken = match self.shared.try_acquire() {
            Ok(permit) => {
                permit.forget();
                false
            }
            Err(TryAcquireError::Closed) => return false,
            Err(TryAcquireError::NoPermits) => match self.shared.acquire().await {
                Ok(permit) => {
                    permit.forget();
                    true
                }
                Err(_) => return false,
            },
        };
        self.free.fetch_add(1, Relaxed);
        if woken {
            tokio::task::yield_now().await;
        }
        true
    }

    /// Whether a slot is free, held by this loop or in the shared semaphore.
    pub fn any_free(&self) -> bool {
        self.holds_free() || self.shared.available_permits() > 0
    }

    /// Whether this loop holds free slots.
    pub fn holds_free(&self) -> bool {
        self.free.load(Relaxed) > 0
    }

    /// Gives back to the shared semaphore the free slots beyond the loop's share.
    pub fn end_turn(&self) {
        self.give_back_beyond(self.keep);
    }

    /// Gives back every free slot: the loop is about to wait.
    pub fn give_back_all(&self) {
        self.give_back_beyond(0);
    }

    fn give_back_beyond(&self, keep: usize) {
        let free = self.free.load(Relaxed);
        if free > keep {
            self.free.store(keep, Relaxed);
            self.shared.add_permits(free - keep);
        }
    }
}

impl Drop for LoopSlots {
    fn drop(&mut self) {
        self.give_back_all();
    }
}

/// The slot one running delivery holds: back to its loop when dropped, or to every loop at once
/// with [`release`](Self::release).
pub(crate) struct Slot<'a> {
    loop_slots: Option<&'a LoopSlots>,
}

impl Slot<'_> {
    /// Gives the slot back now, to the shared semaphore, waking a loop that waits for one: for a
    /// delivery about to wait long (a retry's delay) without running.
    pub fn release(mut self) {
        if let Some(slots) = self.loop_slots.take() {
            slots.shared.add_permits(1);
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(slots) = self.loop_slots.take() {
            slots.free.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    #[tokio::test]
    async fn a_loop_woken_for_a_slot_holds_it_and_yields_once_before_going_on() {
        let shared = Arc::new(Semaphore::new(0));
        let slots = LoopSlots::new(shared.clone(), 1);
        let mut wait = std::pin::pin!(slots.wait_for_one());
        assert_eq!((&mut wait).now_or_never(), None, "no slot anywhere: waits");
        shared.add_permits(1);
        assert_eq!(
            (&mut wait).now_or_never(),
            None,
            "woken: yields to the run queue first"
        );
        assert!(slots.holds_free(), "with the slot already held");
        assert_eq!((&mut wait).now_or_never(), Some(true));
        // A slot there at once is no wake-up: no yield.
        slots.give_back_all();
        assert_eq!(slots.wait_for_one().now_or_never(), Some(true));
    }

    #[test]
    fn a_loop_takes_what_it_can_use_in_one_go_and_keeps_its_share() {
        let shared = Arc::new(Semaphore::new(8));
        let slots = LoopSlots::new(shared.clone(), 2);
        let taken: Vec<_> = (0..5).map(|_| slots.try_take(5).expect("free")).collect();
        assert_eq!(shared.available_permits(), 3, "five taken in one go");
        drop(taken);
        assert_eq!(
            shared.available_permits(),
            3,
            "freed slots stay with the loop"
        );
        slots.end_turn();
        assert_eq!(shared.available_permits(), 6, "all but its share go back");
        slots.give_back_all();
        assert_eq!(shared.available_permits(), 8);
    }

    #[test]
    fn the_bound_holds_across_loops() {
        let shared = Arc::new(Semaphore::new(3));
        let first = LoopSlots::new(shared.clone(), 2);
        let second = LoopSlots::new(shared.clone(), 2);
        let a = first.try_take(2).expect("free");
        let b = second.try_take(10).expect("the one left in the semaphore");
        let c = first.try_take(1).expect("the second the first loop took");
        assert!(first.try_take(1).is_none(), "three in use: none left");
        assert!(second.try_take(1).is_none(), "three in use: none left");
        drop((a, b, c));
        first.give_back_all();
        second.give_back_all();
        assert_eq!(shared.available_permits(), 3);
    }

    #[test]
    fn an_early_release_goes_to_every_loop_and_a_dropped_loop_gives_back_all() {
        let shared = Arc::new(Semaphore::new(2));
        let slots = LoopSlots::new(shared.clone(), 2);
        let slot = slots.try_take(2).expect("free");
        slot.release();
        assert_eq!(shared.available_permits(), 1, "released to the semaphore");
        let _held = slots.try_take(1).expect("the loop still holds one");
        drop(_held);
        drop(slots);
        assert_eq!(shared.available_permits(), 2);
    }

    #[tokio::test]
    async fn waiting_for_a_slot_ends_when_another_loop_gives_one_back() {
        let shared = Arc::new(Semaphore::new(1));
        let busy = Arc::new(LoopSlots::new(shared.clone(), 1));
        let idle = LoopSlots::new(shared.clone(), 1);
        let slot = busy.try_take(1).expect("free");
        assert!(idle.try_take(1).is_none());
        let waiter = idle.wait_for_one();
        drop(slot);
        busy.give_back_all();
        assert!(waiter.await);
        assert!(idle.try_take(1).is_some());
    }
}
