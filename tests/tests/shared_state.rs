//! State that every copy of a worker shares, on a real redis-server, a real PostgreSQL and the
//! Pulsar standalone, with worker processes of the `shared_state` example:
//! - each credit ledger charges once per message, refunds once, charges a replay again and never
//!   goes below zero, with 50 workers' worth of concurrent charges;
//! - three worker processes charging one principal, one of them killed (SIGKILL) twice and
//!   restarted: charges equal the messages handled, refunds the messages dead-lettered, and the
//!   balance adds up, on the Valkey ledger and on the PostgreSQL one;
//! - three worker processes under one global limit of 20 a second: no span of a second holds
//!   more than 20 starts across the three;
//! - a message published twice under one stable id runs once; a message whose worker was killed
//!   after running it but before its ack went out is redelivered and acked without running again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::brokers::{free_port, Postgres, PulsarStandalone, RedisServer};
use integration_tests::processes::{example_binary, http_get, metric_sum, ChildGuard};
use worker_runtime::auth::{Hs256Signer, Secret};
use worker_runtime::broker::valkey::{ValkeyBroker, ValkeyOptions};
use worker_runtime::credits::{self, ChargeKey, ChargeOutcome, CreditLedger, RefundOutcome};
use worker_runtime::{props, Broker, Message, Topic};

const KEY: &[u8] = b"shared-state-test-key-32-bytes!!";

// ---------------------------------------------------------------------------------------------
// The ledgers themselves

async fn exercise_ledger(ledger: Arc<dyn CreditLedger>, name: &str) {
    let key = |who: &str, id: &str| ChargeKey {
        task: "t".into(),
        principal: who.into(),
        message_id: id.into(),
    };
    assert_eq!(
        ledger.grant("alice", "c", 10).await.expect("grant"),
        10,
        "{name}"
    );
    assert_eq!(
        ledger
            .charge(&key("alice", "m1"), "c", 3)
            .await
            .expect("charge"),
        ChargeOutcome::Charged
    );
    assert_eq!(
        ledger
            .charge(&key("alice", "m1"), "c", 3)
            .await
            .expect("charge"),
        ChargeOutcome::AlreadyCharged,
        "{name}: a redelivery is not charged again"
    );
    assert_eq!(ledger.balance("alice", "c").await.expect("balance"), 7);
    assert_eq!(
        ledger.refund(&key("alice", "m1")).await.expect("refund"),
        RefundOutcome::Refunded(3)
    );
    assert_eq!(
        ledger.refund(&key("alice", "m1")).await.expect("refund"),
        RefundOutcome::NothingToRefund,
        "{name}: refunded once"
    );
    assert_eq!(
        ledger
            .charge(&key("alice", "m1"), "c", 3)
            .await
            .expect("charge"),
        ChargeOutcome::Charged,
        "{name}: a replay after the refund is charged again"
    );
    assert_eq!(
        ledger
            .charge(&key("alice", "m2"), "c", 8)
            .await
            .expect("charge"),
        ChargeOutcome::Insufficient { available: 7 },
        "{name}"
    );
    assert_eq!(
        ledger.refund(&key("alice", "m2")).await.expect("refund"),
        RefundOutcome::NothingToRefund,
        "{name}: an insufficient charge took nothing to refund"
    );

    // Many workers at once: one key is charged once; many keys never take the balance below 0.
    ledger.grant("bob", "c", 100).await.expect("grant");
    let same: Vec<_> = (0..50)
        .map(|_| {
            let ledger = ledger.clone();
            tokio::spawn(async move { ledger.charge(&key("bob", "same"), "c", 5).await })
        })
        .collect();
    let mut charged = 0;
    for task in same {
        if task.await.expect("joined").expect("charge") == ChargeOutcome::Charged {
            charged += 1;
        }
    }
    assert_eq!(charged, 1, "{name}: one charge for one key");
    let many: Vec<_> = (0..50)
        .map(|n| {
            let ledger = ledger.clone();
            tokio::spawn(async move { ledger.charge(&key("bob", &format!("k{n}")), "c", 7).await })
        })
        .collect();
    let mut taken = 0;
    for task in many {
        if task.await.expect("joined").expect("charge") == ChargeOutcome::Charged {
            taken += 1;
        }
    }
    assert_eq!(taken, 95 / 7, "{name}: as many as the balance covers");
    assert_eq!(
        ledger.balance("bob", "c").await.expect("balance"),
        95 - 7 * taken
    );

    // A key is the task, the principal and the id: another sender reusing alice's id pays for
    // its own charge, and its refund leaves hers standing.
    ledger.grant("mallory", "c", 10).await.expect("grant");
    assert_eq!(
        ledger
            .charge(&key("mallory", "m1"), "c", 3)
            .await
            .expect("charge"),
        ChargeOutcome::Charged,
        "{name}: no riding on another's charge"
    );
    assert_eq!(
        ledger.refund(&key("mallory", "m1")).await.expect("refund"),
        RefundOutcome::Refunded(3)
    );
    assert_eq!(
        ledger.balance("alice", "c").await.expect("balance"),
        7,
        "{name}: alice's charge of m1 stands"
    );
    // Names holding the key separator make no other's key.
    let (colon_a, colon_b) = (
        ChargeKey {
            task: "a:b".into(),
            principal: "p".into(),
            message_id: "c".into(),
        },
        ChargeKey {
            task: "a".into(),
            principal: "p".into(),
            message_id: "b:c".into(),
        },
    );
    ledger.grant("p", "c", 2).await.expect("grant");
    assert_eq!(
        ledger.charge(&colon_a, "c", 1).await.expect("charge"),
        ChargeOutcome::Charged
    );
    assert_eq!(
        ledger.charge(&colon_b, "c", 1).await.expect("charge"),
        ChargeOutcome::Charged,
        "{name}: `a:b`/`c` and `a`/`b:c` are two keys"
    );

    let history = ledger.history("alice", 10).await.expect("history");
    let kinds: Vec<&str> = history.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["charge", "refund", "charge", "grant"],
        "{name}: newest first"
    );
    assert_eq!(history[0].message_id.as_deref(), Some("m1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ledger_charges_once_refunds_once_and_never_goes_below_zero() {
    if let Some(server) = RedisServer::start() {
        let ledger = credits::connect(&server.url())
            .await
            .expect("valkey ledger");
        exercise_ledger(ledger, "valkey").await;
    }
    if let Some(postgres) = tokio::task::spawn_blocking(Postgres::start)
        .await
        .expect("start")
    {
        let ledger = credits::connect(&postgres.url())
            .await
            .expect("postgres ledger");
        exercise_ledger(ledger, "postgres").await;
        // A second worker starting on the same database finds the schema applied.
        let again = credits::connect(&postgres.url())
            .await
            .expect("connect again");
        assert_eq!(again.balance("alice", "c").await.expect("balance"), 7);
    }
}

// ---------------------------------------------------------------------------------------------
// Worker processes

struct Workers {
    dir: PathBuf,
    args: Vec<String>,
    children: BTreeMap<String, (ChildGuard, u16)>,
}

impl Workers {
    fn new(name: &str, args: &[String]) -> Self {
        let dir = std::env::temp_dir().join(format!("shared-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        std::fs::write(dir.join("key"), KEY).expect("key file");
        Workers {
            dir,
            args: args.to_vec(),
            children: BTreeMap::new(),
        }
    }

    fn start(&mut self, name: &str) {
        let port = self
            .children
            .get(name)
            .map(|(_, port)| *port)
            .unwrap_or_else(free_port);
        let child = ChildGuard::spawn(
            Command::new(example_binary("shared_state"))
                .args(&self.args)
                .args(["--consumer-name", name])
                .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
                .arg("--jwt-secret-file")
                .arg(self.dir.join("key"))
                .env(
                    "SHARED_STATE_LEDGER",
                    self.dir.join(format!("{name}.ledger")),
                )
                .env("RUST_LOG", "error"),
        );
        self.children.insert(name.to_owned(), (child, port));
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if http_get(port, "/readyz").is_some_and(|(status, _)| status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("worker {name} did not become ready");
    }

    fn kill(&mut self, name: &str) {
        if let Some((child, _)) = self.children.get_mut(name) {
            let _ = child.0.kill();
            let _ = child.0.wait();
        }
    }

    fn metric(&self, series: &str, labels: &[&str]) -> f64 {
        self.children
            .values()
            .filter_map(|(_, port)| http_get(*port, "/metrics"))
            .map(|(_, body)| metric_sum(&body, series, labels))
            .sum()
    }

    /// Every ledger line, `(task, id, millis)`.
    fn runs(&self) -> Vec<(String, String, u64)> {
        let mut runs = Vec::new();
        for entry in std::fs::read_dir(&self.dir).expect("dir").flatten() {
            if entry.path().extension().is_some_and(|e| e == "ledger") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                for line in text.lines() {
                    let mut parts = line.split(' ');
                    if let (Some(task), Some(id), Some(millis)) =
                        (parts.next(), parts.next(), parts.next())
                    {
                        runs.push((task.to_owned(), id.to_owned(), millis.parse().unwrap_or(0)));
                    }
                }
            }
        }
        runs
    }

    fn stop(&mut self) {
        for (child, _) in self.children.values() {
            child.terminate();
        }
        for (child, _) in self.children.values_mut() {
            let _ = child.wait_for_exit(Duration::from_secs(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn valkey_args(redis: &RedisServer) -> Vec<String> {
    ["--backend", "valkey", "--valkey-url", &redis.url()]
        .map(str::to_owned)
        .to_vec()
}

async fn valkey(redis: &RedisServer) -> Arc<dyn Broker> {
    Arc::new(
        ValkeyBroker::connect(ValkeyOptions::new(redis.url()))
            .await
            .expect("connect"),
    )
}

fn token() -> String {
    Hs256Signer::new(Secret::new(KEY.to_vec()))
        .sign("alice", &["producer"], Duration::from_secs(3600))
        .expect("sign")
}

async fn publish(
    broker: &dyn Broker,
    topic: &str,
    seq: u64,
    poison: bool,
    id: &str,
    token: Option<&str>,
) {
    let mut message = Message::new(format!("{{\"seq\": {seq}, \"poison\": {poison}}}"))
        .with_property(props::MESSAGE_ID, id);
    if let Some(token) = token {
        message = message.with_property(props::AUTH_TOKEN, token);
    }
    let topic = Topic::parse(topic).expect("topic");
    broker.publish(&topic, message).await.expect("publish");
}

/// The charge scenario on the ledger at `credits_url`.
fn three_workers_charge_one_principal(redis: &RedisServer, credits_url: &str, name: &str) {
    const MESSAGES: u64 = 1500;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ledger = runtime
        .block_on(credits::connect(credits_url))
        .expect("ledger");
    let start_balance = 100_000;
    runtime
        .block_on(ledger.grant("alice", "event_credits", start_balance))
        .expect("grant");
    let mut args = valkey_args(redis);
    args.extend(["--tasks", "charge_event", "--credits-url", credits_url].map(str::to_owned));
    let mut workers = Workers::new(name, &args);
    for worker in ["w1", "w2", "w3"] {
        workers.start(worker);
    }
    let broker = runtime.block_on(valkey(redis));
    let token = token();
    let poison = |seq: u64| seq % 10 == 7;
    let publisher = {
        let broker = broker.clone();
        let token = token.clone();
        let name = name.to_owned();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async {
                for seq in 0..MESSAGES {
                    let id = format!("{name}-{seq}");
                    publish(
                        &*broker,
                        "q1/demo/shared/charged",
                        seq,
                        poison(seq),
                        &id,
                        Some(&token),
                    )
                    .await;
                    if seq % 50 == 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            });
        })
    };
    // Kill one worker twice while messages stream in, restarting it under its name.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(400));
        workers.kill("w2");
        std::thread::sleep(Duration::from_millis(300));
        workers.start("w2");
    }
    publisher.join().expect("published");
    let good = (0..MESSAGES).filter(|s| !poison(*s)).count() as f64;
    let bad = MESSAGES as f64 - good;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let handled: BTreeSet<String> = workers.runs().into_iter().map(|(_, id, _)| id).collect();
        let balance = runtime
            .block_on(ledger.balance("alice", "event_credits"))
            .unwrap_or(0) as f64;
        if (handled.len() as u64 >= MESSAGES && balance == start_balance as f64 - good)
            || Instant::now() > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let runs = workers.runs();
    let handled: BTreeSet<String> = runs.iter().map(|(_, id, _)| id.clone()).collect();
    let more_than_once = runs.len() - handled.len();
    let history = runtime
        .block_on(ledger.history("alice", 5))
        .expect("history");
    let balance = runtime
        .block_on(ledger.balance("alice", "event_credits"))
        .expect("balance");
    let charges = workers.metric("worker_credits_charged_total", &["task=\"charge_event\""]);
    workers.stop();
    // Every message's charge record: charged (and kept) or refunded.
    let (kept, refunded) = charge_records(redis, credits_url, &runtime);
    println!(
        "{name}: {} messages handled ({more_than_once} runs more than once, after the kills), \
         {kept} charges kept, {refunded} refunded, balance {balance} of {start_balance}; \
         the live workers' metrics counted {charges} charges; latest events {:?}",
        handled.len(),
        history.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>()
    );
    assert_eq!(
        handled.len() as u64,
        MESSAGES,
        "{name}: every message handled"
    );
    assert_eq!(
        kept as f64, good,
        "{name}: charges kept = the messages that succeeded"
    );
    assert_eq!(
        refunded as f64, bad,
        "{name}: refunds = the messages dead-lettered"
    );
    assert_eq!(
        balance as f64,
        start_balance as f64 - good,
        "{name}: the balance adds up"
    );
}

/// How many charges of `charge_event` the ledger holds as kept and as refunded.
fn charge_records(
    redis: &RedisServer,
    credits_url: &str,
    runtime: &tokio::runtime::Runtime,
) -> (u64, u64) {
    if credits_url.starts_with("postgres") {
        let url = credits_url.to_owned();
        return runtime.block_on(async move {
            let (client, connection) = tokio_postgres_connect(&url).await;
            let handle = tokio::spawn(connection);
            let row = client
                .query_one(
                    "SELECT count(*) FILTER (WHERE refunded_at IS NULL),
                            count(*) FILTER (WHERE refunded_at IS NOT NULL)
                     FROM wr_credit_charges WHERE task = 'charge_event'",
                    &[],
                )
                .await
                .expect("count charges");
            handle.abort();
            (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64)
        });
    }
    let mut kept = 0;
    let mut refunded = 0;
    let keys = redis
        .cli(&["--scan", "--pattern", "wr:credits:charge:12:charge_event:*"])
        .unwrap_or_default();
    for key in keys.lines().filter(|k| !k.is_empty()) {
        match redis
            .cli(&["HGET", key, "state"])
            .unwrap_or_default()
            .trim()
        {
            "charged" => kept += 1,
            "refunded" => refunded += 1,
            _ => {}
        }
    }
    (kept, refunded)
}

async fn tokio_postgres_connect(
    url: &str,
) -> (
    tokio_postgres::Client,
    impl std::future::Future<Output = Result<(), tokio_postgres::Error>>,
) {
    tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to postgres")
}

#[test]
fn three_workers_charge_one_principal_across_kills_on_valkey_and_postgres() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    three_workers_charge_one_principal(&redis, &redis.url(), "valkey-ledger");
    let Some(postgres) = Postgres::start() else {
        return;
    };
    three_workers_charge_one_principal(&redis, &postgres.url(), "postgres-ledger");
}

#[test]
fn three_workers_under_one_global_limit_never_exceed_it() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    const MESSAGES: u64 = 120;
    let mut args = valkey_args(&redis);
    args.extend(["--tasks", "limited_event", "--rate-limit-url", &redis.url()].map(str::to_owned));
    let mut workers = Workers::new("limit", &args);
    for worker in ["w1", "w2", "w3"] {
        workers.start(worker);
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let broker = valkey(&redis).await;
        for seq in 0..MESSAGES {
            publish(
                &*broker,
                "q1/demo/shared/limited",
                seq,
                false,
                &format!("l-{seq}"),
                None,
            )
            .await;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while (workers.runs().len() as u64) < MESSAGES && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let runs = workers.runs();
    workers.stop();
    let mut starts: Vec<u64> = runs.iter().map(|(_, _, millis)| *millis).collect();
    starts.sort_unstable();
    // The busiest span of one second, across all three workers.
    let busiest = starts
        .iter()
        .enumerate()
        .map(|(i, &t)| starts[i..].iter().take_while(|&&u| u < t + 1000).count())
        .max()
        .unwrap_or(0);
    let took = starts.last().unwrap_or(&0) - starts.first().unwrap_or(&0);
    println!(
        "global limit 20/s: {} starts over {took} ms across three workers; the busiest second held {busiest}",
        starts.len()
    );
    assert_eq!(starts.len() as u64, MESSAGES, "every message ran");
    assert!(busiest <= 20, "a second held {busiest} starts");
    // Together, not three times the limit: 120 messages take about 6 s, not 2.
    assert!(
        took >= 5_000,
        "{took} ms: the limit did not bind the three together"
    );
}

#[test]
fn a_message_runs_once_whether_published_twice_or_redelivered_after_a_crash() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let Some(pulsar) = PulsarStandalone::shared() else {
        return;
    };
    pulsar.ensure_namespace_of("persistent://demo/shared/any");
    // Acks wait 10 s to be sent together: a worker killed within that time never sent its ack.
    let args: Vec<String> = [
        "--backend",
        "pulsar",
        "--pulsar-host",
        &pulsar.url(),
        "--pulsar-ack-group-time",
        "10s",
        "--tasks",
        "once_event",
        "--idempotency-url",
        &redis.url(),
    ]
    .map(str::to_owned)
    .to_vec();
    let mut workers = Workers::new("once", &args);
    workers.start("w1");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let broker: Arc<dyn Broker> = runtime.block_on(async {
        Arc::new(
            worker_runtime::broker::pulsar::PulsarBroker::connect(
                worker_runtime::broker::pulsar::PulsarOptions::new(pulsar.url()),
            )
            .await
            .expect("connect"),
        )
    });
    let runs_of =
        |workers: &Workers, id: &str| workers.runs().iter().filter(|(_, i, _)| i == id).count();
    let wait_for = |workers: &Workers, id: &str, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while runs_of(workers, id) < count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // Published twice under one stable id.
    runtime.block_on(publish(
        &*broker,
        "q1/demo/shared/once",
        1,
        false,
        "twice",
        None,
    ));
    wait_for(&workers, "twice", 1);
    runtime.block_on(publish(
        &*broker,
        "q1/demo/shared/once",
        1,
        false,
        "twice",
        None,
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while workers.metric("worker_messages_total", &["outcome=\"duplicate\""]) < 1.0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let duplicates = workers.metric("worker_messages_total", &["outcome=\"duplicate\""]);

    // Run, then the worker dies before its ack goes out; its successor gets the message again.
    runtime.block_on(publish(
        &*broker,
        "q1/demo/shared/once",
        2,
        false,
        "crashed",
        None,
    ));
    wait_for(&workers, "crashed", 1);
    workers.kill("w1");
    workers.start("w1");
    let deadline = Instant::now() + Duration::from_secs(30);
    while workers.metric("worker_messages_total", &["outcome=\"duplicate\""]) < 1.0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let redelivered_and_skipped =
        workers.metric("worker_messages_total", &["outcome=\"duplicate\""]);
    // Give any other redelivery time to land before counting runs.
    std::thread::sleep(Duration::from_secs(2));
    let redelivered_and_skipped = redelivered_and_skipped
        .max(workers.metric("worker_messages_total", &["outcome=\"duplicate\""]));
    let twice = runs_of(&workers, "twice");
    let crashed = runs_of(&workers, "crashed");
    workers.stop();
    // The broker's connection tasks live on this runtime: close it there.
    runtime.block_on(async move { drop(broker) });
    println!(
        "published twice: ran {twice} time(s), {duplicates} duplicate acked; redelivered after a crash: \
         ran {crashed} time(s), the restarted worker acked {redelivered_and_skipped} duplicate(s)"
    );
    assert_eq!(duplicates, 1.0, "the second copy was acked without running");
    assert_eq!(twice, 1);
    // Every ack the killed worker held back comes again: "crashed", and the copies of "twice"
    // when they fell in the same ack window. Each is acked without running.
    assert!(
        (1.0..=3.0).contains(&redelivered_and_skipped),
        "the redelivery was acked without running ({redelivered_and_skipped})"
    );
    assert_eq!(crashed, 1);
}

// ---------------------------------------------------------------------------------------------
// A ledger that goes away

/// Counts the runs of `ledger_outage_task`, by stable id.
static OUTAGE_RUNS: std::sync::Mutex<BTreeMap<String, u32>> =
    std::sync::Mutex::new(BTreeMap::new());

#[worker_runtime::pulsar_db_task(
    topic = "q1/test/shared/outage",
    credit_type = "outage_credits",
    credit_amount = 1,
    retry_delay = "200ms"
)]
async fn ledger_outage_task(
    _event: serde_json::Value,
    ctx: worker_runtime::TaskContext,
) -> Result<(), worker_runtime::TaskError> {
    let mut runs = OUTAGE_RUNS.lock().unwrap_or_else(|e| e.into_inner());
    *runs.entry(ctx.message_id().to_owned()).or_default() += 1;
    Ok(())
}

/// Runs a worker charging on the ledger at `url` while `outage` takes the store away for two
/// seconds and brings it back: messages wait (given back, no attempt used), nothing runs
/// uncharged, nothing is charged twice, and `worker_store_errors_total` says so.
async fn messages_wait_for_the_ledger(url: &str, name: &str, mut outage: impl FnMut(bool)) {
    const MESSAGES: u64 = 300;
    OUTAGE_RUNS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    let ledger = credits::connect(url).await.expect("ledger");
    ledger
        .grant("alice", "outage_credits", 1_000)
        .await
        .expect("grant");
    let broker = Arc::new(worker_runtime::broker::MemoryBroker::new());
    let metrics = worker_runtime::metrics::Metrics::new(name);
    let worker = worker_runtime::worker::Worker::builder()
        .broker(broker.clone())
        .task(ledger_outage_task::task())
        .credit_ledger(ledger.clone())
        .verifier(Arc::new(worker_runtime::auth::Hs256Verifier::new(
            Secret::new(KEY.to_vec()),
        )))
        .metrics(metrics.clone())
        .consumer_name(name)
        .build()
        .expect("worker");
    let stop = worker_runtime::worker::CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let token = token();
    let runs = || OUTAGE_RUNS.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
    // Messages keep coming, 100 a second, while the store goes away and comes back.
    let publisher = tokio::spawn({
        let (broker, name) = (broker.clone(), name.to_owned());
        async move {
            for seq in 0..MESSAGES {
                let id = format!("{name}-{seq}");
                publish(
                    &*broker,
                    "q1/test/shared/outage",
                    seq,
                    false,
                    &id,
                    Some(&token),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    outage(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    outage(false);
    publisher.await.expect("published");
    let deadline = Instant::now() + Duration::from_secs(60);
    while runs() < MESSAGES && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let report = running.await.expect("joined").expect("worker ran");
    let report = report.task("ledger_outage_task").expect("report").clone();
    let text = metrics.encode();
    let store_errors = metric_sum(&text, "worker_store_errors_total", &["store=\"credits\""]);
    let balance = ledger
        .balance("alice", "outage_credits")
        .await
        .expect("balance");
    let more_than_once = OUTAGE_RUNS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter(|&&n| n > 1)
        .count();
    println!(
        "{name}: the ledger away for 2 s: {} messages ran, {} given back, {store_errors} store errors, \
         {} dead-lettered, balance {balance} of 1000",
        runs(),
        report.nacked,
        report.dead_lettered
    );
    assert_eq!(
        runs(),
        MESSAGES,
        "{name}: every message ran once the ledger was back"
    );
    assert_eq!(more_than_once, 0, "{name}: no message ran twice");
    assert_eq!(
        balance,
        1_000 - MESSAGES,
        "{name}: each message charged exactly once"
    );
    assert_eq!(
        report.dead_lettered, 0,
        "{name}: an unreachable ledger is no reason for the DLQ"
    );
    assert!(
        report.nacked > 0,
        "{name}: messages were given back while the ledger was away"
    );
    assert!(
        store_errors >= 1.0,
        "{name}: worker_store_errors_total counted the outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_while_the_ledger_is_away_and_are_charged_once_after() {
    if let Some(mut redis) = RedisServer::start() {
        let url = redis.url();
        messages_wait_for_the_ledger(&url, "valkey-outage", |down| {
            if down {
                redis.kill()
            } else {
                redis.restart()
            }
        })
        .await;
    }
    if let Some(mut postgres) = tokio::task::spawn_blocking(Postgres::start)
        .await
        .expect("start")
    {
        let url = postgres.url();
        messages_wait_for_the_ledger(&url, "postgres-outage", |down| {
            if down {
                postgres.kill()
            } else {
                postgres.restart()
            }
        })
        .await;
    }
}
