//! Scaling out with real processes: three copies of the `scale_worker` example, each with its own
//! consumer name, share one subscription on a `redis-server` that the test starts itself.
//!
//! - With nothing failing, 10,000 messages are handled exactly once each, the load is split
//!   between the three, and each process's `/metrics` shows its share; SIGTERM stops all three
//!   with status 0.
//! - With one worker killed (SIGKILL) mid-stream and restarted under the same name, nothing is
//!   lost; messages it handled but had not acknowledged are handled again (printed, allowed).
//!
//! Each worker appends the stable id of every message it handles to a ledger file of its own;
//! the test reads the ledgers to count. Without `redis-server` the tests skip loudly (they fail
//! with `REQUIRE_BROKERS=1`).

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use integration_tests::brokers::{free_port, BrokerProcess, RedisServer};
use worker_runtime::broker::valkey::{ValkeyBroker, ValkeyOptions};
use worker_runtime::{props, Broker, Message, Topic};

/// How many messages each test publishes.
const MESSAGES: usize = 10_000;
/// The topic of the example's `record_event` task.
const TOPIC: &str = "q1/demo/scale/events";
/// The example's task name.
const TASK: &str = "record_event";
/// The consumer names of the three workers.
const CONSUMERS: [&str; 3] = ["w1", "w2", "w3"];
/// The environment variable naming a worker's ledger file.
const LEDGER_ENV: &str = "SCALE_WORKER_LEDGER";
/// The workers' shutdown grace period.
const GRACE: Duration = Duration::from_secs(10);

/// The two tests start three workers each; on a small machine they are fairer run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn three_worker_processes_share_the_work_and_handle_each_message_once() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(server) = RedisServer::start() else {
        return;
    };
    let binary = scale_worker_binary();
    let dir = BrokerProcess::scratch_dir("scale-out");
    let mut workers = Workers::start(binary, &server.url(), &dir, &[]);
    workers.wait_ready(Duration::from_secs(30));

    let started = Instant::now();
    let published = publish(&server.url(), 0);
    let drained = workers.wait_for_unique(MESSAGES, Duration::from_secs(120));
    assert_eq!(
        drained, MESSAGES,
        "not every message was handled within 120 s"
    );
    let drain_time = started.elapsed();

    // A message is counted once its ack is sent, a moment after its ledger line.
    let counts = workers.wait_for_ok_total(MESSAGES as u64, Duration::from_secs(15));
    let failures = workers.failure_counts();
    workers.stop_gracefully();
    let ledger = workers.read_ledgers();

    println!("\n=== scale-out over valkey: 3 worker processes, {MESSAGES} messages ===");
    println!("published in {published:?}; all handled {drain_time:?} after publishing began");
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
    assert_eq!(ledger.unique, MESSAGES, "lost: {}", ledger.lost());
    assert_eq!(ledger.duplicates, 0, "some messages were handled twice");
    assert_eq!(ledger.foreign, 0, "the ledgers hold ids nobody published");
    for (consumer, lines) in &ledger.per_consumer {
        assert_eq!(
            Some(lines),
            counts.get(consumer),
            "{consumer}'s ledger and its metrics disagree"
        );
    }
    workers.remove_scratch_dir();
}

#[test]
fn a_killed_worker_restarted_under_its_name_loses_nothing() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(server) = RedisServer::start() else {
        return;
    };
    let binary = scale_worker_binary();
    let dir = BrokerProcess::scratch_dir("scale-kill");
    // A short visibility timeout bounds the wait should the restarted worker not recover its own
    // pending messages; the live workers would then take them over.
    let extra = ["--valkey-visibility-timeout", "5s"];
    let mut workers = Workers::start(binary, &server.url(), &dir, &extra);
    workers.wait_ready(Duration::from_secs(30));

    let started = Instant::now();
    // 2 ms of "work" per message keeps the run long enough to kill a worker in the middle of it.
    publish(&server.url(), 2);
    let handled_before_kill = workers.wait_for_lines(MESSAGES / 4, Duration::from_secs(60));
    let victim = 1;
    workers.kill(victim);
    let killed_at = started.elapsed();
    let victim_lines_at_kill = workers.read_ledgers().per_consumer[CONSUMERS[victim]];
    std::thread::sleep(Duration::from_millis(500));
    workers.restart(victim);
    let drained = workers.wait_for_unique(MESSAGES, Duration::from_secs(60));
    let drain_time = started.elapsed();
    workers.stop_gracefully();
    let ledger = workers.read_ledgers();

    println!("\n=== scale-out over valkey with a crash: w2 killed with SIGKILL and restarted ===");
    println!(
        "killed {} at {killed_at:?}, after {handled_before_kill} ledger lines; \
         {drained} unique ids after {drain_time:?}",
        CONSUMERS[victim]
    );
    ledger.print();
    println!(
        "{} handled {} messages after its restart",
        CONSUMERS[victim],
        ledger.per_consumer[CONSUMERS[victim]] - victim_lines_at_kill
    );
    println!(
        "lost: {}, handled more than once: {} (allowed after a crash)",
        ledger.lost(),
        ledger.duplicates
    );

    assert_eq!(ledger.lost(), 0, "messages were lost");
    assert_eq!(ledger.foreign, 0, "the ledgers hold ids nobody published");
    workers.remove_scratch_dir();
}

/// The stable message id of message `seq`.
fn message_id(seq: usize) -> String {
    format!("scale-{seq:05}")
}

/// Publishes the test's messages, each with the framework's stable-id property, and returns how
/// long that took. `work_ms` is how long each message's handler sleeps.
fn publish(url: &str, work_ms: u64) -> Duration {
    const PUBLISHERS: usize = 16;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime for publishing");
    runtime.block_on(async {
        let broker = ValkeyBroker::connect(ValkeyOptions::new(url))
            .await
            .expect("connect the publisher");
        let broker = Arc::new(broker);
        let topic = Topic::parse(TOPIC).expect("valid topic");
        let started = Instant::now();
        let mut publishers = tokio::task::JoinSet::new();
        for first in 0..PUBLISHERS {
            let (broker, topic) = (broker.clone(), topic.clone());
            publishers.spawn(async move {
                for seq in (first..MESSAGES).step_by(PUBLISHERS) {
                    let payload = format!(r#"{{"seq":{seq},"work_ms":{work_ms}}}"#);
                    let message = Message::new(payload)
                        .with_property(props::MESSAGE_ID, message_id(seq))
                        .with_property(props::TASK, TASK);
                    broker
                        .publish(&topic, message)
                        .await
                        .unwrap_or_else(|e| panic!("publish message {seq}: {e}"));
                }
            });
        }
        while let Some(done) = publishers.join_next().await {
            done.expect("a publisher panicked");
        }
        started.elapsed()
    })
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

/// The three workers of a test.
struct Workers {
    dir: PathBuf,
    processes: Vec<WorkerProcess>,
}

impl Workers {
    /// Starts `w1`, `w2` and `w3` on the Valkey server at `url`, each with a free metrics port
    /// and a ledger file in `dir`.
    fn start(binary: PathBuf, url: &str, dir: &Path, extra: &[&str]) -> Self {
        let processes = CONSUMERS
            .iter()
            .map(|&name| {
                let metrics_port = free_port();
                let mut args: Vec<String> = [
                    "--backend",
                    "valkey",
                    "--valkey-url",
                    url,
                    "--consumer-name",
                    name,
                    "--metrics-addr",
                    &format!("127.0.0.1:{metrics_port}"),
                    "--shutdown-grace",
                    &format!("{}s", GRACE.as_secs()),
                ]
                .map(str::to_owned)
                .to_vec();
                args.extend(extra.iter().map(|&arg| arg.to_owned()));
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
        Workers {
            dir: dir.to_owned(),
            processes,
        }
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

    /// Waits until the ledgers hold `count` distinct ids (or `limit` passes); returns how many.
    fn wait_for_unique(&mut self, count: usize, limit: Duration) -> usize {
        self.wait_for(limit, |ledger| ledger.unique >= count).unique
    }

    /// Waits until the ledgers hold `count` lines (or `limit` passes); returns how many.
    fn wait_for_lines(&mut self, count: usize, limit: Duration) -> usize {
        self.wait_for(limit, |ledger| ledger.lines >= count).lines
    }

    fn wait_for(&mut self, limit: Duration, done: impl Fn(&Ledger) -> bool) -> Ledger {
        let deadline = Instant::now() + limit;
        loop {
            for process in &mut self.processes {
                process.assert_running();
            }
            let ledger = self.read_ledgers();
            if done(&ledger) || Instant::now() >= deadline {
                return ledger;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the workers' `ok` counts add up to `total` (or `limit` passes); returns them.
    fn wait_for_ok_total(&self, total: u64, limit: Duration) -> BTreeMap<String, u64> {
        let deadline = Instant::now() + limit;
        loop {
            let counts: BTreeMap<String, u64> = self
                .processes
                .iter()
                .map(|p| (p.name.to_owned(), self.count(p, "ok")))
                .collect();
            if counts.values().sum::<u64>() >= total || Instant::now() >= deadline {
                return counts;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Each worker's `retried` and `dead_lettered` counts.
    fn failure_counts(&self) -> BTreeMap<String, (u64, u64)> {
        self.processes
            .iter()
            .map(|p| {
                let counts = (self.count(p, "retried"), self.count(p, "dead_lettered"));
                (p.name.to_owned(), counts)
            })
            .collect()
    }

    /// `worker_messages_total{consumer=<its name>, outcome}` from the worker's `/metrics`.
    fn count(&self, process: &WorkerProcess, outcome: &str) -> u64 {
        let (status, body) = http_get(process.metrics_port, "/metrics")
            .unwrap_or_else(|| panic!("scrape the metrics of {}", process.name));
        assert_eq!(status, 200, "/metrics of {}", process.name);
        messages_total(&body, process.name, outcome)
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

    /// Reads every worker's ledger.
    fn read_ledgers(&self) -> Ledger {
        let expected: HashSet<String> = (0..MESSAGES).map(message_id).collect();
        let mut seen = HashSet::new();
        let mut ledger = Ledger::default();
        for process in &self.processes {
            let text = std::fs::read_to_string(&process.ledger).unwrap_or_default();
            // A line without its newline is still being written.
            let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
            let mut lines = 0;
            for id in complete.lines() {
                lines += 1;
                if !expected.contains(id) {
                    ledger.foreign += 1;
                } else if !seen.insert(id.to_owned()) {
                    ledger.duplicates += 1;
                }
            }
            ledger.lines += lines;
            ledger
                .per_consumer
                .insert(process.name.to_owned(), lines as u64);
        }
        ledger.unique = seen.len();
        ledger
    }

    fn remove_scratch_dir(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the ledgers say.
#[derive(Debug, Default)]
struct Ledger {
    /// Lines per consumer.
    per_consumer: BTreeMap<String, u64>,
    /// Lines in all ledgers.
    lines: usize,
    /// Distinct published ids among them.
    unique: usize,
    /// Lines repeating an id already seen.
    duplicates: usize,
    /// Lines that are not the id of a published message.
    foreign: usize,
}

impl Ledger {
    /// Published messages that no ledger holds.
    fn lost(&self) -> usize {
        MESSAGES - self.unique.min(MESSAGES)
    }

    fn print(&self) {
        for (consumer, lines) in &self.per_consumer {
            println!("  ledger {consumer}: {lines} lines");
        }
        println!(
            "  ledgers: {} lines, {} distinct ids of {MESSAGES}, {} duplicates, {} lost, {} foreign",
            self.lines,
            self.unique,
            self.duplicates,
            self.lost(),
            self.foreign
        );
    }
}

/// The sum of `worker_messages_total` samples for `consumer` and `outcome` in a scrape.
fn messages_total(metrics: &str, consumer: &str, outcome: &str) -> u64 {
    let consumer = format!("consumer=\"{consumer}\"");
    let outcome = format!("outcome=\"{outcome}\"");
    metrics
        .lines()
        .filter(|line| line.starts_with("worker_messages_total{"))
        .filter(|line| line.contains(&consumer) && line.contains(&outcome))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `GET path` on `127.0.0.1:port`: the status code and the body, or `None` if nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some((status, body.to_owned()))
}
