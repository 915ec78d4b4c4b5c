//! Per-thread stripes for the cells every delivery updates.
//!
//! One atomic counter that every runtime thread adds to on every delivery moves its cache line
//! from core to core each time: with the dispatch loops on two cores, the handful of counters a
//! delivery touches cost more than the rest of its bookkeeping. A [`Striped`] value keeps one copy
//! of its cells per stripe, each on cache lines of its own; a thread always updates the same
//! stripe, and a reader sums them.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// How many stripes a [`Striped`] value has. Threads beyond that share stripes, which stays
/// correct (the cells are atomic) and only brings the contention back for them.
pub(crate) const STRIPES: usize = 8;

/// One stripe, alone on its cache lines (128 bytes: two lines, as adjacent-line prefetchers pair
/// them).
#[repr(align(128))]
struct Stripe<T>(T);

/// [`STRIPES`] copies of `T`, one per thread stripe. See the [module docs](self).
pub(crate) struct Striped<T> {
    stripes: Box<[Stripe<T>]>,
}

impl<T> Striped<T> {
    /// Makes every stripe with `new`.
    pub(crate) fn new(mut new: impl FnMut() -> T) -> Self {
        Striped {
            stripes: (0..STRIPES).map(|_| Stripe(new())).collect(),
        }
    }

    /// The calling thread's stripe, to update.
    pub(crate) fn local(&self) -> &T {
        &self.stripes[stripe_index() % self.stripes.len()].0
    }

    /// Every stripe, to sum.
    pub(crate) fn all(&self) -> impl Iterator<Item = &T> + Clone {
        self.stripes.iter().map(|stripe| &stripe.0)
    }

    /// The total over every stripe of the count `read` takes from it, saturating.
    pub(crate) fn total(&self, read: impl Fn(&T) -> u64) -> u64 {
        self.all().map(read).fold(0, u64::saturating_add)
    }
}

impl<T: Default> Default for Striped<T> {
    fn default() -> Self {
        Striped::new(T::default)
    }
}

/// The calling thread's stripe index, handed out round-robin on first use.
fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|index| {
        if index.get() == usize::MAX {
            index.set(NEXT.fetch_add(1, Relaxed) % STRIPES);
        }
        index.get()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use super::*;

    #[test]
    fn updates_from_many_threads_all_count() {
        let counter = Arc::new(Striped::<AtomicU64>::default());
        let threads: Vec<_> = (0..STRIPES * 2)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counter.local().fetch_add(1, Relaxed);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("a counting thread");
        }
        let total: u64 = counter.all().map(|c| c.load(Relaxed)).sum();
        assert_eq!(total, (STRIPES * 2 * 1000) as u64);
    }

    #[test]
    fn threads_get_different_stripes_until_they_run_out() {
        let seen: Vec<usize> = (0..STRIPES)
            .map(|_| std::thread::spawn(stripe_index).join().expect("a thread"))
            .collect();
        let mut distinct = seen.clone();
        distinct.sort_unstable();
        distinct.dedup();
        // Other tests' threads take indexes meanwhile; still, consecutive threads spread out.
        assert!(distinct.len() > 1, "{seen:?}");
        assert!(seen.iter().all(|&index| index < STRIPES));
    }

    #[test]
    fn each_stripe_starts_a_cache_line_pair_of_its_own() {
        let striped = Striped::<AtomicU64>::default();
        let addresses: Vec<usize> = striped
            .all()
            .map(|cell| cell as *const AtomicU64 as usize)
            .collect();
        assert!(addresses.iter().all(|address| address % 128 == 0));
        assert!(addresses.windows(2).all(|pair| pair[1] - pair[0] >= 128));
    }
}
