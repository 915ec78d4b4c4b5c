//! A sanity run of the Valkey backend's throughput, not a benchmark of record: publishes and
//! consumes 20,000 messages of 256 bytes on a `redis-server` of its own and prints messages per
//! second. Run with `cargo bench -p integration-tests --bench valkey_throughput`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::brokers::RedisServer;
use worker_runtime::broker::valkey::{ValkeyBroker, ValkeyOptions};
use worker_runtime::{
    Broker, ConsumerType, InitialPosition, Message, SubscribeOptions, Subscription, Topic,
};

const COUNT: usize = 20_000;
const IN_FLIGHT: usize = 64;
const BATCH: usize = 100;

fn main() -> anyhow::Result<()> {
    let Some(server) = RedisServer::start() else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(&server))
}

async fn run(server: &RedisServer) -> anyhow::Result<()> {
    let options = ValkeyOptions {
        block_timeout: Duration::from_millis(200),
        ..ValkeyOptions::new(server.url())
    };
    let broker = Arc::new(ValkeyBroker::connect(options).await?);
    let payload = vec![b'x'; 256];

    // Publish, one at a time.
    let topic = Topic::parse("q1/bench/valkey/sequential")?;
    let started = Instant::now();
    for n in 0..COUNT {
        let message = Message::new(payload.clone()).with_property("n", n.to_string());
        broker.publish(&topic, message).await?;
    }
    report("publish, 1 in flight", started.elapsed());

    // Publish, many in flight.
    let topic = Topic::parse("q1/bench/valkey/concurrent")?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..IN_FLIGHT {
        let (broker, topic, payload) = (Arc::clone(&broker), topic.clone(), payload.clone());
        tasks.spawn(async move {
            for n in (lane..COUNT).step_by(IN_FLIGHT) {
                let message = Message::new(payload.clone()).with_property("n", n.to_string());
                broker.publish(&topic, message).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    report(
        &format!("publish, {IN_FLIGHT} in flight"),
        started.elapsed(),
    );

    // Drain the backlog: receive in batches, ack each batch with one XACK.
    let sub = broker.subscribe(options_for(&topic)).await?;
    let started = Instant::now();
    let drained = drain(&*sub, COUNT).await?;
    report(
        &format!("drain {drained}, batches of {BATCH}"),
        started.elapsed(),
    );
    sub.close().await?;

    // Publish and consume at once.
    let topic = Topic::parse("q1/bench/valkey/live")?;
    let sub = broker.subscribe(options_for(&topic)).await?;
    let started = Instant::now();
    let consumer = tokio::spawn(async move { drain(&*sub, COUNT).await });
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..IN_FLIGHT {
        let (broker, topic, payload) = (Arc::clone(&broker), topic.clone(), payload.clone());
        tasks.spawn(async move {
            for n in (lane..COUNT).step_by(IN_FLIGHT) {
                let message = Message::new(payload.clone()).with_property("n", n.to_string());
                broker.publish(&topic, message).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    let consumed = consumer.await??;
    report(
        &format!("publish + consume {consumed} at once"),
        started.elapsed(),
    );
    Ok(())
}

fn options_for(topic: &Topic) -> SubscribeOptions {
    SubscribeOptions {
        topic: topic.clone(),
        subscription: "bench".into(),
        consumer_name: "bench-1".into(),
        consumer_type: ConsumerType::Shared,
        initial_position: InitialPosition::Earliest,
        receiver_queue_size: 1000,
    }
}

async fn drain(sub: &dyn Subscription, count: usize) -> anyhow::Result<usize> {
    let mut seen = 0;
    while seen < count {
        let batch = tokio::time::timeout(Duration::from_secs(10), sub.receive(BATCH)).await??;
        seen += batch.len();
        sub.ack(batch.into_iter().map(|d| d.id).collect()).await?;
    }
    Ok(seen)
}

fn report(what: &str, elapsed: Duration) {
    let rate = COUNT as f64 / elapsed.as_secs_f64();
    println!("valkey {what:<32} {COUNT} msgs in {elapsed:>10.2?}: {rate:>9.0} msgs/s");
}
