//! End-to-end throughput on the embedded broker with a no-op handler: fill the topic with N
//! messages, then time a worker draining it. Three variants measured side by side in one run:
//!
//! - `raw_loop`: the ceiling — a bare loop on the same broker that receives, decodes and acks;
//! - `worker_all_off`: an io task with no rate limit, roles or credits (the per-attempt timeout and
//!   panic capture are part of every attempt and stay on);
//! - `worker_all_on`: a db task with a role check (HS256 token), credit charging, a rate limit high
//!   enough never to wait (but checked for every message), the timeout, panic capture and metrics.
//!
//! The raw loop runs as a task on the same two-thread runtime as the worker.
//!
//! `cargo bench -p worker-runtime --bench memory_throughput`; with `BENCH_CPU=1` every drain also
//! prints the CPU it cost per message and how many cores were busy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use worker_runtime::auth::{Hs256Signer, Hs256Verifier, Secret};
use worker_runtime::broker::MemoryBroker;
use worker_runtime::credits::MemoryCreditLedger;
use worker_runtime::prelude::*;
use worker_runtime::worker::{CancellationToken, Worker};
use worker_runtime::{ConsumerType, InitialPosition, SubscribeOptions};

const MESSAGES: u64 = 200_000;
const KEY: &[u8] = b"benchmark-signing-key-32-bytes!!";

static HANDLED: AtomicU64 = AtomicU64::new(0);

#[derive(Serialize, Deserialize)]
struct Event {
    id: u64,
    body: String,
}

#[pulsar_io_task(topic = "q1/bench/memory/off", concurrency = 64)]
async fn all_off(_e: Event) -> Result<(), TaskError> {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[pulsar_db_task(
    topic = "q1/bench/memory/on",
    concurrency = 64,
    rate_limit = 100000000,
    rate_window = 1,
    timeout = 30,
    permission_roles = ["bench"],
    credit_type = "bench_credits",
    credit_amount = 1
)]
async fn all_on(_e: Event) -> Result<(), TaskError> {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Prints what a drain cost in CPU per message and how many cores were busy, with `BENCH_CPU=1`.
fn report_cpu(what: &str, cpu: Duration, elapsed: Duration) {
    if std::env::var_os("BENCH_CPU").is_some() {
        eprintln!(
            "{what}: {:.2} µs of CPU per message, {:.2} cores busy",
            cpu.as_secs_f64() * 1e6 / MESSAGES as f64,
            cpu.as_secs_f64() / elapsed.as_secs_f64()
        );
    }
}

/// The CPU time of the whole process so far (every thread), for `BENCH_CPU=1`.
fn process_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn body() -> String {
    "x".repeat(64)
}

async fn fill<T: Task<Payload = Event>>(broker: &MemoryBroker, token: Option<&str>) {
    for id in 0..MESSAGES {
        let mut message = worker_runtime::Enqueue::<T>::new(&Event { id, body: body() });
        if let Some(token) = token {
            message = message.auth_token(token);
        }
        message.send(broker).await.expect("fill the topic");
    }
}

async fn wait_for(count: u64) {
    // Poll rather than spin: the runtime's two worker threads should have both cores.
    while HANDLED.load(Ordering::Relaxed) < count {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn drain_with_worker(all_middleware: bool) -> Duration {
    HANDLED.store(0, Ordering::Relaxed);
    let broker = Arc::new(MemoryBroker::new());
    let mut builder = Worker::builder()
        .broker(broker.clone())
        .consumer_name("bench");
    if all_middleware {
        let token = Hs256Signer::new(Secret::new(KEY.to_vec()))
            .sign("bench", &["bench"], Duration::from_secs(3600))
            .expect("sign");
        fill::<all_on::Task>(&broker, Some(&token)).await;
        let ledger = MemoryCreditLedger::new();
        ledger.set_balance("bench", "bench_credits", u64::MAX / 2);
        builder = builder
            .task(all_on::task())
            .verifier(Arc::new(Hs256Verifier::new(Secret::new(KEY.to_vec()))))
            .credit_ledger(Arc::new(ledger));
    } else {
        fill::<all_off::Task>(&broker, None).await;
        builder = builder.task(all_off::task());
    }
    let worker = builder.build().expect("valid worker");
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let cpu_before = process_cpu();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    wait_for(MESSAGES).await;
    let elapsed = started.elapsed();
    report_cpu(
        if all_middleware { "all on" } else { "all off" },
        process_cpu() - cpu_before,
        elapsed,
    );
    shutdown.cancel();
    running.await.expect("worker task").expect("worker run");
    elapsed
}

async fn drain_raw() -> Duration {
    let broker = MemoryBroker::new();
    fill::<all_off::Task>(&broker, None).await;
    let subscription = broker
        .subscribe(SubscribeOptions {
            topic: all_off::config().topic,
            subscription: "all_off".into(),
            consumer_name: "raw".into(),
            consumer_type: ConsumerType::Shared,
            initial_position: InitialPosition::Earliest,
            receiver_queue_size: 1000,
        })
        .await
        .expect("subscribe");
    let started = Instant::now();
    let cpu_before = process_cpu();
    let mut handled = 0;
    while handled < MESSAGES {
        let batch = subscription.receive(512).await.expect("receive");
        let mut ids = Vec::with_capacity(batch.len());
        for delivery in batch {
            let event: Event = serde_json::from_slice(delivery.payload()).expect("decode");
            std::hint::black_box(event);
            ids.push(delivery.id);
        }
        handled += ids.len() as u64;
        subscription.ack(ids).await.expect("ack");
    }
    let elapsed = started.elapsed();
    report_cpu("raw loop", process_cpu() - cpu_before, elapsed);
    elapsed
}

fn throughput(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut group = c.benchmark_group("memory_throughput");
    group.throughput(Throughput::Elements(MESSAGES));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function(BenchmarkId::new("raw_loop", MESSAGES), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    runtime.block_on(async { tokio::spawn(drain_raw()).await.expect("raw loop") })
                })
                .sum()
        })
    });
    group.bench_function(BenchmarkId::new("worker_all_off", MESSAGES), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| runtime.block_on(drain_with_worker(false)))
                .sum()
        })
    });
    group.bench_function(BenchmarkId::new("worker_all_on", MESSAGES), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| runtime.block_on(drain_with_worker(true)))
                .sum()
        })
    });
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
