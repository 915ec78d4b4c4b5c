//! A global allocator that counts allocations while counting is on: the measure of the
//! allocation guards. A test binary installs it with
//! `#[global_allocator] static ALLOCATOR: Counting = Counting;`, and counts with
//! [`Counting::start`] and [`Counting::stop`]; every thread's allocations count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use worker_runtime::worker::{CancellationToken, Worker};

/// The counting allocator. See the [module docs](self).
pub struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

impl Counting {
    /// Counts from zero, from now on.
    pub fn start() {
        ALLOCATIONS.store(0, Relaxed);
        COUNTING.store(true, Relaxed);
    }

    /// Stops counting and returns the count since [`Counting::start`].
    pub fn stop() -> u64 {
        COUNTING.store(false, Relaxed);
        ALLOCATIONS.load(Relaxed)
    }
}

/// Allocations per message of `worker` draining `messages` messages, counted on every thread
/// from its start until `handled` (which its handler raises) reaches `messages`, within two
/// minutes; its run is stopped after that.
pub async fn per_message_while_draining(worker: Worker, handled: &AtomicU64, messages: u64) -> f64 {
    let shutdown = CancellationToken::new();
    Counting::start();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while handled.load(Relaxed) < messages {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {messages} handled",
            handled.load(Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let allocations = Counting::stop();
    shutdown.cancel();
    running.await.expect("worker task").expect("worker run");
    allocations as f64 / messages as f64
}

// SAFETY: every method hands the request to `System` unchanged; counting touches only atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (`alloc` or `realloc`, both `System`'s) with
        // this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: the caller's contract for `realloc` is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
