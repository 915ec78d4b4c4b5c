//! Every outcome of the pipeline, end to end on the embedded broker: success, retry then success,
//! exhausted retries, permanent errors, timeouts, panics and undecodable input, each checked by what
//! the handler saw, the worker's report and the dead-letter copy's provenance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::worker_support::{read_subscription, read_topic, RunningWorker};
use serde::{Deserialize, Serialize};
use worker_runtime::broker::MemoryBroker;
use worker_runtime::prelude::*;
use worker_runtime::worker::Worker;
use worker_runtime::{props, Message, Topic};

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    id: u32,
    /// Fail this many attempts before succeeding.
    #[serde(default)]
    failures: u32,
    /// Fail with a permanent error.
    #[serde(default)]
    permanent: bool,
    /// Panic instead of failing.
    #[serde(default)]
    panic: bool,
    /// Sleep this long (virtual time) before finishing.
    #[serde(default)]
    sleep_ms: u64,
}

static ATTEMPTS: Mutex<Option<HashMap<u32, Vec<u32>>>> = Mutex::new(None);

fn record_attempt(id: u32, attempt: u32) {
    let mut attempts = ATTEMPTS.lock().unwrap_or_else(|p| p.into_inner());
    attempts
        .get_or_insert_with(HashMap::new)
        .entry(id)
        .or_default()
        .push(attempt);
}

fn attempts_of(id: u32) -> Vec<u32> {
    let attempts = ATTEMPTS.lock().unwrap_or_else(|p| p.into_inner());
    attempts
        .as_ref()
        .and_then(|a| a.get(&id).cloned())
        .unwrap_or_default()
}

#[pulsar_io_task(
    topic = "persistent://test/outcomes/jobs",
    max_retries = 2,
    backoff = 2,
    retry_delay = "100ms",
    timeout = "1s",
    concurrency = 4
)]
async fn run_job(job: Job, ctx: TaskContext) -> Result<u32, TaskError> {
    record_attempt(job.id, ctx.attempt());
    if job.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
    }
    if job.panic {
        panic!("poison job {}", job.id);
    }
    if job.permanent {
        return Err(TaskError::permanent(format!("job {} is invalid", job.id)));
    }
    if ctx.attempt() <= job.failures {
        return Err(TaskError::retryable(format!(
            "job {} failed on attempt {}",
            job.id,
            ctx.attempt()
        )));
    }
    Ok(job.id)
}

const DLQ: &str = "persistent://test/outcomes/jobs-dlq";

async fn run_until_settled(
    broker: Arc<MemoryBroker>,
    expected_dead: usize,
) -> (
    worker_runtime::worker::WorkerReport,
    Vec<worker_runtime::Delivery>,
) {
    let worker = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(run_job::task())
            .consumer_name("outcomes-worker"),
    );
    let dead = read_topic(&*broker, DLQ, expected_dead, Duration::from_secs(60)).await;
    // Leave time for the last acks of successful jobs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    (worker.stop().await, dead)
}

fn job(id: u32) -> Job {
    Job {
        id,
        failures: 0,
        permanent: false,
        panic: false,
        sleep_ms: 0,
    }
}

#[tokio::test(start_paused = true)]
async fn success_retry_exhaustion_permanent_timeout_and_panic_each_end_right() {
    let broker = Arc::new(MemoryBroker::new());
    let jobs = [
        job(1), // succeeds at once
        Job {
            failures: 2,
            ..job(2)
        }, // fails twice, succeeds on attempt 3
        Job {
            failures: 10,
            ..job(3)
        }, // exhausts 1 + 2 retries
        Job {
            permanent: true,
            ..job(4)
        }, // permanent: no retry
        Job {
            sleep_ms: 5_000,
            ..job(5)
        }, // times out every attempt
        Job {
            panic: true,
            ..job(6)
        }, // panics every attempt
    ];
    for j in &jobs {
        run_job::enqueue(&*broker, j).await.expect("enqueue");
    }
    let (report, dead) = run_until_settled(broker.clone(), 4).await;

    assert_eq!(attempts_of(1), [1]);
    assert_eq!(attempts_of(2), [1, 2, 3]);
    assert_eq!(
        attempts_of(3),
        [1, 2, 3],
        "max_retries = 2 means three attempts"
    );
    assert_eq!(attempts_of(4), [1]);
    assert_eq!(attempts_of(5), [1, 2, 3]);
    assert_eq!(attempts_of(6), [1, 2, 3]);

    let task = report.task("run_job").expect("a report for run_job");
    assert_eq!(task.succeeded, 2);
    assert_eq!(task.dead_lettered, 4);
    assert_eq!(task.retried, 2 + 2 + 2 + 2);
    assert_eq!(task.nacked, 0);

    let mut by_job: HashMap<u32, &worker_runtime::Delivery> = HashMap::new();
    for d in &dead {
        let j: Job = serde_json::from_slice(d.payload()).expect("the DLQ copy keeps the payload");
        by_job.insert(j.id, d);
    }
    let expect = |id: u32, reason: &str, attempts: &str, error_part: &str| {
        let d = by_job
            .get(&id)
            .unwrap_or_else(|| panic!("job {id} is in the DLQ"));
        assert_eq!(d.property(props::DLQ_REASON), Some(reason), "job {id}");
        assert_eq!(d.property(props::DLQ_ATTEMPTS), Some(attempts), "job {id}");
        let error = d.property(props::DLQ_ERROR).unwrap_or_default();
        assert!(
            error.contains(error_part),
            "job {id}: error {error:?} should mention {error_part:?}"
        );
        assert_eq!(
            d.property(props::DLQ_ORIGINAL_TOPIC),
            Some("persistent://test/outcomes/jobs")
        );
        assert_eq!(d.property(props::DLQ_TASK), Some("run_job"));
        assert_eq!(d.property(props::DLQ_CONSUMER), Some("outcomes-worker"));
        assert!(d.property(props::DLQ_ORIGINAL_MESSAGE_ID).is_some());
        assert!(d
            .property(props::DLQ_TIME)
            .is_some_and(|t| t.ends_with('Z')));
        assert!(
            d.property(props::MESSAGE_ID).is_some(),
            "the stable id is kept"
        );
        assert_eq!(
            d.property(props::TASK),
            Some("run_job"),
            "original properties are kept"
        );
    };
    expect(3, "retries_exhausted", "3", "failed on attempt 3");
    expect(4, "permanent_error", "1", "job 4 is invalid");
    expect(5, "retries_exhausted", "3", "timed out");
    expect(6, "retries_exhausted", "3", "poison job 6");
}

#[tokio::test(start_paused = true)]
async fn the_stable_id_is_kept_across_retries() {
    let broker = Arc::new(MemoryBroker::new());
    let sent = run_job::message(&Job {
        failures: 10,
        ..job(20)
    });
    let id = sent.id().to_owned();
    sent.send(&*broker).await.expect("enqueue");
    let (_, dead) = run_until_settled(broker, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].property(props::MESSAGE_ID), Some(id.as_str()));
    assert_eq!(dead[0].property(props::ATTEMPT), Some("3"));
}

static STARTS: Mutex<Vec<tokio::time::Instant>> = Mutex::new(Vec::new());
static DROPPED_AT: Mutex<Vec<tokio::time::Instant>> = Mutex::new(Vec::new());

struct DropClock;
impl Drop for DropClock {
    fn drop(&mut self) {
        DROPPED_AT
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tokio::time::Instant::now());
    }
}

#[pulsar_io_task(
    topic = "q1/test/outcomes/slow",
    max_retries = 3,
    backoff = 2,
    retry_delay = "1s",
    timeout = "2s"
)]
async fn slow(_n: u32) -> Result<(), TaskError> {
    STARTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(tokio::time::Instant::now());
    let _clock = DropClock;
    tokio::time::sleep(Duration::from_secs(60)).await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn retry_delays_follow_the_backoff_and_a_timeout_cancels_on_time() {
    let broker = Arc::new(MemoryBroker::new());
    slow::enqueue(&*broker, &1).await.expect("enqueue");
    let worker = RunningWorker::start(Worker::builder().broker(broker.clone()).task(slow::task()));
    let dead = read_topic(
        &*broker,
        "q1/test/outcomes/slow-dlq",
        1,
        Duration::from_secs(120),
    )
    .await;
    worker.stop().await;
    assert_eq!(dead.len(), 1);

    let starts = STARTS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let drops = DROPPED_AT.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(starts.len(), 4);
    assert_eq!(drops.len(), 4);
    for (start, drop) in starts.iter().zip(&drops) {
        assert_eq!(
            *drop - *start,
            Duration::from_secs(2),
            "each attempt is cancelled at its timeout"
        );
    }
    // Gap between the end of attempt n and the start of attempt n+1 is the backoff delay ±10 % jitter.
    for (n, expected) in [(0usize, 1.0f64), (1, 2.0), (2, 4.0)] {
        let gap = (starts[n + 1] - drops[n]).as_secs_f64();
        assert!(
            gap >= expected * 0.9 - 0.01 && gap <= expected * 1.1 + 0.05,
            "retry {} waited {gap:.3} s, expected {expected} s ± 10 %",
            n + 1
        );
    }
}

static HANDLED: AtomicU32 = AtomicU32::new(0);

#[derive(Serialize, Deserialize)]
struct Strict {
    id: u32,
}

#[pulsar_io_task(topic = "q1/test/outcomes/strict", max_payload_bytes = 1024)]
async fn strict(_s: Strict) -> Result<(), TaskError> {
    HANDLED.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn undecodable_and_invalid_input_goes_to_the_dlq_and_good_messages_still_flow() {
    let broker = Arc::new(MemoryBroker::new());
    let topic = Topic::parse("q1/test/outcomes/strict").expect("topic");
    let nested = "[".repeat(10_000) + &"]".repeat(10_000);
    let mut huge_properties = Message::new(&b"{\"id\":7}"[..]);
    for i in 0..2_000 {
        huge_properties = huge_properties.with_property(format!("p{i}"), "x".repeat(64));
    }
    let bad: Vec<(Message, &str)> = vec![
        (Message::new(&b"\xff\xfe not utf-8"[..]), "decode_error"),
        (Message::new(&b"{\"id\": \"seven\"}"[..]), "decode_error"),
        (Message::new(&b"{\"id\": 1"[..]), "decode_error"),
        (Message::new(nested.into_bytes()), "payload_too_large"),
        (
            Message::new(format!("{{\"id\":1,\"pad\":\"{}\"}}", "x".repeat(2000)).into_bytes()),
            "payload_too_large",
        ),
        (
            Message::new(("[".repeat(300) + &"]".repeat(300)).into_bytes()),
            "decode_error",
        ),
        (
            Message::new(&b"{\"id\":2}"[..]).with_property(props::ATTEMPT, "zero"),
            "decode_error",
        ),
        (
            Message::new(&b"{\"id\":3}"[..]).with_property(props::ATTEMPT, "0"),
            "decode_error",
        ),
    ];
    let bad_count = bad.len();
    for (message, _) in &bad {
        broker
            .publish(&topic, message.clone())
            .await
            .expect("publish bad input");
    }
    broker
        .publish(&topic, huge_properties)
        .await
        .expect("publish a message with many properties");
    for id in 0..10u32 {
        strict::enqueue(&*broker, &Strict { id })
            .await
            .expect("enqueue good input");
    }
    let worker = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(strict::task()),
    );
    let dead = read_topic(
        &*broker,
        "q1/test/outcomes/strict-dlq",
        bad_count,
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = worker.stop().await;

    assert_eq!(
        HANDLED.load(Ordering::SeqCst),
        11,
        "ten good messages and the one with many properties"
    );
    assert_eq!(dead.len(), bad_count);
    let mut reasons: Vec<&str> = dead
        .iter()
        .filter_map(|d| d.property(props::DLQ_REASON))
        .collect();
    let mut expected: Vec<&str> = bad.iter().map(|(_, reason)| *reason).collect();
    reasons.sort_unstable();
    expected.sort_unstable();
    assert_eq!(reasons, expected);
    for d in &dead {
        let error = d.property(props::DLQ_ERROR).unwrap_or_default();
        assert!(
            !error.is_empty() && error.len() <= 1100,
            "a bounded, non-empty error: {error:?}"
        );
    }
    let task = report.task("strict").expect("report");
    assert_eq!(task.dead_lettered as usize, bad_count);
    assert_eq!(task.succeeded, 11);
}

#[tokio::test(start_paused = true)]
async fn the_original_stays_unacked_until_its_dead_letter_copy_is_confirmed() {
    use worker_runtime::broker::MemoryBrokerOptions;

    // The DLQ topic holds at most two messages, and two are there already: it refuses more.
    let broker = Arc::new(MemoryBroker::with_options(MemoryBrokerOptions {
        max_retained_per_topic: 2,
        ..MemoryBrokerOptions::default()
    }));
    let dlq = Topic::parse(DLQ).expect("topic");
    for n in 0..2 {
        broker
            .publish(&dlq, Message::new(format!("filler {n}")))
            .await
            .expect("fill the DLQ");
    }
    run_job::enqueue(
        &*broker,
        &Job {
            permanent: true,
            ..job(30)
        },
    )
    .await
    .expect("enqueue");
    let worker = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(run_job::task()),
    );
    tokio::time::sleep(Duration::from_secs(20)).await;

    let jobs = Topic::parse("persistent://test/outcomes/jobs").expect("topic");
    let held = |broker: &MemoryBroker| {
        let stats = broker.stats(&jobs).expect("the jobs topic exists");
        let sub = stats
            .subscriptions
            .iter()
            .find(|s| s.name == "run_job")
            .expect("the task's subscription");
        (sub.backlog, sub.unacked)
    };
    assert_eq!(attempts_of(30), [1], "the handler ran once");
    assert_eq!(
        held(&broker),
        (1, 1),
        "while the DLQ refuses the copy, the original stays unacked"
    );

    // Make room: the DLQ's readers (whose subscription the worker opened at start, so that the
    // DLQ keeps its copies for them) take the fillers, then the copy the worker keeps trying to
    // publish.
    let dead = read_subscription(
        &*broker,
        DLQ,
        worker_runtime::dead_letters::SUBSCRIPTION,
        3,
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = worker.stop().await;
    assert_eq!(dead.len(), 3);
    assert_eq!(dead[2].property(props::DLQ_REASON), Some("permanent_error"));
    assert_eq!(held(&broker), (0, 0), "acked once the copy was confirmed");
    assert_eq!(report.task("run_job").map(|t| t.dead_lettered), Some(1));
    assert_eq!(attempts_of(30), [1], "never run again while waiting");
}

#[tokio::test(start_paused = true)]
async fn the_dlq_subcommand_lists_and_replays_dead_letters() {
    use worker_runtime::cli::{parse_from, run_with, RunExtras};

    let broker = Arc::new(MemoryBroker::new());
    run_job::enqueue(
        &*broker,
        &Job {
            permanent: true,
            ..job(40)
        },
    )
    .await
    .expect("enqueue");
    let worker = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(run_job::task()),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.stop().await;
    let jobs = Topic::parse("persistent://test/outcomes/jobs").expect("topic");
    assert_eq!(broker.backlog(&jobs, "run_job"), Some(0));

    let cli = |args: &[&str]| {
        let mut argv = vec!["worker", "--metrics-addr", "off"];
        argv.extend_from_slice(args);
        parse_from(argv).expect("valid arguments")
    };
    let extras = || {
        RunExtras::new()
            .broker(broker.clone())
            .tasks(vec![run_job::task()])
            .without_signal_handlers()
    };
    run_with(cli(&["dlq", "run_job"]), extras())
        .await
        .expect("list the DLQ");
    run_with(cli(&["dlq", "run_job", "--replay"]), extras())
        .await
        .expect("replay the DLQ");
    assert_eq!(
        broker.backlog(&jobs, "run_job"),
        Some(1),
        "the dead letter is back on the task's topic"
    );
    let unknown = run_with(cli(&["dlq", "no_such_task"]), extras()).await;
    assert!(unknown.is_err_and(|e| e.to_string().contains("no_such_task")));

    let worker = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(run_job::task()),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.stop().await;
    assert_eq!(attempts_of(40), [1, 1], "replayed with its attempts afresh");
}
