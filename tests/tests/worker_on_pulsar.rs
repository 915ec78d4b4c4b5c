//! The worker on a real Apache Pulsar (a standalone of this test binary's own, shared by its
//! tests, each on task topics of its own): a timeout cancels and retries, a poison payload and
//! exhausted retries reach the DLQ with every provenance property, a forbidden sender never runs,
//! credits are charged once across a redelivery, two workers split a shared subscription, and the
//! ordered subscription types keep each key's order with in-place retries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use integration_tests::brokers::PulsarStandalone;
use integration_tests::worker_support::{read_topic, RunningWorker};
use serde::{Deserialize, Serialize};
use worker_runtime::auth::{Hs256Signer, Hs256Verifier, Secret};
use worker_runtime::broker::pulsar::{PulsarBroker, PulsarOptions};
use worker_runtime::credits::{CreditLedger, MemoryCreditLedger};
use worker_runtime::prelude::*;
use worker_runtime::worker::{Worker, WorkerBuilder};
use worker_runtime::{props, Delivery, Message, Topic};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A client of the shared standalone, with the namespaces of `topics` created; `None` to skip.
async fn pulsar(topics: &[&str]) -> Option<Arc<dyn Broker>> {
    let standalone = PulsarStandalone::shared()?;
    for topic in topics {
        standalone.ensure_namespace_of(topic);
    }
    let mut options = PulsarOptions::new(standalone.url());
    options.operation_timeout = Duration::from_secs(10);
    options.ack_group_time = Duration::from_millis(50);
    let broker = PulsarBroker::connect(options).await.expect("connect");
    Some(Arc::new(broker))
}

fn worker(broker: &Arc<dyn Broker>, task: TaskDefinition, name: &str) -> WorkerBuilder {
    Worker::builder()
        .broker(broker.clone())
        .task(task)
        .consumer_name(name)
}

/// Waits until `done` holds or `limit` passes.
async fn wait_until(limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every provenance property a dead-letter copy must carry, and the original's payload.
fn assert_provenance(copy: &Delivery, reason: &str, attempts: &str, topic: &str, task: &str) {
    assert_eq!(copy.property(props::DLQ_REASON), Some(reason));
    assert_eq!(copy.property(props::DLQ_ATTEMPTS), Some(attempts));
    assert_eq!(copy.property(props::DLQ_ORIGINAL_TOPIC), Some(topic));
    assert_eq!(copy.property(props::DLQ_TASK), Some(task));
    assert_eq!(copy.property(props::DLQ_CONSUMER), Some("pulsar-worker"));
    for name in [
        props::DLQ_ERROR,
        props::DLQ_ORIGINAL_MESSAGE_ID,
        props::DLQ_TIME,
        props::MESSAGE_ID,
    ] {
        assert!(
            copy.property(name).is_some_and(|v| !v.is_empty()),
            "the copy has no {name}: {:?}",
            copy.message.properties
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Timeouts, poison payloads and exhausted retries

#[derive(Debug, Serialize, Deserialize)]
struct Slow {
    id: u32,
}

static SLOW_STARTS: Mutex<Vec<(u32, Instant)>> = Mutex::new(Vec::new());
static SLOW_CANCELLED: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

/// Records when a handler future is dropped before it finished.
struct CancelProbe(bool);

impl Drop for CancelProbe {
    fn drop(&mut self) {
        if !self.0 {
            lock(&SLOW_CANCELLED).push(Instant::now());
        }
    }
}

#[pulsar_io_task(
    topic = "persistent://test/pulsar-worker/slow",
    timeout = "1s",
    max_retries = 2,
    retry_delay = "200ms",
    jitter = 0.0
)]
async fn slow(job: Slow, ctx: TaskContext) -> Result<u32, TaskError> {
    lock(&SLOW_STARTS).push((ctx.attempt(), Instant::now()));
    let mut probe = CancelProbe(false);
    if ctx.attempt() == 1 {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    probe.0 = true;
    Ok(job.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_cancels_the_attempt_on_time_and_the_retry_succeeds() {
    let topic = "persistent://test/pulsar-worker/slow";
    let Some(broker) = pulsar(&[topic]).await else {
        return;
    };
    let running = RunningWorker::start(worker(&broker, slow::task(), "pulsar-worker"));
    slow::enqueue(&*broker, &Slow { id: 1 })
        .await
        .expect("enqueue");
    wait_until(Duration::from_secs(30), || lock(&SLOW_STARTS).len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = running.stop().await;
    let starts = lock(&SLOW_STARTS).clone();
    let cancelled = lock(&SLOW_CANCELLED).clone();
    assert_eq!(
        starts.iter().map(|s| s.0).collect::<Vec<_>>(),
        [1, 2],
        "{starts:?}"
    );
    assert_eq!(cancelled.len(), 1, "the first attempt was cancelled");
    let ran = cancelled[0] - starts[0].1;
    assert!(
        ran >= Duration::from_millis(900) && ran <= Duration::from_millis(1100),
        "cancelled {ran:?} after it started, for a timeout of 1 s"
    );
    let gap = starts[1].1 - cancelled[0];
    assert!(
        gap >= Duration::from_millis(200) && gap < Duration::from_millis(1500),
        "the retry came {gap:?} after the timeout, for a delay of 200 ms"
    );
    let task = report.task("slow").expect("report");
    assert_eq!(
        (task.succeeded, task.retried, task.dead_lettered),
        (1, 1, 0)
    );
}

#[derive(Debug, Serialize, Deserialize)]
struct Strict {
    id: u32,
    #[serde(default)]
    always_fail: bool,
}

static STRICT_CALLS: AtomicU32 = AtomicU32::new(0);

#[pulsar_io_task(
    topic = "persistent://test/pulsar-worker/strict",
    max_retries = 2,
    backoff = 2,
    retry_delay = "200ms",
    jitter = 0.0
)]
async fn strict(job: Strict) -> Result<u32, TaskError> {
    STRICT_CALLS.fetch_add(1, Ordering::SeqCst);
    if job.always_fail {
        return Err(TaskError::retryable(format!(
            "job {} cannot finish",
            job.id
        )));
    }
    Ok(job.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_payloads_and_exhausted_retries_reach_the_dlq_with_their_provenance() {
    let topic = "persistent://test/pulsar-worker/strict";
    let dlq = "persistent://test/pulsar-worker/strict-dlq";
    let Some(broker) = pulsar(&[topic]).await else {
        return;
    };
    let running = RunningWorker::start(worker(&broker, strict::task(), "pulsar-worker"));
    let target = Topic::parse(topic).expect("topic");
    let poison = b"{\"id\": \"not a number\"".to_vec();
    broker
        .publish(&target, Message::new(poison.clone()))
        .await
        .expect("publish the poison payload");
    strict::enqueue(
        &*broker,
        &Strict {
            id: 2,
            always_fail: true,
        },
    )
    .await
    .expect("enqueue");
    strict::enqueue(
        &*broker,
        &Strict {
            id: 3,
            always_fail: false,
        },
    )
    .await
    .expect("enqueue");
    let dead = read_topic(&*broker, dlq, 2, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = running.stop().await;

    assert_eq!(dead.len(), 2, "two dead letters");
    let poisoned = dead
        .iter()
        .find(|d| d.property(props::DLQ_REASON) == Some("decode_error"))
        .expect("the poison payload's copy");
    assert_eq!(&poisoned.payload()[..], &poison[..], "the original payload");
    assert_provenance(poisoned, "decode_error", "1", topic, "strict");
    let exhausted = dead
        .iter()
        .find(|d| d.property(props::DLQ_REASON) == Some("retries_exhausted"))
        .expect("the exhausted job's copy");
    assert_provenance(exhausted, "retries_exhausted", "3", topic, "strict");
    assert!(exhausted
        .property(props::DLQ_ERROR)
        .is_some_and(|e| e.contains("job 2 cannot finish")));
    assert_eq!(
        STRICT_CALLS.load(Ordering::SeqCst),
        3 + 1,
        "job 2 three times, job 3 once, the poison payload never"
    );
    let task = report.task("strict").expect("report");
    assert_eq!((task.succeeded, task.dead_lettered), (1, 2));
}

// ---------------------------------------------------------------------------------------------
// Roles and credits

const KEY: &[u8] = b"test-signing-key-of-32-bytes-min!";

fn token(subject: &str, roles: &[&str]) -> String {
    Hs256Signer::new(Secret::new(KEY.to_vec()))
        .sign(subject, roles, Duration::from_secs(3600))
        .expect("sign a token")
}

fn db_worker(
    broker: &Arc<dyn Broker>,
    ledger: &Arc<MemoryCreditLedger>,
    task: TaskDefinition,
) -> RunningWorker {
    RunningWorker::start(
        worker(broker, task, "pulsar-worker")
            .verifier(Arc::new(Hs256Verifier::new(Secret::new(KEY.to_vec()))))
            .credit_ledger(ledger.clone()),
    )
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    id: u32,
}

static WRITES: Mutex<Vec<u32>> = Mutex::new(Vec::new());

#[pulsar_db_task(
    topic = "persistent://test/pulsar-worker/writes",
    permission_roles = ["db_writer"],
    credit_type = "db_credits",
    credit_amount = 3,
    timeout = "1m"
)]
async fn write(record: Record) -> Result<(), TaskError> {
    lock(&WRITES).push(record.id);
    if record.id == 2 {
        // Long enough for the test to kill the worker while it runs.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_sender_never_runs_and_credits_are_charged_once_across_a_redelivery() {
    let topic = "persistent://test/pulsar-worker/writes";
    let Some(broker) = pulsar(&[topic]).await else {
        return;
    };
    let ledger = Arc::new(MemoryCreditLedger::new());
    ledger.set_balance("alice", "db_credits", 30);
    ledger.set_balance("mallory", "db_credits", 30);
    write::message(&Record { id: 1 })
        .auth_token(token("mallory", &["reader"]))
        .send(&*broker)
        .await
        .expect("enqueue");
    write::message(&Record { id: 2 })
        .auth_token(token("alice", &["db_writer"]))
        .send(&*broker)
        .await
        .expect("enqueue");

    // The first worker dies while message 2 runs; the broker gives it to the next one.
    let first = db_worker(&broker, &ledger, write::task());
    wait_until(Duration::from_secs(20), || lock(&WRITES).contains(&2)).await;
    first.kill();
    let second = db_worker(&broker, &ledger, write::task());
    wait_until(Duration::from_secs(30), || {
        lock(&WRITES).iter().filter(|id| **id == 2).count() >= 2
    })
    .await;
    let dead = read_topic(
        &*broker,
        "persistent://test/pulsar-worker/writes-dlq",
        1,
        Duration::from_secs(20),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let report = second.stop().await;

    let writes = lock(&WRITES).clone();
    assert!(!writes.contains(&1), "the forbidden sender ran: {writes:?}");
    assert_eq!(
        writes.iter().filter(|id| **id == 2).count(),
        2,
        "message 2 ran in both workers: {writes:?}"
    );
    assert_eq!(dead.len(), 1);
    assert_provenance(&dead[0], "forbidden", "1", topic, "write");
    assert_eq!(
        dead[0].property(props::AUTH_TOKEN),
        None,
        "a dead-letter copy keeps no sender token"
    );
    assert_eq!(
        ledger
            .balance("alice", "db_credits")
            .await
            .expect("balance"),
        27,
        "alice charged once for message 2 across the redelivery"
    );
    assert_eq!(
        ledger
            .balance("mallory", "db_credits")
            .await
            .expect("balance"),
        30,
        "the forbidden sender was charged nothing"
    );
    assert_eq!(report.task("write").map(|t| t.succeeded), Some(1));
}

// ---------------------------------------------------------------------------------------------
// Sharing and order

static SPLIT: Mutex<Option<HashMap<u32, Vec<String>>>> = Mutex::new(None);

#[pulsar_io_task(topic = "persistent://test/pulsar-worker/shared", concurrency = 8)]
async fn split(n: u32, ctx: TaskContext) -> Result<(), TaskError> {
    tokio::time::sleep(Duration::from_millis(1)).await;
    lock(&SPLIT)
        .get_or_insert_with(HashMap::new)
        .entry(n)
        .or_default()
        .push(ctx.consumer_name().to_owned());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_shared_subscription_handle_each_message_once() {
    const COUNT: u32 = 2_000;
    let topic = "persistent://test/pulsar-worker/shared";
    let Some(broker) = pulsar(&[topic]).await else {
        return;
    };
    let a = RunningWorker::start(worker(&broker, split::task(), "a"));
    let b = RunningWorker::start(worker(&broker, split::task(), "b"));
    for n in 0..COUNT {
        split::enqueue(&*broker, &n).await.expect("enqueue");
    }
    let handled = || lock(&SPLIT).as_ref().map_or(0, HashMap::len);
    wait_until(Duration::from_secs(60), || handled() >= COUNT as usize).await;
    // Anything that would come twice comes now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ra, rb) = (a.stop().await, b.stop().await);
    let seen = lock(&SPLIT).take().unwrap_or_default();
    assert_eq!(seen.len(), COUNT as usize, "every message handled");
    let twice = seen.values().filter(|c| c.len() > 1).count();
    assert_eq!(twice, 0, "messages handled more than once");
    let (sa, sb) = (
        ra.task("split").map_or(0, |t| t.succeeded),
        rb.task("split").map_or(0, |t| t.succeeded),
    );
    println!("pulsar shared subscription: worker a handled {sa}, worker b {sb}");
    assert!(sa > 0 && sb > 0, "both workers took a share ({sa} / {sb})");
    assert_eq!(sa + sb, u64::from(COUNT));
}

#[derive(Serialize, Deserialize)]
struct Step {
    key: String,
    seq: u32,
}

/// One handling of a step: its key, sequence number and attempt.
type Handled = (String, u32, u32);

/// What each ordered task handled, in handling order.
static ORDERED: Mutex<Option<HashMap<&'static str, Vec<Handled>>>> = Mutex::new(None);

fn record_step(task: &'static str, step: &Step, attempt: u32) -> Result<(), TaskError> {
    lock(&ORDERED)
        .get_or_insert_with(HashMap::new)
        .entry(task)
        .or_default()
        .push((step.key.clone(), step.seq, attempt));
    if step.seq == 2 && attempt == 1 {
        return Err(TaskError::retryable("transient"));
    }
    Ok(())
}

#[pulsar_io_task(
    topic = "persistent://test/pulsar-worker/key-shared",
    consumer_type = "key_shared",
    concurrency = 3,
    retry_delay = "300ms"
)]
async fn key_shared_steps(step: Step, ctx: TaskContext) -> Result<(), TaskError> {
    record_step("key_shared", &step, ctx.attempt())
}

#[pulsar_io_task(
    topic = "persistent://test/pulsar-worker/failover",
    consumer_type = "failover",
    concurrency = 3,
    retry_delay = "300ms"
)]
async fn failover_steps(step: Step, ctx: TaskContext) -> Result<(), TaskError> {
    record_step("failover", &step, ctx.attempt())
}

#[pulsar_io_task(
    topic = "persistent://test/pulsar-worker/exclusive",
    consumer_type = "exclusive",
    concurrency = 3,
    retry_delay = "300ms"
)]
async fn exclusive_steps(step: Step, ctx: TaskContext) -> Result<(), TaskError> {
    record_step("exclusive", &step, ctx.attempt())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_subscriptions_keep_each_keys_order_with_in_place_retries() {
    let tasks = [
        ("key_shared", key_shared_steps::task()),
        ("failover", failover_steps::task()),
        ("exclusive", exclusive_steps::task()),
    ];
    let topics: Vec<String> = tasks
        .iter()
        .map(|(_, t)| t.config().topic.to_string())
        .collect();
    let topic_names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let Some(broker) = pulsar(&topic_names).await else {
        return;
    };
    let keys = ["a", "b", "c", "d"];
    for (name, task) in &tasks {
        let topic = task.config().topic.clone();
        for seq in 0..5u32 {
            for key in keys {
                let payload = serde_json::to_vec(&Step {
                    key: key.into(),
                    seq,
                })
                .expect("encode");
                let message = Message::new(payload).with_key(key);
                broker
                    .publish(&topic, message)
                    .await
                    .unwrap_or_else(|e| panic!("publish to the {name} task: {e}"));
            }
        }
    }
    let running = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .tasks(tasks.iter().map(|(_, t)| t.clone()))
            .consumer_name("pulsar-worker"),
    );
    let total = |task: &str| {
        lock(&ORDERED)
            .as_ref()
            .and_then(|o| o.get(task).map(Vec::len))
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(60), || {
        tasks.iter().all(|(name, _)| total(name) >= 24)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = running.stop().await;
    let ordered = lock(&ORDERED).take().unwrap_or_default();
    for (name, task) in &tasks {
        let seen = ordered.get(name).cloned().unwrap_or_default();
        for key in keys {
            let steps: Vec<(u32, u32)> = seen
                .iter()
                .filter(|(k, _, _)| k == key)
                .map(|(_, s, a)| (*s, *a))
                .collect();
            assert_eq!(
                steps,
                [(0, 1), (1, 1), (2, 1), (2, 2), (3, 1), (4, 1)],
                "{name}: key {key} in order, step 2 retried in place"
            );
        }
        let outcome = report.task(task.name()).expect("report");
        assert_eq!(
            (outcome.succeeded, outcome.retried, outcome.dead_lettered),
            (20, 4, 0),
            "{name}"
        );
    }
}
