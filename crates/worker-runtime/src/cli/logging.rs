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
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
            .is_ok(),
        LogFormat::Json => builder.json().with_current_span(false).try_init().is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_idempotent() {
        // Another test may have installed a subscriber first; either way the second call is a no-op.
        let _ = init(LogFormat::Json);
        assert!(!init(LogFormat::Pretty));
    }
}
