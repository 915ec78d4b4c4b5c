//! The worker on a real mosquitto against software nobody here wrote (`paho-mqtt` from PyPI, in the
//! tests' own venv), and across restarts:
//! - a Python producer that publishes exactly as `docs/wire-format.md` says is run: its
//!   `wr-message-id` and key are kept, messages without an id get stable content-derived ids, and a
//!   request with an MQTT 5 Response Topic gets its result there with its Correlation Data;
//! - a poison message with no dead-letter reader anywhere is settled, and its copy waits until the
//!   `dlq` command reads it, and then a plain MQTT client that resumes the reader's session;
//! - a worker process killed and started again with its default settings gets every message
//!   published while it was down (no session stranded under a name that never comes back).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use integration_tests::brokers::{free_port, Mosquitto};
use integration_tests::processes::{example_binary, http_get, metric_sum, ChildGuard};
use integration_tests::python::{python_with, run_script};
use integration_tests::worker_support::RunningWorker;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use worker_runtime::broker::mqtt::{MqttBroker, MqttOptions};
use worker_runtime::dead_letters;
use worker_runtime::metrics::Metrics;
use worker_runtime::prelude::*;
use worker_runtime::worker::Worker;
use worker_runtime::{props, DeadLetterReason};

const PACKAGES: &[&str] = &["paho-mqtt>=2"];
const SCRIPT_LIMIT: Duration = Duration::from_secs(60);

/// The Python side, one command per run (`HOST PORT` first):
/// - `publish TOPIC MESSAGES`: publishes each `{"payload", "user_properties": [[n, v], ..]}` at
///   QoS 1 and waits for every PUBACK;
/// - `request TOPIC PAYLOAD CORRELATION_HEX`: subscribes to a response topic of its own, publishes
///   PAYLOAD with that Response Topic and the Correlation Data, and prints the reply;
/// - `resume CLIENT_ID COUNT`: connects with that client id and clean start off (resuming its
///   session), and prints up to COUNT messages the broker sends it, acknowledging them.
const CLIENT: &str = r#"
import json, sys, time, uuid
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

host, port, command = sys.argv[1], int(sys.argv[2]), sys.argv[3]
received = []

def on_message(client, userdata, message):
    props = getattr(message, "properties", None)
    received.append({
        "topic": message.topic,
        "payload": message.payload.decode("utf-8", "replace"),
        "user_properties": [list(p) for p in getattr(props, "UserProperty", [])] if props else [],
        "correlation": props.CorrelationData.hex() if props and hasattr(props, "CorrelationData") else None,
    })

def connect(client_id="", clean_start=True):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    connect_props = Properties(PacketTypes.CONNECT)
    connect_props.SessionExpiryInterval = 3600
    client.connect(host, port, clean_start=clean_start, properties=connect_props)
    client.loop_start()
    return client

def wait_for(count, seconds):
    deadline = time.monotonic() + seconds
    while len(received) < count and time.monotonic() < deadline:
        time.sleep(0.05)

if command == "publish":
    client = connect()
    for m in json.loads(sys.argv[5]):
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [tuple(p) for p in m.get("user_properties", [])]
        info = client.publish(sys.argv[4], m["payload"].encode(), qos=1, properties=props)
        info.wait_for_publish(10)
        assert info.is_published(), "no PUBACK"
    client.disconnect()
    print(json.dumps({"published": len(json.loads(sys.argv[5]))}))
elif command == "request":
    client = connect()
    response_topic = f"py/replies/{uuid.uuid4()}"
    result, _ = client.subscribe(response_topic, qos=1)
    assert result == mqtt.MQTT_ERR_SUCCESS
    time.sleep(0.3)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = bytes.fromhex(sys.argv[6])
    client.publish(sys.argv[4], sys.argv[5].encode(), qos=1, properties=props).wait_for_publish(10)
    wait_for(1, 30)
    client.disconnect()
    print(json.dumps({"response_topic": response_topic, "replies": received}))
elif command == "resume":
    client = connect(sys.argv[4], clean_start=False)
    wait_for(int(sys.argv[5]), 20)
    time.sleep(0.3)
    client.disconnect()
    print(json.dumps(received))
"#;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The venv's Python with paho-mqtt, a mosquitto of the test's own and a broker client of it;
/// `None` to skip.
async fn setup() -> Option<(PathBuf, Mosquitto, Arc<dyn Broker>)> {
    let python = tokio::task::spawn_blocking(|| python_with(PACKAGES))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    let mosquitto = Mosquitto::start()?;
    let broker = connect(&mosquitto).await;
    Some((python, mosquitto, broker))
}

async fn connect(mosquitto: &Mosquitto) -> Arc<dyn Broker> {
    let mut options = MqttOptions::new(mosquitto.host(), mosquitto.port());
    options.operation_timeout = Duration::from_secs(10);
    Arc::new(MqttBroker::connect(options).await.expect("connect"))
}

/// Runs `command` of the Python client against `mosquitto` and parses what it printed.
async fn python(python: &Path, mosquitto: &Mosquitto, command: &str, rest: &[String]) -> Value {
    let mut args = vec![
        mosquitto.host().to_owned(),
        mosquitto.port().to_string(),
        command.to_owned(),
    ];
    args.extend_from_slice(rest);
    let python = python.to_owned();
    let stdout = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_script(&python, CLIENT, &args, SCRIPT_LIMIT)
    })
    .await
    .expect("the python runner did not panic")
    .unwrap_or_else(|e| panic!("python {command}: {e}"));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("python printed {stdout:?}: {e}"))
}

fn worker(broker: &Arc<dyn Broker>, task: TaskDefinition) -> RunningWorker {
    RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .tasks([task])
            .consumer_name("mqtt-interop")
            .shutdown_grace(Duration::from_secs(5)),
    )
}

async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

// ---------------------------------------------------------------------------------------------
// A Python producer, stable ids and MQTT 5 replies

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    n: u32,
}

/// What the handler saw: number → (stable id, key, properties).
type Seen = BTreeMap<u32, (String, Option<String>, BTreeMap<String, String>)>;
static SEEN: Mutex<Seen> = Mutex::new(BTreeMap::new());

#[pulsar_io_task(topic = "q1/interop/mqtt/orders")]
async fn take_order(order: Order, ctx: TaskContext) -> Result<Value, TaskError> {
    let properties = ctx
        .properties()
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    lock(&SEEN).insert(
        order.n,
        (
            ctx.message_id().to_owned(),
            ctx.key().map(str::to_owned),
            properties,
        ),
    );
    Ok(json!({"n": order.n, "accepted": true}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_producer_following_the_wire_format_is_run_with_stable_ids_and_gets_its_mqtt5_reply(
) {
    let Some((py, mosquitto, broker)) = setup().await else {
        return;
    };
    let running = worker(&broker, take_order::task());
    // The worker's subscription must exist before anything is published (MQTT keeps no history).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages = json!([
        {"payload": "{\"n\": 1}", "user_properties": [
            [props::MESSAGE_ID, "py-order-1"], ["wr-mqtt-key", "customer-7"], ["tenant", "acme"]]},
        {"payload": "{\"n\": 2}", "user_properties": [["tenant", "acme"]]},
        {"payload": "{\"n\": 3}"},
    ]);
    let published = python(
        &py,
        &mosquitto,
        "publish",
        &["interop/mqtt/orders".to_owned(), messages.to_string()],
    )
    .await;
    assert_eq!(published["published"], 3);
    let reply = python(
        &py,
        &mosquitto,
        "request",
        &[
            "interop/mqtt/orders".to_owned(),
            "{\"n\": 4}".to_owned(),
            "00c0ffee".to_owned(),
        ],
    )
    .await;
    assert!(wait_until(Duration::from_secs(10), || lock(&SEEN).len() == 4).await);
    let report = running.stop().await;
    let seen = lock(&SEEN).clone();
    println!("seen: {seen:?}\nreply: {reply}");

    let (id, key, properties) = &seen[&1];
    assert_eq!(id, "py-order-1", "the producer's id is kept");
    assert_eq!(
        key.as_deref(),
        Some("customer-7"),
        "the key travels in wr-mqtt-key"
    );
    assert_eq!(properties.get("tenant").map(String::as_str), Some("acme"));
    let derived: BTreeSet<&str> = [2, 3, 4].iter().map(|n| seen[n].0.as_str()).collect();
    assert_eq!(
        derived.len(),
        3,
        "distinct messages get distinct ids: {derived:?}"
    );
    assert!(
        derived
            .iter()
            .all(|id| id.starts_with("mqtt-") && id.len() == 37),
        "{derived:?}"
    );

    let replies = reply["replies"].as_array().expect("replies");
    assert_eq!(replies.len(), 1, "one reply on the response topic: {reply}");
    assert_eq!(replies[0]["topic"], reply["response_topic"]);
    assert_eq!(replies[0]["correlation"], "00c0ffee");
    let result: Value = serde_json::from_str(replies[0]["payload"].as_str().expect("text"))
        .expect("the result is JSON");
    assert_eq!(result, json!({"n": 4, "accepted": true}));
    assert_eq!(report.task("take_order").map(|t| t.succeeded), Some(4));
}

// ---------------------------------------------------------------------------------------------
// Dead letters with nobody subscribed

#[pulsar_io_task(topic = "q1/interop/mqtt/poison", max_retries = 0)]
async fn refuse(order: Order) -> Result<(), TaskError> {
    Err(TaskError::permanent(format!(
        "order {} is refused",
        order.n
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_with_no_reader_present_is_settled_and_kept_for_dlq_and_a_plain_client() {
    let Some((py, mosquitto, broker)) = setup().await else {
        return;
    };
    let metrics = Metrics::new("mqtt-interop");
    let running = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .tasks([refuse::task()])
            .consumer_name("mqtt-interop")
            .metrics(metrics.clone()),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in [1, 2] {
        refuse::enqueue(&*broker, &Order { n })
            .await
            .expect("enqueue");
    }
    // Settled (counted only once the broker confirmed the copy), although no DLQ reader runs.
    let dead_letters = || {
        metric_sum(
            &metrics.encode(),
            "worker_dead_letters_total",
            &["task=\"refuse\"", "reason=\"permanent_error\""],
        )
    };
    let settled = wait_until(Duration::from_secs(20), || dead_letters() >= 2.0).await;
    let report = running.stop().await;
    assert!(settled, "the dead letters were not settled: {report:?}");
    assert_eq!(report.task("refuse").map(|t| t.dead_lettered), Some(2));

    let dlq = Topic::parse("q1/interop/mqtt/poison-dlq").expect("topic");
    let records = dead_letters::inspect(&*broker, &dlq, 10)
        .await
        .expect("inspect");
    assert_eq!(records.len(), 2, "the dlq command reads both copies");
    assert!(records
        .iter()
        .all(|r| r.reason == Some(DeadLetterReason::PermanentError)));

    // A plain MQTT client resumes the reader's session and gets them too.
    let read = python(
        &py,
        &mosquitto,
        "resume",
        &["wr-c~wr-dlq~wr-dlq-reader".to_owned(), "2".to_owned()],
    )
    .await;
    let read = read.as_array().expect("messages");
    println!("a plain client read: {read:?}");
    assert_eq!(read.len(), 2, "{read:?}");
    for message in read {
        // Copies that `dlq` listed (and gave back) come on the inspect group's redelivery topic.
        let topic = message["topic"].as_str().expect("topic");
        assert!(topic.starts_with("interop/mqtt/poison-dlq"), "{topic}");
        let reason = message["user_properties"]
            .as_array()
            .expect("user properties")
            .iter()
            .find(|p| p[0] == props::DLQ_REASON)
            .map(|p| p[1].clone());
        assert_eq!(reason, Some(json!("permanent_error")));
    }
}

// ---------------------------------------------------------------------------------------------
// A restart with the default consumer name

#[test]
fn a_worker_restarted_with_default_settings_gets_what_was_published_while_it_was_down() {
    let Some(mosquitto) = Mosquitto::start() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("mqtt-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let ledger = dir.join("ledger");
    let metrics_port = free_port();
    let start = || {
        // No --consumer-name: the default must come back the same after the restart.
        ChildGuard::spawn(
            Command::new(example_binary("scale_worker"))
                .args(["--backend", "mqtt", "--mqtt-host", mosquitto.host()])
                .args(["--mqtt-port", &mosquitto.port().to_string()])
                .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
                .env("SCALE_WORKER_LEDGER", &ledger)
                .env("RUST_LOG", "warn"),
        )
    };
    let ready = |limit: Duration| {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if http_get(metrics_port, "/readyz").is_some_and(|(status, _)| status == 200) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };
    let mut first = start();
    assert!(ready(Duration::from_secs(20)), "the worker became ready");
    first.0.kill().expect("SIGKILL");
    let _ = first.0.wait();

    const COUNT: usize = 200;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let broker = connect(&mosquitto).await;
        let topic = Topic::parse("q1/demo/scale/events").expect("topic");
        for seq in 0..COUNT {
            let message = Message::new(json!({"seq": seq, "work_ms": 0}).to_string())
                .with_property(props::MESSAGE_ID, format!("down-{seq:03}"));
            broker.publish(&topic, message).await.expect("publish");
        }
    });

    let mut second = start();
    let deadline = Instant::now() + Duration::from_secs(30);
    let handled = loop {
        let lines = std::fs::read_to_string(&ledger).unwrap_or_default();
        let handled: BTreeSet<String> = lines.lines().map(str::to_owned).collect();
        if handled.len() >= COUNT || Instant::now() > deadline {
            break handled;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    second.terminate();
    let status = second.wait_for_exit(Duration::from_secs(15));
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "restarted worker handled {} of the {COUNT} messages published while it was down",
        handled.len()
    );
    assert_eq!(
        handled.len(),
        COUNT,
        "messages stranded: {}",
        mosquitto.log()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "stopped with {status:?}"
    );
}
