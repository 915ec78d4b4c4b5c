//! Resource use of one measured phase: CPU time of this process and of the broker process, and this
//! process's peak resident memory during the phase.

use std::time::{Duration, Instant};

/// CPU time (user + system) this process used so far.
pub fn own_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// CPU time (user + system) of process `pid` so far, from `/proc` (clock-tick resolution).
pub fn process_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The command name may contain spaces; the fields after it do not.
    let Some(after_name) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the whole line (utime, stime) are 11 and 12 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / per_second)
}

/// Resets this process's peak resident set size to the current one (Linux `clear_refs` 5).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's peak resident set size since the last reset, in KiB.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A phase being measured.
pub struct Phase {
    started: Instant,
    cpu: Duration,
    broker_cpu: Duration,
    broker_pid: u32,
}

/// What a phase used.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu: Duration,
    pub broker_cpu: Duration,
    pub peak_rss_kib: u64,
}

impl Phase {
    /// Starts measuring now; `broker_pid` is the broker process to account for too.
    pub fn start(broker_pid: u32) -> Phase {
        perf_control("enable");
        reset_peak_rss();
        Phase {
            started: Instant::now(),
            cpu: own_cpu(),
            broker_cpu: process_cpu(broker_pid),
            broker_pid,
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// What was used since the start.
    pub fn usage(&self) -> Usage {
        perf_control("disable");
        Usage {
            cpu: own_cpu().saturating_sub(self.cpu),
            broker_cpu: process_cpu(self.broker_pid).saturating_sub(self.broker_cpu),
            peak_rss_kib: peak_rss_kib(),
        }
    }
}

/// With `BENCH_PERF_CTL` naming the control FIFO of a `perf record --control fifo:… -D -1`, the
/// profile covers the measured phases only (not the fills).
fn perf_control(command: &str) {
    if let Some(fifo) = std::env::var_os("BENCH_PERF_CTL") {
        let _ = std::fs::write(fifo, format!("{command}\n"));
    }
}
