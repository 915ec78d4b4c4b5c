//! Quickstart: an I/O task and a db task on the embedded broker.
//!
//! ```text
//! cargo run --example quickstart -- --demo   # demo traffic, a summary, then it exits
//! cargo run --example quickstart             # a worker that runs until Ctrl-C
//! ```
//!
//! Without `--demo` this is an ordinary worker binary: every flag of `worker_runtime::cli` works
//! (`--backend valkey`, `--metrics-addr`, `tasks`, …), and on the embedded broker it enqueues the
//! demo traffic once at start so there is something to watch.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use worker_runtime::prelude::*;

mod demo;

/// An event to ingest. The two optional fields let the demo traffic misbehave on purpose.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawEvent {
    id: u64,
    body: String,
    /// Fail this many attempts before succeeding.
    #[serde(default, skip_serializing_if = "is_zero")]
    fail_attempts: u32,
    /// Spend this long "working" (the timeout is 1 s).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    work_ms: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// Ingests raw events: at most 5 started per second per worker, three retries 200 ms, 400 ms,
/// 800 ms apart, one second per attempt.
#[pulsar_io_task(
    topic = "persistent://demo/ingest/raw-data",
    rate_limit = 5,
    rate_window = 1,
    max_retries = 3,
    backoff = 2,
    retry_delay = "200ms",
    timeout = "1s"
)]
pub async fn ingest_data(event: RawEvent, ctx: TaskContext) -> Result<(), TaskError> {
    if event.work_ms > 0 {
        tokio::time::sleep(Duration::from_millis(event.work_ms)).await;
    }
    if ctx.attempt() <= event.fail_attempts {
        return Err(TaskError::retryable(format!(
            "event {} failed on attempt {}",
            event.id,
            ctx.attempt()
        )));
    }
    println!(
        "  ingested event {} ({:?}) on attempt {}",
        event.id,
        event.body,
        ctx.attempt()
    );
    Ok(())
}

/// A row to write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    key: String,
    value: i64,
}

/// Writes records: the sender must hold `db_writer`, and each message costs 2 `db_credits`.
#[pulsar_db_task(
    topic = "persistent://demo/db/writes",
    permission_roles = ["db_writer"],
    credit_type = "db_credits",
    credit_amount = 2
)]
pub async fn write_records(records: Vec<Record>, ctx: TaskContext) -> Result<u64, TaskError> {
    let who = ctx.principal().map_or("?", |p| p.subject());
    println!("  wrote {} records for {who}", records.len());
    Ok(records.len() as u64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--demo") {
        args.remove(at);
        return demo::run().await;
    }
    demo::run_worker(args).await
}
