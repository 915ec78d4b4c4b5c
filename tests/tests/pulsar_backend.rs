//! The Pulsar backend against a real Apache Pulsar: a standalone broker that this test binary
//! starts on free ports and all its tests share, each on topics of its own (`PULSAR_URL` points
//! them at an external broker instead). Without Java and Maven they skip loudly; with
//! `REQUIRE_BROKERS=1` that fails instead.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use integration_tests::brokers::PulsarStandalone;
use worker_runtime::broker::pulsar::{Batching, PulsarBroker, PulsarOptions};
use worker_runtime::{
    Broker, BrokerError, ConsumerType, Delivery, InitialPosition, Message, SubscribeOptions,
    Subscription, Topic,
};

// ---------------------------------------------------------------------------------------------
// Helpers

fn pulsar() -> Option<&'static PulsarStandalone> {
    PulsarStandalone::shared()
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
// Against Apache Pulsar

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_consume_with_properties_then_ack() {
    let Some(url) = pulsar().map(PulsarStandalone::url) else {
        return;
    };
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
    let Some(url) = pulsar().map(PulsarStandalone::url) else {
        return;
    };
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
    let Some(url) = pulsar().map(PulsarStandalone::url) else {
        return;
    };
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
    let Some(url) = pulsar().map(PulsarStandalone::url) else {
        return;
    };
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
    let Some(url) = pulsar().map(PulsarStandalone::url) else {
        return;
    };
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
    let Some(url) = pulsar().map(PulsarStandalone::url) else {
        return;
    };
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
    let Some(url) = pulsar().map(PulsarStandalone::url) else {
        return;
    };
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

    let limit = broker.options().max_payload_bytes();
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
    let Some(url) = pulsar().map(PulsarStandalone::url) else {
        return;
    };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_keeps_delays_and_acks_a_batch_only_once_all_its_messages_are() {
    let Some(url) = pulsar().map(PulsarStandalone::url) else {
        return;
    };
    init_logs();
    let options = test_options(&url).with_batching(Batching {
        max_messages: 10,
        max_delay: Duration::from_millis(50),
    });
    let broker = PulsarBroker::connect(options).await.expect("connect");
    let topic = unique_topic("batching");
    let subscription = subscribe(&broker, &topic, "s", "c1", ConsumerType::Shared).await;
    // Published at once, so that they share batches; one delayed message among them, which
    // must not be batched (a batch would drop its delivery time).
    let delay = Duration::from_secs(2);
    let sent = Instant::now();
    let delayed = broker.publish(
        &topic,
        Message::new("later").with_deliver_at(SystemTime::now() + delay),
    );
    let batch = futures_util::future::join_all(
        (0..20).map(|n| broker.publish(&topic, Message::new(format!("m{n}")))),
    );
    let (delayed, batch) = tokio::join!(delayed, batch);
    delayed.expect("publish the delayed message");
    for receipt in batch {
        receipt.expect("publish a batched message");
    }
    let got = receive_up_to(&*subscription, 20, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 20, "the undelayed messages come first");
    assert!(got.iter().all(|d| text(d) != "later"), "delivered early");
    let batched = got
        .iter()
        .filter(|d| d.id.as_text().is_some_and(|id| !id.contains(":-1:-1:")))
        .count();
    assert!(batched > 0, "nothing was batched");
    let later = receive_up_to(&*subscription, 1, Duration::from_secs(20)).await;
    assert_eq!(later.iter().map(text).collect::<Vec<_>>(), ["later"]);
    assert!(sent.elapsed() >= delay - Duration::from_millis(300));
    ack_all(&*subscription, &later).await;

    // Ack all but the last message, then go away: only its entry comes back, whole.
    let (kept, acked) = got.split_last().expect("messages");
    ack_all(&*subscription, acked).await;
    subscription.close().await.expect("close flushes the acks");
    let entry_of = |d: &Delivery| {
        d.id.as_text()
            .map(|id| id.split(':').take(2).collect::<Vec<_>>().join(":"))
    };
    let same_entry: BTreeSet<String> = got
        .iter()
        .filter(|d| entry_of(d) == entry_of(kept))
        .map(text)
        .collect();
    let again = subscribe(&broker, &topic, "s", "c2", ConsumerType::Shared).await;
    let back = receive_up_to(&*again, 20, Duration::from_secs(5)).await;
    let back_texts: BTreeSet<String> = back.iter().map(text).collect();
    println!(
        "batching: {batched} of 20 batched; after acking all but {}, {} came back: {back_texts:?}",
        text(kept),
        back.len()
    );
    assert_eq!(
        back_texts, same_entry,
        "exactly the unacked message's entry is delivered again"
    );
    ack_all(&*again, &back).await;
    again.close().await.expect("close");
}
