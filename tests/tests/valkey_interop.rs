//! The worker on a real `redis-server` against software nobody here wrote (`redis`, the redis-py
//! client from PyPI, in the tests' own venv), and across a server restart:
//! - a Python producer that writes stream entries exactly as `docs/wire-format.md` says is run,
//!   its properties kept (JSON numbers and booleans as their text), a delayed entry written to the
//!   sorted set as documented runs once due, and a `props` field that is no object of scalars is
//!   dead-lettered as `decode_error` naming the field, never run;
//! - a Python consumer reads the dead-letter stream: provenance, the verified principal, and no
//!   sender token;
//! - an ack that meets a restarting server is sent again once it is back, instead of being dropped
//!   into a redelivery and a second run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use integration_tests::brokers::RedisServer;
use integration_tests::processes::metric_sum;
use integration_tests::python::{python_with, run_script};
use integration_tests::worker_support::RunningWorker;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use worker_runtime::auth::{Hs256Signer, Hs256Verifier, Secret};
use worker_runtime::broker::valkey::{ValkeyBroker, ValkeyOptions};
use worker_runtime::credits::{CreditLedger, MemoryCreditLedger};
use worker_runtime::metrics::Metrics;
use worker_runtime::prelude::*;
use worker_runtime::props;
use worker_runtime::worker::{Worker, WorkerBuilder};

const PACKAGES: &[&str] = &["redis>=5"];
const SCRIPT_LIMIT: Duration = Duration::from_secs(60);

/// The Python side, `URL COMMAND ...`:
/// - `xadd STREAM FIELDS`: one `XADD STREAM * field value ...` per JSON object in FIELDS;
/// - `zadd KEY DUE_MS MEMBER`: adds one delayed member;
/// - `read STREAM COUNT`: waits (up to 20 s) until STREAM holds COUNT entries, prints them as
///   `{"id", "fields"}` with the `props` field parsed.
const CLIENT: &str = r#"
import json, sys, time
import redis

url, command = sys.argv[1], sys.argv[2]
r = redis.Redis.from_url(url)
if command == "xadd":
    ids = [r.xadd(sys.argv[3], fields).decode() for fields in json.loads(sys.argv[4])]
    print(json.dumps(ids))
elif command == "zadd":
    print(json.dumps(r.zadd(sys.argv[3], {sys.argv[5]: int(sys.argv[4])})))
elif command == "read":
    deadline = time.monotonic() + 20
    while r.xlen(sys.argv[3]) < int(sys.argv[4]) and time.monotonic() < deadline:
        time.sleep(0.05)
    out = []
    for entry_id, fields in r.xrange(sys.argv[3]):
        fields = {k.decode(): v.decode() for k, v in fields.items()}
        if "props" in fields:
            fields["props"] = json.loads(fields["props"])
        out.append({"id": entry_id.decode(), "fields": fields})
    print(json.dumps(out))
"#;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn options(server: &RedisServer) -> ValkeyOptions {
    ValkeyOptions {
        block_timeout: Duration::from_millis(200),
        operation_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        delayed_poll_interval: Duration::from_millis(50),
        ..ValkeyOptions::new(server.url())
    }
}

async fn connect(server: &RedisServer) -> Arc<dyn Broker> {
    Arc::new(
        ValkeyBroker::connect(options(server))
            .await
            .expect("connect to the test's redis-server"),
    )
}

async fn python(python: &Path, server: &RedisServer, command: &str, rest: &[String]) -> Value {
    let mut args = vec![server.url(), command.to_owned()];
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

async fn python_venv() -> Option<PathBuf> {
    tokio::task::spawn_blocking(|| python_with(PACKAGES))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

fn builder(broker: &Arc<dyn Broker>, task: TaskDefinition) -> WorkerBuilder {
    Worker::builder()
        .broker(broker.clone())
        .tasks([task])
        .consumer_name("valkey-interop")
        .shutdown_grace(Duration::from_secs(5))
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
// A Python producer

#[derive(Debug, Serialize, Deserialize)]
struct Reading {
    n: u32,
}

type Seen = BTreeMap<u32, (String, Option<String>, BTreeMap<String, String>)>;
static SEEN: Mutex<Seen> = Mutex::new(BTreeMap::new());

#[pulsar_io_task(topic = "q1/interop/valkey/readings", max_retries = 0)]
async fn record_reading(reading: Reading, ctx: TaskContext) -> Result<(), TaskError> {
    let properties = ctx
        .properties()
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    lock(&SEEN).insert(
        reading.n,
        (
            ctx.message_id().to_owned(),
            ctx.key().map(str::to_owned),
            properties,
        ),
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_producer_following_the_wire_format_is_run_and_bad_properties_are_dead_lettered() {
    let Some(py) = python_venv().await else {
        return;
    };
    let Some(server) = RedisServer::start() else {
        return;
    };
    let broker = connect(&server).await;
    let running = RunningWorker::start(builder(&broker, record_reading::task()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stream = "wr:{interop/valkey/readings}";
    let entries = json!([
        {"payload": "{\"n\": 1}", "key": "sensor-7",
         "props": "{\"wr-message-id\": \"py-1\", \"count\": 5, \"ok\": true, \"site\": \"north\"}"},
        {"payload": "{\"n\": 2}"},
        {"payload": "{\"n\": 3}", "props": "{\"tags\": [\"a\", \"b\"], \"wr-message-id\": \"py-3\"}"},
    ]);
    let ids = python(
        &py,
        &server,
        "xadd",
        &[stream.to_owned(), entries.to_string()],
    )
    .await;
    let entry_two = ids[1].as_str().expect("an entry id").to_owned();
    // A delayed message, written to the sorted set as the wire format says.
    let due = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        + 500;
    let payload = "{\"n\": 4}";
    let member = format!("{}7:payload{}:{payload}", "d".repeat(32), payload.len());
    python(
        &py,
        &server,
        "zadd",
        &[format!("{stream}:delayed"), due.to_string(), member],
    )
    .await;

    assert!(wait_until(Duration::from_secs(10), || lock(&SEEN).len() == 3).await);
    let dead = python(
        &py,
        &server,
        "read",
        &[
            "wr:{interop/valkey/readings-dlq}".to_owned(),
            "1".to_owned(),
        ],
    )
    .await;
    let report = running.stop().await;
    let seen = lock(&SEEN).clone();
    println!("seen: {seen:?}\ndead: {dead}");

    let (id, key, properties) = &seen[&1];
    assert_eq!(id, "py-1");
    assert_eq!(key.as_deref(), Some("sensor-7"));
    assert_eq!(properties.get("count").map(String::as_str), Some("5"));
    assert_eq!(properties.get("ok").map(String::as_str), Some("true"));
    assert_eq!(properties.get("site").map(String::as_str), Some("north"));
    assert_eq!(
        seen[&2].0, entry_two,
        "without an id, the entry id is the stable id"
    );
    assert!(seen.contains_key(&4), "the delayed entry ran once due");
    assert!(
        !seen.contains_key(&3),
        "a message with unreadable properties never runs"
    );

    let dead = dead.as_array().expect("entries");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let copy = &dead[0]["fields"];
    assert_eq!(copy["payload"], "{\"n\": 3}");
    assert_eq!(copy["props"][props::DLQ_REASON], "decode_error");
    assert_eq!(copy["props"][props::MESSAGE_ID], "py-3");
    let error = copy["props"][props::DLQ_ERROR].as_str().expect("an error");
    assert!(
        error.contains("field `props`") && error.contains("`tags` is an array"),
        "{error}"
    );
    assert_eq!(copy["props"]["tags"], "[\"a\",\"b\"]", "nothing dropped");
    assert_eq!(report.task("record_reading").map(|t| t.succeeded), Some(3));
}

// ---------------------------------------------------------------------------------------------
// Dead-letter copies keep no token

const KEY: &[u8] = b"valkey-interop-signing-key-32-bytes!";

#[pulsar_db_task(
    topic = "q1/interop/valkey/writes",
    permission_roles = ["db_writer"],
    credit_type = "db_credits",
    credit_amount = 1,
    max_retries = 0
)]
async fn failing_write(_reading: Reading) -> Result<(), TaskError> {
    Err(TaskError::permanent("the database refused the write"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_consumer_reads_dead_letters_with_the_principal_and_without_the_token() {
    let Some(py) = python_venv().await else {
        return;
    };
    let Some(server) = RedisServer::start() else {
        return;
    };
    let broker = connect(&server).await;
    let ledger = Arc::new(MemoryCreditLedger::new());
    ledger.set_balance("alice", "db_credits", 10);
    let running = RunningWorker::start(
        builder(&broker, failing_write::task())
            .verifier(Arc::new(Hs256Verifier::new(Secret::new(KEY.to_vec()))))
            .credit_ledger(ledger.clone()),
    );
    let token = Hs256Signer::new(Secret::new(KEY.to_vec()))
        .sign("alice", &["db_writer"], Duration::from_secs(600))
        .expect("sign");
    failing_write::message(&Reading { n: 1 })
        .auth_token(token.clone())
        .send(&*broker)
        .await
        .expect("enqueue");
    let dead = python(
        &py,
        &server,
        "read",
        &["wr:{interop/valkey/writes-dlq}".to_owned(), "1".to_owned()],
    )
    .await;
    running.stop().await;
    let dead = dead.as_array().expect("entries");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let copy = &dead[0]["fields"]["props"];
    assert_eq!(copy[props::DLQ_REASON], "permanent_error");
    assert_eq!(copy[props::DLQ_PRINCIPAL], "alice");
    assert!(copy.get(props::AUTH_TOKEN).is_none(), "{copy}");
    assert!(
        !dead[0].to_string().contains(&token),
        "the token is nowhere in the copy"
    );
    assert_eq!(
        ledger
            .balance("alice", "db_credits")
            .await
            .expect("balance"),
        10,
        "refunded"
    );
}

// ---------------------------------------------------------------------------------------------
// Acks across a server restart

static RUNS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

#[pulsar_io_task(topic = "q1/interop/valkey/slow", timeout = "1m")]
async fn slow_job(reading: Reading) -> Result<(), TaskError> {
    lock(&RUNS).push(reading.n);
    // Long enough for the test to kill the server and start it again meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_that_meets_a_server_restart_is_sent_again_not_dropped() {
    let Some(mut server) = RedisServer::start_fsync_always() else {
        return;
    };
    let broker = connect(&server).await;
    let metrics = Metrics::new("valkey-interop");
    let running = RunningWorker::start(builder(&broker, slow_job::task()).metrics(metrics.clone()));
    slow_job::enqueue(&*broker, &Reading { n: 1 })
        .await
        .expect("enqueue");
    assert!(wait_until(Duration::from_secs(10), || lock(&RUNS).len() == 1).await);
    // The handler runs: the server goes away under it, and comes back a moment later.
    server.kill();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.restart();
    let pending = || {
        server
            .cli(&["XPENDING", "wr:{interop/valkey/slow}", "slow_job"])
            .unwrap_or_default()
    };
    let acked = wait_until(Duration::from_secs(20), || {
        pending().lines().next().map(str::trim) == Some("0")
    })
    .await;
    // Longer than the visibility timeout would be, had the entry stayed pending.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = running.stop().await;
    let dropped = metric_sum(
        &metrics.encode(),
        "worker_acks_dropped_total",
        &["task=\"slow_job\""],
    );
    println!(
        "runs: {:?}, pending: {:?}, acks dropped: {dropped}",
        lock(&RUNS),
        pending()
    );
    assert!(acked, "the entry is still pending: {}", pending());
    assert_eq!(dropped, 0.0);
    assert_eq!(*lock(&RUNS), [1], "the message ran once");
    assert_eq!(report.task("slow_job").map(|t| t.succeeded), Some(1));
}
