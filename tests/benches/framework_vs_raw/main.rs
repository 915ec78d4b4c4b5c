//! The framework against a raw client loop on each real backend, measured in one process, run pairs
//! interleaved (framework first in even runs, raw first in odd ones), so that both sides of a pair
//! share the machine's conditions. Absolute rates drift on a shared machine; the ratios hold.
//!
//! Each backend runs on a broker process of the bench's own, on a free loopback port:
//!
//! - **valkey** — the worker on `ValkeyBroker` (an io task, no rate limit, default concurrency and
//!   prefetch) against a loop of the same `redis` crate: `XREADGROUP` a batch, decode each payload's
//!   JSON, run the handler, `XACK` the batch.
//! - **mqtt** — the worker on `MqttBroker` against a rumqttc loop: persistent session, shared
//!   subscription, QoS 1, manual acks after the handler.
//! - **pulsar** — the worker on `PulsarBroker` against a loop of the same pulsar-rs crate on an
//!   Apache Pulsar standalone JVM (`scripts/pulsar-standalone`; it needs Java and Maven, and takes
//!   tens of seconds to start): a shared subscription's consumer with the framework's receiver
//!   queue size takes each message, decodes its JSON, runs the handler and acks it with pulsar-rs's
//!   `ack`, one per message (the framework groups its acks in time, one frame per entry). Both
//!   sides read what an unbatched producer published, each send waiting for its receipt. The
//!   broker's CPU is the JVM's (broker, bookie and metadata store in one process). One unmeasured
//!   drain of each side warms the JVM up first.
//!
//! Modes: **drain** fills the topic with N messages first and times the consumer emptying it (from
//! its start to the last handler finished); **open** offers a fixed rate and measures each message's
//! latency from just before its publish to its handler finished (the time travels in the payload).
//! Handlers: a no-op and a 1 ms tokio sleep (the raw loops run the sleeping handler at the same
//! concurrency as the worker). Payloads of 16, 256 and 1024 bytes of JSON. At least once on both
//! sides: every ack follows its handler.
//!
//! Per case it prints, for each side, medians with [min–max] over the runs of: messages per second,
//! the latency p50/p99/p99.9 (open loop), CPU seconds of the bench process per 100k messages (the
//! producer included in open loop, the same on both sides), CPU seconds of the broker process per
//! 100k messages, peak RSS of the bench process during the phase (reset before each), and the
//! duplicates; then the framework ÷ raw ratios, computed per run pair. A summary table follows.
//!
//! ```text
//! cargo bench -p integration-tests --bench framework_vs_raw
//! BENCH_BACKENDS=valkey BENCH_MODES=drain BENCH_HANDLERS=noop BENCH_PAYLOADS=256 BENCH_RUNS=5 \
//!     cargo bench -p integration-tests --bench framework_vs_raw
//! ```
//!
//! Settings (environment): `BENCH_BACKENDS` (`valkey,mqtt,pulsar`), `BENCH_MODES` (`drain,open`),
//! `BENCH_HANDLERS` (`noop,sleep1ms`), `BENCH_PAYLOADS` (`16,256,1024`), `BENCH_RUNS` (3),
//! `BENCH_DRAIN_MESSAGES` (50000, no-op handler), `BENCH_SLEEP_MESSAGES` (8000, 1 ms handler),
//! `BENCH_RATE` (offered msgs/s in open loop, no-op handler, 5000), `BENCH_SLEEP_RATE` (the same
//! for the 1 ms handler, 1000: half of what 4 slots of a 1 ms tokio sleep, which lasts 1–2 ms,
//! can serve), `BENCH_OPEN_SECONDS` (3), `BENCH_CONCURRENCY` (the framework's default),
//! `BENCH_RECEIVER_QUEUE_SIZE` (the framework's default; the raw Pulsar consumer's too),
//! `BENCH_RAW_BATCH` (the raw Valkey loop's `COUNT`; the framework's default prefetch, 1000),
//! `BENCH_SIDES` (`framework,raw`; one side alone is for profiling, it prints no ratios),
//! `BENCH_PERF_CTL` (the control FIFO of `perf record --control fifo:<path> -D -1`: the profile
//! then covers the measured phases only, not the fills).

mod measure;
mod mqtt;
mod probe;
mod pulsar;
mod stats;
mod valkey;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt as _, TryStreamExt as _};
use tokio::task::JoinHandle;
use worker_runtime::worker::{CancellationToken, Worker};
use worker_runtime::{Broker, Topic};

use measure::Phase;
use probe::Handler;
use stats::{percentiles, Case, RunResult, Spread};

/// Which side of a comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Framework,
    Raw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Drain,
    Open,
}

/// One run's parameters.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Unique per run: names its topic, group and sessions.
    pub run: u64,
    pub mode: Mode,
    pub handler: Handler,
    pub payload: usize,
    pub messages: u64,
    /// Open loop: offered messages per second.
    pub rate: u64,
    pub concurrency: usize,
    pub receiver_queue_size: Option<usize>,
    pub raw_batch: usize,
}

/// A backend under test: its broker process, and how each side consumes from it.
pub trait Backend {
    fn name(&self) -> &'static str;
    fn broker_pid(&self) -> u32;
    /// The broker the fill and the open-loop producer publish with (the same for both sides).
    fn producer(&self) -> Arc<dyn Broker>;
    /// A fresh topic for this run, with the side's subscription already in place.
    fn prepare(
        &self,
        side: Side,
        spec: &Spec,
        run: u64,
    ) -> impl Future<Output = anyhow::Result<Topic>>;
    /// Starts the side's consumer.
    fn start(
        &self,
        side: Side,
        spec: &Spec,
        topic: &Topic,
    ) -> impl Future<Output = anyhow::Result<Consumer>>;
    /// Deliveries of the side's subscription still unacknowledged after its consumer stopped.
    fn unacked(
        &self,
        side: Side,
        spec: &Spec,
        topic: &Topic,
    ) -> impl Future<Output = anyhow::Result<u64>>;
}

/// A running consumer of either side.
pub struct Consumer {
    stop: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Consumer {
    pub fn new(stop: CancellationToken, handle: JoinHandle<anyhow::Result<()>>) -> Self {
        Consumer { stop, handle }
    }

    /// The worker, consuming `topic` with the handler's task as consumer `name`.
    pub fn framework(
        broker: Arc<dyn Broker>,
        spec: &Spec,
        topic: &Topic,
        name: &str,
    ) -> anyhow::Result<Consumer> {
        let mut task = spec.handler.task();
        let config = task.config_mut();
        config.topic = topic.clone();
        config.dlq_topic = topic.default_dlq();
        config.concurrency = spec.concurrency;
        if let Some(size) = spec.receiver_queue_size {
            config.receiver_queue_size = size;
        }
        let worker = Worker::builder()
            .broker(broker)
            .task(task)
            .consumer_name(name)
            .build()?;
        let stop = CancellationToken::new();
        let handle = tokio::spawn({
            let stop = stop.clone();
            async move {
                worker.run(stop).await?;
                Ok(())
            }
        });
        Ok(Consumer { stop, handle })
    }

    /// Stops it gracefully: handlers finish, acks are flushed.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.handle.await?
    }
}

/// Publishes messages `0..spec.messages`, 64 at a time.
async fn fill(producer: &dyn Broker, topic: &Topic, spec: &Spec) -> anyhow::Result<()> {
    futures_util::stream::iter(0..spec.messages)
        .map(|seq| producer.publish(topic, spec.handler.message(seq, spec.payload)))
        .buffer_unordered(64)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    Ok(())
}

/// Offers `spec.messages` at `spec.rate` per second, each published in its own task (open loop:
/// the producer never waits for the consumer). Returns the rate achieved.
async fn offer(producer: Arc<dyn Broker>, topic: &Topic, spec: &Spec) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut publishes = tokio::task::JoinSet::new();
    let mut sent = 0;
    while sent < spec.messages {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * spec.rate as f64) as u64).min(spec.messages);
        for seq in sent..due {
            let (producer, topic) = (producer.clone(), topic.clone());
            let (handler, size) = (spec.handler, spec.payload);
            publishes
                .spawn(async move { producer.publish(&topic, handler.message(seq, size)).await });
        }
        sent = sent.max(due);
    }
    let offered_for = started.elapsed();
    while let Some(published) = publishes.join_next().await {
        published??;
    }
    Ok(spec.messages as f64 / offered_for.as_secs_f64())
}

/// One run of one side.
async fn run_once<B: Backend>(backend: &B, side: Side, spec: &Spec) -> anyhow::Result<RunResult> {
    let topic = backend.prepare(side, spec, spec.run).await?;
    let limit = Duration::from_secs(120);
    let (phase, consumer, offered) = match spec.mode {
        Mode::Drain => {
            fill(&*backend.producer(), &topic, spec).await?;
            probe::reset(spec.messages);
            let phase = Phase::start(backend.broker_pid());
            let consumer = backend.start(side, spec, &topic).await?;
            (phase, consumer, None)
        }
        Mode::Open => {
            let consumer = backend.start(side, spec, &topic).await?;
            // Subscribed and idle before the first message.
            tokio::time::sleep(Duration::from_millis(500)).await;
            probe::reset(spec.messages);
            let phase = Phase::start(backend.broker_pid());
            let offered = offer(backend.producer(), &topic, spec).await?;
            (phase, consumer, Some(offered))
        }
    };
    let done = probe::wait_done(limit).await;
    let usage = phase.usage();
    let (handled, duplicates) = probe::counts();
    consumer.stop().await?;
    let unacked = backend.unacked(side, spec, &topic).await?;
    let Some(done) = done else {
        anyhow::bail!(
            "{side:?} handled {handled} of {} messages within {limit:?}",
            spec.messages
        );
    };
    if unacked > 0 {
        eprintln!("  !! {side:?} left {unacked} deliveries unacknowledged after stopping");
    }
    let latency_us = match spec.mode {
        Mode::Drain => None,
        Mode::Open => percentiles(&mut probe::latencies_us(spec.messages as usize)),
    };
    Ok(RunResult {
        handled,
        duplicates,
        elapsed: done.duration_since(phase.started()),
        latency_us,
        usage,
        offered_per_s: offered,
    })
}

struct Settings {
    backends: Vec<String>,
    modes: Vec<Mode>,
    handlers: Vec<Handler>,
    payloads: Vec<usize>,
    runs: usize,
    drain_messages: u64,
    sleep_messages: u64,
    rate: u64,
    sleep_rate: u64,
    open_seconds: u64,
    concurrency: usize,
    receiver_queue_size: Option<usize>,
    raw_batch: usize,
    sides: Vec<Side>,
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The list in `name` (or `default`), each item one of the names of `choices`.
fn env_choices<T: Copy>(name: &str, default: &str, choices: &[(&str, T)]) -> Vec<T> {
    env_list(name, default)
        .iter()
        .map(
            |given| match choices.iter().find(|(choice, _)| choice == given) {
                Some(&(_, value)) => value,
                None => {
                    let names: Vec<&str> = choices.iter().map(|&(choice, _)| choice).collect();
                    panic!("{name}: unknown value {given:?}, expected one of {names:?}")
                }
            },
        )
        .collect()
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {text:?}")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let default_concurrency = worker_runtime::default_concurrency() as u64;
        Settings {
            backends: env_list("BENCH_BACKENDS", "valkey,mqtt,pulsar"),
            modes: env_choices(
                "BENCH_MODES",
                "drain,open",
                &[("drain", Mode::Drain), ("open", Mode::Open)],
            ),
            handlers: env_choices(
                "BENCH_HANDLERS",
                "noop,sleep1ms",
                &[("noop", Handler::Noop), ("sleep1ms", Handler::Sleep1ms)],
            ),
            payloads: env_list("BENCH_PAYLOADS", "16,256,1024")
                .iter()
                .map(|p| p.parse().expect("payload sizes are numbers"))
                .collect(),
            runs: env_number("BENCH_RUNS", 3) as usize,
            drain_messages: env_number("BENCH_DRAIN_MESSAGES", 50_000),
            sleep_messages: env_number("BENCH_SLEEP_MESSAGES", 8_000),
            rate: env_number("BENCH_RATE", 5_000),
            sleep_rate: env_number("BENCH_SLEEP_RATE", 1_000),
            open_seconds: env_number("BENCH_OPEN_SECONDS", 3),
            concurrency: env_number("BENCH_CONCURRENCY", default_concurrency) as usize,
            receiver_queue_size: std::env::var("BENCH_RECEIVER_QUEUE_SIZE")
                .ok()
                .map(|v| v.parse().expect("BENCH_RECEIVER_QUEUE_SIZE is a number")),
            sides: env_choices(
                "BENCH_SIDES",
                "framework,raw",
                &[("framework", Side::Framework), ("raw", Side::Raw)],
            ),
            raw_batch: env_number(
                "BENCH_RAW_BATCH",
                worker_runtime::DEFAULT_RECEIVER_QUEUE_SIZE as u64,
            ) as usize,
        }
    }

    fn rate(&self, handler: Handler) -> u64 {
        match handler {
            Handler::Noop => self.rate,
            Handler::Sleep1ms => self.sleep_rate,
        }
    }

    fn messages(&self, mode: Mode, handler: Handler) -> u64 {
        match (mode, handler) {
            (Mode::Open, handler) => self.rate(handler) * self.open_seconds,
            (Mode::Drain, Handler::Noop) => self.drain_messages,
            (Mode::Drain, Handler::Sleep1ms) => self.sleep_messages,
        }
    }

    /// The next run's parameters (`run_id` counts the runs).
    fn spec(&self, run_id: &mut u64, mode: Mode, handler: Handler, payload: usize) -> Spec {
        *run_id += 1;
        Spec {
            run: *run_id,
            mode,
            handler,
            payload,
            messages: self.messages(mode, handler),
            rate: self.rate(handler),
            concurrency: self.concurrency,
            receiver_queue_size: self.receiver_queue_size,
            raw_batch: self.raw_batch,
        }
    }
}

/// One unmeasured drain of each side (no-op handler, the first payload size), for a broker that is
/// slow until warm: a JVM compiles its hot paths during the first runs, and the first measured run
/// would always be the framework's.
async fn warm_up<B: Backend>(backend: &B, settings: &Settings, run_id: &mut u64) {
    let payload = settings.payloads.first().copied().unwrap_or(256);
    for side in [Side::Raw, Side::Framework]
        .into_iter()
        .filter(|s| settings.sides.contains(s))
    {
        let spec = settings.spec(run_id, Mode::Drain, Handler::Noop, payload);
        match run_once(backend, side, &spec).await {
            Ok(result) => eprintln!(
                "  {} warm-up {side:?}: {:.0} msgs/s (not counted)",
                backend.name(),
                result.per_second()
            ),
            Err(error) => eprintln!("  {} warm-up {side:?} failed: {error:#}", backend.name()),
        }
    }
}

/// Runs every case of one backend; returns them in order.
async fn bench_backend<B: Backend>(
    backend: &B,
    settings: &Settings,
    run_id: &mut u64,
) -> Vec<Case> {
    let mut cases = Vec::new();
    for &mode in &settings.modes {
        for &handler in &settings.handlers {
            for &payload in &settings.payloads {
                let mut case = Case {
                    title: format!(
                        "{} {} {} {payload} B",
                        backend.name(),
                        match mode {
                            Mode::Drain => "drain",
                            Mode::Open => "open",
                        },
                        handler.name()
                    ),
                    framework: Vec::new(),
                    raw: Vec::new(),
                };
                for run in 0..settings.runs {
                    let order = if run % 2 == 0 {
                        [Side::Framework, Side::Raw]
                    } else {
                        [Side::Raw, Side::Framework]
                    };
                    for side in order.into_iter().filter(|s| settings.sides.contains(s)) {
                        let spec = settings.spec(run_id, mode, handler, payload);
                        match run_once(backend, side, &spec).await {
                            Ok(result) => {
                                eprintln!(
                                    "  {} run {run} {side:?}: {:.0} msgs/s{}",
                                    case.title,
                                    result.per_second(),
                                    result
                                        .latency_us
                                        .map(|l| format!(", p50 {} µs, p99 {} µs", l[0], l[1]))
                                        .unwrap_or_default()
                                );
                                match side {
                                    Side::Framework => case.framework.push(result),
                                    Side::Raw => case.raw.push(result),
                                }
                            }
                            Err(error) => {
                                eprintln!("  {} run {run} {side:?} failed: {error:#}", case.title)
                            }
                        }
                    }
                }
                println!("{}", case.render());
                cases.push(case);
            }
        }
    }
    cases
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|_| format!("{program}: not found"))
}

/// The locked versions of the crates that matter here.
fn crate_versions() -> String {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
        .unwrap_or_default();
    let mut found = Vec::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_owned());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            if ["redis", "rumqttc", "pulsar", "tokio", "serde_json"].contains(&n.as_str()) {
                found.push(format!("{n} {}", v.trim_matches('"')));
            }
        }
    }
    found.join(", ")
}

fn print_header(settings: &Settings) {
    println!("framework vs raw client loop");
    println!("  rustc: {}", command_line("rustc", &["--version"]));
    println!(
        "  redis-server: {}",
        command_line("redis-server", &["--version"])
    );
    println!("  mosquitto: {}", command_line("mosquitto", &["-h"]));
    println!("  crates: {}", crate_versions());
    println!(
        "  cores: {}, load average at start: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "  runs {}, drain {} msgs (no-op) / {} msgs (1 ms), open loop {} / {} msgs/s (no-op / 1 ms) \
         for {} s, concurrency {}, receiver_queue_size {}, raw valkey batch {}",
        settings.runs,
        settings.drain_messages,
        settings.sleep_messages,
        settings.rate,
        settings.sleep_rate,
        settings.open_seconds,
        settings.concurrency,
        settings
            .receiver_queue_size
            .map_or("default".to_owned(), |s| s.to_string()),
        settings.raw_batch
    );
    println!();
}

fn print_summary(cases: &[Case]) {
    println!("summary (medians; ratio = framework ÷ raw per run pair, median [min–max])");
    println!(
        "{:<34} {:>10} {:>10} {:>22} {:>14} {:>14}",
        "case", "fw msgs/s", "raw msgs/s", "throughput ratio", "p50 ms fw/raw", "p99 ms fw/raw"
    );
    for case in cases {
        if case.framework.is_empty() || case.raw.is_empty() {
            println!("{:<34} (incomplete)", case.title);
            continue;
        }
        let rate = |runs: &[RunResult]| Spread::of(runs.iter().map(RunResult::per_second)).median;
        let ratio = Spread::of(
            case.framework
                .iter()
                .zip(&case.raw)
                .map(|(f, r)| f.per_second() / r.per_second()),
        );
        let latency = |runs: &[RunResult], i: usize| {
            Spread::of(
                runs.iter()
                    .filter_map(|r| r.latency_us.map(|l| l[i] as f64 / 1000.0)),
            )
            .median
        };
        let pair = |i: usize| {
            if case.framework[0].latency_us.is_some() {
                format!(
                    "{:.2}/{:.2}",
                    latency(&case.framework, i),
                    latency(&case.raw, i)
                )
            } else {
                "-".to_owned()
            }
        };
        println!(
            "{:<34} {:>10.0} {:>10.0} {:>22} {:>14} {:>14}",
            case.title,
            rate(&case.framework),
            rate(&case.raw),
            ratio.show(3),
            pair(0),
            pair(1)
        );
    }
}

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    print_header(&settings);
    let cases = runtime.block_on(async {
        let mut cases = Vec::new();
        let mut run_id = 0;
        for backend in &settings.backends {
            match backend.as_str() {
                "valkey" => {
                    if let Some(valkey) = valkey::Valkey::start().await? {
                        cases.extend(bench_backend(&valkey, &settings, &mut run_id).await);
                    }
                }
                "mqtt" => {
                    if let Some(mqtt) = mqtt::Mqtt::start().await? {
                        cases.extend(bench_backend(&mqtt, &settings, &mut run_id).await);
                    }
                }
                "pulsar" => {
                    if let Some(pulsar) = pulsar::Pulsar::start().await? {
                        warm_up(&pulsar, &settings, &mut run_id).await;
                        cases.extend(bench_backend(&pulsar, &settings, &mut run_id).await);
                    }
                }
                other => anyhow::bail!("unknown backend {other:?}: valkey, mqtt or pulsar"),
            }
        }
        anyhow::Ok(cases)
    })?;
    print_summary(&cases);
    Ok(())
}
