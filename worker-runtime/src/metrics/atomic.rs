//! Lock-free building blocks for the per-message series: a duration sum that cannot overflow in
//! practice, and a fixed-bucket histogram. Every update is one or two relaxed atomic additions.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A sum of durations in nanoseconds, with a carry word so that it never wraps (a bare `u64` of
/// nanoseconds wraps after 584 years of cumulated time, which a busy worker with a thousand
/// concurrent handlers reaches in months).
#[derive(Default)]
pub(crate) struct DurationSum {
    nanos: AtomicU64,
    carry: AtomicU64,
}

impl DurationSum {
    /// Adds `d` (saturated to `u64::MAX` nanoseconds).
    pub(crate) fn add(&self, d: Duration) {
        self.add_nanos(nanos(d));
    }

    fn add_nanos(&self, n: u64) {
        let before = self.nanos.fetch_add(n, Relaxed);
        if before.checked_add(n).is_none() {
            self.carry.fetch_add(1, Relaxed);
        }
    }

    /// The sum in seconds.
    pub(crate) fn seconds(&self) -> f64 {
        // Re-read when a carry happened between the two loads, so the pair is consistent.
        loop {
            let carry = self.carry.load(Relaxed);
            let nanos = self.nanos.load(Relaxed);
            if self.carry.load(Relaxed) == carry {
                let total = (u128::from(carry) << 64) | u128::from(nanos);
                return total as f64 / 1e9;
            }
        }
    }
}

/// A duration in nanoseconds, saturated to `u64::MAX` (584 years).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The fixed buckets of a histogram: inclusive upper bounds in the observed unit, and their
/// labels as written in the exposition (`le="0.005"`).
pub(crate) struct Buckets {
    /// Inclusive upper bounds, ascending; the implicit last bucket is `+Inf`.
    pub(crate) bounds: &'static [u64],
    /// The `le` label of each bound, same length as `bounds`.
    pub(crate) labels: &'static [&'static str],
    /// How many units make one exposed unit (1e9 for nanoseconds exposed as seconds). A divisor,
    /// not a factor, so that exact sums print exactly (`0.253`, not `0.25300000000000006`).
    pub(crate) divisor: f64,
}

/// A histogram with fixed buckets: one atomic count per bucket and an atomic sum. The count is the
/// sum of the buckets, so `_count` always equals the `+Inf` bucket.
pub(crate) struct Histogram {
    buckets: &'static Buckets,
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
    sum_carry: AtomicU64,
}

/// A point-in-time copy of a histogram, cumulative as the exposition wants it.
pub(crate) struct HistogramSnapshot {
    /// `(le label, cumulative count)` for every bound, then `("+Inf", count)`.
    pub(crate) cumulative: Vec<(&'static str, u64)>,
    /// The sum of observations in the exposed unit.
    pub(crate) sum: f64,
    /// The number of observations.
    pub(crate) count: u64,
}

impl Histogram {
    /// An empty histogram over `buckets`.
    pub(crate) fn new(buckets: &'static Buckets) -> Self {
        debug_assert_eq!(buckets.bounds.len(), buckets.labels.len());
        debug_assert!(buckets.bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            buckets,
            counts: (0..=buckets.bounds.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum: AtomicU64::new(0),
            sum_carry: AtomicU64::new(0),
        }
    }

    /// Records one observation of `value` units.
    pub(crate) fn observe(&self, value: u64) {
        let index = self.buckets.bounds.partition_point(|&bound| bound < value);
        // `partition_point` returns at most `bounds.len()`, the index of the `+Inf` bucket.
        if let Some(count) = self.counts.get(index) {
            count.fetch_add(1, Relaxed);
        }
        let before = self.sum.fetch_add(value, Relaxed);
        if before.checked_add(value).is_none() {
            self.sum_carry.fetch_add(1, Relaxed);
        }
    }

    /// A cumulative copy for encoding.
    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        Histogram::merged_snapshot(self.buckets, std::iter::once(self))
    }

    /// One cumulative copy of several histograms over the same `buckets` (the stripes of one
    /// series), as if every observation had gone to one.
    pub(crate) fn merged_snapshot<'a>(
        buckets: &'static Buckets,
        parts: impl Iterator<Item = &'a Histogram> + Clone,
    ) -> HistogramSnapshot {
        let mut running = 0u64;
        let mut cumulative = Vec::with_capacity(buckets.bounds.len() + 1);
        let labels = buckets.labels.iter().copied().chain(["+Inf"]);
        for (index, label) in labels.enumerate() {
            let count = parts
                .clone()
                .filter_map(|part| part.counts.get(index))
                .map(|count| count.load(Relaxed))
                .fold(0u64, u64::saturating_add);
            running = running.saturating_add(count);
            cumulative.push((label, running));
        }
        let sum: u128 = parts.map(Histogram::exact_sum).sum();
        HistogramSnapshot {
            cumulative,
            sum: sum as f64 / buckets.divisor,
            count: running,
        }
    }

    /// The sum of observations in units, read consistently with its carry.
    fn exact_sum(&self) -> u128 {
        loop {
            let carry = self.sum_carry.load(Relaxed);
            let low = self.sum.load(Relaxed);
            if self.sum_carry.load(Relaxed) == carry {
                return (u128::from(carry) << 64) | u128::from(low);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SMALL: Buckets = Buckets {
        bounds: &[1, 2, 5],
        labels: &["1", "2", "5"],
        divisor: 1.0,
    };

    #[test]
    fn histogram_buckets_are_inclusive_and_cumulative() {
        let h = Histogram::new(&SMALL);
        for v in [0, 1, 2, 3, 5, 6, 100] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(
            s.cumulative,
            [("1", 2), ("2", 3), ("5", 5), ("+Inf", 7)].to_vec()
        );
        assert_eq!(s.count, 7);
        assert_eq!(s.sum, 117.0);
    }

    #[test]
    fn duration_sum_carries_instead_of_wrapping() {
        let sum = DurationSum::default();
        sum.add_nanos(u64::MAX);
        sum.add_nanos(2);
        let expected = (u128::from(u64::MAX) + 2) as f64 / 1e9;
        assert_eq!(sum.seconds(), expected);
    }

    #[test]
    fn durations_saturate() {
        assert_eq!(nanos(Duration::MAX), u64::MAX);
        assert_eq!(nanos(Duration::from_millis(3)), 3_000_000);
    }
}
