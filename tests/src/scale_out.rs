//! Scaling out with real processes, on any backend: three copies of the `scale_worker` example,
//! each with its own consumer name, share the task's subscription on a broker the test started.
//!
//! - [`work_is_shared_and_each_message_handled_once`]: with nothing failing, 10,000 messages are
//!   handled exactly once each, the load is split between the three, and each process's
//!   `/metrics` shows its share; SIGTERM stops all three with status 0.
//! - [`a_killed_worker_restarted_under_its_name_loses_nothing`]: with one worker killed (SIGKILL)
//!   mid-stream and restarted under the same name, nothing is lost; messages it handled but had
//!   not acknowledged are handled again (printed, counted, allowed).
//!
//! Each worker appends the stable id of every message it handles to a ledger file of its own, and
//! the scenarios count with the ledger method: the messages the broker *confirmed* to the
//! publisher, the ids *handled* (each counted once), those handled more than once, and
//! *lost* = confirmed − handled. A test file only names its backend ([`Backend`]): the flags that
//! point a worker at the broker, and how to connect the publisher.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use worker_runtime::{props, BoxFuture, Broker, BrokerError, Message, Topic};

use crate::brokers::{free_port, BrokerProcess};
use crate::processes::{http_get, metric_sum};

/// How many messages each scenario publishes.
pub const MESSAGES: usize = 10_000;
/// The topic of the example's `record_event` task.
pub const TOPIC: &str = "q1/demo/scale/events";
/// The example's task name.
const TASK: &str = "record_event";
/// The consumer names of the three workers.
pub const CONSUMERS: [&str; 3] = ["w1", "w2", "w3"];
/// The environment variable naming a worker's ledger file.
const LEDGER_ENV: &str = "SCALE_WORKER_LEDGER";
/// The workers' shutdown grace period.
const GRACE: Duration = Duration::from_secs(10);

/// The broker a scenario runs on, as the workers and the publisher reach it.
pub struct Backend {
    name: &'static str,
    worker_args: Vec<String>,
    connect: BoxFuture<'static, Result<Arc<dyn Broker>, BrokerError>>,
}

impl Backend {
    /// `name` labels the printed figures; `worker_args` are the flags that point a worker at the
    /// broker (`--backend valkey --valkey-url redis://…`); `connect` connects the publisher. It
    /// is awaited on the scenario's own runtime, which then publishes with it.
    pub fn new<B, F>(name: &'static str, worker_args: &[&str], connect: F) -> Self
    where
        B: Broker + 'static,
        F: Future<Output = Result<B, BrokerError>> + Send + 'static,
    {
        let connect = async move {
            let broker = connect.await?;
            Ok(Arc::new(broker) as Arc<dyn Broker>)
        };
        Backend {
            name,
            worker_args: worker_args.iter().map(|&arg| arg.to_owned()).collect(),
            connect: Box::pin(connect),
        }
    }
}

/// With nothing failing, three workers split the messages and handle each exactly once; their
/// `/metrics` agree with their ledgers, and SIGTERM stops each with status 0.
pub fn work_is_shared_and_each_message_handled_once(backend: Backend) {
    let _serial = one_scenario_at_a_time();
    let publisher = Publisher::connect(backend.name, backend.connect);
    let mut workers = Workers::start(&backend.worker_args, "scale-out");
    workers.wait_ready(Duration::from_secs(30));

    let started = Instant::now();
    let published = publisher.start(0).join().expect("the publisher panicked");
    let all_handled = workers.wait_until_handled(&published.confirmed, Duration::from_secs(120));
    let drain_time = started.elapsed();
    // A message is counted once its ack is sent, a moment after its ledger line.
    let counts =
        workers.wait_for_ok_total(published.confirmed.len() as u64, Duration::from_secs(15));
    let failures = workers.failure_counts();
    workers.stop_gracefully();
    let ledger = Ledger::tally(&workers.read_ledgers(), &published.confirmed);

    let name = backend.name;
    println!("\n=== scale-out over {name}: 3 worker processes, {MESSAGES} messages ===");
    println!(
        "published in {:?}; all handled {drain_time:?} after publishing began",
        published.took
    );
    println!(
        "throughput: {:.0} messages/s",
        MESSAGES as f64 / drain_time.as_secs_f64()
    );
    for (consumer, ok) in &counts {
        println!(
            "  /metrics {consumer}: worker_messages_total{{outcome=\"ok\"}} = {ok} ({:.1}%)",
            *ok as f64 * 100.0 / MESSAGES as f64
        );
    }
    println!("  retried / dead-lettered per consumer: {failures:?}");
    ledger.print();

    published.assert_all_confirmed();
    assert!(all_handled, "not every message was handled within 120 s");
    let total: u64 = counts.values().sum();
    assert_eq!(total, MESSAGES as u64, "per-consumer ok counts: {counts:?}");
    for (consumer, ok) in &counts {
        assert!(
            *ok > 0,
            "{consumer} handled nothing: the load was not split"
        );
    }
    assert!(
        failures
            .values()
            .all(|&(retried, dead)| retried == 0 && dead == 0),
        "nothing was meant to fail: {failures:?}"
    );
    assert_eq!(ledger.handled, MESSAGES, "lost: {}", ledger.lost);
    assert_eq!(ledger.more_than_once, 0, "some messages were handled twice");
    assert_eq!(ledger.foreign, 0, "the ledgers hold ids nobody published");
    for (consumer, lines) in &ledger.per_consumer {
        assert_eq!(
            counts.get(consumer).copied(),
            Some(*lines as u64),
            "{consumer}'s ledger and its metrics disagree"
        );
    }
    workers.remove_scratch_dir();
}

/// One worker is killed (SIGKILL) while the messages stream in and is started again under the
/// same name: nothing the broker confirmed is lost. Messages handled twice are allowed, and
/// printed.
pub fn a_killed_worker_restarted_under_its_name_loses_nothing(backend: Backend) {
    let _serial = one_scenario_at_a_time();
    let publisher = Publisher::connect(backend.name, backend.connect);
    let mut workers = Workers::start(&backend.worker_args, "scale-kill");
    workers.wait_ready(Duration::from_secs(30));

    let started = Instant::now();
    // 2 ms of "work" per message keeps the run long enough to kill a worker in the middle of
    // it; publishing goes on meanwhile, so the kill meets a stream, not a backlog.
    let publishing = publisher.start(2);
    let lines_before_kill = workers.wait_for_lines(MESSAGES / 4, Duration::from_secs(60));
    let victim = 1;
    let victim_name = CONSUMERS[victim];
    workers.kill(victim);
    let killed_at = started.elapsed();
    let victim_lines_at_kill = workers.read_ledgers()[victim_name].len();
    std::thread::sleep(Duration::from_millis(500));
    workers.restart(victim);
    let published = publishing.join().expect("the publisher panicked");
    let all_handled = workers.wait_until_handled(&published.confirmed, Duration::from_secs(60));
    let drain_time = started.elapsed();
    workers.stop_gracefully();
    let ledgers = workers.read_ledgers();
    let ledger = Ledger::tally(&ledgers, &published.confirmed);

    let name = backend.name;
    println!(
        "\n=== scale-out over {name} with a crash: {victim_name} killed with SIGKILL and restarted ==="
    );
    println!(
        "killed {victim_name} at {killed_at:?}, after {lines_before_kill} ledger lines; \
         published in {:?}; {} handled after {drain_time:?}",
        published.took, ledger.handled
    );
    ledger.print();
    println!(
        "{victim_name} handled {} messages after its restart",
        ledgers[victim_name].len() - victim_lines_at_kill
    );
    println!(
        "lost: {}, handled more than once: {} (allowed after a crash)",
        ledger.lost, ledger.more_than_once
    );

    published.assert_all_confirmed();
    assert!(all_handled, "not every message was handled within 60 s");
    assert_eq!(ledger.lost, 0, "messages were lost");
    assert_eq!(ledger.foreign, 0, "the ledgers hold ids nobody published");
    workers.remove_scratch_dir();
}

/// The scenarios start three workers each; on a small machine they are fairer run one at a time.
fn one_scenario_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The stable message id of message `seq`.
fn message_id(seq: usize) -> String {
    format!("scale-{seq:05}")
}

/// Whether `id` is the id of one of the published messages.
fn is_published_id(id: &str) -> bool {
    id.strip_prefix("scale-")
        .and_then(|seq| seq.parse::<usize>().ok())
        .is_some_and(|seq| seq < MESSAGES && message_id(seq) == id)
}

/// A connected publisher, on a runtime of its own.
struct Publisher {
    runtime: tokio::runtime::Runtime,
    broker: Arc<dyn Broker>,
}

impl Publisher {
    fn connect(
        name: &str,
        connect: BoxFuture<'static, Result<Arc<dyn Broker>, BrokerError>>,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for publishing");
        let broker = runtime
            .block_on(connect)
            .unwrap_or_else(|e| panic!("connect the publisher to {name}: {e}"));
        Publisher { runtime, broker }
    }

    /// Publishes every message from a thread of its own, each with the framework's stable-id
    /// property; `work_ms` is how long each message's handler sleeps. Join the thread for what
    /// the broker confirmed.
    fn start(self, work_ms: u64) -> JoinHandle<Published> {
        let Publisher { runtime, broker } = self;
        std::thread::spawn(move || runtime.block_on(publish_all(broker, work_ms)))
    }
}

async fn publish_all(broker: Arc<dyn Broker>, work_ms: u64) -> Published {
    const PUBLISHERS: usize = 16;
    let topic = Topic::parse(TOPIC).expect("a valid topic");
    let started = Instant::now();
    let mut publishers = tokio::task::JoinSet::new();
    for first in 0..PUBLISHERS {
        let (broker, topic) = (broker.clone(), topic.clone());
        publishers.spawn(async move {
            let mut outcomes = Vec::new();
            for seq in (first..MESSAGES).step_by(PUBLISHERS) {
                let payload = format!(r#"{{"seq":{seq},"work_ms":{work_ms}}}"#);
                let message = Message::new(payload)
                    .with_property(props::MESSAGE_ID, message_id(seq))
                    .with_property(props::TASK, TASK);
                let outcome = broker.publish(&topic, message).await;
                let failed = outcome.is_err();
                outcomes.push((seq, outcome));
                // A broker that refuses one publish is likely to refuse the next: stop here
                // rather than wait out a publish timeout for each of the others.
                if failed {
                    break;
                }
            }
            outcomes
        });
    }
    let mut published = Published::default();
    while let Some(outcomes) = publishers.join_next().await {
        for (seq, outcome) in outcomes.expect("a publishing task panicked") {
            match outcome {
                Ok(_) => {
                    published.confirmed.insert(message_id(seq));
                }
                Err(error) => published.failures.push(format!("message {seq}: {error}")),
            }
        }
    }
    published.took = started.elapsed();
    published
}

/// What publishing left.
#[derive(Debug, Default)]
struct Published {
    /// The ids of the messages the broker confirmed.
    confirmed: HashSet<String>,
    /// The publishes that failed, with why.
    failures: Vec<String>,
    /// How long publishing took.
    took: Duration,
}

impl Published {
    fn assert_all_confirmed(&self) {
        assert!(
            self.failures.is_empty(),
            "{} publishes failed, the first: {}",
            self.failures.len(),
            self.failures[0]
        );
        assert_eq!(
            self.confirmed.len(),
            MESSAGES,
            "not every message was confirmed"
        );
    }
}

/// What the ledgers say, counted against what the broker confirmed.
#[derive(Debug, Default)]
struct Ledger {
    /// Lines per consumer.
    per_consumer: BTreeMap<&'static str, usize>,
    /// Lines in all ledgers.
    lines: usize,
    /// Messages the broker confirmed to the publisher.
    confirmed: usize,
    /// Distinct published ids among the lines.
    handled: usize,
    /// Published ids with more than one line.
    more_than_once: usize,
    /// Lines repeating an id already seen.
    extra_lines: usize,
    /// Confirmed messages that no ledger holds.
    lost: usize,
    /// Lines that are not the id of a published message.
    foreign: usize,
}

impl Ledger {
    fn tally(ledgers: &BTreeMap<&'static str, Vec<String>>, confirmed: &HashSet<String>) -> Self {
        let mut times: HashMap<&str, usize> = HashMap::new();
        let mut ledger = Ledger {
            confirmed: confirmed.len(),
            ..Ledger::default()
        };
        for (&consumer, ids) in ledgers {
            ledger.per_consumer.insert(consumer, ids.len());
            ledger.lines += ids.len();
            for id in ids {
                *times.entry(id).or_default() += 1;
            }
        }
        for (id, &count) in &times {
            if !is_published_id(id) {
                ledger.foreign += count;
                continue;
            }
            ledger.handled += 1;
            if count > 1 {
                ledger.more_than_once += 1;
                ledger.extra_lines += count - 1;
            }
        }
        ledger.lost = confirmed
            .iter()
            .filter(|id| !times.contains_key(id.as_str()))
            .count();
        ledger
    }

    fn print(&self) {
        for (consumer, lines) in &self.per_consumer {
            println!(
                "  ledger {consumer}: {lines} lines ({:.1}%)",
                *lines as f64 * 100.0 / self.lines.max(1) as f64
            );
        }
        println!(
            "  ledgers: {} lines; confirmed {}, handled {} unique, handled more than once {} \
             ({} extra lines), lost {} (confirmed − handled), foreign {}",
            self.lines,
            self.confirmed,
            self.handled,
            self.more_than_once,
            self.extra_lines,
            self.lost,
            self.foreign
        );
    }
}

/// The `scale_worker` example's executable, built once per test run with the same cargo, target
/// directory and profile as this test (cargo does not hand tests the paths of examples).
fn scale_worker_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(build_scale_worker).clone()
}

fn build_scale_worker() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--example", "scale_worker"])
        // Selecting this package too makes cargo resolve the features exactly as for this test,
        // so the libraries already built for it are reused and only the example is compiled.
        .args(["-p", "examples", "-p", "integration-tests"])
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if test_profile_dir().is_some_and(|name| name == "release") {
        command.arg("--release");
    }
    // Cargo describes this test's package to it in variables that build scripts (ring's, for
    // one) watch: passed on, they would make cargo rebuild those crates here, and again for the
    // next `cargo test`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let described = [
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
        ];
        let scratch = ["CARGO_TARGET_TMPDIR", "OUT_DIR"];
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || described.contains(&name.as_ref())
            || scratch.contains(&name.as_ref())
        {
            command.env_remove(name.as_ref());
        }
    }
    let output = command.output().expect("run cargo build");
    assert!(
        output.status.success(),
        "cargo build --example scale_worker failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["target"]["name"] == "scale_worker")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported the scale_worker executable")
}

/// The name of the profile directory this test binary was built into (`debug`, `release`).
fn test_profile_dir() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/<test binary>
    let profile = exe.parent()?.parent()?.file_name()?;
    Some(profile.to_string_lossy().into_owned())
}

/// One worker process. Killed when dropped, so that a failing test leaves nothing running.
struct WorkerProcess {
    name: &'static str,
    metrics_port: u16,
    ledger: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    binary: PathBuf,
    child: Option<Child>,
}

impl WorkerProcess {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the worker's log");
        let child = Command::new(&self.binary)
            .args(&self.args)
            .env_clear()
            .env(LEDGER_ENV, &self.ledger)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// Panics, showing its log, if the process has exited.
    fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "worker {} exited early ({status}):\n{}",
                    self.name,
                    self.log_tail()
                );
            }
        }
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {signal} {}", self.name);
        }
    }

    /// Waits up to `limit` for the process to exit.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `worker_messages_total{consumer=<its name>, outcome}` from its `/metrics`.
    fn count(&self, outcome: &str) -> u64 {
        let (status, body) = http_get(self.metrics_port, "/metrics")
            .unwrap_or_else(|| panic!("scrape the metrics of {}", self.name));
        assert_eq!(status, 200, "/metrics of {}", self.name);
        let labels = [
            format!("consumer=\"{}\"", self.name),
            format!("outcome=\"{outcome}\""),
        ];
        let labels = labels.each_ref().map(String::as_str);
        metric_sum(&body, "worker_messages_total", &labels) as u64
    }

    /// The ids in its ledger; a last line without its newline is still being written.
    fn read_ledger(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.ledger).unwrap_or_default();
        let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        complete.lines().map(str::to_owned).collect()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("--- log of worker {} ---\n{}", self.name, self.log_tail());
            }
        }
    }
}

/// The three workers of a scenario.
struct Workers {
    dir: PathBuf,
    processes: Vec<WorkerProcess>,
}

impl Workers {
    /// Starts `w1`, `w2` and `w3` with the backend's flags, each with a free metrics port and a
    /// ledger file in a fresh scratch directory named after `scratch`.
    fn start(backend_args: &[String], scratch: &str) -> Self {
        let binary = scale_worker_binary();
        let dir = BrokerProcess::scratch_dir(scratch);
        let processes = CONSUMERS
            .iter()
            .map(|&name| {
                let metrics_port = free_port();
                let mut args = backend_args.to_vec();
                args.extend(
                    [
                        "--consumer-name",
                        name,
                        "--metrics-addr",
                        &format!("127.0.0.1:{metrics_port}"),
                        "--shutdown-grace",
                        &format!("{}s", GRACE.as_secs()),
                    ]
                    .map(str::to_owned),
                );
                let mut process = WorkerProcess {
                    name,
                    metrics_port,
                    ledger: dir.join(format!("{name}.ledger")),
                    log: dir.join(format!("{name}.log")),
                    args,
                    binary: binary.clone(),
                    child: None,
                };
                process.spawn();
                process
            })
            .collect();
        Workers { dir, processes }
    }

    /// Waits until every worker answers `/readyz` with 200.
    fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for process in &mut self.processes {
            loop {
                process.assert_running();
                if http_get(process.metrics_port, "/readyz")
                    .is_some_and(|(status, _)| status == 200)
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "worker {} was not ready within {limit:?}:\n{}",
                    process.name,
                    process.log_tail()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Waits until the ledgers hold every `confirmed` id (or `limit` passes); returns whether
    /// they do.
    fn wait_until_handled(&mut self, confirmed: &HashSet<String>, limit: Duration) -> bool {
        let all_in = |ledgers: &BTreeMap<_, Vec<String>>| {
            let handled: HashSet<&str> = ledgers.values().flatten().map(String::as_str).collect();
            confirmed.iter().all(|id| handled.contains(id.as_str()))
        };
        all_in(&self.wait_for(limit, all_in))
    }

    /// Waits until the ledgers hold `count` lines (or `limit` passes); returns how many.
    fn wait_for_lines(&mut self, count: usize, limit: Duration) -> usize {
        let lines = |ledgers: &BTreeMap<_, Vec<String>>| ledgers.values().map(Vec::len).sum();
        lines(&self.wait_for(limit, |ledgers| lines(ledgers) >= count))
    }

    /// Reads the ledgers until `done` holds or `limit` passes, checking that every worker still
    /// runs; returns the last reading.
    fn wait_for(
        &mut self,
        limit: Duration,
        done: impl Fn(&BTreeMap<&'static str, Vec<String>>) -> bool,
    ) -> BTreeMap<&'static str, Vec<String>> {
        let deadline = Instant::now() + limit;
        loop {
            for process in &mut self.processes {
                process.assert_running();
            }
            let ledgers = self.read_ledgers();
            if done(&ledgers) || Instant::now() >= deadline {
                return ledgers;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the workers' `ok` counts add up to `total` (or `limit` passes); returns them.
    fn wait_for_ok_total(&self, total: u64, limit: Duration) -> BTreeMap<&'static str, u64> {
        let deadline = Instant::now() + limit;
        loop {
            let counts: BTreeMap<&'static str, u64> = self
                .processes
                .iter()
                .map(|p| (p.name, p.count("ok")))
                .collect();
            if counts.values().sum::<u64>() >= total || Instant::now() >= deadline {
                return counts;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Each worker's `retried` and `dead_lettered` counts.
    fn failure_counts(&self) -> BTreeMap<&'static str, (u64, u64)> {
        self.processes
            .iter()
            .map(|p| (p.name, (p.count("retried"), p.count("dead_lettered"))))
            .collect()
    }

    /// Sends SIGKILL to worker `index` and waits for it to die.
    fn kill(&mut self, index: usize) {
        let process = &mut self.processes[index];
        process.signal("-KILL");
        assert!(
            process.wait_exit(Duration::from_secs(10)).is_some(),
            "{} survived SIGKILL",
            process.name
        );
    }

    /// Starts worker `index` again with the same consumer name, ledger and flags.
    fn restart(&mut self, index: usize) {
        self.processes[index].spawn();
    }

    /// Sends SIGTERM to every worker and checks that each exits with status 0 within the grace
    /// period (plus a little for the shutdown itself).
    fn stop_gracefully(&mut self) {
        for process in &self.processes {
            process.signal("-TERM");
        }
        for process in &mut self.processes {
            let status = process.wait_exit(GRACE + Duration::from_secs(5));
            let log = process.log_tail();
            let status = status
                .unwrap_or_else(|| panic!("{} did not exit after SIGTERM:\n{log}", process.name));
            assert!(
                status.success(),
                "{} exited with {status} after SIGTERM:\n{log}",
                process.name
            );
        }
    }

    /// Every worker's ledger, by consumer name.
    fn read_ledgers(&self) -> BTreeMap<&'static str, Vec<String>> {
        self.processes
            .iter()
            .map(|process| (process.name, process.read_ledger()))
            .collect()
    }

    fn remove_scratch_dir(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
