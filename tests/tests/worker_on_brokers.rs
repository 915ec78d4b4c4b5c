//! The same task code and the same guarantees on real brokers: a worker over Valkey, MQTT and
//! Apache Pulsar (each a broker process of the test's own) succeeds, retries with backoff
//! (broker-held delays on Valkey and Pulsar, worker-held delays on MQTT) and dead-letters with
//! provenance; and on Valkey and Pulsar the attempt counter survives a broker restart in the middle
//! of the retries (it lives in the message).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::brokers::{Mosquitto, PulsarStandalone, RedisServer};
use integration_tests::worker_support::{read_topic, RunningWorker};
use serde::{Deserialize, Serialize};
use worker_runtime::broker::mqtt::{MqttBroker, MqttOptions};
use worker_runtime::broker::pulsar::{PulsarBroker, PulsarOptions};
use worker_runtime::broker::valkey::{ValkeyBroker, ValkeyOptions};
use worker_runtime::prelude::*;
use worker_runtime::props;
use worker_runtime::worker::Worker;

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    run: String,
    id: u32,
    failures: u32,
}

/// The attempt numbers a job ran with, and when each started.
type AttemptLog = Vec<(u32, Instant)>;

/// Attempts seen, by run and job id.
static ATTEMPTS: Mutex<Option<HashMap<(String, u32), AttemptLog>>> = Mutex::new(None);

fn attempts(run: &str, id: u32) -> AttemptLog {
    let seen = ATTEMPTS.lock().unwrap_or_else(|p| p.into_inner());
    seen.as_ref()
        .and_then(|s| s.get(&(run.to_owned(), id)).cloned())
        .unwrap_or_default()
}

#[pulsar_io_task(
    topic = "q1/test/brokers/jobs",
    max_retries = 2,
    backoff = 2,
    retry_delay = "300ms",
    jitter = 0.0,
    timeout = "5s"
)]
async fn broker_job(job: Job, ctx: TaskContext) -> Result<u32, TaskError> {
    ATTEMPTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .entry((job.run.clone(), job.id))
        .or_default()
        .push((ctx.attempt(), Instant::now()));
    if ctx.attempt() <= job.failures {
        return Err(TaskError::retryable(format!(
            "job {} failed on attempt {}",
            job.id,
            ctx.attempt()
        )));
    }
    Ok(job.id)
}

const DLQ: &str = "q1/test/brokers/jobs-dlq";

/// Runs three jobs (succeeds, fails once, always fails) through a worker on `broker` and checks
/// every outcome, the retry spacing and the DLQ copy.
async fn outcomes_on(run: &str, broker: Arc<dyn Broker>) {
    let worker = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(broker_job::task())
            .consumer_name(run),
    );
    // Let the worker's subscription exist first (MQTT keeps no history).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dlq_reader = read_topic(&*broker, DLQ, 1, Duration::from_secs(20));
    let publish = async {
        for (id, failures) in [(1, 0), (2, 1), (3, 99)] {
            let job = Job {
                run: run.to_owned(),
                id,
                failures,
            };
            broker_job::enqueue(&*broker, &job).await.expect("enqueue");
        }
    };
    let (dead, ()) = tokio::join!(dlq_reader, publish);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = worker.stop().await;

    assert_eq!(
        attempts(run, 1).iter().map(|a| a.0).collect::<Vec<_>>(),
        [1]
    );
    assert_eq!(
        attempts(run, 2).iter().map(|a| a.0).collect::<Vec<_>>(),
        [1, 2]
    );
    let doomed = attempts(run, 3);
    assert_eq!(doomed.iter().map(|a| a.0).collect::<Vec<_>>(), [1, 2, 3]);
    for (n, expected) in [(0usize, 300u64), (1, 600)] {
        let gap = doomed[n + 1].1 - doomed[n].1;
        assert!(
            gap >= Duration::from_millis(expected) && gap < Duration::from_millis(expected + 1500),
            "{run}: retry {} came {gap:?} after the failure, expected {expected} ms",
            n + 1
        );
    }
    assert_eq!(
        dead.len(),
        1,
        "{run}: the exhausted job is dead-lettered once"
    );
    let copy = &dead[0];
    assert_eq!(copy.property(props::DLQ_REASON), Some("retries_exhausted"));
    assert_eq!(copy.property(props::DLQ_ATTEMPTS), Some("3"));
    assert_eq!(copy.property(props::DLQ_CONSUMER), Some(run));
    let job: Job = serde_json::from_slice(copy.payload()).expect("the DLQ copy keeps the payload");
    assert_eq!(job.id, 3);
    let task = report.task("broker_job").expect("report");
    assert_eq!(
        (task.succeeded, task.retried, task.dead_lettered),
        (2, 3, 1),
        "{run}"
    );
    println!("{run}: {task:?}");
}

fn valkey_options(server: &RedisServer) -> ValkeyOptions {
    ValkeyOptions {
        visibility_timeout: Duration::from_secs(2),
        block_timeout: Duration::from_millis(200),
        operation_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        delayed_poll_interval: Duration::from_millis(50),
        ..ValkeyOptions::new(server.url())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_valkey_every_outcome_holds() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let broker = ValkeyBroker::connect(valkey_options(&server))
        .await
        .expect("connect");
    outcomes_on("valkey-worker", Arc::new(broker)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mqtt_every_outcome_holds_with_worker_held_delays() {
    let Some(mosquitto) = Mosquitto::start() else {
        return;
    };
    let options = MqttOptions {
        connect_timeout: Duration::from_secs(2),
        reconnect_delay_max: Duration::from_millis(500),
        ..MqttOptions::new(mosquitto.host(), mosquitto.port())
    };
    let broker = MqttBroker::connect(options).await.expect("connect");
    assert!(broker.capabilities().delayed_delivery == worker_runtime::DelayedDelivery::Unsupported);
    outcomes_on("mqtt-worker", Arc::new(broker)).await;
}

fn pulsar_options(standalone: &PulsarStandalone) -> PulsarOptions {
    let mut options = PulsarOptions::new(standalone.url());
    options.operation_timeout = Duration::from_secs(10);
    options.ack_group_time = Duration::from_millis(50);
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_pulsar_every_outcome_holds_with_deliver_at_time_retries() {
    let Some(standalone) = PulsarStandalone::start() else {
        return;
    };
    standalone.ensure_namespace_of("q1/test/brokers/jobs");
    let broker = PulsarBroker::connect(pulsar_options(&standalone))
        .await
        .expect("connect");
    assert!(broker.capabilities().delayed_delivery == worker_runtime::DelayedDelivery::Native);
    outcomes_on("pulsar-worker", Arc::new(broker)).await;
}

#[pulsar_io_task(
    topic = "q1/test/brokers/restart",
    max_retries = 3,
    backoff = 1,
    retry_delay = "1s",
    jitter = 0.0
)]
async fn always_fails(_n: u32, ctx: TaskContext) -> Result<(), TaskError> {
    RESTART_ATTEMPTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((ctx.broker().name(), ctx.attempt()));
    Err(TaskError::retryable("downstream unavailable"))
}

/// The attempts of `always_fails`, with the name of the backend that delivered them.
static RESTART_ATTEMPTS: Mutex<Vec<(&'static str, u32)>> = Mutex::new(Vec::new());

fn restart_attempts(backend: &str) -> Vec<u32> {
    let attempts = RESTART_ATTEMPTS.lock().unwrap_or_else(|p| p.into_inner());
    attempts
        .iter()
        .filter(|(name, _)| *name == backend)
        .map(|(_, attempt)| *attempt)
        .collect()
}

/// A broker process that can be killed and started again on the same data.
trait Restartable {
    fn kill(&mut self);
    fn restart(&mut self);
}

impl Restartable for RedisServer {
    fn kill(&mut self) {
        RedisServer::kill(self);
    }

    fn restart(&mut self) {
        RedisServer::restart(self);
    }
}

impl Restartable for PulsarStandalone {
    fn kill(&mut self) {
        PulsarStandalone::kill(self);
    }

    fn restart(&mut self) {
        PulsarStandalone::restart(self);
    }
}

/// Runs a task that always fails through a worker on `broker`, kills the broker process after the
/// first failure (while the retry waits in the broker), starts it again, and checks that the
/// message still reaches the DLQ after exactly `max_retries`, its attempts counted in order.
async fn attempts_survive_a_restart(broker: Arc<dyn Broker>, server: &mut impl Restartable) {
    let worker = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(always_fails::task()),
    );
    always_fails::enqueue(&*broker, &7).await.expect("enqueue");
    // Wait for the first failure, then take the broker away while the retry waits in it.
    let backend = broker.name();
    let deadline = Instant::now() + Duration::from_secs(10);
    while restart_attempts(backend).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| server.kill());
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| server.restart());
    let dead = read_topic(
        &*broker,
        "q1/test/brokers/restart-dlq",
        1,
        Duration::from_secs(60),
    )
    .await;
    let report = worker.stop().await;
    let attempts = restart_attempts(backend);
    println!(
        "attempts across the restart: {attempts:?}; {:?}",
        report.task("always_fails")
    );
    assert_eq!(
        dead.len(),
        1,
        "dead-lettered after max_retries despite the restart"
    );
    assert_eq!(dead[0].property(props::DLQ_ATTEMPTS), Some("4"));
    let mut distinct = attempts.clone();
    distinct.dedup();
    assert_eq!(
        distinct,
        [1, 2, 3, 4],
        "attempts counted in the message, in order: {attempts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_valkey_the_attempt_count_survives_a_broker_restart() {
    let Some(mut server) = RedisServer::start_fsync_always() else {
        return;
    };
    let broker = ValkeyBroker::connect(valkey_options(&server))
        .await
        .expect("connect");
    attempts_survive_a_restart(Arc::new(broker), &mut server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_pulsar_the_attempt_count_survives_a_broker_restart() {
    let Some(mut standalone) = PulsarStandalone::start() else {
        return;
    };
    standalone.ensure_namespace_of("q1/test/brokers/restart");
    let broker = PulsarBroker::connect(pulsar_options(&standalone))
        .await
        .expect("connect");
    attempts_survive_a_restart(Arc::new(broker), &mut standalone).await;
}
