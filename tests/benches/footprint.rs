//! A worker process's footprint: how long it takes from start to the first message handled, and
//! how much memory it holds when idle, for the release build of the `scale_worker` example.
//!
//! - **start → first message**: one message waits in a Valkey stream (a redis-server of the
//!   bench's own) before the worker starts; the time runs from spawning the process to its
//!   handler's ledger line appearing (polled every 0.2 ms). That covers exec, the runtime,
//!   parsing the command line, connecting to Valkey, creating the consumer group, reading the
//!   message, decoding it and running the handler.
//! - **idle resident memory**: `VmRSS` of the process 2 s after it became ready, on the embedded
//!   broker and on Valkey, with nothing to do; and `VmHWM`, its peak, for the Valkey one after
//!   its first message.
//!
//! Medians with [min–max] over `BENCH_RUNS` (5) starts each. It needs the example built first:
//!
//! ```text
//! cargo build --release -p examples --example scale_worker
//! cargo bench -p integration-tests --bench footprint
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::brokers::{free_port, RedisServer};
use integration_tests::processes::http_get;
use worker_runtime::broker::valkey::{ValkeyBroker, ValkeyOptions};
use worker_runtime::{props, Broker, Message, Topic};

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let binary = release_example("scale_worker")?;
    let Some(redis) = RedisServer::start() else {
        anyhow::bail!("the bench needs redis-server");
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let broker = runtime.block_on(ValkeyBroker::connect(ValkeyOptions::new(redis.url())))?;
    let scratch = std::env::temp_dir().join(format!("wr-footprint-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;

    let mut first_message = Vec::new();
    let mut valkey_idle = Vec::new();
    let mut valkey_peak = Vec::new();
    let mut memory_idle = Vec::new();
    for run in 0..runs {
        // Each run its own topic (so its own stream and group): the message waits for a
        // consumer group that does not exist yet, as on a first deployment.
        let topic = format!("q1/demo/scale/events-{run}");
        let message = Message::new(r#"{"seq": 1}"#).with_property(props::MESSAGE_ID, "first");
        runtime.block_on(broker.publish(&Topic::parse(&topic)?, message))?;
        let config = scratch.join(format!("worker-{run}.toml"));
        std::fs::write(
            &config,
            format!("[tasks.record_event]\ntopic = \"{topic}\"\n"),
        )?;
        let ledger = scratch.join(format!("ledger-{run}"));
        let port = free_port();
        let started = Instant::now();
        let mut worker = spawn(
            &binary,
            &[
                "--backend",
                "valkey",
                "--valkey-url",
                &redis.url(),
                "--config",
                &config.display().to_string(),
                "--consumer-name",
                &format!("footprint-{run}"),
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
            ],
            Some(&ledger),
        )?;
        let handled = wait_for(Duration::from_secs(30), Duration::from_micros(200), || {
            std::fs::read_to_string(&ledger).is_ok_and(|text| text.contains("first"))
        });
        let took = started.elapsed();
        anyhow::ensure!(
            handled,
            "run {run}: the first message was not handled within 30 s"
        );
        first_message.push(took.as_secs_f64() * 1000.0);
        wait_ready(port)?;
        std::thread::sleep(Duration::from_secs(2));
        valkey_idle.push(status_kib(worker.id(), "VmRSS")? as f64 / 1024.0);
        valkey_peak.push(status_kib(worker.id(), "VmHWM")? as f64 / 1024.0);
        stop(&mut worker);

        let port = free_port();
        let mut worker = spawn(
            &binary,
            &[
                "--backend",
                "memory",
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
            ],
            None,
        )?;
        wait_ready(port)?;
        std::thread::sleep(Duration::from_secs(2));
        memory_idle.push(status_kib(worker.id(), "VmRSS")? as f64 / 1024.0);
        stop(&mut worker);
    }
    let _ = std::fs::remove_dir_all(&scratch);

    println!("scale_worker (release), {runs} starts each\n");
    println!("| measure | median | [min–max] |");
    println!("|---|---|---|");
    for (name, values, unit) in [
        (
            "start → first message handled (Valkey)",
            &first_message,
            "ms",
        ),
        ("idle resident memory, embedded broker", &memory_idle, "MiB"),
        ("idle resident memory, Valkey", &valkey_idle, "MiB"),
        (
            "peak resident memory, Valkey, after one message",
            &valkey_peak,
            "MiB",
        ),
    ] {
        let (median, min, max) = spread(values);
        println!("| {name} | {median:.1} {unit} | [{min:.1}–{max:.1}] |");
    }
    Ok(())
}

/// The release build of example `name`, next to this bench's own binary.
fn release_example(name: &str) -> anyhow::Result<PathBuf> {
    let bench = std::env::current_exe()?;
    let profile = bench
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow::anyhow!("bench binaries live in target/<profile>/deps"))?;
    let path = profile.join("examples").join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is not built: run `cargo build --release -p examples --example {name}` first",
        path.display()
    );
    Ok(path)
}

/// A worker process, killed if the bench returns early (an error) before stopping it.
struct WorkerProcess(Child);

impl WorkerProcess {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn spawn(binary: &Path, args: &[&str], ledger: Option<&Path>) -> anyhow::Result<WorkerProcess> {
    let mut command = Command::new(binary);
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(ledger) = ledger {
        command.env("SCALE_WORKER_LEDGER", ledger);
    }
    Ok(WorkerProcess(command.spawn()?))
}

fn wait_for(limit: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(every);
    }
    done()
}

fn wait_ready(port: u16) -> anyhow::Result<()> {
    let ready = wait_for(Duration::from_secs(30), Duration::from_millis(20), || {
        http_get(port, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    anyhow::ensure!(ready, "the worker on port {port} did not become ready");
    Ok(())
}

/// A `/proc/<pid>/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/status"))
}

fn stop(worker: &mut WorkerProcess) {
    // SIGTERM, then wait: the worker drains and exits 0.
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let _ = worker.0.wait();
}

/// Median, min and max.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    (
        median,
        sorted.first().copied().unwrap_or(0.0),
        sorted.last().copied().unwrap_or(0.0),
    )
}
