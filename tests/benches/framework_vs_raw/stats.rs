//! One run's figures, and the table of medians (with min and max) over several runs.

use std::fmt::Write as _;
use std::time::Duration;

use crate::measure::Usage;

/// What one run of one side measured.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    /// Distinct messages handled.
    pub handled: u64,
    /// Messages handled more than once.
    pub duplicates: u64,
    /// First consumer action to last handler finished.
    pub elapsed: Duration,
    /// Latency percentiles (µs): p50, p99, p99.9; `None` for drain runs.
    pub latency_us: Option<[u64; 3]>,
    pub usage: Usage,
    /// For open-loop runs: the rate the producer achieved.
    pub offered_per_s: Option<f64>,
}

impl RunResult {
    pub fn per_second(&self) -> f64 {
        self.handled as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU seconds of this process per 100,000 messages.
    pub fn cpu_per_100k(&self) -> f64 {
        self.usage.cpu.as_secs_f64() * 100_000.0 / (self.handled.max(1) as f64)
    }

    /// CPU seconds of the broker process per 100,000 messages.
    pub fn broker_cpu_per_100k(&self) -> f64 {
        self.usage.broker_cpu.as_secs_f64() * 100_000.0 / (self.handled.max(1) as f64)
    }
}

/// The p50, p99 and p99.9 of `values` (sorted in place).
pub fn percentiles(values: &mut [u64]) -> Option<[u64; 3]> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let at =
        |q: f64| values[((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1];
    Some([at(0.50), at(0.99), at(0.999)])
}

/// Median, min and max.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut values: Vec<f64> = values.into_iter().collect();
        values.sort_by(f64::total_cmp);
        if values.is_empty() {
            return Spread {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Spread {
            median,
            min: values[0],
            max: values[n - 1],
        }
    }

    /// `median [min–max]` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        format!(
            "{:.d$} [{:.d$}–{:.d$}]",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

/// The runs of one case (backend, mode, handler, payload) for both sides, in run order.
pub struct Case {
    pub title: String,
    pub framework: Vec<RunResult>,
    pub raw: Vec<RunResult>,
}

impl Case {
    /// Framework ÷ raw of each run pair (runs are interleaved, so a pair shares its conditions).
    fn ratios(&self, of: impl Fn(&RunResult) -> f64) -> Spread {
        Spread::of(
            self.framework
                .iter()
                .zip(&self.raw)
                .map(|(f, r)| of(f) / of(r)),
        )
    }

    /// The case's lines of the report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{} — {} run pairs", self.title, self.framework.len());
        let latency = self.framework.iter().any(|r| r.latency_us.is_some());
        for (side, runs) in [("framework", &self.framework), ("raw", &self.raw)] {
            let _ = write!(
                out,
                "  {side:<9}  msgs/s {:<28}",
                Spread::of(runs.iter().map(RunResult::per_second)).show(0)
            );
            if latency {
                for (i, name) in ["p50", "p99", "p99.9"].iter().enumerate() {
                    let values = runs
                        .iter()
                        .filter_map(|r| r.latency_us.map(|l| l[i] as f64 / 1000.0));
                    let _ = write!(out, "  {name} ms {:<22}", Spread::of(values).show(2));
                }
            }
            let _ = writeln!(
                out,
                "  cpu s/100k {:<20}  broker cpu s/100k {:<20}  peak RSS MiB {:<16}  dup {}",
                Spread::of(runs.iter().map(RunResult::cpu_per_100k)).show(2),
                Spread::of(runs.iter().map(RunResult::broker_cpu_per_100k)).show(2),
                Spread::of(runs.iter().map(|r| r.usage.peak_rss_kib as f64 / 1024.0)).show(1),
                runs.iter().map(|r| r.duplicates).sum::<u64>(),
            );
            if let Some(offered) = runs
                .iter()
                .map(|r| r.offered_per_s)
                .collect::<Option<Vec<_>>>()
                .filter(|offered| !offered.is_empty())
            {
                let _ = writeln!(
                    out,
                    "  {:<9}  offered msgs/s {}",
                    "",
                    Spread::of(offered).show(0)
                );
            }
        }
        let _ = write!(
            out,
            "  framework/raw  throughput {}",
            self.ratios(RunResult::per_second).show(3)
        );
        if latency {
            let p50 = self.ratios(|r| r.latency_us.map_or(f64::NAN, |l| l[0] as f64));
            let p99 = self.ratios(|r| r.latency_us.map_or(f64::NAN, |l| l[1] as f64));
            let _ = write!(out, "  p50 {}  p99 {}", p50.show(2), p99.show(2));
        }
        let cpu = self.ratios(RunResult::cpu_per_100k);
        let _ = writeln!(out, "  cpu/msg {}", cpu.show(2));
        out
    }
}
