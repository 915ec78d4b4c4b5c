//! Scale-out: one worker binary, started as many times as there is work, on any backend.
//!
//! ```text
//! # three workers sharing the task's subscription on one Valkey server
//! SCALE_WORKER_LEDGER=w1.ledger cargo run --example scale_worker -- \
//!     --backend valkey --valkey-url redis://127.0.0.1:6379 --consumer-name w1 --metrics-addr 127.0.0.1:9101
//! SCALE_WORKER_LEDGER=w2.ledger cargo run --example scale_worker -- \
//!     --backend valkey --valkey-url redis://127.0.0.1:6379 --consumer-name w2 --metrics-addr 127.0.0.1:9102
//! # …and w3 the same way. `--backend pulsar|mqtt` with their flags works unchanged.
//! ```
//!
//! Each process handles its share of the `q1/demo/scale/events` topic: a producer publishes with
//! `record_event::enqueue(&broker, &ScaleEvent { seq, work_ms: 0 })`. With
//! `SCALE_WORKER_LEDGER` set, every handled message's stable id is appended to that file, one
//! per line, written with a single append per message, so that a test (or a person) can check
//! that every message was handled, and how often. `/metrics` counts each worker's share
//! (`worker_messages_total{consumer="w1",outcome="ok"}`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use worker_runtime::prelude::*;

/// The environment variable naming this process's ledger file.
const LEDGER_ENV: &str = "SCALE_WORKER_LEDGER";

/// The ledger file, when `SCALE_WORKER_LEDGER` names one.
static LEDGER: OnceLock<File> = OnceLock::new();

/// One unit of work.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleEvent {
    /// The producer's sequence number.
    pub seq: u64,
    /// How long handling it takes, to make the work visible (0: as fast as possible).
    #[serde(default)]
    pub work_ms: u64,
}

/// Records that an event was handled: appends its stable message id to the ledger.
#[pulsar_io_task(
    topic = "q1/demo/scale/events",
    max_retries = 5,
    retry_delay = "100ms",
    timeout = "10s"
)]
pub async fn record_event(event: ScaleEvent, ctx: TaskContext) -> Result<(), TaskError> {
    if event.work_ms > 0 {
        tokio::time::sleep(Duration::from_millis(event.work_ms)).await;
    }
    if let Some(mut ledger) = LEDGER.get() {
        // One write of a whole line to a file opened for appending: lines from concurrent
        // handlers never interleave, and a crash loses at most the line being written.
        let line = format!("{}\n", ctx.message_id());
        ledger.write_all(line.as_bytes()).map_err(|error| {
            TaskError::retryable(format!("cannot append to the ledger: {error}"))
        })?;
    }
    Ok(())
}

/// Opens the ledger named by `SCALE_WORKER_LEDGER`, if any, for appending.
fn open_ledger() -> anyhow::Result<()> {
    let Some(path) = std::env::var_os(LEDGER_ENV).filter(|path| !path.is_empty()) else {
        return Ok(());
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open the ledger file {}", path.to_string_lossy()))?;
    // Only `main` sets it, once.
    let _ = LEDGER.set(file);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    open_ledger()?;
    worker_runtime::cli::run().await
}
