//! Log output: human-readable lines or JSON objects on stderr, filtered by `RUST_LOG`.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt, FilterFn, LevelFilter};
use tracing_subscriber::layer::Filter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Registry;
use tracing_subscriber::{fmt, Layer};

/// How log events are written.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event, coloured on a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A target whose events are never logged above `max`, whatever `RUST_LOG` says: a cap, where a
/// `RUST_LOG` directive could only raise or lower the level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelCap {
    /// The target (a module path prefix, as in `RUST_LOG`).
    pub target: &'static str,
    /// The most verbose level let through.
    pub max: Level,
}

impl LevelCap {
    /// Whether an event or span of `metadata` gets past this cap.
    fn allows(&self, metadata: &Metadata<'_>) -> bool {
        let target = metadata.target();
        let under = target
            .strip_prefix(self.target)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"));
        !under || *metadata.level() <= self.max
    }
}

/// Installs the global log subscriber: `RUST_LOG` directives (default `info`; invalid directives
/// are ignored), written to stderr in `format`. Returns `false`, changing nothing, when a global
/// subscriber is already installed, so calling it twice is harmless.
pub fn init(format: LogFormat) -> bool {
    init_with_caps(format, &[])
}

/// Like [`init`], with `caps` applied after `RUST_LOG`, e.g.
/// [`BackendArgs::log_caps`](super::BackendArgs::log_caps), which keep secrets out of the logs
/// whatever `RUST_LOG` says.
pub fn init_with_caps(format: LogFormat, caps: &'static [LevelCap]) -> bool {
    let registry = tracing_subscriber::registry();
    let writer = std::io::stderr;
    match format {
        LogFormat::Pretty => registry
            .with(
                fmt::layer()
                    .with_writer(writer)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_filter(filter(caps)),
            )
            .try_init()
            .is_ok(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(false)
                    .with_writer(writer)
                    .with_filter(filter(caps)),
            )
            .try_init()
            .is_ok(),
    }
}

/// `RUST_LOG`'s directives and then `caps`, as one filter. One, not two stacked: stacked per-layer
/// filters leave the registry creating, entering and closing every span either of them turns
/// away, the per-delivery span too (about 2,500 instructions a delivery for nothing).
fn filter(caps: &'static [LevelCap]) -> impl Filter<Registry> {
    directives_then_caps(env_filter(), caps)
}

fn directives_then_caps(directives: EnvFilter, caps: &'static [LevelCap]) -> impl Filter<Registry> {
    directives.and(capped(caps))
}

/// `RUST_LOG`'s filter, default `info`; invalid directives are skipped.
fn env_filter() -> EnvFilter {
    EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy()
}

/// A filter letting through what every one of `caps` allows.
fn capped(caps: &'static [LevelCap]) -> FilterFn<impl Fn(&Metadata<'_>) -> bool> {
    filter_fn(move |metadata| caps.iter().all(|cap| cap.allows(metadata)))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    const HIDE_FRAMES: &[LevelCap] = &[LevelCap {
        target: "pulsar::connection",
        max: Level::DEBUG,
    }];

    /// Which of trace, debug and warn events of `target` a subscriber filtered by `rust_log` and
    /// `caps` writes out.
    fn levels(rust_log: &str, caps: &'static [LevelCap], target: &str) -> [bool; 3] {
        let written = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = written.clone();
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .with_ansi(false)
                .with_writer(move || Written(sink.clone()))
                .with_filter(directives_then_caps(EnvFilter::new(rust_log), caps)),
        );
        tracing::subscriber::with_default(subscriber, || {
            // Event targets must be literals: dispatch on the two this test asks about.
            match target {
                "pulsar::connection" => {
                    tracing::trace!(target: "pulsar::connection", "at-trace");
                    tracing::debug!(target: "pulsar::connection", "at-debug");
                    tracing::warn!(target: "pulsar::connection", "at-warn");
                }
                "pulsar::consumer" => {
                    tracing::trace!(target: "pulsar::consumer", "at-trace");
                    tracing::debug!(target: "pulsar::consumer", "at-debug");
                    tracing::warn!(target: "pulsar::consumer", "at-warn");
                }
                other => panic!("no probe for {other}"),
            }
        });
        let written = String::from_utf8(written.lock().expect("lock").clone()).expect("utf-8");
        ["at-trace", "at-debug", "at-warn"].map(|marker| written.contains(marker))
    }

    /// A writer appending to a shared buffer.
    struct Written(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Written {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_cap_lowers_what_rust_log_raises_for_its_target() {
        for rust_log in ["trace", "pulsar=trace", "pulsar::connection=trace"] {
            assert_eq!(
                levels(rust_log, HIDE_FRAMES, "pulsar::connection"),
                [false, true, true],
                "RUST_LOG={rust_log}"
            );
        }
        assert_eq!(
            levels("pulsar::connection=trace", &[], "pulsar::connection"),
            [true, true, true]
        );
    }

    #[test]
    fn a_cap_never_raises_what_rust_log_keeps_quiet() {
        assert_eq!(
            levels("warn", HIDE_FRAMES, "pulsar::connection"),
            [false, false, true]
        );
        assert_eq!(
            levels("off", HIDE_FRAMES, "pulsar::connection"),
            [false, false, false]
        );
    }

    #[test]
    fn a_cap_leaves_other_targets_alone() {
        assert_eq!(
            levels("trace", HIDE_FRAMES, "pulsar::consumer"),
            [true, true, true]
        );
    }

    #[test]
    fn spans_the_directives_turn_away_are_never_made() {
        // A span the filter turns away must cost a check, not a registry entry entered and closed
        // on every poll: the worker opens one per delivery at DEBUG.
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(directives_then_caps(EnvFilter::new("info"), HIDE_FRAMES)),
        );
        tracing::subscriber::with_default(subscriber, || {
            assert!(tracing::debug_span!("turned away").is_disabled());
            assert!(!tracing::info_span!("let through").is_disabled());
        });
    }

    #[test]
    fn init_is_idempotent() {
        // Another test may have installed a subscriber first; either way the second call is a no-op.
        let _ = init(LogFormat::Json);
        assert!(!init(LogFormat::Pretty));
    }
}
