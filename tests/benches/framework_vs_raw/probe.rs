//! What both sides' handlers call: the payload type, the no-op and 1 ms handlers, and the record
//! of when each message finished.
//!
//! A message's payload is the JSON array `[seq, sent_us, pad]`: its sequence number in the run, the
//! microseconds since the bench process started at which the producer published it, and padding to
//! the payload size asked for. The handler of either side calls [`finished`], which stores the
//! message's latency in the slot of its sequence number; a second finish of the same message is
//! counted as a duplicate (at least once allows them; they are reported).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use worker_runtime::prelude::*;
use worker_runtime::{Enqueue, Message};

/// The most messages one run may offer.
pub const MAX_MESSAGES: usize = 1 << 20;

/// `[seq, sent_us, pad]`.
#[derive(Serialize, Deserialize)]
pub struct Event(pub u64, pub u64, pub String);

/// The handler: what a finished message does, on either side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    /// Returns at once.
    Noop,
    /// Sleeps 1 ms (tokio timer), then returns.
    Sleep1ms,
}

impl Handler {
    pub fn name(self) -> &'static str {
        match self {
            Handler::Noop => "noop",
            Handler::Sleep1ms => "sleep1ms",
        }
    }

    /// The handler's body, as the raw loops run it.
    pub async fn run(self, event: Event) {
        if self == Handler::Sleep1ms {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        finished(&event);
    }

    /// Message `seq` of this handler's task, stamped now, as the task's `Enqueue` makes it.
    pub fn message(self, seq: u64, size: usize) -> Message {
        let payload = payload(seq, size);
        let message = match self {
            Handler::Noop => Enqueue::<noop::Task>::new(&payload).into_message(),
            Handler::Sleep1ms => Enqueue::<sleep1ms::Task>::new(&payload).into_message(),
        };
        message.expect("a bench payload encodes")
    }

    /// The framework task that runs this handler.
    pub fn task(self) -> TaskDefinition {
        match self {
            Handler::Noop => noop::task(),
            Handler::Sleep1ms => sleep1ms::task(),
        }
    }
}

// The topics are placeholders: every run points its task at a fresh topic.
#[pulsar_io_task(topic = "q1/bench/placeholder/noop")]
async fn noop(event: Event) -> Result<(), TaskError> {
    finished(&event);
    Ok(())
}

#[pulsar_io_task(topic = "q1/bench/placeholder/sleep1ms")]
async fn sleep1ms(event: Event) -> Result<(), TaskError> {
    tokio::time::sleep(Duration::from_millis(1)).await;
    finished(&event);
    Ok(())
}

/// The payload of message `seq`, stamped now, padded to `size` bytes where the number fields
/// leave room (a 16-byte payload comes out at 15–24 bytes).
pub fn payload(seq: u64, size: usize) -> Event {
    let sent = now_us();
    let bare = format!("[{seq},{sent},\"\"]").len();
    Event(seq, sent, "x".repeat(size.saturating_sub(bare)))
}

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Microseconds since the bench process started.
pub fn now_us() -> u64 {
    start().elapsed().as_micros() as u64
}

static LATENCY_US_PLUS_ONE: [AtomicU64; MAX_MESSAGES] = [const { AtomicU64::new(0) }; MAX_MESSAGES];
static HANDLED: AtomicU64 = AtomicU64::new(0);
static DUPLICATES: AtomicU64 = AtomicU64::new(0);
static TARGET: AtomicU64 = AtomicU64::new(u64::MAX);
static DONE_AT: Mutex<Option<Instant>> = Mutex::new(None);

/// Records that the handler of `event` finished now.
pub fn finished(event: &Event) {
    let Some(slot) = LATENCY_US_PLUS_ONE.get(event.0 as usize) else {
        return;
    };
    let latency = now_us().saturating_sub(event.1);
    if slot.swap(latency + 1, Ordering::Relaxed) != 0 {
        DUPLICATES.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if HANDLED.fetch_add(1, Ordering::AcqRel) + 1 == TARGET.load(Ordering::Acquire) {
        *DONE_AT.lock().expect("not poisoned") = Some(Instant::now());
    }
}

/// Forgets the previous run; [`wait_done`] will return once `target` distinct messages finished.
pub fn reset(target: u64) {
    assert!(
        target as usize <= MAX_MESSAGES,
        "at most {MAX_MESSAGES} messages per run"
    );
    TARGET.store(u64::MAX, Ordering::Release);
    for slot in &LATENCY_US_PLUS_ONE[..] {
        slot.store(0, Ordering::Relaxed);
    }
    HANDLED.store(0, Ordering::Release);
    DUPLICATES.store(0, Ordering::Release);
    *DONE_AT.lock().expect("not poisoned") = None;
    TARGET.store(target, Ordering::Release);
}

/// Waits until the target count finished (or `limit` passed); returns when the last one did.
/// Polls every millisecond (the instant itself is taken by the last handler).
pub async fn wait_done(limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(at) = *DONE_AT.lock().expect("not poisoned") {
            return Some(at);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Distinct messages finished so far, and duplicates.
pub fn counts() -> (u64, u64) {
    (
        HANDLED.load(Ordering::Acquire),
        DUPLICATES.load(Ordering::Acquire),
    )
}

/// The latencies (µs) of the first `count` messages that finished.
pub fn latencies_us(count: usize) -> Vec<u64> {
    LATENCY_US_PLUS_ONE[..count.min(MAX_MESSAGES)]
        .iter()
        .map(|slot| slot.load(Ordering::Relaxed))
        .filter(|&v| v != 0)
        .map(|v| v - 1)
        .collect()
}
