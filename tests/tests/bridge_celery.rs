//! The bridge between Celery and Rust tasks, against real Celery 5 (from PyPI, in the tests' venv)
//! on a real `redis-server`:
//! - a Python service's `send_task(...)` and `.delay(...)` calls go through a Celery-source route
//!   and are run by a Rust handler, with Celery's task id as the stable message id;
//! - a message published on the Rust side goes through a Celery-target route and a real
//!   `celery worker` executes it: its result is in Celery's result backend;
//! - a Python service `LPUSH`es JSON to a plain list, a list-source route forwards it, and a
//!   worker runs it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use integration_tests::brokers::RedisServer;
use integration_tests::processes::ChildGuard;
use integration_tests::python::{python_with, run_script};
use integration_tests::worker_support::RunningWorker;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use worker_runtime::bridge::{Bridge, BridgeConfig};
use worker_runtime::broker::valkey::{ValkeyBroker, ValkeyOptions};
use worker_runtime::celery::Call;
use worker_runtime::metrics::Metrics;
use worker_runtime::prelude::*;
use worker_runtime::worker::{CancellationToken, Worker};
use worker_runtime::{props, Message, Topic};

const PACKAGES: &[&str] = &["celery[redis]>=5.3", "redis>=5"];
const SCRIPT_LIMIT: Duration = Duration::from_secs(90);

/// The Celery app both sides of the test use: `shop.tasks.add` runs in Python; `rust.tasks.greet`
/// is a stub whose calls the bridge takes to a Rust handler.
const TASKS_PY: &str = r#"
import os
from celery import Celery

url = os.environ["TEST_REDIS_URL"]
app = Celery("tasks", broker=url, backend=url)
app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json",
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
                # The calls of tasks that run in Rust go to the queue the bridge reads.
                task_routes={"rust.tasks.*": {"queue": "rust"}})

@app.task(name="shop.tasks.add")
def add(x, y, scale=1):
    return (x + y) * scale

@app.task(name="rust.tasks.greet")
def greet(name, punctuation="."):
    raise NotImplementedError("runs in Rust, through the bridge")
"#;

/// `URL send` sends two calls of the Rust task (one with `send_task`, one with `.delay`) to the
/// `rust` queue and prints their ids; `URL result ID` waits for a Celery result and prints it;
/// `URL lpush LIST JSON...` pushes plain items.
const CLIENT: &str = r#"
import json, os, sys
sys.path.insert(0, sys.argv[1])
os.environ["TEST_REDIS_URL"] = sys.argv[2]
import redis
from tasks import app, greet

url, command = sys.argv[2], sys.argv[3]
if command == "send":
    first = app.send_task("rust.tasks.greet", args=["ada"], kwargs={"punctuation": "!"})
    second = greet.apply_async(args=["grace"])
    third = greet.delay("linus")
    print(json.dumps([first.id, second.id, third.id]))
elif command == "result":
    print(json.dumps(app.AsyncResult(sys.argv[4]).get(timeout=60)))
elif command == "lpush":
    r = redis.Redis.from_url(url)
    print(json.dumps(r.lpush(sys.argv[4], *sys.argv[5:])))
"#;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Setup {
    python: PathBuf,
    app_dir: PathBuf,
    server: RedisServer,
    broker: Arc<dyn Broker>,
}

impl Setup {
    async fn start() -> Option<Setup> {
        let python = tokio::task::spawn_blocking(|| python_with(PACKAGES))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        let server = RedisServer::start()?;
        let app_dir = std::env::temp_dir().join(format!(
            "celery-app-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        std::fs::create_dir_all(&app_dir).expect("app dir");
        std::fs::write(app_dir.join("tasks.py"), TASKS_PY).expect("tasks.py");
        let mut options = ValkeyOptions::new(server.url());
        options.block_timeout = Duration::from_millis(200);
        let broker = Arc::new(ValkeyBroker::connect(options).await.expect("connect"));
        Some(Setup {
            python,
            app_dir,
            server,
            broker,
        })
    }

    async fn python(&self, args: &[&str]) -> Value {
        let mut all = vec![self.app_dir.display().to_string(), self.server.url()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let python = self.python.clone();
        let stdout = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            run_script(&python, CLIENT, &args, SCRIPT_LIMIT)
        })
        .await
        .expect("the python runner did not panic")
        .unwrap_or_else(|e| panic!("python {args:?}: {e}"));
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("python printed {stdout:?}: {e}"))
    }

    /// A real `celery worker` on the `celery` queue, killed when the guard drops.
    fn celery_worker(&self) -> ChildGuard {
        ChildGuard::spawn(
            Command::new(&self.python)
                .args([
                    "-m",
                    "celery",
                    "-A",
                    "tasks",
                    "worker",
                    "--pool=solo",
                    "--loglevel=INFO",
                ])
                .args([
                    "--without-heartbeat",
                    "--without-gossip",
                    "--without-mingle",
                    "-Q",
                    "celery",
                ])
                .current_dir(&self.app_dir)
                .env("TEST_REDIS_URL", self.server.url())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    }

    fn bridge_config(&self, routes: &str) -> BridgeConfig {
        let text = format!(
            "[bridge.brokers.cache]\nbackend = \"valkey\"\nurl = \"{}\"\n\n{routes}",
            self.server.url()
        );
        BridgeConfig::parse(&text, "bridge.toml").expect("a valid bridge section")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.app_dir);
    }
}

fn fastrand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Runs `config`'s routes in this process until the returned token is cancelled.
async fn run_bridge(config: &BridgeConfig) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let metrics = Metrics::new("bridge-test");
    let bridge = Bridge::from_config(config, &[], "bridge-test", &metrics)
        .await
        .expect("the bridge starts");
    let stop = CancellationToken::new();
    let handle = tokio::spawn({
        let stop = stop.clone();
        async move {
            bridge.run(stop, Duration::from_secs(5)).await;
        }
    });
    (stop, handle)
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
// Celery → Rust

#[derive(Debug, Default, Deserialize, Serialize)]
struct GreetOptions {
    #[serde(default)]
    punctuation: Option<String>,
}

static GREETED: Mutex<Vec<(String, String, Option<String>)>> = Mutex::new(Vec::new());

#[pulsar_io_task(topic = "q1/interop/celery/greet")]
async fn greet(call: Call<(String,), GreetOptions>, ctx: TaskContext) -> Result<(), TaskError> {
    let task = ctx
        .properties()
        .get(worker_runtime::celery::TASK_PROPERTY)
        .cloned();
    let name = format!(
        "{}{}",
        call.args.0,
        call.kwargs.punctuation.as_deref().unwrap_or(".")
    );
    lock(&GREETED).push((ctx.message_id().to_owned(), name, task));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_celery_calls_are_run_by_a_rust_handler_through_the_bridge() {
    let Some(setup) = Setup::start().await else {
        return;
    };
    let config = setup.bridge_config(
        r#"[bridge.routes.celery_in]
source = { broker = "cache", celery_queue = "rust", tasks = { "rust.tasks.greet" = "q1/interop/celery/greet" } }
target = { broker = "cache" }
"#,
    );
    let worker = RunningWorker::start(
        Worker::builder()
            .broker(setup.broker.clone())
            .task(greet::task())
            .consumer_name("celery-interop"),
    );
    let (stop, bridge) = run_bridge(&config).await;
    let ids = setup.python(&["send"]).await;
    let ids: Vec<String> = serde_json::from_value(ids).expect("three ids");
    assert!(wait_until(Duration::from_secs(20), || lock(&GREETED).len() >= 3).await);
    stop.cancel();
    bridge.await.expect("the bridge ran");
    worker.stop().await;
    let mut greeted = lock(&GREETED).clone();
    greeted.sort();
    println!("greeted: {greeted:?}");
    let mut expected: Vec<(String, String, Option<String>)> = ids
        .iter()
        .zip(["ada!", "grace.", "linus."])
        .map(|(id, name)| {
            (
                id.clone(),
                name.to_owned(),
                Some("rust.tasks.greet".to_owned()),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(greeted, expected, "each call ran once, under its celery id");
}

// ---------------------------------------------------------------------------------------------
// Rust → Celery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_message_is_executed_by_a_real_celery_worker_through_the_bridge() {
    let Some(setup) = Setup::start().await else {
        return;
    };
    let config = setup.bridge_config(
        r#"[bridge.routes.to_celery]
source = { broker = "cache", topic = "q1/interop/celery/sums" }
target = { broker = "cache", celery_queue = "celery", task = "shop.tasks.add" }
"#,
    );
    let _celery = setup.celery_worker();
    let (stop, bridge) = run_bridge(&config).await;
    let topic = Topic::parse("q1/interop/celery/sums").expect("topic");
    for (id, payload) in [
        (
            "rust-call-1",
            json!({"args": [2, 3], "kwargs": {"scale": 10}}),
        ),
        ("rust-call-2", json!({"args": [40, 2]})),
    ] {
        setup
            .broker
            .publish(
                &topic,
                Message::new(payload.to_string()).with_property(props::MESSAGE_ID, id),
            )
            .await
            .expect("publish");
    }
    let first = setup.python(&["result", "rust-call-1"]).await;
    let second = setup.python(&["result", "rust-call-2"]).await;
    stop.cancel();
    bridge.await.expect("the bridge ran");
    assert_eq!(first, json!(50), "Celery ran (2 + 3) * 10");
    assert_eq!(second, json!(42));
}

// ---------------------------------------------------------------------------------------------
// A plain JSON list → a worker

#[derive(Debug, Deserialize)]
struct Signup {
    email: String,
}

static SIGNED_UP: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[pulsar_io_task(topic = "q1/interop/lists/signups")]
async fn signup(event: Signup) -> Result<(), TaskError> {
    lock(&SIGNED_UP).push(event.email);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_a_python_service_lpushes_is_run_by_a_worker_through_a_list_route() {
    let Some(setup) = Setup::start().await else {
        return;
    };
    let config = setup.bridge_config(
        r#"[bridge.routes.signups]
source = { broker = "cache", list = "signups" }
target = { broker = "cache", topic = "q1/interop/lists/signups" }
"#,
    );
    let worker = RunningWorker::start(
        Worker::builder()
            .broker(setup.broker.clone())
            .task(signup::task())
            .consumer_name("list-interop"),
    );
    let (stop, bridge) = run_bridge(&config).await;
    let pushed = setup
        .python(&[
            "lpush",
            "signups",
            r#"{"email": "ada@example.com"}"#,
            r#"{"email": "grace@example.com"}"#,
            "not json at all",
        ])
        .await;
    assert_eq!(pushed, json!(3));
    assert!(wait_until(Duration::from_secs(20), || lock(&SIGNED_UP).len() >= 2).await);
    // The processing list empties once the copies are confirmed.
    let processing = || {
        setup
            .server
            .cli(&["LLEN", "signups:processing:bridge-test"])
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(10), || processing().trim() == "0").await,
        "processing list holds {}",
        processing()
    );
    stop.cancel();
    bridge.await.expect("the bridge ran");
    let report = worker.stop().await;
    let mut signed_up = lock(&SIGNED_UP).clone();
    signed_up.sort();
    assert_eq!(signed_up, ["ada@example.com", "grace@example.com"]);
    let task = report.task("signup").expect("report");
    assert_eq!(
        task.dead_lettered, 1,
        "the item that is not JSON is dead-lettered by the worker"
    );
}
