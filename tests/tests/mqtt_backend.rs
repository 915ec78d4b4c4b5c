//! The MQTT backend against a real mosquitto that each test starts on its own free port.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::brokers::Mosquitto;
use tokio::sync::Mutex;
use worker_runtime::broker::mqtt::{MqttBroker, MqttOptions};
use worker_runtime::{
    Broker, BrokerError, ConsumerType, DelayedDelivery, Delivery, InitialPosition, Message,
    SubscribeOptions, Subscription, Topic,
};

fn topic(text: &str) -> Topic {
    Topic::parse(text).expect("valid topic")
}

fn options(mosquitto: &Mosquitto) -> MqttOptions {
    MqttOptions {
        operation_timeout: Duration::from_secs(10),
        reconnect_delay_max: Duration::from_millis(500),
        ..MqttOptions::new(mosquitto.host(), mosquitto.port())
    }
}

async fn broker(mosquitto: &Mosquitto) -> MqttBroker {
    MqttBroker::connect(options(mosquitto))
        .await
        .expect("connect to mosquitto")
}

fn subscribe_options(topic: &Topic, subscription: &str, consumer: &str) -> SubscribeOptions {
    SubscribeOptions {
        topic: topic.clone(),
        subscription: subscription.to_owned(),
        consumer_name: consumer.to_owned(),
        consumer_type: ConsumerType::Shared,
        initial_position: InitialPosition::Latest,
        receiver_queue_size: 100,
    }
}

async fn subscribe(
    broker: &MqttBroker,
    topic: &Topic,
    subscription: &str,
    consumer: &str,
) -> Box<dyn Subscription> {
    broker
        .subscribe(subscribe_options(topic, subscription, consumer))
        .await
        .expect("subscribe")
}

/// Receives until `count` deliveries arrived or `limit` passed.
async fn receive_n(sub: &dyn Subscription, count: usize, limit: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while out.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.receive(count - out.len())).await {
            Ok(Ok(batch)) => out.extend(batch),
            Ok(Err(error)) => panic!("receive failed: {error}"),
            Err(_) => break,
        }
    }
    out
}

/// Asserts that nothing arrives within `wait`.
async fn expect_nothing(sub: &dyn Subscription, wait: Duration) {
    if let Ok(Ok(batch)) = tokio::time::timeout(wait, sub.receive(10)).await {
        let ids: Vec<_> = batch
            .iter()
            .map(|d| d.property("n").map(str::to_owned))
            .collect();
        panic!("expected nothing, got {ids:?}");
    }
}

async fn ack_all(sub: &dyn Subscription, deliveries: &[Delivery]) {
    sub.ack(deliveries.iter().map(|d| d.id.clone()).collect())
        .await
        .expect("ack");
}

/// Message `n`, with a stable id of its own, as the framework publishes them (a message without
/// one gets an id derived from its content on delivery, which a comparison would trip over).
fn numbered(n: usize) -> Message {
    Message::new(format!("payload-{n}"))
        .with_property("n", n.to_string())
        .with_property(worker_runtime::props::MESSAGE_ID, format!("m-{n}"))
}

fn number(delivery: &Delivery) -> usize {
    delivery
        .property("n")
        .and_then(|n| n.parse().ok())
        .expect("every test message carries its number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_and_consumes_properties_and_key_at_qos_1_and_2() {
    let Some(mosquitto) = Mosquitto::start() else {
        return;
    };
    let broker = broker(&mosquitto).await;
    for name in [
        "q1/t/ns/props",
        "q2/t/ns/props",
        "persistent://t/ns/props-p",
    ] {
        let topic = topic(name);
        let sub = subscribe(&broker, &topic, "workers", "c1").await;
        let sent: Vec<Message> = (0..5)
            .map(|n| {
                numbered(n)
                    .with_property("wr-message-id", format!("id-{n}"))
                    .with_property("unicode", "grüße ✓")
                    .with_key(format!("key-{}", n % 2))
            })
            .collect();
        for message in &sent {
            broker
                .publish(&topic, message.clone())
                .await
                .expect("publish is confirmed");
        }
        let got = receive_n(&*sub, 5, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 5, "{name}: all five arrive");
        for delivery in &got {
            let expected = &sent[number(delivery)];
            assert_eq!(*delivery.message, *expected, "{name}: message intact");
            assert_eq!(delivery.topic.as_ref(), name);
            assert_eq!(delivery.redelivery_count, 0);
        }
        ack_all(&*sub, &got).await;
        // Acknowledged means gone: the same consumer reconnecting gets nothing back.
        sub.close().await.expect("close");
        let sub = subscribe(&broker, &topic, "workers", "c1").await;
        expect_nothing(&*sub, Duration::from_millis(700)).await;
        sub.close().await.expect("close");
    }

    // QoS 0 (best effort) still carries properties and key.
    let q0 = topic("q0/t/ns/props");
    let sub = subscribe(&broker, &q0, "workers", "c1").await;
    let message = numbered(0).with_key("k");
    broker
        .publish(&q0, message.clone())
        .await
        .expect("publish q0");
    let got = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(*got[0].message, message);
    ack_all(&*sub, &got).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_message_comes_back_when_the_consumer_reconnects_with_its_session() {
    let Some(mosquitto) = Mosquitto::start() else {
        return;
    };
    let broker = broker(&mosquitto).await;
    for name in ["q1/t/ns/redeliver", "q2/t/ns/redeliver"] {
        let topic = topic(name);
        let sub = subscribe(&broker, &topic, "workers", "c1").await;
        broker.publish(&topic, numbered(1)).await.expect("publish");
        let first = receive_n(&*sub, 1, Duration::from_secs(5)).await;
        assert_eq!(first.len(), 1);
        // No ack, and the connection drops without DISCONNECT, as when a worker is killed.
        drop(sub);
        let sub = subscribe(&broker, &topic, "workers", "c1").await;
        let again = receive_n(&*sub, 1, Duration::from_secs(5)).await;
        assert_eq!(again.len(), 1, "{name}: the unacked message is redelivered");
        assert_eq!(number(&again[0]), 1);
        assert!(again[0].redelivery_count >= 1, "the broker marks it DUP");
        ack_all(&*sub, &again).await;
        sub.close().await.expect("close");
        let sub = subscribe(&broker, &topic, "workers", "c1").await;
        expect_nothing(&*sub, Duration::from_millis(700)).await;
        sub.close().await.expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_republishes_to_the_group_and_close_gives_back_what_is_unacked() {
    let Some(mosquitto) = Mosquitto::start() else {
        return;
    };
    let broker = broker(&mosquitto).await;
    let topic = topic("q1/t/ns/nack");
    let sub = subscribe(&broker, &topic, "workers", "c1").await;
    let other = subscribe(&broker, &topic, "audit", "c1").await;
    let message = numbered(7).with_key("k7");
    broker
        .publish(&topic, message.clone())
        .await
        .expect("publish");
    let first = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 1);
    sub.nack(vec![first[0].id.clone()]).await.expect("nack");
    let again = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    assert_eq!(again.len(), 1, "the nacked message comes back");
    assert_eq!(
        *again[0].message, message,
        "payload, properties and key kept"
    );
    assert_eq!(again[0].redelivery_count, 1);
    assert_eq!(again[0].topic.as_ref(), "q1/t/ns/nack");

    // The copy went to this subscription only: the other one saw the message once.
    let audit = receive_n(&*other, 2, Duration::from_secs(2)).await;
    assert_eq!(
        audit.len(),
        1,
        "other subscriptions do not see nacked copies"
    );

    // Closing gives back what is still unacknowledged: the closing consumer leaves the redelivery
    // topic first, so the copy goes to the other consumer of the group.
    let c2 = subscribe(&broker, &topic, "workers", "c2").await;
    sub.close().await.expect("close");
    let taken_over = receive_n(&*c2, 1, Duration::from_secs(5)).await;
    assert_eq!(
        taken_over.len(),
        1,
        "close hands unacked deliveries to the group"
    );
    assert_eq!(number(&taken_over[0]), 7);
    assert_eq!(taken_over[0].redelivery_count, 2);
    ack_all(&*c2, &taken_over).await;
    assert!(matches!(sub.receive(1).await, Err(BrokerError::Closed(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_consumer_closing_keeps_its_unacked_delivery_in_its_session() {
    let Some(mosquitto) = Mosquitto::start() else {
        return;
    };
    let broker = broker(&mosquitto).await;
    let topic = topic("q1/t/ns/last");
    let sub = subscribe(&broker, &topic, "workers", "c1").await;
    broker.publish(&topic, numbered(3)).await.expect("publish");
    let got = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    // Nobody else reads the group's redelivery topic: close must not wait for one.
    let started = Instant::now();
    sub.close().await.expect("close");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "close took {:?}",
        started.elapsed()
    );
    // The same consumer name gets it back from its session.
    let sub = subscribe(&broker, &topic, "workers", "c1").await;
    let again = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(number(&again[0]), 3);
    ack_all(&*sub, &again).await;
    sub.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_splits_messages_between_consumers() {
    let Some(mosquitto) = Mosquitto::start() else {
        return;
    };
    let broker = broker(&mosquitto).await;
    let topic = topic("q1/t/ns/split");
    let c1: Arc<dyn Subscription> = subscribe(&broker, &topic, "workers", "c1").await.into();
    let c2: Arc<dyn Subscription> = subscribe(&broker, &topic, "workers", "c2").await.into();
    const N: usize = 200;
    for n in 0..N {
        broker.publish(&topic, numbered(n)).await.expect("publish");
    }
    let seen: Arc<Mutex<Vec<(usize, &'static str)>>> = Arc::default();
    let mut tasks = Vec::new();
    for (name, sub) in [("c1", c1.clone()), ("c2", c2.clone())] {
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            // Until nothing came for two seconds.
            while let Ok(Ok(batch)) =
                tokio::time::timeout(Duration::from_secs(2), sub.receive(20)).await
            {
                seen.lock()
                    .await
                    .extend(batch.iter().map(|d| (number(d), name)));
                ack_all(&*sub, &batch).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("consumer task");
    }
    let seen = seen.lock().await;
    let mut per_consumer: BTreeMap<&str, usize> = BTreeMap::new();
    let mut counts: HashMap<usize, usize> = HashMap::new();
    for (n, name) in seen.iter() {
        *per_consumer.entry(name).or_default() += 1;
        *counts.entry(*n).or_default() += 1;
    }
    println!("shared subscription split of {N} messages: {per_consumer:?}");
    assert_eq!(counts.len(), N, "every message delivered");
    assert!(counts.values().all(|c| *c == 1), "each exactly once");
    assert!(
        per_consumer.values().all(|c| *c > 0),
        "both consumers got some"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscriptions_each_receive_everything() {
    let Some(mosquitto) = Mosquitto::start() else {
        return;
    };
    let broker = broker(&mosquitto).await;
    let topic = topic("q1/t/ns/fanout");
    let a = subscribe(&broker, &topic, "sub-a", "c1").await;
    let b = subscribe(&broker, &topic, "sub-b", "c1").await;
    const N: usize = 100;
    for n in 0..N {
        broker.publish(&topic, numbered(n)).await.expect("publish");
    }
    for (name, sub) in [("sub-a", &a), ("sub-b", &b)] {
        let got = receive_n(&**sub, N, Duration::from_secs(10)).await;
        let unique: BTreeSet<usize> = got.iter().map(number).collect();
        assert_eq!(
            (got.len(), unique.len()),
            (N, N),
            "{name} gets all {N} once"
        );
        ack_all(&**sub, &got).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mib_payload_travels_and_an_oversized_one_is_refused() {
    let Some(mosquitto) = Mosquitto::start() else {
        return;
    };
    let broker = MqttBroker::connect(MqttOptions {
        max_packet_bytes: 2 * 1024 * 1024,
        ..options(&mosquitto)
    })
    .await
    .expect("connect");
    let topic = topic("q1/t/ns/big");
    let sub = subscribe(&broker, &topic, "workers", "c1").await;
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let message = Message::new(payload.clone()).with_property("n", "0");
    broker
        .publish(&topic, message)
        .await
        .expect("1 MiB publish");
    let got = receive_n(&*sub, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload().as_ref(), payload.as_slice());
    ack_all(&*sub, &got).await;

    let too_big = Message::new(vec![0_u8; 3 * 1024 * 1024]);
    match broker.publish(&topic, too_big).await {
        Err(BrokerError::Rejected { reason, .. }) => {
            println!("oversized publish refused: {reason}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // The connection is still fine afterwards.
    broker
        .publish(&topic, numbered(1))
        .await
        .expect("publish after a refusal");
    assert_eq!(receive_n(&*sub, 1, Duration::from_secs(5)).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_consumer_types_are_refused_and_capabilities_are_declared() {
    let Some(mosquitto) = Mosquitto::start() else {
        return;
    };
    let broker = broker(&mosquitto).await;
    let topic = topic("q1/t/ns/types");
    for consumer_type in [
        ConsumerType::KeyShared,
        ConsumerType::Failover,
        ConsumerType::Exclusive,
    ] {
        let options = SubscribeOptions {
            consumer_type,
            ..subscribe_options(&topic, "s", "c")
        };
        assert!(matches!(
            broker.subscribe(options).await.err(),
            Some(BrokerError::Unsupported { .. })
        ));
    }
    let caps = broker.capabilities();
    assert_eq!(broker.name(), "mqtt");
    assert_eq!(caps.delayed_delivery, DelayedDelivery::Unsupported);
    assert!(!caps.history && !caps.key_ordering && !caps.redelivers_abandoned);
    assert!(!caps.durable, "mosquitto acknowledges before it saves");
    assert!(caps.nack_redelivery);
    assert_eq!(caps.consumer_types, &[ConsumerType::Shared]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumer_keeps_its_messages_and_its_share_until_it_returns() {
    let Some(mosquitto) = Mosquitto::start() else {
        return;
    };
    let broker = broker(&mosquitto).await;
    let topic = topic("q1/t/ns/abandoned");
    let c1 = subscribe(&broker, &topic, "workers", "c1").await;
    let c2 = subscribe(&broker, &topic, "workers", "c2").await;
    broker.publish(&topic, numbered(0)).await.expect("publish");
    broker.publish(&topic, numbered(1)).await.expect("publish");
    let c1_first = receive_n(&*c1, 1, Duration::from_secs(5)).await;
    let c2_first = receive_n(&*c2, 1, Duration::from_secs(5)).await;
    assert_eq!((c1_first.len(), c2_first.len()), (1, 1), "round robin");
    ack_all(&*c2, &c2_first).await;
    // c1 dies holding an unacked message.
    drop(c1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    const N: usize = 20;
    for n in 2..2 + N {
        broker.publish(&topic, numbered(n)).await.expect("publish");
    }
    let c2_got = receive_n(&*c2, N + 1, Duration::from_secs(3)).await;
    ack_all(&*c2, &c2_got).await;
    let c2_numbers: BTreeSet<usize> = c2_got.iter().map(number).collect();
    println!(
        "while c1 was dead: c2 received {} of {N} new messages; c1's unacked message {} reached c2: {}",
        c2_got.len(),
        number(&c1_first[0]),
        c2_numbers.contains(&number(&c1_first[0]))
    );
    assert!(
        !c2_numbers.contains(&number(&c1_first[0])),
        "mosquitto does not hand a dead consumer's unacked message to another (redelivers_abandoned = false)"
    );
    // c1 returns under its name: its session hands over the unacked message and its queued share.
    let c1 = subscribe(&broker, &topic, "workers", "c1").await;
    let c1_got = receive_n(&*c1, N + 1, Duration::from_secs(3)).await;
    ack_all(&*c1, &c1_got).await;
    let c1_numbers: BTreeSet<usize> = c1_got.iter().map(number).collect();
    println!(
        "when c1 returned it received {} messages (its unacked one: {})",
        c1_got.len(),
        c1_numbers.contains(&number(&c1_first[0]))
    );
    assert!(c1_numbers.contains(&number(&c1_first[0])));
    let all: BTreeSet<usize> = c1_numbers.union(&c2_numbers).copied().collect();
    assert_eq!(
        all.len() + 1,
        N + 2,
        "nothing lost (message 0 or 1 was c2's first)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_nobody_subscribed_to_is_not_reported_as_stored() {
    let Some(mosquitto) = Mosquitto::start() else {
        return;
    };
    let topic = topic("q1/t/ns/nobody");
    let waiting = MqttBroker::connect(MqttOptions {
        operation_timeout: Duration::from_secs(1),
        ..options(&mosquitto)
    })
    .await
    .expect("connect");
    match waiting.publish(&topic, numbered(0)).await {
        Err(error @ BrokerError::Timeout { .. }) => {
            println!("publish without any subscription: {error}");
            assert!(error.is_transient());
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    // Once a consumer subscribed, the same publish goes through.
    let sub = subscribe(&waiting, &topic, "workers", "c1").await;
    waiting.publish(&topic, numbered(1)).await.expect("publish");
    assert_eq!(receive_n(&*sub, 1, Duration::from_secs(5)).await.len(), 1);

    // Plain MQTT behaviour on request: accepted, and dropped by the broker.
    let plain = MqttBroker::connect(MqttOptions {
        wait_for_subscriber: false,
        ..options(&mosquitto)
    })
    .await
    .expect("connect");
    plain
        .publish(
            &Topic::parse("q1/t/ns/nobody-else").expect("topic"),
            numbered(2),
        )
        .await
        .expect("accepted although nobody reads it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_fails_transiently_when_the_broker_stays_away() {
    let Some(mut mosquitto) = Mosquitto::start() else {
        return;
    };
    let broker = MqttBroker::connect(MqttOptions {
        operation_timeout: Duration::from_secs(2),
        ..options(&mosquitto)
    })
    .await
    .expect("connect");
    let topic = topic("q1/t/ns/away");
    mosquitto.kill();
    let started = Instant::now();
    let result = broker.publish(&topic, numbered(0)).await;
    let took = started.elapsed();
    match result {
        Err(error) => {
            println!("publish with the broker down: {error} after {took:?}");
            assert!(error.is_transient(), "{error:?}");
        }
        Ok(_) => panic!("a publish cannot be confirmed by a dead broker"),
    }
    assert!(
        took < Duration::from_secs(4),
        "bounded by the operation timeout"
    );
}

/// How the broker goes down in the middle of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outage {
    /// SIGTERM: mosquitto saves its in-memory database on the way out.
    Graceful,
    /// SIGKILL: whatever mosquitto had not autosaved is gone.
    Crash,
}

/// What a restart run found.
struct Ledger {
    /// Confirmed messages that never arrived, with how long before the outage they were confirmed.
    lost: Vec<(usize, Option<Duration>)>,
    /// When the consumer received something again after the restart.
    resumed_after: Option<Duration>,
}

/// Publishes 3000 messages (16 in flight), takes mosquitto down once a third is confirmed while the
/// consumer is paused (so the broker holds a backlog), keeps publishing, restarts it a second later
/// and counts what arrived.
async fn restart_mid_stream(outage: Outage) -> Option<Ledger> {
    let mut mosquitto = Mosquitto::start()?;
    let broker = broker(&mosquitto).await;
    let topic = topic("q1/t/ns/restart");
    let sub: Arc<dyn Subscription> = subscribe(&broker, &topic, "workers", "c1").await.into();

    // The consumer acknowledges everything it receives and records it.
    let received: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let paused = Arc::new(AtomicBool::new(false));
    let consumer = tokio::spawn({
        let sub = sub.clone();
        let received = received.clone();
        let paused = paused.clone();
        async move {
            loop {
                while paused.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                match sub.receive(50).await {
                    Ok(batch) => {
                        let now = Instant::now();
                        received
                            .lock()
                            .await
                            .extend(batch.iter().map(|d| (number(d), now)));
                        let _ = sub.ack(batch.iter().map(|d| d.id.clone()).collect()).await;
                    }
                    Err(_) => break,
                }
            }
        }
    });

    // The producer records when each publish was confirmed.
    const N: usize = 3000;
    let confirmed: Arc<Mutex<BTreeMap<usize, Instant>>> = Arc::default();
    let failed: Arc<Mutex<usize>> = Arc::default();
    let producer = tokio::spawn({
        let broker = broker.clone();
        let topic = topic.clone();
        let confirmed = confirmed.clone();
        let failed = failed.clone();
        async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(16));
            let mut tasks = Vec::new();
            for n in 0..N {
                let permit = slots.clone().acquire_owned().await.expect("semaphore");
                let (broker, topic, confirmed, failed) = (
                    broker.clone(),
                    topic.clone(),
                    confirmed.clone(),
                    failed.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    match broker.publish(&topic, numbered(n)).await {
                        Ok(_) => {
                            confirmed.lock().await.insert(n, Instant::now());
                        }
                        Err(_) => *failed.lock().await += 1,
                    }
                    drop(permit);
                }));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            for task in tasks {
                let _ = task.await;
            }
        }
    });

    while confirmed.lock().await.len() < N / 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    paused.store(true, Ordering::SeqCst);
    while confirmed.lock().await.len() < N / 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match outage {
        Outage::Graceful => mosquitto.stop(),
        Outage::Crash => mosquitto.kill(),
    }
    let down_at = Instant::now();
    let confirmed_when_down = confirmed.lock().await.len();
    // Publishes beyond the last confirmed one plus the 16 in flight were sent after the restart.
    let sent_after_restart = confirmed.lock().await.keys().max().map_or(0, |n| n + 17);
    let received_when_down = received.lock().await.len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    mosquitto.restart();
    let restarted_at = Instant::now();
    paused.store(false, Ordering::SeqCst);
    producer.await.expect("producer");

    // Wait until everything confirmed arrived (or give up after a while), then a little longer to
    // count late duplicates too.
    let confirmed = confirmed.lock().await.clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got: BTreeSet<usize> = received.lock().await.iter().map(|(n, _)| *n).collect();
        if confirmed.keys().all(|n| got.contains(n)) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    consumer.abort();

    let received = received.lock().await.clone();
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for (n, _) in &received {
        *counts.entry(*n).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    let lost: Vec<(usize, Option<Duration>)> = confirmed
        .iter()
        .filter(|(n, _)| !counts.contains_key(n))
        .map(|(n, at)| (*n, down_at.checked_duration_since(*at)))
        .collect();
    // The first message published after the restart that arrived: publisher, consumer and its
    // subscription are all back.
    let resumed_after = received
        .iter()
        .find(|(n, _)| *n >= sent_after_restart)
        .map(|(_, at)| at.saturating_duration_since(restarted_at));
    println!(
        "ledger ({outage:?} restart): published {N}, confirmed {} ({confirmed_when_down} when the broker \
         went down, {received_when_down} of them received by then), failed {}, received {} (unique {}), \
         duplicates {duplicates}, lost {} {:?} (number, confirmed this long before the outage); \
         the first message published after the restart arrived {:?} after it",
        confirmed.len(),
        failed.lock().await,
        received.len(),
        counts.len(),
        lost.len(),
        &lost[..lost.len().min(20)],
        resumed_after,
    );
    Some(Ledger {
        lost,
        resumed_after,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_broker_restart_mid_stream_loses_nothing_confirmed() {
    let Some(ledger) = restart_mid_stream(Outage::Graceful).await else {
        return;
    };
    assert!(
        ledger
            .resumed_after
            .is_some_and(|d| d < Duration::from_secs(10)),
        "the consumer resumed by itself"
    );
    assert!(
        ledger.lost.is_empty(),
        "confirmed messages lost: {:?}",
        ledger.lost
    );
}

/// mosquitto acknowledges a message before its next autosave writes it to disk, so a SIGKILL loses
/// what it acknowledged since that save (with `autosave_on_changes` and an interval of 1: the latest
/// change or so). This test shows the size of that window rather than pretending it is zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_crash_mid_stream_loses_only_what_mosquitto_had_not_saved() {
    let Some(ledger) = restart_mid_stream(Outage::Crash).await else {
        return;
    };
    assert!(
        ledger
            .resumed_after
            .is_some_and(|d| d < Duration::from_secs(10)),
        "the consumer resumed by itself"
    );
    assert!(
        ledger.lost.len() <= 16,
        "more lost than one publish window: {:?}",
        ledger.lost
    );
    // `None`: the confirmation was read only after the kill returned, so mosquitto sent it in its
    // last moments, well inside the window.
    for (n, before) in &ledger.lost {
        assert!(
            before.is_none_or(|d| d < Duration::from_millis(500)),
            "message {n} was confirmed {before:?} before the crash: older than mosquitto's autosave window"
        );
    }
}
