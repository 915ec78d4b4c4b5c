//! Shutdown on SIGINT or SIGTERM: the first signal cancels the worker's token (it stops taking
//! messages and lets work in flight finish within the grace period); a second one exits the
//! process at once with status 130.

use std::io;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worker_core::format_duration;

/// The process's shutdown signals, listened to from the moment [`ShutdownSignals::install`]
/// returns (from then on they no longer kill the process by themselves).
#[derive(Debug)]
pub struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Starts listening for SIGINT and SIGTERM (Ctrl-C elsewhere). Needs a Tokio runtime.
    pub fn install() -> io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(ShutdownSignals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(ShutdownSignals {})
        }
    }

    /// Waits for the next signal and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C",
                // Listening failed: never report a signal that did not come.
                Err(_) => std::future::pending().await,
            }
        }
    }
}

/// Spawns the handler: the first signal cancels `shutdown`, a second exits the process with
/// status 130. `grace` is only reported in the log.
pub fn spawn_handler(
    signals: ShutdownSignals,
    shutdown: CancellationToken,
    grace: Duration,
) -> JoinHandle<()> {
    tokio::spawn(handle(signals, shutdown, grace, |_| {
        std::process::exit(130)
    }))
}

/// The handler's logic, with what a second signal does left to the caller.
pub(crate) async fn handle(
    mut signals: ShutdownSignals,
    shutdown: CancellationToken,
    grace: Duration,
    on_second: impl FnOnce(&'static str),
) {
    let first = tokio::select! {
        signal = signals.recv() => Some(signal),
        // Shut down by other means: a signal now still means "exit at once".
        () = shutdown.cancelled() => None,
    };
    if let Some(signal) = first {
        tracing::info!(
            signal,
            grace = %format_duration(grace),
            "shutting down: no new messages; work in flight may finish within the grace period \
             (send the signal again to exit at once)"
        );
        shutdown.cancel();
    }
    let second = signals.recv().await;
    tracing::warn!(signal = second, "second signal: exiting at once");
    on_second(second);
}

#[cfg(all(test, unix))]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    fn raise(signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(std::process::id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    #[tokio::test]
    async fn first_signal_cancels_and_second_calls_the_exit_hook() {
        let signals = ShutdownSignals::install().expect("install");
        let shutdown = CancellationToken::new();
        let exited = Arc::new(AtomicBool::new(false));
        let flag = exited.clone();
        let handler = tokio::spawn(handle(
            signals,
            shutdown.clone(),
            Duration::from_secs(30),
            move |_| flag.store(true, Ordering::SeqCst),
        ));

        raise("TERM");
        tokio::time::timeout(Duration::from_secs(5), shutdown.cancelled())
            .await
            .expect("the first signal cancels the token");
        assert!(!exited.load(Ordering::SeqCst));

        raise("INT");
        tokio::time::timeout(Duration::from_secs(5), handler)
            .await
            .expect("the second signal ends the handler")
            .expect("no panic");
        assert!(exited.load(Ordering::SeqCst));
    }
}
