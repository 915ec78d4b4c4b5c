//! Delivery guarantees of the worker on the embedded broker: redelivery after a worker dies
//! mid-task, graceful shutdown, two workers sharing a subscription, the rate limit, bounded
//! concurrency, and in-order retries on key_shared subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::worker_support::RunningWorker;
use serde::{Deserialize, Serialize};
use worker_runtime::broker::MemoryBroker;
use worker_runtime::prelude::*;
use worker_runtime::worker::Worker;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

static HANDLED: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());
static STARTED: AtomicU32 = AtomicU32::new(0);

#[pulsar_io_task(topic = "q1/test/delivery/crash", timeout = "1m")]
async fn crashy(n: u32, ctx: TaskContext) -> Result<(), TaskError> {
    STARTED.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    lock(&HANDLED).push((ctx.consumer_name().to_owned(), n));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_message_in_flight_when_its_worker_dies_is_redelivered_and_handled() {
    let broker = Arc::new(MemoryBroker::new());
    crashy::enqueue(&*broker, &7).await.expect("enqueue");
    let first = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(crashy::task())
            .consumer_name("first"),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        STARTED.load(Ordering::SeqCst),
        1,
        "the first worker started the message"
    );
    first.kill();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let second = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(crashy::task())
            .consumer_name("second"),
    );
    tokio::time::sleep(Duration::from_secs(15)).await;
    let report = second.stop().await;
    assert_eq!(*lock(&HANDLED), [("second".to_owned(), 7)]);
    assert_eq!(report.task("crashy").map(|t| t.succeeded), Some(1));
}

static FINISHED: AtomicU32 = AtomicU32::new(0);
static SHUTDOWN_STARTED: AtomicU32 = AtomicU32::new(0);

#[pulsar_io_task(topic = "q1/test/delivery/shutdown", concurrency = 2, timeout = "1m")]
async fn slow_job(_n: u32) -> Result<(), TaskError> {
    SHUTDOWN_STARTED.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    FINISHED.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_finishes_in_flight_work_and_gives_back_the_rest() {
    let broker = Arc::new(MemoryBroker::new());
    for n in 0..10u32 {
        slow_job::enqueue(&*broker, &n).await.expect("enqueue");
    }
    let worker = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(slow_job::task())
            .shutdown_grace(Duration::from_secs(30)),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        SHUTDOWN_STARTED.load(Ordering::SeqCst),
        2,
        "concurrency bounds what runs at once"
    );
    let report = worker.stop().await;
    let task = report.task("slow_job").expect("report");
    assert_eq!(
        FINISHED.load(Ordering::SeqCst),
        2,
        "in-flight handlers finished"
    );
    assert_eq!(task.succeeded, 2);

    // A new worker sees exactly the eight that never started: nothing completed comes back.
    let again = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(slow_job::task()),
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    let report = again.stop().await;
    assert_eq!(report.task("slow_job").map(|t| t.succeeded), Some(8));
    assert_eq!(
        SHUTDOWN_STARTED.load(Ordering::SeqCst),
        10,
        "each message started exactly once"
    );
}

static STUCK_STARTED: AtomicU32 = AtomicU32::new(0);

#[pulsar_io_task(topic = "q1/test/delivery/stuck", concurrency = 1, timeout = "10m")]
async fn stuck(_n: u32) -> Result<(), TaskError> {
    STUCK_STARTED.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(300)).await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn shutdown_after_the_grace_period_gives_back_unfinished_handlers() {
    let broker = Arc::new(MemoryBroker::new());
    stuck::enqueue(&*broker, &1).await.expect("enqueue");
    let worker = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(stuck::task())
            .shutdown_grace(Duration::from_secs(5)),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopping = tokio::time::Instant::now();
    let report = worker.stop().await;
    assert_eq!(
        stopping.elapsed(),
        Duration::from_secs(5),
        "stops at the end of the grace period"
    );
    assert_eq!(
        report.task("stuck").map(|t| (t.succeeded, t.nacked)),
        Some((0, 1))
    );

    let next = RunningWorker::start(Worker::builder().broker(broker.clone()).task(stuck::task()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        STUCK_STARTED.load(Ordering::SeqCst),
        2,
        "the given-back message was delivered again"
    );
    next.kill();
}

static SEEN: Mutex<Option<HashMap<u32, Vec<String>>>> = Mutex::new(None);

#[pulsar_io_task(topic = "q1/test/delivery/shared", concurrency = 4)]
async fn split(n: u32, ctx: TaskContext) -> Result<(), TaskError> {
    tokio::time::sleep(Duration::from_micros(200)).await;
    lock(&SEEN)
        .get_or_insert_with(HashMap::new)
        .entry(n)
        .or_default()
        .push(ctx.consumer_name().to_owned());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_shared_subscription_handle_each_message_once() {
    const COUNT: u32 = 2_000;
    let broker = Arc::new(MemoryBroker::new());
    let a = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(split::task())
            .consumer_name("a"),
    );
    let b = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(split::task())
            .consumer_name("b"),
    );
    for n in 0..COUNT {
        split::enqueue(&*broker, &n).await.expect("enqueue");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while lock(&SEEN).as_ref().map_or(0, HashMap::len) < COUNT as usize
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ra, rb) = (a.stop().await, b.stop().await);
    let seen = lock(&SEEN).take().unwrap_or_default();
    assert_eq!(seen.len(), COUNT as usize, "every message handled");
    assert!(
        seen.values().all(|c| c.len() == 1),
        "no message handled twice"
    );
    let by_a = seen.values().filter(|c| c[0] == "a").count();
    let (sa, sb) = (
        ra.task("split").map_or(0, |t| t.succeeded),
        rb.task("split").map_or(0, |t| t.succeeded),
    );
    println!("worker a handled {sa}, worker b handled {sb}");
    assert!(sa > 0 && sb > 0, "both workers took a share ({sa} / {sb})");
    assert_eq!(by_a as u64, sa);
    assert_eq!(sa + sb, u64::from(COUNT));
}

static STARTS: Mutex<Vec<tokio::time::Instant>> = Mutex::new(Vec::new());

#[pulsar_io_task(
    topic = "q1/test/delivery/limited",
    rate_limit = 5,
    rate_window = 1,
    concurrency = 8
)]
async fn limited(_n: u32) -> Result<(), TaskError> {
    lock(&STARTS).push(tokio::time::Instant::now());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_holds() {
    let broker = Arc::new(MemoryBroker::new());
    for n in 0..30u32 {
        limited::enqueue(&*broker, &n).await.expect("enqueue");
    }
    let begin = tokio::time::Instant::now();
    let worker = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(limited::task()),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    worker.stop().await;
    let starts = lock(&STARTS).clone();
    assert_eq!(starts.len(), 30);
    // Evenly spaced, one every 200 ms: message k starts at k × 200 ms, and no second holds more
    // than five starts.
    for (k, start) in starts.iter().enumerate() {
        let expected = Duration::from_millis(200 * k as u64);
        let at = *start - begin;
        assert!(
            at + Duration::from_millis(1) >= expected,
            "message {k} started at {at:?}, before {expected:?}"
        );
    }
    let busiest = starts
        .iter()
        .map(|from| {
            starts
                .iter()
                .filter(|s| **s >= *from && **s < *from + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert_eq!(busiest, 5, "at most five starts in any one second");
}

static ORDER: Mutex<Vec<(String, u32, u32)>> = Mutex::new(Vec::new());
static FAILED_ONCE: AtomicUsize = AtomicUsize::new(0);

#[derive(Serialize, Deserialize)]
struct Step {
    key: String,
    seq: u32,
}

#[pulsar_io_task(
    topic = "q1/test/delivery/ordered",
    consumer_type = "key_shared",
    concurrency = 3,
    retry_delay = "1s"
)]
async fn ordered(step: Step, ctx: TaskContext) -> Result<(), TaskError> {
    lock(&ORDER).push((step.key.clone(), step.seq, ctx.attempt()));
    if step.seq == 2 && ctx.attempt() == 1 {
        FAILED_ONCE.fetch_add(1, Ordering::SeqCst);
        return Err(TaskError::retryable("transient"));
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn key_shared_retries_in_place_so_each_key_keeps_its_order() {
    let broker = Arc::new(MemoryBroker::new());
    for seq in 0..5u32 {
        for key in ["a", "b", "c", "d"] {
            ordered::message(&Step {
                key: key.into(),
                seq,
            })
            .key(key)
            .send(&*broker)
            .await
            .expect("enqueue");
        }
    }
    let worker = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(ordered::task()),
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    let report = worker.stop().await;
    assert_eq!(FAILED_ONCE.load(Ordering::SeqCst), 4);
    let order = lock(&ORDER).clone();
    for key in ["a", "b", "c", "d"] {
        let seqs: Vec<(u32, u32)> = order
            .iter()
            .filter(|(k, _, _)| k == key)
            .map(|(_, s, a)| (*s, *a))
            .collect();
        assert_eq!(
            seqs,
            [(0, 1), (1, 1), (2, 1), (2, 2), (3, 1), (4, 1)],
            "key {key}"
        );
    }
    let task = report.task("ordered").expect("report");
    assert_eq!(
        (task.succeeded, task.retried, task.dead_lettered),
        (20, 4, 0)
    );
}

/// A memory broker whose `subscribe` fails (transiently) until it is told to let subscribers in.
struct LateBroker {
    inner: MemoryBroker,
    open: std::sync::atomic::AtomicBool,
}

impl worker_runtime::Broker for LateBroker {
    fn name(&self) -> &'static str {
        "late"
    }

    fn capabilities(&self) -> worker_runtime::Capabilities {
        self.inner.capabilities()
    }

    fn publish<'a>(
        &'a self,
        topic: &'a Topic,
        message: worker_runtime::Message,
    ) -> worker_runtime::BoxFuture<'a, Result<worker_runtime::MessageId, worker_runtime::BrokerError>>
    {
        self.inner.publish(topic, message)
    }

    fn subscribe<'a>(
        &'a self,
        options: worker_runtime::SubscribeOptions,
    ) -> worker_runtime::BoxFuture<
        'a,
        Result<Box<dyn worker_runtime::Subscription>, worker_runtime::BrokerError>,
    > {
        if self.open.load(Ordering::SeqCst) {
            self.inner.subscribe(options)
        } else {
            Box::pin(async {
                Err(worker_runtime::BrokerError::Connection {
                    backend: "late",
                    message: "not yet".into(),
                    source: None,
                })
            })
        }
    }
}

#[pulsar_io_task(topic = "q1/test/delivery/ready")]
async fn ready_job(_n: u32) -> Result<(), TaskError> {
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_worker_is_ready_only_once_every_task_has_subscribed() {
    let broker = Arc::new(LateBroker {
        inner: MemoryBroker::new(),
        open: std::sync::atomic::AtomicBool::new(false),
    });
    let metrics = worker_runtime::metrics::Metrics::new("ready-test");
    let worker = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .tasks([ready_job::task(), limited::task()])
            .metrics(metrics.clone()),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !metrics.is_ready(),
        "not ready while subscribing keeps failing"
    );
    broker.open.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(metrics.is_ready(), "ready once both tasks subscribed");
    worker.stop().await;
    assert!(!metrics.is_ready(), "not ready after stopping");
}

static SLOT_JOBS_RUNNING: AtomicUsize = AtomicUsize::new(0);
static SLOT_JOBS_PEAK: AtomicUsize = AtomicUsize::new(0);
static SLOT_JOBS_ALONE: AtomicUsize = AtomicUsize::new(0);
static SLOT_JOBS_DONE: AtomicUsize = AtomicUsize::new(0);

/// Waits until it runs beside another handler (or gives up after 2 s and says so), then a little
/// longer so that its partner sees it too.
#[pulsar_io_task(topic = "q1/test/delivery/slots", concurrency = 2)]
async fn in_pairs(_n: u32) -> Result<(), TaskError> {
    let running = SLOT_JOBS_RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    SLOT_JOBS_PEAK.fetch_max(running, Ordering::SeqCst);
    let alone_until = tokio::time::Instant::now() + Duration::from_secs(2);
    while SLOT_JOBS_RUNNING.load(Ordering::SeqCst) < 2 {
        if tokio::time::Instant::now() >= alone_until {
            SLOT_JOBS_ALONE.fetch_add(1, Ordering::SeqCst);
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    SLOT_JOBS_RUNNING.fetch_sub(1, Ordering::SeqCst);
    SLOT_JOBS_DONE.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// On a runtime of several threads the worker runs a dispatch loop per thread. A loop waiting on
/// an empty topic must not sit on a concurrency slot while another loop has deliveries waiting
/// for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_concurrency_slot_is_used_and_none_beyond() {
    const COUNT: usize = 6;
    let broker = Arc::new(MemoryBroker::new());
    // All queued before the worker starts: one loop takes them all, the other finds none.
    for n in 0..COUNT as u32 {
        in_pairs::enqueue(&*broker, &n).await.expect("enqueue");
    }
    let worker = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(in_pairs::task()),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while SLOT_JOBS_DONE.load(Ordering::SeqCst) < COUNT && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = worker.stop().await;
    assert_eq!(
        report.task("in_pairs").map(|t| t.succeeded),
        Some(COUNT as u64)
    );
    assert_eq!(
        SLOT_JOBS_ALONE.load(Ordering::SeqCst),
        0,
        "a handler ran alone while a slot and a delivery were both free"
    );
    assert_eq!(
        SLOT_JOBS_PEAK.load(Ordering::SeqCst),
        2,
        "never more than two handlers at once"
    );
}
