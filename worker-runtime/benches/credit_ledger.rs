//! The in-memory credit ledger under contention: every runtime thread charging distinct keys
//! against one principal's balance, as the dispatch loops of a db task do. Measured for one
//! thread and for two, side by side, so that the cost contention adds shows as their ratio.
//!
//! `cargo bench -p worker-runtime --bench credit_ledger`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use worker_runtime::credits::{ChargeKey, ChargeOutcome, CreditLedger, MemoryCreditLedger};

const CHARGES: u64 = 200_000;

/// Charges `CHARGES` distinct keys from each of `threads` threads at once; returns the time taken.
fn charge_from(threads: u64) -> Duration {
    let ledger = Arc::new(MemoryCreditLedger::new().with_balance("bench", "credits", u64::MAX));
    let task: Arc<str> = Arc::from("bench_task");
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let (ledger, task) = (ledger.clone(), task.clone());
            scope.spawn(move || {
                let principal: Arc<str> = Arc::from("bench");
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                runtime.block_on(async {
                    for n in 0..CHARGES {
                        let key = ChargeKey {
                            task: task.clone(),
                            principal: principal.clone(),
                            message_id: Arc::from(format!("{thread}-{n}")),
                        };
                        let outcome = ledger.charge(&key, "credits", 1).await;
                        assert!(matches!(outcome, Ok(ChargeOutcome::Charged)));
                    }
                });
            });
        }
    });
    started.elapsed()
}

fn contention(c: &mut Criterion) {
    let mut group = c.benchmark_group("credit_ledger");
    group.sample_size(10);
    for threads in [1, 2] {
        group.throughput(Throughput::Elements(threads * CHARGES));
        group.bench_function(BenchmarkId::new("charge_threads", threads), |b| {
            b.iter_custom(|iterations| (0..iterations).map(|_| charge_from(threads)).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, contention);
criterion_main!(benches);
