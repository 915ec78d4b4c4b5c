//! The series of one bridge route and the handles its forwarding loop updates.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use super::atomic::{nanos, Buckets, Histogram};
use super::text::escape_label_value;

/// Forwarding latencies in nanoseconds: 100 µs to 5 min.
static FORWARD_LATENCY: &Buckets = &super::task::HANDLER_DURATION;

/// Every series of one route. Label values are stored escaped.
pub(super) struct RouteCells {
    pub(super) route: String,
    pub(super) forwarded: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) target_failures: AtomicU64,
    pub(super) buffered: AtomicI64,
    /// What waits in the source; -1 until the source told.
    pub(super) source_lag: AtomicI64,
    pub(super) latency: Histogram,
}

impl RouteCells {
    pub(super) fn new(route: &str) -> Self {
        RouteCells {
            route: escape_label_value(route),
            forwarded: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            target_failures: AtomicU64::new(0),
            buffered: AtomicI64::new(0),
            source_lag: AtomicI64::new(-1),
            latency: Histogram::new(FORWARD_LATENCY),
        }
    }
}

/// The handles of one route, from [`Metrics::route`](super::Metrics::route). Cheap to clone;
/// every method is one or two relaxed atomic operations.
#[derive(Clone)]
pub struct RouteMetrics {
    cells: Arc<RouteCells>,
}

impl RouteMetrics {
    pub(super) fn from_cells(cells: Arc<RouteCells>) -> Self {
        RouteMetrics { cells }
    }

    /// Counts a message the target confirmed, `latency` after it entered the source (or was read).
    pub fn forwarded(&self, latency: Duration) {
        self.cells.forwarded.fetch_add(1, Relaxed);
        self.cells.latency.observe(nanos(latency));
    }

    /// Counts a message the route sent to its dead-letter topic instead.
    pub fn dead_lettered(&self) {
        self.cells.dead_lettered.fetch_add(1, Relaxed);
    }

    /// Counts a publish to the target that failed and will be tried again.
    pub fn target_failed(&self) {
        self.cells.target_failures.fetch_add(1, Relaxed);
    }

    /// Adds `delta` to the messages read but not yet confirmed by the target.
    pub fn buffered(&self, delta: i64) {
        self.cells.buffered.fetch_add(delta, Relaxed);
    }

    /// Sets what waits in the route's source.
    pub fn source_lag(&self, lag: u64) {
        self.cells
            .source_lag
            .store(i64::try_from(lag).unwrap_or(i64::MAX), Relaxed);
    }
}
