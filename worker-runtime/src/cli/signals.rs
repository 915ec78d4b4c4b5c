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
    tokio::spawn(handle(signals, shutdown, grace))
}

async fn handle(mut signals: ShutdownSignals, shutdown: CancellationToken, grace: Duration) {
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
    std::process::exit(130);
}

#[cfg(all(test, unix))]
mod tests {
    use std::process::Command;

    use super::*;

    /// Set in the child process that receives the signals.
    const CHILD: &str = "WORKER_SIGNALS_TEST_CHILD";

    fn raise(signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(std::process::id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Runs in a child process, so that signal handlers stay out of the test harness: a first
    /// SIGTERM must cancel the token, a second signal must exit with 130.
    fn child() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let signals = ShutdownSignals::install().expect("install");
            let shutdown = CancellationToken::new();
            spawn_handler(signals, shutdown.clone(), Duration::from_secs(30));
            raise("TERM");
            tokio::time::timeout(Duration::from_secs(5), shutdown.cancelled())
                .await
                .expect("the first signal cancels the token");
            println!("token cancelled");
            raise("INT");
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        panic!("the second signal did not end the process");
    }

    #[test]
    fn first_signal_cancels_and_second_exits_with_130() {
        if std::env::var_os(CHILD).is_some() {
            return child();
        }
        let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
        let name = format!("{module}::first_signal_cancels_and_second_exits_with_130");
        let output = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", &name, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("token cancelled"), "{stdout}");
        assert_eq!(output.status.code(), Some(130), "{stdout}");
    }
}
