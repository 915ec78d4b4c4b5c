//! What a worker did, returned when it stops.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::striped::Striped;

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

/// One of the counts of a [`TaskReport`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Count {
    Received,
    Succeeded,
    Retried,
    DeadLettered,
    Nacked,
    Duplicates,
}

/// The live counters behind a [`TaskReport`]: relaxed atomics, one set per thread stripe (every
/// delivery adds to two of them), summed once at the end.
#[derive(Default)]
pub(crate) struct Counters {
    stripes: Striped<[AtomicU64; 6]>,
}

impl Counters {
    pub fn add(&self, count: Count, n: u64) {
        self.stripes.local()[count as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn report(&self, task: &str) -> TaskReport {
        let read = |count: Count| {
            self.stripes
                .total(|cells| cells[count as usize].load(Ordering::Relaxed))
        };
        TaskReport {
            task: task.to_owned(),
            received: read(Count::Received),
            succeeded: read(Count::Succeeded),
            retried: read(Count::Retried),
            dead_lettered: read(Count::DeadLettered),
            nacked: read(Count::Nacked),
            duplicates: read(Count::Duplicates),
        }
    }
}
