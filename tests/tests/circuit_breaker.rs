//! The circuit breaker on a real `redis-server`: a handler's dependency goes down and comes back.
//! While the circuit is open the task takes no message and spends no attempt (one probe per
//! cooldown), nothing is lost or dead-lettered, and once the dependency is back the task drains.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use integration_tests::brokers::RedisServer;
use integration_tests::processes::metric_sum;
use integration_tests::worker_support::RunningWorker;
use serde::{Deserialize, Serialize};
use worker_runtime::broker::valkey::{ValkeyBroker, ValkeyOptions};
use worker_runtime::metrics::Metrics;
use worker_runtime::prelude::*;
use worker_runtime::worker::Worker;

static DEPENDENCY_UP: AtomicBool = AtomicBool::new(false);
/// Every attempt: message number, and whether the dependency was up.
static ATTEMPTS: Mutex<Vec<(u32, bool, Instant)>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Serialize, Deserialize)]
struct Call {
    n: u32,
}

#[pulsar_io_task(
    topic = "q1/test/breaker/calls",
    concurrency = 1,
    max_retries = 20,
    retry_delay = "100ms",
    jitter = 0.0,
    circuit_failures = 3,
    circuit_cooldown = "2s"
)]
async fn call_dependency(call: Call) -> Result<(), TaskError> {
    let up = DEPENDENCY_UP.load(Ordering::SeqCst);
    lock(&ATTEMPTS).push((call.n, up, Instant::now()));
    if up {
        Ok(())
    } else {
        Err(TaskError::retryable("the dependency is down"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_spends_no_attempts_and_the_task_drains_once_the_dependency_is_back() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut options = ValkeyOptions::new(server.url());
    options.block_timeout = Duration::from_millis(200);
    options.delayed_poll_interval = Duration::from_millis(50);
    let broker: Arc<dyn Broker> = Arc::new(ValkeyBroker::connect(options).await.expect("connect"));
    const MESSAGES: u32 = 50;
    for n in 0..MESSAGES {
        call_dependency::enqueue(&*broker, &Call { n })
            .await
            .expect("enqueue");
    }
    let metrics = Metrics::new("breaker-test");
    let running = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(call_dependency::task())
            .consumer_name("breaker-test")
            .metrics(metrics.clone()),
    );
    let series = |name: &str, labels: &[&str]| metric_sum(&metrics.encode(), name, labels);
    let down_for = Duration::from_secs(7);
    let started = Instant::now();
    // Open within the first failures.
    let deadline = started + Duration::from_secs(10);
    while series("worker_circuit_state", &[]) < 2.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opened = series("worker_circuit_state", &[]) == 2.0;
    tokio::time::sleep(down_for.saturating_sub(started.elapsed())).await;
    DEPENDENCY_UP.store(true, Ordering::SeqCst);
    let back_at = Instant::now();
    let deadline = back_at + Duration::from_secs(20);
    let drained = loop {
        let ok = series("worker_messages_total", &["outcome=\"ok\""]);
        if ok >= f64::from(MESSAGES) || Instant::now() > deadline {
            break ok >= f64::from(MESSAGES);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let report = running.stop().await;

    let attempts = lock(&ATTEMPTS).clone();
    let failed = attempts.iter().filter(|(_, up, _)| !up).count();
    let mut handled: BTreeMap<u32, usize> = BTreeMap::new();
    for (n, up, _) in &attempts {
        if *up {
            *handled.entry(*n).or_default() += 1;
        }
    }
    let opens = series("worker_circuit_transitions_total", &["to=\"open\""]);
    let closes = series("worker_circuit_transitions_total", &["to=\"closed\""]);
    println!(
        "dependency down for {down_for:?}: {failed} failed attempts, circuit opened {opens} times and closed {closes}; \
         drained {:?} after it came back; {} of {MESSAGES} handled",
        back_at.elapsed(),
        handled.len()
    );
    assert!(opened, "the circuit opened");
    // Three failures open it; then one probe per 2 s cooldown while the dependency is down.
    let cooldowns = (down_for.as_secs() / 2) as usize;
    assert!(
        failed <= 3 + cooldowns + 1,
        "{failed} attempts spent while the dependency was down; the circuit should have held them"
    );
    assert!(drained, "the task drained once the dependency was back");
    assert_eq!(
        handled.len(),
        MESSAGES as usize,
        "every message ran: none lost"
    );
    assert_eq!(
        report.task("call_dependency").map(|t| t.dead_lettered),
        Some(0)
    );
    assert_eq!(series("worker_circuit_state", &[]), 0.0, "closed again");
    assert!(closes >= 1.0);
}
