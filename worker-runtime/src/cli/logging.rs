//! Log output: human-readable lines or JSON objects on stderr, filtered by `RUST_LOG`.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};

/// How log events are written.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event, coloured on a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global log subscriber: `RUST_LOG` directives (default `info`; invalid directives
/// are ignored), written to stderr in `format`. Returns `false`, changing nothing, when a global
/// subscriber is already installed, so calling it twice is harmless.
pub fn init(format: LogFormat) -> bool {
    init_with_directives(format, &[])
}

/// Like [`init`], with `directives` added after `RUST_LOG`'s and winning over them for the same
/// target, e.g. [`BackendArgs::log_directives`](super::BackendArgs::log_directives), which keep
/// secrets out of the logs whatever `RUST_LOG` says.
pub fn init_with_directives(format: LogFormat, directives: &[&str]) -> bool {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter(directives))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
            .is_ok(),
        LogFormat::Json => builder.json().with_current_span(false).try_init().is_ok(),
    }
}

/// `RUST_LOG`'s filter (default `info`) with `directives` added; invalid ones are skipped.
fn env_filter(directives: &[&str]) -> EnvFilter {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    with_directives(filter, directives)
}

fn with_directives(mut filter: EnvFilter, directives: &[&str]) -> EnvFilter {
    for directive in directives {
        match directive.parse() {
            Ok(directive) => filter = filter.add_directive(directive),
            Err(error) => eprintln!("ignoring the log filter directive `{directive}`: {error}"),
        }
    }
    filter
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Whether `filter` lets events of target `pulsar::connection` through at trace level (where
    /// pulsar-rs logs the frames it sends) and at debug level.
    fn pulsar_connection_levels(filter: EnvFilter) -> (bool, bool) {
        let subscriber = tracing_subscriber::registry().with(filter);
        tracing::subscriber::with_default(subscriber, || {
            (
                tracing::enabled!(target: "pulsar::connection", tracing::Level::TRACE),
                tracing::enabled!(target: "pulsar::connection", tracing::Level::DEBUG),
            )
        })
    }

    #[test]
    fn added_directives_win_over_rust_log_for_their_target() {
        let hiding = ["pulsar::connection=debug"];
        for rust_log in ["trace", "pulsar=trace", "pulsar::connection=trace"] {
            let filter = with_directives(EnvFilter::new(rust_log), &hiding);
            assert_eq!(
                pulsar_connection_levels(filter),
                (false, true),
                "RUST_LOG={rust_log}"
            );
        }
        let unfiltered = EnvFilter::new("pulsar::connection=trace");
        assert_eq!(pulsar_connection_levels(unfiltered), (true, true));
    }

    #[test]
    fn init_is_idempotent() {
        // Another test may have installed a subscriber first; either way the second call is a no-op.
        let _ = init(LogFormat::Json);
        assert!(!init(LogFormat::Pretty));
    }
}
