//! The worker against the official Python client of Apache Pulsar (`pulsar-client` from PyPI, in
//! the tests' own venv, see [`integration_tests::python`]) on a real Pulsar standalone:
//! - messages a Python producer sends, plain and batched, with no `wr-*` property at all, run, each
//!   with a stable message id of its own that a retry keeps;
//! - a permanent failure and an undecodable payload land in the DLQ, where a Python consumer reads
//!   the original payload, key and properties with every provenance property;
//! - a Python requester that sets `wr-reply-to` reads the handler's result from that topic, with
//!   the message id the worker saw as correlation.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use integration_tests::brokers::PulsarStandalone;
use integration_tests::python::{python_with, run_script};
use integration_tests::worker_support::RunningWorker;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use worker_runtime::broker::pulsar::{PulsarBroker, PulsarOptions};
use worker_runtime::prelude::*;
use worker_runtime::props;
use worker_runtime::worker::{Worker, WorkerReport};

/// What the Python side needs from PyPI.
const PACKAGES: &[&str] = &["pulsar-client"];
/// The worker's consumer name, which DLQ copies carry.
const CONSUMER: &str = "python-interop";
/// How long one run of the Python client may take (its own receive timeout is 30 s).
const SCRIPT_LIMIT: Duration = Duration::from_secs(90);

/// The Python side, one command per run:
/// - `produce URL TOPIC MESSAGES [batched]`: prints the position of each message sent;
/// - `consume URL TOPIC COUNT`: prints up to COUNT messages read from the earliest on;
/// - `request URL TOPIC MESSAGES REPLY_TOPIC COUNT`: subscribes to REPLY_TOPIC, sends, and prints
///   the positions sent and up to COUNT replies.
///
/// MESSAGES is a JSON list of `{"payload": text, "properties": {..}, "key": text}`; a position is
/// `[ledger, entry, partition, batch_index]`; a message read is `{"payload", "properties", "key"}`.
const CLIENT: &str = r#"
import json, sys, time, uuid
import pulsar

def send(client, topic, messages, batched=False):
    producer = client.create_producer(topic, send_timeout_millis=10000, batching_enabled=batched,
                                      batching_max_publish_delay_ms=100)
    receipts = [None] * len(messages)
    def keep(i):
        return lambda result, message_id: receipts.__setitem__(i, (result, message_id))
    for i, m in enumerate(messages):
        producer.send_async(m["payload"].encode(), keep(i), properties=m.get("properties", {}),
                            partition_key=m.get("key"))
    producer.flush()
    producer.close()
    assert all(r and r[0] == pulsar.Result.Ok for r in receipts), receipts
    return [[i.ledger_id(), i.entry_id(), i.partition(), i.batch_index()] for _, i in receipts]

def subscribe(client, topic):
    return client.subscribe(topic, f"python-{uuid.uuid4()}",
                            consumer_type=pulsar.ConsumerType.Shared,
                            initial_position=pulsar.InitialPosition.Earliest)

def receive(consumer, count, seconds=30):
    read, deadline = [], time.monotonic() + seconds
    while len(read) < count and time.monotonic() < deadline:
        try:
            message = consumer.receive(timeout_millis=max(1, int((deadline - time.monotonic()) * 1000)))
        except pulsar.Timeout:
            break
        consumer.acknowledge(message)
        read.append({"payload": message.data().decode("utf-8", "replace"),
                     "properties": message.properties(), "key": message.partition_key()})
    return read

command, url, topic = sys.argv[1:4]
client = pulsar.Client(url, operation_timeout_seconds=10, connection_timeout_ms=10000,
                       logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
if command == "produce":
    out = send(client, topic, json.loads(sys.argv[4]), batched=sys.argv[5:] == ["batched"])
elif command == "consume":
    out = receive(subscribe(client, topic), int(sys.argv[4]))
elif command == "request":
    replies = subscribe(client, sys.argv[5])
    out = {"sent": send(client, topic, json.loads(sys.argv[4])),
           "replies": receive(replies, int(sys.argv[6]))}
client.close()
print(json.dumps(out))
"#;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The venv's Python, and a client of the shared standalone with the namespaces of `topics`
/// created; `None` to skip.
async fn setup(topics: &[&str]) -> Option<(PathBuf, Arc<dyn Broker>)> {
    let python = tokio::task::spawn_blocking(|| python_with(PACKAGES))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    let standalone = PulsarStandalone::shared()?;
    for topic in topics {
        standalone.ensure_namespace_of(topic);
    }
    let mut options = PulsarOptions::new(standalone.url());
    options.operation_timeout = Duration::from_secs(10);
    options.ack_group_time = Duration::from_millis(50);
    let broker = PulsarBroker::connect(options).await.expect("connect");
    Some((python, Arc::new(broker)))
}

/// Runs `command` of the Python client as `command URL topic rest..` and parses what it printed.
async fn python(python: &Path, command: &str, topic: &str, rest: &[String]) -> Value {
    let standalone = PulsarStandalone::shared().expect("the broker is up");
    let mut args = vec![command.to_owned(), standalone.url(), topic.to_owned()];
    args.extend_from_slice(rest);
    let python = python.to_owned();
    let stdout = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_script(&python, CLIENT, &args, SCRIPT_LIMIT)
    })
    .await
    .expect("the script's thread")
    .unwrap_or_else(|why| panic!("python `{command}` on {topic}: {why}"));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("python printed {stdout:?}: {e}"))
}

/// The `ledger:entry:partition:batch_index:` a stable id made from a broker position starts with
/// (the Pulsar backend's text form of an id; the batch size follows).
fn id_prefix(position: &Value) -> String {
    let part = |i: usize| position[i].as_i64().expect("a number").to_string();
    format!("{}:{}:{}:{}:", part(0), part(1), part(2), part(3))
}

fn worker(broker: &Arc<dyn Broker>, task: TaskDefinition) -> RunningWorker {
    RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(task)
            .consumer_name(CONSUMER),
    )
}

async fn stop(running: RunningWorker) -> WorkerReport {
    tokio::time::timeout(Duration::from_secs(30), running.stop())
        .await
        .expect("the worker stops within 30 s")
}

/// Waits until `done` holds or `limit` passes.
async fn wait_until(limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A property of a message the Python client read.
fn prop<'a>(message: &'a Value, name: &str) -> Option<&'a str> {
    message["properties"][name].as_str()
}

// ---------------------------------------------------------------------------------------------
// (a) Foreign messages run

#[derive(Debug, Deserialize)]
struct Greeting {
    name: String,
    #[serde(default)]
    fail_once: bool,
}

/// One attempt the handler saw.
#[derive(Clone, Debug)]
struct Seen {
    name: String,
    attempt: u32,
    message_id: String,
    key: Option<String>,
    properties: BTreeMap<String, String>,
}

static GREETED: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

#[pulsar_io_task(
    topic = "persistent://test/python-interop/greet",
    retry_delay = "200ms",
    jitter = 0.0
)]
async fn greet(greeting: Greeting, ctx: TaskContext) -> Result<(), TaskError> {
    lock(&GREETED).push(Seen {
        name: greeting.name.clone(),
        attempt: ctx.attempt(),
        message_id: ctx.message_id().to_owned(),
        key: ctx.key().map(str::to_owned),
        properties: ctx
            .properties()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    });
    if greeting.fail_once && ctx.attempt() == 1 {
        return Err(TaskError::retryable("the first attempt fails"));
    }
    Ok(())
}

static DOCUMENTED: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

#[pulsar_io_task(topic = "persistent://test/python-interop/documented")]
async fn documented(greeting: Greeting, ctx: TaskContext) -> Result<(), TaskError> {
    lock(&DOCUMENTED).push(Seen {
        name: greeting.name,
        attempt: ctx.attempt(),
        message_id: ctx.message_id().to_owned(),
        key: ctx.key().map(str::to_owned),
        properties: ctx
            .properties()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    });
    Ok(())
}

/// A Python producer that writes exactly what `docs/wire-format.md` shows: JSON payload,
/// `wr-message-id` as a message property, the key as the partition key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_producer_following_the_wire_format_keeps_its_id_key_and_properties() {
    let topic = "persistent://test/python-interop/documented";
    let Some((py, broker)) = setup(&[topic]).await else {
        return;
    };
    let running = worker(&broker, documented::task());
    let messages = json!([{
        "payload": r#"{"name": "documented"}"#,
        "properties": {"wr-message-id": "py-doc-1", "tenant": "acme"},
        "key": "k-doc",
    }]);
    python(
        &py,
        "produce",
        topic,
        &[messages.to_string(), String::new()],
    )
    .await;
    wait_until(Duration::from_secs(30), || !lock(&DOCUMENTED).is_empty()).await;
    let report = stop(running).await;
    let seen = lock(&DOCUMENTED).clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].name, "documented");
    assert_eq!(seen[0].message_id, "py-doc-1");
    assert_eq!(seen[0].key.as_deref(), Some("k-doc"));
    assert_eq!(
        seen[0].properties.get("tenant").map(String::as_str),
        Some("acme")
    );
    assert_eq!(report.task("documented").map(|t| t.succeeded), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_a_python_producer_without_wr_properties_run() {
    let topic = "persistent://test/python-interop/greet";
    let Some((py, broker)) = setup(&[topic]).await else {
        return;
    };
    let running = worker(&broker, greet::task());
    let plain = json!([
        {"payload": r#"{"name": "ada"}"#},
        {"payload": r#"{"name": "grace", "fail_once": true}"#},
        {"payload": r#"{"name": "linus"}"#, "properties": {"origin": "python"}, "key": "customer-42"},
    ]);
    let batch = json!([
        {"payload": r#"{"name": "b1"}"#},
        {"payload": r#"{"name": "b2"}"#},
        {"payload": r#"{"name": "b3"}"#},
    ]);
    let mut positions = HashMap::new();
    for (names, messages, mode) in [
        (["ada", "grace", "linus"], plain, ""),
        (["b1", "b2", "b3"], batch, "batched"),
    ] {
        let sent = python(&py, "produce", topic, &[messages.to_string(), mode.into()]).await;
        for (name, position) in names.into_iter().zip(sent.as_array().expect("positions")) {
            positions.insert(name.to_owned(), position.clone());
        }
    }
    // Six messages, grace's twice.
    wait_until(Duration::from_secs(30), || lock(&GREETED).len() >= 7).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = stop(running).await;
    let seen = lock(&GREETED).clone();

    let attempts = |name: &str| -> Vec<Seen> {
        let mut of: Vec<Seen> = seen.iter().filter(|s| s.name == name).cloned().collect();
        of.sort_by_key(|s| s.attempt);
        of
    };
    for (name, position) in &positions {
        let runs = attempts(name);
        let expected: &[u32] = if name == "grace" { &[1, 2] } else { &[1] };
        assert_eq!(
            runs.iter().map(|s| s.attempt).collect::<Vec<_>>(),
            expected,
            "{name}: {seen:?}"
        );
        let id = &runs[0].message_id;
        assert!(!id.is_empty(), "{name} has no stable message id");
        assert!(
            id.starts_with(&id_prefix(position)),
            "{name}: the stable id {id} is not the broker's id of what Python sent ({position})"
        );
        assert!(
            runs.iter().all(|s| &s.message_id == id),
            "{name}: the stable id changed across attempts: {runs:?}"
        );
    }
    let mut ids: Vec<String> = positions
        .keys()
        .map(|name| attempts(name)[0].message_id.clone())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 6, "each message has an id of its own: {ids:?}");

    let linus = &attempts("linus")[0];
    assert_eq!(linus.key.as_deref(), Some("customer-42"));
    assert_eq!(
        linus.properties,
        BTreeMap::from([("origin".to_owned(), "python".to_owned())])
    );
    let ada = &attempts("ada")[0];
    assert!(ada.properties.is_empty() && ada.key.is_none(), "{ada:?}");

    let task = report.task("greet").expect("report");
    assert_eq!(
        (task.succeeded, task.retried, task.dead_lettered),
        (6, 1, 0)
    );
}

// ---------------------------------------------------------------------------------------------
// (b) Dead letters, read by Python

#[derive(Debug, Deserialize)]
struct Order {
    id: u32,
    #[serde(default)]
    refuse: bool,
}

#[pulsar_io_task(topic = "persistent://test/python-interop/orders")]
async fn order(order: Order) -> Result<u32, TaskError> {
    if order.refuse {
        return Err(TaskError::permanent(format!(
            "order {} is refused",
            order.id
        )));
    }
    Ok(order.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_consumer_reads_dead_letters_with_their_provenance() {
    let topic = "persistent://test/python-interop/orders";
    let dlq = "persistent://test/python-interop/orders-dlq";
    let Some((py, broker)) = setup(&[topic]).await else {
        return;
    };
    let running = worker(&broker, order::task());
    let refused = r#"{"id": 1, "refuse": true}"#;
    let undecodable = r#"{"id": "seven""#;
    let messages = json!([
        {"payload": refused, "properties": {"origin": "python"}, "key": "customer-42"},
        {"payload": undecodable},
        {"payload": r#"{"id": 2}"#},
    ]);
    let sent = python(&py, "produce", topic, &[messages.to_string()]).await;
    let copies = python(&py, "consume", dlq, &["2".to_owned()]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = stop(running).await;

    let copies = copies.as_array().expect("copies");
    assert_eq!(copies.len(), 2, "two dead letters: {copies:?}");
    let copy_of = |payload: &str| {
        copies
            .iter()
            .find(|c| c["payload"] == payload)
            .unwrap_or_else(|| panic!("no DLQ copy of {payload}: {copies:?}"))
    };
    for (payload, position, reason, error) in [
        (refused, &sent[0], "permanent_error", "order 1 is refused"),
        (
            undecodable,
            &sent[1],
            "decode_error",
            "payload is not a valid `Order`",
        ),
    ] {
        let copy = copy_of(payload);
        let p = |name| prop(copy, name);
        assert_eq!(p(props::DLQ_REASON), Some(reason), "{copy}");
        assert!(
            p(props::DLQ_ERROR).is_some_and(|e| e.contains(error)),
            "{copy}"
        );
        assert_eq!(p(props::DLQ_ATTEMPTS), Some("1"), "{copy}");
        assert_eq!(p(props::DLQ_ORIGINAL_TOPIC), Some(topic), "{copy}");
        assert!(
            p(props::DLQ_ORIGINAL_MESSAGE_ID)
                .is_some_and(|id| id.starts_with(&id_prefix(position))),
            "the original id is the broker's id of what Python sent ({position}): {copy}"
        );
        assert_eq!(p(props::DLQ_TASK), Some("order"), "{copy}");
        assert_eq!(p(props::DLQ_CONSUMER), Some(CONSUMER), "{copy}");
        assert!(
            p(props::DLQ_TIME).is_some_and(|t| t.len() == 24 && t.ends_with('Z')),
            "RFC 3339 in UTC with milliseconds: {copy}"
        );
        // The stable id the handler saw travels too, so that a replay is the same message:
        // for a foreign message dead-lettered at its first attempt, the broker's id of it.
        assert_eq!(
            p(props::MESSAGE_ID),
            p(props::DLQ_ORIGINAL_MESSAGE_ID),
            "{copy}"
        );
    }
    let refused_copy = copy_of(refused);
    assert_eq!(
        prop(refused_copy, "origin"),
        Some("python"),
        "{refused_copy}"
    );
    assert_eq!(refused_copy["key"], "customer-42", "{refused_copy}");

    let task = report.task("order").expect("report");
    assert_eq!((task.succeeded, task.dead_lettered), (1, 2));
}

// ---------------------------------------------------------------------------------------------
// (c) Results for a Python requester

#[derive(Debug, Deserialize)]
struct Sum {
    a: i64,
    b: i64,
}

#[derive(Debug, Serialize)]
struct Total {
    sum: i64,
}

/// The stable message id the handler saw, by sum.
static ADDED: Mutex<Vec<(i64, String)>> = Mutex::new(Vec::new());

#[pulsar_io_task(topic = "persistent://test/python-interop/sums")]
async fn add(sum: Sum, ctx: TaskContext) -> Result<Total, TaskError> {
    let total = sum.a + sum.b;
    lock(&ADDED).push((total, ctx.message_id().to_owned()));
    Ok(Total { sum: total })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_requester_reads_the_result_from_its_reply_topic() {
    let topic = "persistent://test/python-interop/sums";
    let results = "persistent://test/python-interop/sum-results";
    let Some((py, broker)) = setup(&[topic, results]).await else {
        return;
    };
    let running = worker(&broker, add::task());
    // The first leaves the message id to the worker; the second brings its own.
    let requests = json!([
        {"payload": r#"{"a": 2, "b": 3}"#, "properties": {"wr-reply-to": results}},
        {"payload": r#"{"a": 40, "b": 2}"#,
         "properties": {"wr-reply-to": results, "wr-message-id": "python-request-7"}},
    ]);
    let answer = python(
        &py,
        "request",
        topic,
        &[requests.to_string(), results.to_owned(), "2".to_owned()],
    )
    .await;
    let report = stop(running).await;

    let replies = answer["replies"].as_array().expect("replies");
    assert_eq!(replies.len(), 2, "two results: {answer}");
    let reply_for = |sum: i64| {
        replies
            .iter()
            .find(|r| {
                serde_json::from_str::<Value>(r["payload"].as_str().unwrap_or("")).ok()
                    == Some(json!({"sum": sum}))
            })
            .unwrap_or_else(|| panic!("no result {{\"sum\": {sum}}}: {replies:?}"))
    };
    let added = lock(&ADDED).clone();
    let seen_id = |sum: i64| {
        added
            .iter()
            .find(|(s, _)| *s == sum)
            .map(|(_, id)| id.clone())
    };

    let first = reply_for(5);
    let first_id = seen_id(5).expect("the handler ran for 2 + 3");
    assert!(
        first_id.starts_with(&id_prefix(&answer["sent"][0])),
        "{first_id}"
    );
    assert_eq!(
        prop(first, props::MESSAGE_ID),
        Some(first_id.as_str()),
        "{first}"
    );
    assert_eq!(prop(first, props::TASK), Some("add"), "{first}");

    let second = reply_for(42);
    assert_eq!(seen_id(42).as_deref(), Some("python-request-7"));
    assert_eq!(
        prop(second, props::MESSAGE_ID),
        Some("python-request-7"),
        "{second}"
    );
    assert_eq!(prop(second, props::TASK), Some("add"), "{second}");

    let task = report.task("add").expect("report");
    assert_eq!((task.succeeded, task.dead_lettered), (2, 0));
}
