//! `worker_backlog_messages{task,subscription}` sampled from real brokers: with 30 messages
//! published and the handler held, each backend that can tell reports all 30 waiting, and 0
//! once the task drained. MQTT cannot tell, and exports no series.

use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::brokers::{Mosquitto, PulsarStandalone, RedisServer};
use integration_tests::processes::metric_sum;
use integration_tests::worker_support::RunningWorker;
use tokio::sync::Semaphore;
use worker_runtime::broker::mqtt::{MqttBroker, MqttOptions};
use worker_runtime::broker::pulsar::{PulsarBroker, PulsarOptions};
use worker_runtime::broker::valkey::{ValkeyBroker, ValkeyOptions};
use worker_runtime::broker::MemoryBroker;
use worker_runtime::metrics::Metrics;
use worker_runtime::prelude::*;
use worker_runtime::worker::Worker;

/// Permits the handlers wait for: none until the test lets them run.
static GATE: Semaphore = Semaphore::const_new(0);

#[pulsar_io_task(
    topic = "persistent://test/backlog/jobs",
    concurrency = 1,
    timeout = "1m"
)]
async fn gated(_n: u32) -> Result<(), TaskError> {
    let permit = GATE.acquire().await.map_err(TaskError::retryable)?;
    permit.forget();
    Ok(())
}

const MESSAGES: u32 = 30;

fn backlog(metrics: &Metrics) -> Option<f64> {
    let text = metrics.encode();
    text.lines()
        .any(|l| l.starts_with("worker_backlog_messages{"))
        .then(|| {
            metric_sum(
                &text,
                "worker_backlog_messages",
                &["task=\"gated\"", "subscription=\"gated\""],
            )
        })
}

async fn wait_for(metrics: &Metrics, wanted: f64, limit: Duration) -> Option<f64> {
    let deadline = Instant::now() + limit;
    loop {
        let seen = backlog(metrics);
        if seen == Some(wanted) || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes the messages, runs the worker with the handler held, and returns the backlog seen
/// while held and after the gate opened.
async fn held_then_drained(broker: Arc<dyn Broker>) -> (Option<f64>, Option<f64>) {
    for n in 0..MESSAGES {
        gated::enqueue(&*broker, &n).await.expect("enqueue");
    }
    let metrics = Metrics::new("backlog-test");
    let running = RunningWorker::start(
        Worker::builder()
            .broker(broker)
            .task(gated::task())
            .consumer_name("backlog-test")
            .metrics(metrics.clone())
            .backlog_interval(Duration::from_millis(200)),
    );
    let held = wait_for(&metrics, f64::from(MESSAGES), Duration::from_secs(15)).await;
    GATE.add_permits(MESSAGES as usize);
    let drained = wait_for(&metrics, 0.0, Duration::from_secs(20)).await;
    running.stop().await;
    (held, drained)
}

// One test drives every backend in turn: they share the handler's gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_that_can_tell_reports_what_waits() {
    let memory = held_then_drained(Arc::new(MemoryBroker::new())).await;
    assert_eq!(memory, (Some(30.0), Some(0.0)), "memory");

    if let Some(server) = RedisServer::start() {
        let broker = ValkeyBroker::connect(ValkeyOptions::new(server.url()))
            .await
            .expect("connect");
        let valkey = held_then_drained(Arc::new(broker)).await;
        assert_eq!(valkey, (Some(30.0), Some(0.0)), "valkey");
    }

    if let Some(pulsar) = PulsarStandalone::shared() {
        pulsar.ensure_namespace_of("persistent://test/backlog/jobs");
        let mut options = PulsarOptions::new(pulsar.url());
        options.admin_url = Some(pulsar.admin_url());
        let broker = PulsarBroker::connect(options).await.expect("connect");
        let seen = held_then_drained(Arc::new(broker)).await;
        assert_eq!(seen, (Some(30.0), Some(0.0)), "pulsar");
    }

    if let Some(mosquitto) = Mosquitto::start() {
        let broker = MqttBroker::connect(MqttOptions::new(mosquitto.host(), mosquitto.port()))
            .await
            .expect("connect");
        let metrics = Metrics::new("backlog-test");
        let running = RunningWorker::start(
            Worker::builder()
                .broker(Arc::new(broker))
                .task(gated::task())
                .consumer_name("backlog-mqtt")
                .metrics(metrics.clone())
                .backlog_interval(Duration::from_millis(200)),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(backlog(&metrics), None, "mqtt cannot tell: no series");
        running.stop().await;
    }
}
