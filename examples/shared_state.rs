//! State shared by every copy of a worker: a durable credit ledger, a rate limit that holds for
//! all copies together, and effectively-once handling.
//!
//! ```text
//! # three copies charging one principal on a PostgreSQL ledger
//! SHARED_STATE_LEDGER=w1.ledger cargo run --example shared_state -- --tasks charge_event \
//!     --backend valkey --valkey-url redis://127.0.0.1:6379 \
//!     --credits-url postgres://postgres@127.0.0.1:5432/postgres \
//!     --jwt-secret-file key.txt --consumer-name w1 --metrics-addr 127.0.0.1:9101
//! # …w2 and w3 the same way; `credits grant alice event_credits 1000` funds alice.
//!
//! # a global limit of 20 starts per second across all copies
//! … --tasks limited_event --rate-limit-url redis://127.0.0.1:6379
//!
//! # each message handled once, redeliveries and repeats acked without running
//! … --tasks once_event --idempotency-url redis://127.0.0.1:6379
//! ```
//!
//! With `SHARED_STATE_LEDGER` set, each handled message appends `task id millis` (the task, its
//! stable id and the time it started, in milliseconds since the Unix epoch) to that file, one
//! line per run, so that a test can count runs and their spacing.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use worker_runtime::prelude::*;

/// The environment variable naming this process's ledger file.
const LEDGER_ENV: &str = "SHARED_STATE_LEDGER";

static LEDGER: OnceLock<File> = OnceLock::new();

/// One event of the demo.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// The producer's sequence number.
    pub seq: u64,
    /// Whether the handler refuses it for good (it then goes to the DLQ, and its credits back).
    #[serde(default)]
    pub poison: bool,
}

fn record_run(task: &str, ctx: &TaskContext) -> Result<(), TaskError> {
    if let Some(mut ledger) = LEDGER.get() {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let line = format!("{task} {} {millis}\n", ctx.message_id());
        ledger
            .write_all(line.as_bytes())
            .map_err(|e| TaskError::retryable(format!("cannot append to the ledger: {e}")))?;
    }
    Ok(())
}

/// Costs its sender one `event_credits` per message; a poison event is dead-lettered and refunded.
#[pulsar_db_task(
    topic = "q1/demo/shared/charged",
    permission_roles = ["producer"],
    credit_type = "event_credits",
    credit_amount = 1,
    max_retries = 0
)]
pub async fn charge_event(event: Event, ctx: TaskContext) -> Result<(), TaskError> {
    record_run("charge_event", &ctx)?;
    if event.poison {
        return Err(TaskError::permanent(format!(
            "event {} is poison",
            event.seq
        )));
    }
    Ok(())
}

/// At most 20 starts per second across every copy of the worker.
#[pulsar_io_task(
    topic = "q1/demo/shared/limited",
    rate_limit = 20,
    rate_window = "1s",
    rate_limit_scope = "global"
)]
pub async fn limited_event(_event: Event, ctx: TaskContext) -> Result<(), TaskError> {
    record_run("limited_event", &ctx)
}

/// Each message handled once within an hour: redeliveries and repeats are acked, not run.
#[pulsar_io_task(topic = "q1/demo/shared/once", idempotency_window = "1h")]
pub async fn once_event(_event: Event, ctx: TaskContext) -> Result<(), TaskError> {
    record_run("once_event", &ctx)
}

fn open_ledger() -> anyhow::Result<()> {
    let Some(path) = std::env::var_os(LEDGER_ENV).filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open the ledger file {}", path.to_string_lossy()))?;
    let _ = LEDGER.set(file);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    open_ledger()?;
    worker_runtime::cli::run().await
}
