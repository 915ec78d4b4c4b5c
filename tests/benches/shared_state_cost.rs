//! What the shared state costs per message: each durable credit ledger, the global rate limiter
//! and each idempotency store, against its in-memory counterpart, in one process, run pairs
//! interleaved (the shared store first in even runs, the in-memory one first in odd ones).
//!
//! Every case is one worker on the embedded broker (so that the broker costs next to nothing and
//! the store's round trips show) draining N messages (`BENCH_STATE_MESSAGES`, 5,000) filled
//! beforehand, with the task's default concurrency and a no-op handler:
//! - **credits**: a db task charging 1 credit per message, each message carrying the same signed
//!   token (verified once, then cached): `MemoryCreditLedger` against the Valkey ledger and the
//!   PostgreSQL one;
//! - **rate limit**: a limit far above what the worker reaches (1,000,000 a second), so that it
//!   never waits: the per-worker limiter against `rate_limit_scope = "global"` in Valkey;
//! - **idempotency**: `idempotency_window = "1h"`, every message new (one lookup and one record
//!   each): `MemoryIdempotencyStore` against the Valkey store and the PostgreSQL one.
//!
//! The redis-server and PostgreSQL run on free loopback ports of the bench's own. It prints
//! messages per second per side, medians with [min–max] over `BENCH_RUNS` (3) pairs, the extra
//! time per message, and shared ÷ in-memory per pair. `BENCH_STATE_CASES` narrows the cases
//! (`credits_valkey,credits_postgres,limit_valkey,once_valkey,once_postgres`).
//!
//! ```text
//! cargo bench -p integration-tests --bench shared_state_cost
//! ```

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt as _, TryStreamExt as _};
use integration_tests::brokers::{Postgres, RedisServer};
use serde::Deserialize;
use worker_runtime::auth::{Hs256Signer, Hs256Verifier, Secret};
use worker_runtime::broker::MemoryBroker;
use worker_runtime::credits::{self, CreditLedger, MemoryCreditLedger};
use worker_runtime::idempotency::{self, IdempotencyStore, MemoryIdempotencyStore};
use worker_runtime::middleware::rate_limit::GlobalRateLimits;
use worker_runtime::prelude::*;
use worker_runtime::worker::{CancellationToken, Worker, WorkerBuilder};
use worker_runtime::{props, Broker, Message, RateLimitScope, Topic};

const KEY: &[u8] = b"shared-state-bench-key-32-bytes!";
const CREDIT_TYPE: &str = "bench_credits";

/// Messages handled in the current run.
static HANDLED: AtomicU64 = AtomicU64::new(0);

#[derive(Deserialize)]
struct Event {
    #[allow(dead_code)]
    seq: u64,
}

#[pulsar_db_task(
    topic = "q1/bench/state/charged",
    credit_type = "bench_credits",
    credit_amount = 1
)]
async fn charged(_event: Event) -> Result<(), TaskError> {
    HANDLED.fetch_add(1, Relaxed);
    Ok(())
}

#[pulsar_io_task(
    topic = "q1/bench/state/limited",
    rate_limit = 1000000,
    rate_window = "1s"
)]
async fn limited(_event: Event) -> Result<(), TaskError> {
    HANDLED.fetch_add(1, Relaxed);
    Ok(())
}

#[pulsar_io_task(topic = "q1/bench/state/once", idempotency_window = "1h")]
async fn once(_event: Event) -> Result<(), TaskError> {
    HANDLED.fetch_add(1, Relaxed);
    Ok(())
}

/// Where a case keeps its state.
#[derive(Clone)]
enum Store {
    Credits(Arc<dyn CreditLedger>),
    Limit(Option<GlobalRateLimits>),
    Once(Arc<dyn IdempotencyStore>),
}

struct Case {
    name: &'static str,
    shared: Store,
    in_memory: Store,
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let messages: u64 = env_number("BENCH_STATE_MESSAGES", 5_000);
    let runs: u64 = env_number("BENCH_RUNS", 3);
    let wanted = std::env::var("BENCH_STATE_CASES").unwrap_or_default();
    let wanted = |name: &str| wanted.is_empty() || wanted.split(',').any(|w| w.trim() == name);

    let Some(redis) = RedisServer::start() else {
        anyhow::bail!("the bench needs redis-server");
    };
    let Some(postgres) = tokio::task::spawn_blocking(Postgres::start).await? else {
        anyhow::bail!("the bench needs PostgreSQL (initdb, postgres)");
    };
    let memory_ledger = || -> Arc<dyn CreditLedger> { Arc::new(MemoryCreditLedger::new()) };
    let memory_once = || -> Arc<dyn IdempotencyStore> { Arc::new(MemoryIdempotencyStore::new()) };
    let cases = [
        Case {
            name: "credits_valkey",
            shared: Store::Credits(credits::connect(&redis.url()).await?),
            in_memory: Store::Credits(memory_ledger()),
        },
        Case {
            name: "credits_postgres",
            shared: Store::Credits(credits::connect(&postgres.url()).await?),
            in_memory: Store::Credits(memory_ledger()),
        },
        Case {
            name: "limit_valkey",
            shared: Store::Limit(Some(GlobalRateLimits::connect(&redis.url()).await?)),
            in_memory: Store::Limit(None),
        },
        Case {
            name: "once_valkey",
            shared: Store::Once(idempotency::connect(&redis.url()).await?),
            in_memory: Store::Once(memory_once()),
        },
        Case {
            name: "once_postgres",
            shared: Store::Once(idempotency::connect(&postgres.url()).await?),
            in_memory: Store::Once(memory_once()),
        },
    ];
    let token = Hs256Signer::new(Secret::new(KEY.to_vec())).sign(
        "bench",
        &["producer"],
        Duration::from_secs(24 * 3600),
    )?;

    println!("{messages} messages per run, {runs} run pairs; no-op handler, default concurrency, embedded broker\n");
    let mut summary = Vec::new();
    let mut run_id = 0;
    for case in cases.iter().filter(|c| wanted(c.name)) {
        let mut shared_rates = Vec::new();
        let mut memory_rates = Vec::new();
        let mut ratios = Vec::new();
        for run in 0..runs {
            let mut pair = [0.0; 2];
            let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                run_id += 1;
                let store = if side == 0 {
                    &case.shared
                } else {
                    &case.in_memory
                };
                pair[side] = drain(store, messages, run_id, &token).await?;
            }
            shared_rates.push(pair[0]);
            memory_rates.push(pair[1]);
            ratios.push(pair[0] / pair[1]);
        }
        let (shared, memory, ratio) = (
            spread(&shared_rates),
            spread(&memory_rates),
            spread(&ratios),
        );
        let extra_us = (1e6 / shared.0 - 1e6 / memory.0).max(0.0);
        println!(
            "{:<17} shared {:>8.0} msg/s [{:.0}–{:.0}]   in memory {:>8.0} msg/s [{:.0}–{:.0}]   \
             shared ÷ in memory {:.2} [{:.2}–{:.2}]   +{extra_us:.0} µs per message",
            case.name,
            shared.0,
            shared.1,
            shared.2,
            memory.0,
            memory.1,
            memory.2,
            ratio.0,
            ratio.1,
            ratio.2
        );
        summary.push((case.name, shared.0, memory.0, ratio, extra_us));
    }
    println!(
        "\n| case | shared msg/s | in memory msg/s | shared ÷ in memory | extra per message |"
    );
    println!("|---|---|---|---|---|");
    for (name, shared, memory, ratio, extra_us) in summary {
        println!(
            "| {name} | {shared:.0} | {memory:.0} | {:.2} [{:.2}–{:.2}] | {extra_us:.0} µs |",
            ratio.0, ratio.1, ratio.2
        );
    }
    Ok(())
}

/// Fills a fresh topic with `messages`, then times one worker with `store` draining it. Returns
/// messages per second.
async fn drain(store: &Store, messages: u64, run: u64, token: &str) -> anyhow::Result<f64> {
    let broker = Arc::new(MemoryBroker::new());
    let (mut task, builder) = match store {
        Store::Credits(ledger) => {
            ledger.grant("bench", CREDIT_TYPE, messages).await?;
            let verifier = Arc::new(Hs256Verifier::new(Secret::new(KEY.to_vec())));
            let builder = Worker::builder()
                .credit_ledger(ledger.clone())
                .verifier(verifier);
            (charged::task(), builder)
        }
        Store::Limit(global) => {
            let mut task = limited::task();
            let mut builder = Worker::builder();
            if let Some(global) = global {
                task.config_mut().rate_limit_scope = RateLimitScope::Global;
                builder = builder.global_rate_limits(global.clone());
            }
            (task, builder)
        }
        Store::Once(store) => (
            once::task(),
            Worker::builder().idempotency_store(store.clone()),
        ),
    };
    let topic = Topic::parse(&format!("q1/bench/state/run-{run}"))?;
    task.config_mut().topic = topic.clone();
    task.config_mut().dlq_topic = topic.default_dlq();
    let builder: WorkerBuilder = builder
        .broker(broker.clone())
        .task(task)
        .consumer_name("bench");

    // The embedded broker retains what is published; the new subscription starts at the earliest.
    futures_util::stream::iter(0..messages)
        .map(|seq| {
            let message = Message::new(format!("{{\"seq\": {seq}}}"))
                .with_property(props::MESSAGE_ID, format!("run{run}-{seq}"))
                .with_property(props::AUTH_TOKEN, token);
            let broker = broker.clone();
            let topic = topic.clone();
            async move { broker.publish(&topic, message).await }
        })
        .buffer_unordered(64)
        .try_for_each(|_| async { Ok(()) })
        .await?;

    HANDLED.store(0, Relaxed);
    let worker = builder.build()?;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let handle = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    let deadline = started + Duration::from_secs(300);
    while HANDLED.load(Relaxed) < messages {
        anyhow::ensure!(
            Instant::now() < deadline,
            "run {run} handled {} of {messages}",
            HANDLED.load(Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    handle.await??;
    Ok(messages as f64 / elapsed.as_secs_f64())
}

/// Median, min and max.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    (
        median,
        sorted.first().copied().unwrap_or(0.0),
        sorted.last().copied().unwrap_or(0.0),
    )
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
