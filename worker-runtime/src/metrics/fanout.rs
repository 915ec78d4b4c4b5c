//! The series of one member of a fanout broker.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::text::escape_label_value;

pub(super) struct FanoutCells {
    pub(super) broker: String,
    pub(super) ok: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) buffered: AtomicI64,
}

impl FanoutCells {
    pub(super) fn new(broker: &str) -> Self {
        FanoutCells {
            broker: escape_label_value(broker),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            buffered: AtomicI64::new(0),
        }
    }
}

/// The handles of one fanout member, from [`Metrics::fanout_member`](super::Metrics::fanout_member).
#[derive(Clone)]
pub struct FanoutMetrics {
    cells: Arc<FanoutCells>,
}

impl FanoutMetrics {
    pub(super) fn from_cells(cells: Arc<FanoutCells>) -> Self {
        FanoutMetrics { cells }
    }

    /// Counts a publish to this member that the member confirmed (`ok`) or failed.
    pub fn published(&self, ok: bool) {
        let counter = if ok {
            &self.cells.ok
        } else {
            &self.cells.failed
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Adds `delta` to the copies waiting for this member.
    pub fn buffered(&self, delta: i64) {
        self.cells.buffered.fetch_add(delta, Relaxed);
    }
}
