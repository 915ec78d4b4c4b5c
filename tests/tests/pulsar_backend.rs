//! The Pulsar backend against a real broker.
//!
//! - With `PULSAR_URL` set (e.g. `pulsar://127.0.0.1:6650` from `docker compose up pulsar`), every
//!   case runs against that Apache Pulsar. Without it they print a loud skip note and pass:
//!   Apache Pulsar cannot be installed on the machines this project is built on (no container
//!   engine, no Java packages), so `REQUIRE_BROKERS=1` does not make its absence fail.
//! - `pulsar_lite_*` start the Pulsar-protocol broker of the PyPI package `pulsar-lite` when it is
//!   installed (see `find_pulsar_lite`), and check what works with it: publishing, receipts, and
//!   publishes buffered across a broker restart. Its message frames cannot be read by pulsar-rs
//!   consumers, so what was stored is read back with the official Python client (`pulsar-client`,
//!   a dependency of `pulsar-lite`) when it is importable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use integration_tests::brokers::{free_port, which, BrokerProcess};
use worker_runtime::broker::pulsar::{PulsarBroker, PulsarOptions};
use worker_runtime::{
    Broker, BrokerError, ConsumerType, Delivery, InitialPosition, Message, SubscribeOptions,
    Subscription, Topic,
};

// ---------------------------------------------------------------------------------------------
// Helpers

fn pulsar_url() -> Option<String> {
    match std::env::var("PULSAR_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "\n!!!!!!!!\n!!! SKIPPED: PULSAR_URL is not set, so this Apache Pulsar test did not run.\n\
                 !!! No Pulsar broker can be installed on the build machines (no container engine, no\n\
                 !!! Java packages), so REQUIRE_BROKERS does not apply to Pulsar. To run it:\n\
                 !!!   docker compose up -d pulsar\n\
                 !!!   PULSAR_URL=pulsar://127.0.0.1:6650 cargo test -p integration-tests --test pulsar_backend\n\
                 !!!!!!!!\n"
            );
            None
        }
    }
}

/// Logs of the backend and of pulsar-rs, shown with `RUST_LOG=debug` (and `--nocapture`).
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// An error with its causes, for assertion messages.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(&format!(": {next}"));
        cause = next.source();
    }
    text
}

fn test_options(url: &str) -> PulsarOptions {
    let mut options = PulsarOptions::new(url);
    options.operation_timeout = Duration::from_secs(10);
    options.connection_timeout = Duration::from_secs(5);
    options.publish_timeout = Duration::from_secs(30);
    options.ack_group_time = Duration::from_millis(50);
    options
}

async fn connect(url: &str) -> PulsarBroker {
    init_logs();
    match PulsarBroker::connect(test_options(url)).await {
        Ok(broker) => broker,
        Err(error) => panic!("connect to {url}: {}", chain(&error)),
    }
}

/// A topic name no earlier run used.
fn unique_topic(case: &str) -> Topic {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let text = format!(
        "persistent://public/default/wr-{case}-{}-{nanos}",
        std::process::id()
    );
    Topic::parse(&text).expect("a valid topic name")
}

fn subscribe_options(
    topic: &Topic,
    subscription: &str,
    consumer: &str,
    consumer_type: ConsumerType,
) -> SubscribeOptions {
    SubscribeOptions {
        topic: topic.clone(),
        subscription: subscription.to_owned(),
        consumer_name: consumer.to_owned(),
        consumer_type,
        initial_position: InitialPosition::Earliest,
        receiver_queue_size: 100,
    }
}

async fn subscribe(
    broker: &PulsarBroker,
    topic: &Topic,
    subscription: &str,
    consumer: &str,
    consumer_type: ConsumerType,
) -> Box<dyn Subscription> {
    broker
        .subscribe(subscribe_options(
            topic,
            subscription,
            consumer,
            consumer_type,
        ))
        .await
        .unwrap_or_else(|error| panic!("subscribe {subscription}/{consumer}: {}", chain(&error)))
}

async fn publish(broker: &PulsarBroker, topic: &Topic, message: Message) {
    if let Err(error) = broker.publish(topic, message).await {
        panic!("publish to {topic}: {}", chain(&error));
    }
}

/// Receives until `count` deliveries arrived or `limit` passed.
async fn receive_up_to(
    subscription: &dyn Subscription,
    count: usize,
    limit: Duration,
) -> Vec<Delivery> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut received = Vec::new();
    while received.len() < count {
        match tokio::time::timeout_at(deadline, subscription.receive(count - received.len())).await
        {
            Err(_) => break,
            Ok(Ok(batch)) => received.extend(batch),
            Ok(Err(error)) => panic!("receive: {}", chain(&error)),
        }
    }
    received
}

fn text(delivery: &Delivery) -> String {
    String::from_utf8_lossy(delivery.payload()).into_owned()
}

async fn ack_all(subscription: &dyn Subscription, deliveries: &[Delivery]) {
    let ids = deliveries.iter().map(|d| d.id.clone()).collect();
    subscription.ack(ids).await.expect("ack");
}

// ---------------------------------------------------------------------------------------------
// Against Apache Pulsar (PULSAR_URL)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_consume_with_properties_then_ack() {
    let Some(url) = pulsar_url() else { return };
    let broker = connect(&url).await;
    let topic = unique_topic("props");
    for n in 0..3 {
        let message = Message::new(format!("m{n}"))
            .with_property("wr-message-id", format!("id-{n}"))
            .with_property("n", n.to_string())
            .with_key("k");
        publish(&broker, &topic, message).await;
    }
    let subscription = subscribe(&broker, &topic, "s", "c1", ConsumerType::Shared).await;
    let got = receive_up_to(&*subscription, 3, Duration::from_secs(20)).await;
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), ["m0", "m1", "m2"]);
    for (n, delivery) in got.iter().enumerate() {
        assert_eq!(delivery.property("n"), Some(n.to_string().as_str()));
        assert_eq!(
            delivery.property("wr-message-id"),
            Some(format!("id-{n}").as_str())
        );
        assert_eq!(delivery.message.key.as_deref(), Some("k"));
        assert!(delivery.publish_time.is_some());
        assert_eq!(&*delivery.topic, topic.to_string());
    }
    ack_all(&*subscription, &got).await;
    subscription.close().await.expect("close flushes the acks");

    let again = subscribe(&broker, &topic, "s", "c2", ConsumerType::Shared).await;
    let redelivered = receive_up_to(&*again, 1, Duration::from_secs(3)).await;
    assert!(
        redelivered.is_empty(),
        "acked messages came back: {:?}",
        redelivered.iter().map(text).collect::<Vec<_>>()
    );
    again.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_message_is_delivered_again() {
    let Some(url) = pulsar_url() else { return };
    let broker = connect(&url).await;
    let topic = unique_topic("nack");
    let subscription = subscribe(&broker, &topic, "s", "c1", ConsumerType::Shared).await;
    publish(&broker, &topic, Message::new("again")).await;
    let first = receive_up_to(&*subscription, 1, Duration::from_secs(20)).await;
    assert_eq!(first.len(), 1);
    subscription
        .nack(vec![first[0].id.clone()])
        .await
        .expect("nack");
    let second = receive_up_to(&*subscription, 1, Duration::from_secs(20)).await;
    assert_eq!(second.iter().map(text).collect::<Vec<_>>(), ["again"]);
    ack_all(&*subscription, &second).await;
    subscription.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_splits_messages_between_consumers() {
    let Some(url) = pulsar_url() else { return };
    let broker = connect(&url).await;
    let topic = unique_topic("split");
    let mut first = subscribe_options(&topic, "s", "c1", ConsumerType::Shared);
    first.receiver_queue_size = 5;
    let mut second = first.clone();
    second.consumer_name = "c2".into();
    let one = broker.subscribe(first).await.expect("subscribe c1");
    let two = broker.subscribe(second).await.expect("subscribe c2");
    let total = 40;
    for n in 0..total {
        publish(&broker, &topic, Message::new(format!("m{n}"))).await;
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let (mut from_one, mut from_two) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < total && Instant::now() < deadline {
        for (subscription, count) in [(&one, &mut from_one), (&two, &mut from_two)] {
            let got = receive_up_to(&**subscription, 5, Duration::from_millis(300)).await;
            *count += got.len();
            for delivery in &got {
                *seen.entry(text(delivery)).or_default() += 1;
            }
            ack_all(&**subscription, &got).await;
        }
    }
    assert_eq!(seen.len(), total, "every message arrived");
    assert!(
        from_one > 0 && from_two > 0,
        "c1 got {from_one}, c2 got {from_two}"
    );
    println!(
        "shared split: c1 {from_one}, c2 {from_two}, duplicates {}",
        from_one + from_two - total
    );
    one.close().await.expect("close");
    two.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscriptions_each_get_every_message() {
    let Some(url) = pulsar_url() else { return };
    let broker = connect(&url).await;
    let topic = unique_topic("fanout");
    let a = subscribe(&broker, &topic, "a", "a1", ConsumerType::Shared).await;
    let b = subscribe(&broker, &topic, "b", "b1", ConsumerType::Exclusive).await;
    for n in 0..10 {
        publish(&broker, &topic, Message::new(format!("m{n}"))).await;
    }
    for subscription in [&a, &b] {
        let got = receive_up_to(&**subscription, 10, Duration::from_secs(20)).await;
        let names: BTreeSet<String> = got.iter().map(text).collect();
        assert_eq!(names.len(), 10);
        ack_all(&**subscription, &got).await;
        subscription.close().await.expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_subscription_acks_cumulatively_and_nothing_comes_back() {
    let Some(url) = pulsar_url() else { return };
    let broker = connect(&url).await;
    let topic = unique_topic("cumulative");
    for n in 0..25 {
        publish(&broker, &topic, Message::new(format!("m{n}"))).await;
    }
    let subscription = subscribe(&broker, &topic, "x", "x1", ConsumerType::Exclusive).await;
    let refused = broker
        .subscribe(subscribe_options(
            &topic,
            "x",
            "x2",
            ConsumerType::Exclusive,
        ))
        .await;
    assert!(refused.is_err(), "a second exclusive consumer was accepted");
    let got = receive_up_to(&*subscription, 25, Duration::from_secs(20)).await;
    let names: Vec<String> = got.iter().map(text).collect();
    assert_eq!(names, (0..25).map(|n| format!("m{n}")).collect::<Vec<_>>());
    // Out of order on purpose: the later half first, then the rest.
    ack_all(&*subscription, &got[10..]).await;
    ack_all(&*subscription, &got[..10]).await;
    subscription.close().await.expect("close");
    let again = subscribe(&broker, &topic, "x", "x3", ConsumerType::Exclusive).await;
    let back = receive_up_to(&*again, 1, Duration::from_secs(3)).await;
    assert!(
        back.is_empty(),
        "acked messages came back: {:?}",
        back.iter().map(text).collect::<Vec<_>>()
    );
    again.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_delivery_waits_until_due_on_a_shared_subscription() {
    let Some(url) = pulsar_url() else { return };
    let broker = connect(&url).await;
    let topic = unique_topic("delay");
    let subscription = subscribe(&broker, &topic, "s", "c1", ConsumerType::Shared).await;
    let delay = Duration::from_secs(3);
    let sent = Instant::now();
    publish(
        &broker,
        &topic,
        Message::new("later").with_deliver_at(SystemTime::now() + delay),
    )
    .await;
    publish(&broker, &topic, Message::new("now")).await;
    let first = receive_up_to(&*subscription, 1, Duration::from_secs(20)).await;
    assert_eq!(first.iter().map(text).collect::<Vec<_>>(), ["now"]);
    ack_all(&*subscription, &first).await;
    let second = receive_up_to(&*subscription, 1, Duration::from_secs(20)).await;
    assert_eq!(second.iter().map(text).collect::<Vec<_>>(), ["later"]);
    let waited = sent.elapsed();
    assert!(
        waited >= delay - Duration::from_millis(300),
        "delivered after {waited:?}"
    );
    ack_all(&*subscription, &second).await;
    subscription.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mib_payload_round_trips_and_oversized_ones_are_refused() {
    let Some(url) = pulsar_url() else { return };
    let broker = connect(&url).await;
    let topic = unique_topic("large");
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let subscription = subscribe(&broker, &topic, "s", "c1", ConsumerType::Shared).await;
    publish(&broker, &topic, Message::new(payload.clone())).await;
    let got = receive_up_to(&*subscription, 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1);
    assert!(
        got[0].payload()[..] == payload[..],
        "payload changed in transit"
    );
    ack_all(&*subscription, &got).await;
    subscription.close().await.expect("close");

    let limit = broker.options().max_payload_bytes;
    let refused = broker
        .publish(&topic, Message::new(vec![0u8; limit + 1]))
        .await;
    assert!(
        matches!(refused, Err(BrokerError::Rejected { .. })),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_shared_keeps_the_order_of_each_key() {
    let Some(url) = pulsar_url() else { return };
    let broker = connect(&url).await;
    let topic = unique_topic("keys");
    let one = subscribe(&broker, &topic, "k", "k1", ConsumerType::KeyShared).await;
    let two = subscribe(&broker, &topic, "k", "k2", ConsumerType::KeyShared).await;
    let keys = 6;
    let per_key = 20;
    for n in 0..per_key {
        for key in 0..keys {
            let message = Message::new(format!("{key}:{n}")).with_key(format!("key-{key}"));
            publish(&broker, &topic, message).await;
        }
    }
    let total = keys * per_key;
    let mut order: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut owners: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count < total && Instant::now() < deadline {
        for (index, subscription) in [&one, &two].into_iter().enumerate() {
            let got = receive_up_to(&**subscription, 10, Duration::from_millis(300)).await;
            for delivery in &got {
                let body = text(delivery);
                let (key, n) = body.split_once(':').expect("key:n");
                order
                    .entry(key.to_owned())
                    .or_default()
                    .push(n.parse().expect("a number"));
                owners.entry(key.to_owned()).or_default().insert(index);
            }
            count += got.len();
            ack_all(&**subscription, &got).await;
        }
    }
    assert_eq!(count, total);
    for (key, sequence) in &order {
        assert_eq!(*sequence, (0..per_key).collect::<Vec<_>>(), "key {key}");
        assert_eq!(owners[key].len(), 1, "key {key} went to both consumers");
    }
    one.close().await.expect("close");
    two.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------------
// Against pulsar-lite (the PyPI package), where it is installed

/// The pulsar-lite broker binary: `PULSAR_LITE_BIN`, else `pulsar-lite` on `PATH`, else the one
/// inside the Python package of `PULSAR_LITE_PYTHON` (default `python3`).
fn find_pulsar_lite() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PULSAR_LITE_BIN") {
        return Some(PathBuf::from(path));
    }
    if let Some(path) = which("pulsar-lite") {
        return Some(path);
    }
    let output = Command::new(python())
        .args([
            "-c",
            "from pulsar_lite.binary_finder import find_pulsar_lite_binary as f; print(f())",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    (output.status.success() && path.is_file()).then_some(path)
}

fn python() -> String {
    std::env::var("PULSAR_LITE_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn pulsar_lite_or_skip() -> Option<PathBuf> {
    let found = find_pulsar_lite();
    if found.is_none() {
        eprintln!(
            "\n!!!!!!!!\n!!! SKIPPED: pulsar-lite is not installed, so this test did not run.\n\
             !!! Install it with `python3 -m pip install pulsar-lite` (or point PULSAR_LITE_BIN at its\n\
             !!! broker binary and PULSAR_LITE_PYTHON at the python that has `pulsar-client`).\n!!!!!!!!\n"
        );
    }
    found
}

fn start_pulsar_lite(binary: &std::path::Path) -> BrokerProcess {
    let port = free_port();
    let dir = BrokerProcess::scratch_dir("pulsar-lite");
    // Its metrics endpoint would otherwise bind 0.0.0.0:8080.
    std::fs::write(dir.join("pulsar-lite.toml"), "[metrics]\nenabled = false\n")
        .expect("write the pulsar-lite config");
    let args = vec![
        "--config".to_owned(),
        dir.join("pulsar-lite.toml").display().to_string(),
        "--addr".to_owned(),
        format!("127.0.0.1:{port}"),
        "--db-path".to_owned(),
        dir.join("db").display().to_string(),
    ];
    BrokerProcess::start("pulsar-lite", binary, args, port, dir)
}

/// What the official Python client read back of one message.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
struct ReadBack {
    /// The payload, or `<N bytes, sum S>` for one over 64 bytes.
    body: String,
    key: Option<String>,
    properties: BTreeMap<String, String>,
}

/// Reads `count` messages of `topic` with the official Python client; `None` when
/// `pulsar-client` is not importable.
fn read_back_with_python(url: &str, topic: &Topic, count: usize) -> Option<Vec<ReadBack>> {
    let probe = Command::new(python())
        .args(["-c", "import pulsar"])
        .output()
        .ok()?;
    if !probe.status.success() {
        eprintln!(
            "!!! NOTE: python `pulsar-client` is not importable: stored messages not read back"
        );
        return None;
    }
    let script = r#"
import json, sys, pulsar
url, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = pulsar.Client(url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
consumer = client.subscribe(topic, "read-back", initial_position=pulsar.InitialPosition.Earliest)
for _ in range(count):
    message = consumer.receive(timeout_millis=10000)
    data = message.data()
    body = data.decode() if len(data) <= 64 else "<%d bytes, sum %d>" % (len(data), sum(data))
    key = message.partition_key() or None
    print(json.dumps({"body": body, "key": key, "properties": message.properties()}))
    consumer.acknowledge(message)
client.close()
"#;
    let output = Command::new(python())
        .args(["-c", script, url, &topic.to_string(), &count.to_string()])
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "python read-back failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = String::from_utf8_lossy(&output.stdout).into_owned();
    let read: Vec<ReadBack> = lines
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line from the read-back script"))
        .collect();
    println!("read back {} messages with the Python client", read.len());
    Some(read)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulsar_lite_publish() {
    let Some(binary) = pulsar_lite_or_skip() else {
        return;
    };
    let server = start_pulsar_lite(&binary);
    let url = format!("pulsar://127.0.0.1:{}", server.port());
    let broker = Arc::new(connect(&url).await);
    let topic = unique_topic("lite");
    let total = 100;
    // All at once: the backend bounds what is in flight and waits for room in the client's queue.
    let sends: Vec<_> = (0..total)
        .map(|n| {
            let broker = broker.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                let message = Message::new(format!("m{n}"))
                    .with_property("n", n.to_string())
                    .with_key(format!("key-{}", n % 3));
                broker.publish(&topic, message).await
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for send in sends {
        let result = send.await.expect("the publishing task");
        let id = result.unwrap_or_else(|error| panic!("publish to pulsar-lite: {}", chain(&error)));
        ids.insert(id);
    }
    assert_eq!(ids.len(), total, "every receipt names its own message");
    let large: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let large_sum: u64 = large.iter().map(|b| u64::from(*b)).sum();
    publish(
        &broker,
        &topic,
        Message::new(large).with_property("size", "1MiB"),
    )
    .await;

    if let Some(read) = read_back_with_python(&url, &topic, total + 1) {
        let mut expected: Vec<ReadBack> = (0..total)
            .map(|n| ReadBack {
                body: format!("m{n}"),
                key: Some(format!("key-{}", n % 3)),
                properties: BTreeMap::from([("n".to_owned(), n.to_string())]),
            })
            .collect();
        expected.push(ReadBack {
            body: format!("<{} bytes, sum {large_sum}>", 1024 * 1024),
            key: None,
            properties: BTreeMap::from([("size".to_owned(), "1MiB".to_owned())]),
        });
        let mut read = read;
        read.sort();
        expected.sort();
        assert_eq!(read, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulsar_lite_publishes_wait_out_a_broker_restart() {
    let Some(binary) = pulsar_lite_or_skip() else {
        return;
    };
    let mut server = start_pulsar_lite(&binary);
    let url = format!("pulsar://127.0.0.1:{}", server.port());
    // Short client timeouts and a broker away for longer than them: the client's own resends
    // give up, and the backend's retries (until the publish deadline) carry the publishes.
    init_logs();
    let mut options = test_options(&url);
    options.operation_timeout = Duration::from_secs(2);
    options.connection_timeout = Duration::from_secs(1);
    options.publish_timeout = Duration::from_secs(40);
    let broker = PulsarBroker::connect(options)
        .await
        .unwrap_or_else(|error| panic!("connect to {url}: {}", chain(&error)));
    let broker = Arc::new(broker);
    let topic = unique_topic("lite-restart");
    publish(&broker, &topic, Message::new("before")).await;

    server.kill();
    let publishing = {
        let broker = broker.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            for n in 0..5 {
                results.push(
                    broker
                        .publish(&topic, Message::new(format!("during{n}")))
                        .await,
                );
            }
            results
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !publishing.is_finished(),
        "publishes returned while the broker was down"
    );
    let restarted = Instant::now();
    server.restart();
    let results = tokio::time::timeout(Duration::from_secs(60), publishing)
        .await
        .expect("publishes finish once the broker is back")
        .expect("the publishing task");
    for result in &results {
        assert!(result.is_ok(), "publish across the restart: {result:?}");
    }
    println!(
        "publishes confirmed {:?} after the restart",
        restarted.elapsed()
    );
    if let Some(lines) = read_back_with_python(&url, &topic, 6) {
        let got: BTreeSet<&str> = lines.iter().map(|read| read.body.as_str()).collect();
        for n in 0..5 {
            assert!(
                got.contains(format!("during{n}").as_str()),
                "lost during{n}: {got:?}"
            );
        }
    }
}
