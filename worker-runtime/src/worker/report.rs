//! What a worker did, returned when it stops.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of what one task's consumer did during a worker's run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskReport {
    /// The task.
    pub task: String,
    /// Deliveries taken from the broker.
    pub received: u64,
    /// Deliveries whose handler succeeded (acked).
    pub succeeded: u64,
    /// Failed attempts scheduled for another try.
    pub retried: u64,
    /// Deliveries dead-lettered (acked after their DLQ copy was confirmed).
    pub dead_lettered: u64,
    /// Deliveries given back to the broker unfinished (at shutdown, or when the credit ledger failed).
    pub nacked: u64,
    /// Deliveries of messages handled before, within the task's idempotency window: acked,
    /// not run.
    pub duplicates: u64,
}

/// What a worker did, per task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// One report per task, in the order the tasks were given.
    pub tasks: Vec<TaskReport>,
}

impl WorkerReport {
    /// The report of one task.
    pub fn task(&self, name: &str) -> Option<&TaskReport> {
        self.tasks.iter().find(|t| t.task == name)
    }
}

/// The live counters behind a [`TaskReport`]; relaxed atomics, read once at the end.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub received: AtomicU64,
    pub succeeded: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub nacked: AtomicU64,
    pub duplicates: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn report(&self, task: &str) -> TaskReport {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TaskReport {
            task: task.to_owned(),
            received: read(&self.received),
            succeeded: read(&self.succeeded),
            retried: read(&self.retried),
            dead_lettered: read(&self.dead_lettered),
            nacked: read(&self.nacked),
            duplicates: read(&self.duplicates),
        }
    }
}
