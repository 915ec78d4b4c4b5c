//! The demo traffic and its summary.

use std::sync::Arc;
use std::time::Duration;

use worker_runtime::auth::{Hs256Signer, Hs256Verifier, Secret};
use worker_runtime::broker::MemoryBroker;
use worker_runtime::cli::BackendKind;
use worker_runtime::credits::{CreditLedger, MemoryCreditLedger};
use worker_runtime::metrics::Metrics;
use worker_runtime::worker::{CancellationToken, Worker, WorkerReport};
use worker_runtime::{
    props, Broker, ConsumerType, InitialPosition, Message, SubscribeOptions, Topic,
};

use crate::{ingest_data, write_records, RawEvent, Record};

/// The demo's signing key. A real deployment passes its key with `--jwt-secret-file`.
const DEMO_KEY: &[u8] = b"quickstart-demo-key-not-a-secret!";
const INGEST_DLQ: &str = "persistent://demo/ingest/raw-data-dlq";
const WRITES_DLQ: &str = "persistent://demo/db/writes-dlq";

/// Credits each demo principal starts with.
pub fn demo_ledger() -> Arc<MemoryCreditLedger> {
    let ledger = MemoryCreditLedger::new();
    ledger.set_balance("alice", "db_credits", 10);
    ledger.set_balance("bob", "db_credits", 1);
    Arc::new(ledger)
}

/// The demo's verification key.
pub fn demo_secret() -> Secret {
    Secret::new(DEMO_KEY.to_vec())
}

fn event(id: u64, body: &str) -> RawEvent {
    RawEvent {
        id,
        body: body.to_owned(),
        fail_attempts: 0,
        work_ms: 0,
    }
}

/// Publishes the demo traffic: successes, a retry that then succeeds, a timeout, exhausted
/// retries, a poison payload, a burst that meets the rate limit, an authorized and charged write,
/// a forbidden write and one without enough credits.
pub async fn send_traffic(broker: &dyn Broker) -> anyhow::Result<()> {
    let signer = Hs256Signer::new(demo_secret());
    ingest_data::enqueue(broker, &event(1, "hello")).await?;
    ingest_data::enqueue(broker, &event(2, "world")).await?;
    let flaky = RawEvent {
        fail_attempts: 2,
        ..event(3, "flaky: fails twice, then succeeds")
    };
    ingest_data::enqueue(broker, &flaky).await?;
    let slow = RawEvent {
        work_ms: 3_000,
        ..event(4, "slow: exceeds its 1 s timeout")
    };
    ingest_data::enqueue(broker, &slow).await?;
    let doomed = RawEvent {
        fail_attempts: 99,
        ..event(5, "doomed: always fails")
    };
    ingest_data::enqueue(broker, &doomed).await?;
    let poison = Message::new(&br#"{"id": "not-a-number", "body": 7}"#[..]);
    broker.publish(&ingest_data::config().topic, poison).await?;
    for id in 6..=15 {
        ingest_data::enqueue(broker, &event(id, "burst")).await?;
    }

    let rows = vec![
        Record {
            key: "a".into(),
            value: 1,
        },
        Record {
            key: "b".into(),
            value: 2,
        },
    ];
    let alice = signer.sign("alice", &["db_writer"], Duration::from_secs(3600))?;
    let mallory = signer.sign("mallory", &["reader"], Duration::from_secs(3600))?;
    let bob = signer.sign("bob", &["db_writer"], Duration::from_secs(3600))?;
    write_records::message(&rows)
        .auth_token(alice)
        .send(broker)
        .await?;
    write_records::message(&rows)
        .auth_token(mallory)
        .send(broker)
        .await?;
    write_records::message(&rows)
        .auth_token(bob)
        .send(broker)
        .await?;
    Ok(())
}

/// `--demo`: run the traffic through a worker on the embedded broker, print what happened, exit.
pub async fn run() -> anyhow::Result<()> {
    let broker = Arc::new(MemoryBroker::new());
    let ledger = demo_ledger();
    let metrics = Metrics::new("quickstart");
    println!("Publishing demo traffic to the embedded broker…");
    send_traffic(&*broker).await?;
    let worker = Worker::builder()
        .broker(broker.clone())
        .tasks([ingest_data::task(), write_records::task()])
        .verifier(Arc::new(Hs256Verifier::new(demo_secret())))
        .credit_ledger(ledger.clone())
        .metrics(metrics.clone())
        .consumer_name("quickstart")
        .build()?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    println!("Worker running; handlers say:");

    // Three ingest messages and two writes end in the DLQ; wait for them, then for the last acks.
    let ingest_dead = read_all(&*broker, INGEST_DLQ, 3).await?;
    let writes_dead = read_all(&*broker, WRITES_DLQ, 2).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    let report = running.await??;

    print_summary(&report, &[&ingest_dead, &writes_dead], &ledger, &metrics).await;
    Ok(())
}

async fn read_all(
    broker: &dyn Broker,
    topic: &str,
    count: usize,
) -> anyhow::Result<Vec<Arc<Message>>> {
    let subscription = broker
        .subscribe(SubscribeOptions {
            topic: Topic::parse(topic)?,
            subscription: "demo-inspector".into(),
            consumer_name: "demo-inspector".into(),
            consumer_type: ConsumerType::Shared,
            initial_position: InitialPosition::Earliest,
            receiver_queue_size: 100,
        })
        .await?;
    let mut messages = Vec::new();
    while messages.len() < count {
        let batch = tokio::time::timeout(Duration::from_secs(30), subscription.receive(count))
            .await
            .map_err(|_| anyhow::anyhow!("the demo's dead letters did not arrive within 30 s"))??;
        subscription
            .ack(batch.iter().map(|d| d.id.clone()).collect())
            .await?;
        messages.extend(batch.into_iter().map(|d| d.message));
    }
    subscription.close().await?;
    Ok(messages)
}

async fn print_summary(
    report: &WorkerReport,
    dead: &[&Vec<Arc<Message>>],
    ledger: &MemoryCreditLedger,
    metrics: &Metrics,
) {
    println!("\nSummary");
    for task in &report.tasks {
        println!(
            "  {:<14} received {:>2}, succeeded {:>2}, retried {:>2}, dead-lettered {}",
            task.task, task.received, task.succeeded, task.retried, task.dead_lettered
        );
    }
    println!("\nDead-letter queues");
    for message in dead.iter().flat_map(|d| d.iter()) {
        let prop = |name| message.property(name).unwrap_or("-");
        println!(
            "  {:<14} {:<21} after {} attempt(s): {}",
            prop(props::DLQ_TASK),
            prop(props::DLQ_REASON),
            prop(props::DLQ_ATTEMPTS),
            prop(props::DLQ_ERROR)
        );
    }
    println!("\nCredits (db_credits)");
    for (who, started) in [("alice", 10), ("bob", 1)] {
        let now = ledger.balance(who, "db_credits").await.unwrap_or(0);
        println!("  {who:<6} {started:>2} → {now}");
    }
    let waited = metrics
        .encode()
        .lines()
        .filter(|l| {
            l.starts_with("worker_rate_limit_wait_seconds_total{") && l.contains("ingest_data")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    println!("\nRate limit: ingest_data waited {waited:.1} s in total for its 5-per-second budget");
}

/// Without `--demo`: an ordinary worker binary (every `worker_runtime::cli` flag works), with the
/// demo key and credits unless told otherwise. On the embedded broker, which nothing else can
/// publish to, it sends the demo traffic once at start; on a real broker it only consumes, as
/// every copy of a scaled-out worker should (an MQTT broker would even refuse traffic published
/// before the first worker subscribed).
pub async fn run_worker(args: Vec<String>) -> anyhow::Result<()> {
    let cli = worker_runtime::cli::parse_from(args).unwrap_or_else(|error| error.exit());
    let mut extras = worker_runtime::cli::RunExtras::new().credit_ledger(demo_ledger());
    if cli.jwt_secret.is_none() && cli.jwt_secret_file.is_none() {
        extras = extras.verifier(Arc::new(Hs256Verifier::new(demo_secret())));
    }
    if cli.command.is_none() && cli.backend.backend == BackendKind::Memory {
        let broker = worker_runtime::cli::connect_backend(&cli.backend).await?;
        send_traffic(&*broker).await?;
        extras = extras.broker(broker);
    }
    worker_runtime::cli::run_with(cli, extras).await
}
