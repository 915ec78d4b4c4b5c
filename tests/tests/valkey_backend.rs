//! The Valkey backend against a real `redis-server` that each test starts on a free loopback port.
//! Without `redis-server` installed every test skips loudly (fails with `REQUIRE_BROKERS=1`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use integration_tests::brokers::RedisServer;
use worker_runtime::broker::valkey::{ValkeyBroker, ValkeyOptions};
use worker_runtime::{
    Broker, BrokerError, ConsumerType, DelayedDelivery, Delivery, InitialPosition, Message,
    SubscribeOptions, Subscription, Topic,
};

const VISIBILITY: Duration = Duration::from_secs(1);

fn options(server: &RedisServer) -> ValkeyOptions {
    ValkeyOptions {
        visibility_timeout: VISIBILITY,
        block_timeout: Duration::from_millis(200),
        operation_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        delayed_poll_interval: Duration::from_millis(50),
        ..ValkeyOptions::new(server.url())
    }
}

async fn connect(server: &RedisServer) -> ValkeyBroker {
    ValkeyBroker::connect(options(server))
        .await
        .expect("connect to the test's redis-server")
}

fn topic(name: &str) -> Topic {
    Topic::parse(&format!("q1/test/valkey/{name}")).expect("valid topic")
}

fn subscription(topic: &Topic, group: &str, consumer: &str) -> SubscribeOptions {
    SubscribeOptions {
        topic: topic.clone(),
        subscription: group.to_owned(),
        consumer_name: consumer.to_owned(),
        consumer_type: ConsumerType::Shared,
        initial_position: InitialPosition::Earliest,
        receiver_queue_size: 100,
    }
}

async fn subscribe(
    broker: &ValkeyBroker,
    topic: &Topic,
    group: &str,
    consumer: &str,
) -> Box<dyn Subscription> {
    broker
        .subscribe(subscription(topic, group, consumer))
        .await
        .expect("subscribe")
}

/// Receives until `n` deliveries arrived or `limit` passed.
async fn receive_n(sub: &dyn Subscription, n: usize, limit: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + limit;
    let mut all = Vec::new();
    while all.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.receive(n - all.len())).await {
            Ok(Ok(batch)) => all.extend(batch),
            Ok(Err(error)) => panic!("receive failed: {error}"),
            Err(_) => break,
        }
    }
    all
}

/// Asserts that nothing arrives within `wait`.
async fn receive_none(sub: &dyn Subscription, wait: Duration) {
    if let Ok(result) = tokio::time::timeout(wait, sub.receive(10)).await {
        let batch = result.expect("receive");
        let ids: Vec<_> = batch.iter().map(|d| d.id.clone()).collect();
        panic!("expected nothing, got {ids:?}");
    }
}

fn ids(deliveries: &[Delivery]) -> Vec<worker_runtime::MessageId> {
    deliveries.iter().map(|d| d.id.clone()).collect()
}

fn tag(delivery: &Delivery) -> String {
    delivery
        .property("n")
        .expect("test messages carry `n`")
        .to_owned()
}

macro_rules! server {
    () => {
        match RedisServer::start() {
            Some(server) => server,
            None => return,
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_and_consumes_with_properties_and_key() {
    let server = server!();
    let broker = connect(&server).await;
    let topic = topic("basic");
    let binary: Vec<u8> = (0..=255u8).collect();
    let sent = Message::new(binary.clone())
        .with_property("n", "0")
        // Names that match the entry's own fields must not confuse the codec.
        .with_property("payload", "a property called payload")
        .with_property("props", "{not json")
        .with_property("key", "")
        .with_property("ünicode ✓", "value\nwith\0bytes")
        .with_key("customer-42");
    let before = SystemTime::now() - Duration::from_secs(1);
    let id = broker.publish(&topic, sent.clone()).await.expect("publish");
    broker
        .publish(&topic, Message::new("second").with_property("n", "1"))
        .await
        .expect("publish");

    // Subscribing after publishing: the group starts at the earliest entry (history).
    let sub = subscribe(&broker, &topic, "basic", "c1").await;
    let got = receive_n(&*sub, 2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].id, id);
    assert_eq!(*got[0].message, sent);
    assert_eq!(got[0].payload().as_ref(), &binary[..]);
    assert_eq!(got[0].redelivery_count, 0);
    assert_eq!(&*got[0].topic, "q1/test/valkey/basic");
    let published = got[0].publish_time.expect("publish time");
    assert!(published >= before && published <= SystemTime::now());
    assert_eq!(got[1].payload().as_ref(), b"second");
    assert_eq!(got[1].message.key, None);
    sub.ack(ids(&got)).await.expect("ack");
    receive_none(&*sub, Duration::from_millis(300)).await;
    sub.close().await.expect("close");

    // Latest: a new group does not see what came before it.
    let mut latest = subscription(&topic, "late", "c1");
    latest.initial_position = InitialPosition::Latest;
    let late = broker.subscribe(latest).await.expect("subscribe");
    receive_none(&*late, Duration::from_millis(300)).await;
    broker
        .publish(&topic, Message::new("third").with_property("n", "2"))
        .await
        .expect("publish");
    let got = receive_n(&*late, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(tag(&got[0]), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_are_not_redelivered_after_reconnect() {
    let server = server!();
    let topic = topic("acked");
    {
        let broker = connect(&server).await;
        for n in 0..5 {
            let message = Message::new("x").with_property("n", n.to_string());
            broker.publish(&topic, message).await.expect("publish");
        }
        let sub = subscribe(&broker, &topic, "g", "first").await;
        let got = receive_n(&*sub, 5, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 5);
        sub.ack(ids(&got[..3])).await.expect("ack");
        sub.close().await.expect("close");
    }
    // A new connection and a new consumer: only the two unacked messages come back.
    let broker = connect(&server).await;
    let sub = subscribe(&broker, &topic, "g", "second").await;
    let got = receive_n(&*sub, 2, Duration::from_secs(5)).await;
    let mut tags: Vec<String> = got.iter().map(tag).collect();
    tags.sort();
    assert_eq!(tags, ["3", "4"]);
    assert!(got.iter().all(|d| d.redelivery_count >= 1));
    sub.ack(ids(&got)).await.expect("ack");
    receive_none(&*sub, VISIBILITY * 2).await;
    drop(sub);

    // The same consumer name again: nothing is pending for it either.
    let again = subscribe(&broker, &topic, "g", "second").await;
    receive_none(&*again, VISIBILITY * 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacked_messages_come_back_soon_with_a_higher_count() {
    let server = server!();
    let broker = connect(&server).await;
    let topic = topic("nack");
    let sub = subscribe(&broker, &topic, "g", "c").await;
    for n in 0..2 {
        let message = Message::new("x").with_property("n", n.to_string());
        broker.publish(&topic, message).await.expect("publish");
    }
    let first = receive_n(&*sub, 2, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].redelivery_count, 0);

    let started = Instant::now();
    sub.nack(vec![first[0].id.clone()]).await.expect("nack");
    let again = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "nack redelivery took {:?}",
        started.elapsed()
    );
    assert_eq!(again[0].id, first[0].id);
    assert_eq!(tag(&again[0]), "0");
    assert_eq!(again[0].redelivery_count, 1);

    sub.nack(vec![again[0].id.clone()]).await.expect("nack");
    let third = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    assert_eq!(third[0].redelivery_count, 2);

    // The server's counter kept step: a consumer that recovers it reads the same count.
    drop(sub);
    let recovered = subscribe(&broker, &topic, "g", "c").await;
    let back = receive_n(&*recovered, 2, Duration::from_secs(5)).await;
    let counts: HashMap<String, u32> = back.iter().map(|d| (tag(d), d.redelivery_count)).collect();
    assert_eq!(counts.get("0"), Some(&3), "{counts:?}");
    assert_eq!(counts.get("1"), Some(&1), "{counts:?}");
    recovered.ack(ids(&back)).await.expect("ack");
    receive_none(&*recovered, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_of_one_group_split_the_load_exactly_once() {
    let server = server!();
    let broker = Arc::new(connect(&server).await);
    let topic = topic("split");
    const TOTAL: usize = 300;
    let a = subscribe(&broker, &topic, "g", "a").await;
    let b = subscribe(&broker, &topic, "g", "b").await;
    let consume = |sub: Box<dyn Subscription>| {
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_millis(500), sub.receive(10)).await {
                    Ok(Ok(batch)) => {
                        sub.ack(ids(&batch)).await.expect("ack");
                        seen.extend(batch.iter().map(tag));
                    }
                    Ok(Err(error)) => panic!("receive: {error}"),
                    Err(_) if !seen.is_empty() => break,
                    Err(_) => {}
                }
            }
            seen
        })
    };
    let (ta, tb) = (consume(a), consume(b));
    for n in 0..TOTAL {
        let message = Message::new("x").with_property("n", n.to_string());
        broker.publish(&topic, message).await.expect("publish");
    }
    let (seen_a, seen_b) = (ta.await.expect("a"), tb.await.expect("b"));
    println!(
        "consumer a got {}, consumer b got {}",
        seen_a.len(),
        seen_b.len()
    );
    assert!(!seen_a.is_empty() && !seen_b.is_empty());
    let mut all: Vec<usize> = seen_a
        .iter()
        .chain(&seen_b)
        .map(|t| t.parse().expect("number"))
        .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..TOTAL).collect::<Vec<_>>(),
        "each message exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_each_get_everything() {
    let server = server!();
    let broker = connect(&server).await;
    let topic = topic("fanout");
    let one = subscribe(&broker, &topic, "one", "c").await;
    let two = subscribe(&broker, &topic, "two", "c").await;
    for n in 0..50 {
        let message = Message::new("x").with_property("n", n.to_string());
        broker.publish(&topic, message).await.expect("publish");
    }
    for sub in [&one, &two] {
        let got = receive_n(&**sub, 50, Duration::from_secs(5)).await;
        let tags: Vec<String> = got.iter().map(tag).collect();
        let expected: Vec<String> = (0..50).map(|n| n.to_string()).collect();
        assert_eq!(tags, expected, "in publish order");
        sub.ack(ids(&got)).await.expect("ack");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_arrive_when_due() {
    let server = server!();
    let broker = connect(&server).await;
    let topic = topic("delayed");
    let sub = subscribe(&broker, &topic, "g", "c").await;
    let due = SystemTime::now() + Duration::from_millis(300);
    let payload: Vec<u8> = (0..=255u8).rev().collect();
    let delayed = Message::new(payload.clone())
        .with_property("n", "late")
        .with_property("with:colon", "12:34")
        .with_key("k")
        .with_deliver_at(due);
    broker
        .publish(&topic, delayed.clone())
        .await
        .expect("publish delayed");
    broker
        .publish(&topic, Message::new("now").with_property("n", "now"))
        .await
        .expect("publish");

    let first = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    assert_eq!(tag(&first[0]), "now");
    let second = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    let arrived = SystemTime::now();
    assert_eq!(second.len(), 1, "the delayed message arrives");
    assert!(
        arrived >= due,
        "delivered {:?} early",
        due.duration_since(arrived).unwrap_or_default()
    );
    let message = &second[0].message;
    assert_eq!(message.payload.as_ref(), &payload[..]);
    assert_eq!(message.properties, delayed.properties);
    assert_eq!(message.key.as_deref(), Some("k"));
    assert_eq!(message.deliver_at, None);
    sub.ack(ids(&first)).await.expect("ack");
    sub.ack(ids(&second)).await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_delay_movers_neither_lose_nor_duplicate() {
    let server = server!();
    let topic = topic("movers");
    const TOTAL: usize = 200;
    // Three brokers (three movers) consume one group; every message is due at nearly once.
    let mut consumers = Vec::new();
    for name in ["a", "b", "c"] {
        let broker = connect(&server).await;
        let sub = subscribe(&broker, &topic, "g", name).await;
        consumers.push((broker, sub));
    }
    let publisher = connect(&server).await;
    let due = SystemTime::now() + Duration::from_millis(300);
    for n in 0..TOTAL {
        let message = Message::new("x")
            .with_property("n", n.to_string())
            .with_deliver_at(due);
        publisher.publish(&topic, message).await.expect("publish");
    }
    let tasks: Vec<_> = consumers
        .into_iter()
        .map(|(broker, sub)| {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    match tokio::time::timeout(Duration::from_secs(2), sub.receive(20)).await {
                        Ok(Ok(batch)) => {
                            sub.ack(ids(&batch)).await.expect("ack");
                            seen.extend(batch.iter().map(tag));
                        }
                        Ok(Err(error)) => panic!("receive: {error}"),
                        Err(_) => break,
                    }
                }
                drop(broker);
                seen
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("consumer"));
    }
    let unique: HashSet<&String> = all.iter().collect();
    println!(
        "movers: {} delivered, {} unique of {TOTAL}",
        all.len(),
        unique.len()
    );
    assert_eq!(unique.len(), TOTAL, "none lost");
    assert_eq!(all.len(), TOTAL, "none duplicated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mib_payload_round_trips() {
    let server = server!();
    let broker = connect(&server).await;
    let topic = topic("big");
    let payload: Vec<u8> = (0..1024 * 1024)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    broker
        .publish(
            &topic,
            Message::new(payload.clone()).with_property("n", "big"),
        )
        .await
        .expect("publish 1 MiB");
    let sub = subscribe(&broker, &topic, "g", "c").await;
    let got = receive_n(&*sub, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload().len(), payload.len());
    assert!(
        got[0].payload().as_ref() == &payload[..],
        "payload bytes differ"
    );
    sub.ack(ids(&got)).await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_messages_are_reclaimed_after_the_visibility_timeout() {
    let server = server!();
    let broker = connect(&server).await;
    let topic = topic("abandoned");
    for n in 0..5 {
        let message = Message::new("x").with_property("n", n.to_string());
        broker.publish(&topic, message).await.expect("publish");
    }
    let survivor = subscribe(&broker, &topic, "g", "survivor").await;

    // A live consumer that holds its deliveries longer than the visibility timeout keeps them:
    // it renews its lease.
    let slow = subscribe(&broker, &topic, "g", "slow").await;
    let held = receive_n(&*slow, 5, Duration::from_secs(5)).await;
    assert_eq!(held.len(), 5);
    receive_none(&*survivor, VISIBILITY * 3).await;

    // Now it dies without acking (dropped: no close, no renewal).
    let died = Instant::now();
    drop(slow);
    let got = receive_n(&*survivor, 5, Duration::from_secs(10)).await;
    let waited = died.elapsed();
    let mut tags: Vec<String> = got.iter().map(tag).collect();
    tags.sort();
    assert_eq!(tags, ["0", "1", "2", "3", "4"]);
    // Idle time counts from the dead consumer's last lease renewal, at most a quarter of the
    // visibility timeout before it died.
    assert!(
        waited >= VISIBILITY * 7 / 10,
        "reclaimed after only {waited:?}"
    );
    assert!(
        got.iter().all(|d| d.redelivery_count == 1),
        "counts {:?}",
        got.iter().map(|d| d.redelivery_count).collect::<Vec<_>>()
    );
    println!("abandoned deliveries reclaimed {waited:?} after their consumer died");
    survivor.ack(ids(&got)).await.expect("ack");
    receive_none(&*survivor, VISIBILITY * 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_is_cancel_safe() {
    let server = server!();
    let broker = Arc::new(connect(&server).await);
    let topic = topic("cancel");
    const TOTAL: usize = 300;
    let sub = subscribe(&broker, &topic, "g", "c").await;
    let publisher = {
        let broker = Arc::clone(&broker);
        let topic = topic.clone();
        tokio::spawn(async move {
            for n in 0..TOTAL {
                let message = Message::new("x").with_property("n", n.to_string());
                broker.publish(&topic, message).await.expect("publish");
                if n % 3 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    // Cancel receives at random moments, many of them while XREADGROUP is blocked or its reply is
    // on the way: whatever the server delivered meanwhile must still come out, exactly once.
    let mut seen: Vec<String> = Vec::new();
    let mut cancelled = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < TOTAL && Instant::now() < deadline {
        let wait = Duration::from_micros(fastrand_like(seen.len() + cancelled) % 3000 + 100);
        match tokio::time::timeout(wait, sub.receive(7)).await {
            Ok(Ok(batch)) => {
                sub.ack(ids(&batch)).await.expect("ack");
                seen.extend(batch.iter().map(tag));
            }
            Ok(Err(error)) => panic!("receive: {error}"),
            Err(_) => cancelled += 1,
        }
    }
    publisher.await.expect("publisher");
    let unique: HashSet<&String> = seen.iter().collect();
    println!(
        "cancel safety: {cancelled} receives cancelled, {} delivered, {} unique of {TOTAL}",
        seen.len(),
        unique.len()
    );
    assert!(cancelled > 10, "the test must actually cancel receives");
    assert_eq!(unique.len(), TOTAL, "none lost");
    assert_eq!(seen.len(), TOTAL, "none duplicated");
    receive_none(&*sub, Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_dropped_after_the_server_delivered_loses_nothing() {
    let server = server!();
    let broker = connect(&server).await;
    let topic = topic("dropped-read");
    let sub = subscribe(&broker, &topic, "g", "c").await;
    {
        // Start a receive and let it block on the server.
        let pending = sub.receive(10);
        tokio::pin!(pending);
        let early = tokio::time::timeout(Duration::from_millis(100), &mut pending).await;
        assert!(early.is_err(), "nothing was published yet");
        // The server hands the entry to the blocked read, into this consumer's pending list,
        // before it confirms the publish ...
        broker
            .publish(&topic, Message::new("x").with_property("n", "0"))
            .await
            .expect("publish");
        // ... and the receive that would have returned it is dropped unpolled.
    }
    // At once, not only after the visibility timeout made it claimable.
    let got = receive_n(&*sub, 1, VISIBILITY / 2).await;
    assert_eq!(
        got.len(),
        1,
        "the delivery of the dropped receive comes out of the next one"
    );
    assert_eq!(tag(&got[0]), "0");
    sub.ack(ids(&got)).await.expect("ack");
    receive_none(&*sub, Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_recovers_when_the_server_lost_its_stream() {
    let server = server!();
    let broker = connect(&server).await;
    let topic = topic("vanish");
    let sub = subscribe(&broker, &topic, "g", "c").await;
    broker
        .publish(&topic, Message::new("x").with_property("n", "0"))
        .await
        .expect("publish");
    let got = receive_n(&*sub, 1, Duration::from_secs(5)).await;
    sub.ack(ids(&got)).await.expect("ack");
    // As after a restart without persistence: the stream and its group vanish, here while a
    // receive is blocked on them.
    let waiting = tokio::spawn(async move {
        let got = receive_n(&*sub, 1, Duration::from_secs(5)).await;
        (sub, got)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Some(deleted) = server.cli(&["DEL", "wr:{test/valkey/vanish}"]) else {
        eprintln!("SKIPPED the rest: redis-cli is not installed");
        return;
    };
    assert_eq!(deleted, "1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker
        .publish(&topic, Message::new("x").with_property("n", "1"))
        .await
        .expect("publish");
    let (sub, got) = waiting.await.expect("receive task");
    assert_eq!(
        got.len(),
        1,
        "the group is created again and read from the start"
    );
    assert_eq!(tag(&got[0]), "1");
    sub.ack(ids(&got)).await.expect("ack");
}

/// A small deterministic scramble, so the cancellation points vary without a random crate.
fn fastrand_like(seed: usize) -> u64 {
    let mut x = seed as u64 ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_keeps_what_any_group_still_needs() {
    let server = server!();
    let broker = connect(&server).await;
    let topic = topic("trim");
    // No group yet: nothing is trimmed, the history waits for a first subscription.
    for n in 0..10 {
        let message = Message::new("x").with_property("n", n.to_string());
        broker.publish(&topic, message).await.expect("publish");
    }
    assert_eq!(broker.trim(&topic).await.expect("trim"), 0);

    let fast = subscribe(&broker, &topic, "fast", "c").await;
    let slow = subscribe(&broker, &topic, "slow", "c").await;
    let all_fast = receive_n(&*fast, 10, Duration::from_secs(5)).await;
    fast.ack(ids(&all_fast)).await.expect("ack");
    // `slow` has read nothing: nothing may go.
    assert_eq!(broker.trim(&topic).await.expect("trim"), 0);

    let all_slow = receive_n(&*slow, 10, Duration::from_secs(5)).await;
    slow.ack(ids(&all_slow[..4])).await.expect("ack");
    slow.ack(ids(&all_slow[6..7])).await.expect("ack");
    // Below the oldest pending entry of `slow` (the fifth) only.
    assert_eq!(broker.trim(&topic).await.expect("trim"), 4);
    let late = subscribe(&broker, &topic, "late", "c").await;
    let history = receive_n(&*late, 10, Duration::from_millis(800)).await;
    let tags: Vec<String> = history.iter().map(tag).collect();
    assert_eq!(tags, ["4", "5", "6", "7", "8", "9"]);
    late.ack(ids(&history)).await.expect("ack");

    slow.ack(ids(&all_slow)).await.expect("ack");
    assert_eq!(broker.trim(&topic).await.expect("trim"), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declares_its_capabilities_and_refuses_what_it_cannot_do() {
    let server = server!();
    let broker = connect(&server).await;
    let caps = broker.capabilities();
    assert_eq!(broker.name(), "valkey");
    assert!(caps.durable && caps.history && caps.nack_redelivery && caps.redelivers_abandoned);
    assert!(caps.key_ordering);
    assert_eq!(caps.delayed_delivery, DelayedDelivery::Native);
    assert_eq!(
        caps.consumer_types,
        &[
            ConsumerType::Shared,
            ConsumerType::Failover,
            ConsumerType::Exclusive
        ]
    );
    let mut options = subscription(&topic("caps"), "g", "c");
    options.consumer_type = ConsumerType::KeyShared;
    match broker.subscribe(options).await {
        Err(BrokerError::Unsupported { .. }) => {}
        Err(other) => panic!("expected Unsupported, got {other}"),
        Ok(_) => panic!("expected Unsupported, got a subscription"),
    }
}

fn ordered(topic: &Topic, kind: ConsumerType, consumer: &str) -> SubscribeOptions {
    SubscribeOptions {
        consumer_type: kind,
        ..subscription(topic, "ordered", consumer)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_subscription_admits_one_consumer() {
    let server = server!();
    let broker = connect(&server).await;
    let topic = topic("exclusive");
    let first = broker
        .subscribe(ordered(&topic, ConsumerType::Exclusive, "first"))
        .await
        .expect("the first exclusive consumer");
    match broker
        .subscribe(ordered(&topic, ConsumerType::Exclusive, "second"))
        .await
    {
        Err(error) => {
            assert!(
                error.to_string().contains("first"),
                "names the holder: {error}"
            );
        }
        Ok(_) => panic!("a second exclusive consumer must be refused"),
    }
    // A worker restarted under the same name (the old one died) gets its subscription back.
    drop(first);
    let again = broker
        .subscribe(ordered(&topic, ConsumerType::Exclusive, "first"))
        .await
        .expect("the same consumer again");
    broker
        .publish(&topic, Message::new("x").with_property("n", "0"))
        .await
        .expect("publish");
    let got = receive_n(&*again, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    again.ack(ids(&got)).await.expect("ack");
    // Once it closes, another consumer may subscribe.
    again.close().await.expect("close");
    broker
        .subscribe(ordered(&topic, ConsumerType::Exclusive, "second"))
        .await
        .expect("another consumer after close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_keeps_one_active_consumer_and_the_order_across_a_takeover() {
    let server = server!();
    let broker = connect(&server).await;
    let topic = topic("failover");
    let active = broker
        .subscribe(ordered(&topic, ConsumerType::Failover, "active"))
        .await
        .expect("subscribe");
    let standby = broker
        .subscribe(ordered(&topic, ConsumerType::Failover, "standby"))
        .await
        .expect("subscribe");
    for n in 0..20 {
        let message = Message::new("x")
            .with_property("n", format!("{n:02}"))
            .with_key(format!("k{}", n % 3));
        broker.publish(&topic, message).await.expect("publish");
    }
    // Only the active consumer reads, in publish order.
    let first = receive_n(&*active, 8, Duration::from_secs(5)).await;
    let tags: Vec<String> = first.iter().map(tag).collect();
    let expected: Vec<String> = (0..8).map(|n| format!("{n:02}")).collect();
    assert_eq!(tags, expected);
    receive_none(&*standby, VISIBILITY * 2).await;

    // It acks five and dies; the standby takes over after the lock expires, and delivers the
    // three unacked ones first, then the rest, all in order.
    active.ack(ids(&first[..5])).await.expect("ack");
    let died = Instant::now();
    drop(active);
    let rest = receive_n(&*standby, 15, Duration::from_secs(10)).await;
    println!("failover took {:?}", died.elapsed());
    let tags: Vec<String> = rest.iter().map(tag).collect();
    let expected: Vec<String> = (5..20).map(|n| format!("{n:02}")).collect();
    assert_eq!(tags, expected);
    assert!(rest[..3].iter().all(|d| d.redelivery_count >= 1));
    standby.ack(ids(&rest)).await.expect("ack");
    receive_none(&*standby, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_broker_restart_mid_stream_without_loss() {
    let Some(mut server) = RedisServer::start_fsync_always() else {
        return;
    };
    let broker = Arc::new(connect(&server).await);
    let topic = topic("restart");
    const TOTAL: usize = 1500;
    let sub = subscribe(&broker, &topic, "g", "c").await;
    let confirmed_count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(HashSet::<usize>::new()));
    let stop = Arc::new(AtomicBool::new(false));

    // The consumer: receives and acks until told to stop, recording every delivery.
    let consumer = {
        let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut delivered: Vec<(usize, Instant)> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                // `receive` rides out the outage by itself; the outer timeout only lets us stop.
                match tokio::time::timeout(Duration::from_millis(500), sub.receive(50)).await {
                    Ok(Ok(batch)) => {
                        let now = Instant::now();
                        let tags: Vec<usize> =
                            batch.iter().map(|d| tag(d).parse().expect("n")).collect();
                        delivered.extend(tags.iter().map(|n| (*n, now)));
                        seen.lock().expect("seen").extend(tags);
                        // An ack lost in the outage only means a redelivery later.
                        let _ = sub.ack(ids(&batch)).await;
                    }
                    Ok(Err(error)) => panic!("receive gave up: {error}"),
                    Err(_) => {}
                }
            }
            delivered
        })
    };

    // The publisher: each message again until the broker confirms it. Failures must be transient
    // and no publish may hang.
    let publisher = {
        let (broker, topic) = (Arc::clone(&broker), topic.clone());
        let confirmed_count = Arc::clone(&confirmed_count);
        tokio::spawn(async move {
            let mut confirmed = Vec::new();
            let mut failures = 0usize;
            let mut longest = Duration::ZERO;
            for n in 0..TOTAL {
                loop {
                    let message = Message::new("x").with_property("n", n.to_string());
                    let started = Instant::now();
                    let result = tokio::time::timeout(
                        Duration::from_secs(10),
                        broker.publish(&topic, message),
                    )
                    .await
                    .expect("a publish must never hang");
                    longest = longest.max(started.elapsed());
                    match result {
                        Ok(_) => {
                            confirmed.push(n);
                            confirmed_count.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        Err(error) => {
                            assert!(error.is_transient(), "publish failed for good: {error}");
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (confirmed, failures, longest)
        })
    };

    // Kill the server a third of the way through, keep it down for a second, start it again.
    while confirmed_count.load(Ordering::SeqCst) < TOTAL / 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| server.restart());
    let restarted = Instant::now();
    println!("redis-server killed, back after {:?}", restarted - killed);

    let (confirmed, failures, longest) = publisher.await.expect("publisher");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let all_seen = {
            let seen = seen.lock().expect("seen");
            confirmed.iter().all(|n| seen.contains(n))
        };
        if all_seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let delivered = consumer.await.expect("consumer");

    let unique: HashSet<usize> = delivered.iter().map(|(n, _)| *n).collect();
    let lost: Vec<usize> = confirmed
        .iter()
        .filter(|n| !unique.contains(n))
        .copied()
        .collect();
    println!(
        "ledger: published and confirmed {}, failed publish attempts {failures} (longest publish \
         call {longest:?}), delivered {}, handled (unique) {}, handled more than once {}, lost {}",
        confirmed.len(),
        delivered.len(),
        unique.len(),
        delivered.len() - unique.len(),
        lost.len()
    );
    let resumed = delivered
        .iter()
        .map(|(_, at)| *at)
        .filter(|at| *at > restarted)
        .min();
    if let Some(resumed) = resumed {
        println!(
            "consumer resumed {:?} after the restart",
            resumed - restarted
        );
    }
    assert_eq!(confirmed.len(), TOTAL);
    assert!(
        lost.is_empty(),
        "lost {} confirmed messages: {lost:?}",
        lost.len()
    );
    assert!(failures > 0, "the outage should have failed some publishes");
    let resumed = resumed.expect("the consumer received after the restart");
    assert!(
        resumed - restarted < Duration::from_secs(10),
        "resumed only after {:?}",
        resumed - restarted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaks_tls_with_a_password() {
    let Some(server) = RedisServer::start_tls_with_password("s3cret-pass") else {
        return;
    };
    assert!(server.url().starts_with("rediss://:s3cret-pass@"));
    // `#insecure` in the URL skips the certificate check ...
    let broker = connect(&server).await;
    // ... and trusting the server's own certificate verifies it.
    let verified = ValkeyOptions {
        url: server.url().replace("/#insecure", ""),
        tls_ca_file: server.tls_ca_certificate(),
        ..options(&server)
    };
    let verified = ValkeyBroker::connect(verified).await.expect("verified TLS");
    verified
        .publish(
            &topic("tls"),
            Message::new("verified").with_property("n", "-1"),
        )
        .await
        .expect("publish over verified TLS");
    // Without that trust, verification fails: the check is real.
    let untrusted = ValkeyOptions {
        url: server.url().replace("/#insecure", ""),
        ..options(&server)
    };
    assert!(ValkeyBroker::connect(untrusted).await.is_err());
    assert!(
        !format!("{broker:?}").contains("s3cret"),
        "the password stays out of logs"
    );
    let topic = topic("tls");
    broker
        .publish(&topic, Message::new("secret").with_property("n", "0"))
        .await
        .expect("publish over TLS");
    let sub = subscribe(&broker, &topic, "g", "c").await;
    let got = receive_n(&*sub, 2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].payload().as_ref(), b"verified");
    assert_eq!(got[1].payload().as_ref(), b"secret");
    sub.ack(ids(&got)).await.expect("ack");

    // A wrong password is refused at once, and not as a transient error.
    let wrong = ValkeyOptions {
        url: server.url().replace("s3cret-pass", "wrong"),
        ..options(&server)
    };
    match ValkeyBroker::connect(wrong).await {
        Ok(_) => panic!("a wrong password must be refused"),
        Err(error) => assert!(!error.is_transient(), "{error}"),
    }
}

/// Over plain TCP a consumer reads its stream on a connection it speaks to itself: it logs in as
/// the URL's user, selects the URL's database, and reads replies that arrive in many pieces
/// (payloads of megabytes) and binary payloads whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_with_a_user_a_password_and_a_database_whole_payloads_of_any_size() {
    let Some(server) = RedisServer::start_with_password("default-pass") else {
        return;
    };
    let acl = server.cli(&[
        "ACL",
        "SETUSER",
        "reader",
        "on",
        ">reader-pass",
        "~*",
        "&*",
        "+@all",
    ]);
    if acl.is_none() {
        assert!(
            std::env::var_os("REQUIRE_BROKERS").is_none(),
            "redis-cli is missing"
        );
        eprintln!("SKIPPED: redis-cli is not installed");
        return;
    }
    let url = server
        .url()
        .replace(":default-pass@", "reader:reader-pass@")
        + "/3";
    let broker = ValkeyBroker::connect(ValkeyOptions {
        url,
        ..options(&server)
    })
    .await
    .expect("connect as reader to database 3");
    let topic = topic("plain-auth");
    let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let binary = b"\r\n*1\r\n$-1\r\n\0".to_vec();
    let payloads = [big.clone(), binary.clone(), b"small".to_vec(), big.clone()];
    for (n, payload) in payloads.iter().enumerate() {
        broker
            .publish(
                &topic,
                Message::new(payload.clone()).with_property("n", n.to_string()),
            )
            .await
            .expect("publish");
    }
    let sub = subscribe(&broker, &topic, "g", "c").await;
    let got = receive_n(&*sub, payloads.len(), Duration::from_secs(10)).await;
    let got_payloads: Vec<&[u8]> = got.iter().map(|d| d.payload().as_ref()).collect();
    let wanted: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    assert!(got_payloads == wanted, "every payload whole and in order");
    assert_eq!(
        got.iter().map(tag).collect::<Vec<_>>(),
        ["0", "1", "2", "3"]
    );
    sub.ack(ids(&got)).await.expect("ack");
    assert_eq!(
        server
            .cli(&["-n", "3", "EXISTS", "wr:{test/valkey/plain-auth}"])
            .as_deref(),
        Some("1"),
        "the stream is in the URL's database"
    );
    assert_eq!(
        server
            .cli(&["EXISTS", "wr:{test/valkey/plain-auth}"])
            .as_deref(),
        Some("0"),
        "and not in database 0"
    );
    let clients = server.cli(&["CLIENT", "LIST"]).expect("redis-cli");
    assert!(
        clients
            .lines()
            .any(|c| c.contains("user=reader") && c.contains("cmd=xreadgroup")),
        "the reads go as the URL's user: {clients}"
    );
}

/// Holds the server busy for `millis` with a script of its own on a connection of its own: every
/// other command waits behind it.
async fn stall_server(server: &RedisServer, millis: u64) {
    let client = redis::Client::open(server.url()).expect("client");
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("a connection to stall the server on");
    let busy = r#"
local function now() local t = redis.call('TIME') return t[1] * 1000 + t[2] / 1000 end
local start = now()
while now() - start < tonumber(ARGV[1]) do end
return 1
"#;
    redis::cmd("EVAL")
        .arg(busy)
        .arg(0)
        .arg(millis)
        .query_async::<i64>(&mut connection)
        .await
        .expect("the stalling script");
}

async fn list_length(server: &RedisServer, key: &str) -> usize {
    let client = redis::Client::open(server.url()).expect("client");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    redis::cmd("LLEN")
        .arg(key)
        .query_async(&mut connection)
        .await
        .expect("LLEN")
}

/// A take whose reply never reaches the reader (here it comes after the operation timeout; a
/// server or connection dying after the move does the same) has still moved its items into the
/// processing list. The next take hands them out before anything newer, and nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_take_whose_reply_is_lost_loses_nothing() {
    let server = server!();
    let broker = ValkeyBroker::connect(ValkeyOptions {
        operation_timeout: Duration::from_millis(300),
        ..options(&server)
    })
    .await
    .expect("connect");
    let queue = broker.list_queue("lost-replies", "reader");
    let items: Vec<Vec<u8>> = (0..10).map(|i| format!("item-{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
    queue.push(&refs).await.expect("push");
    let text = |taken: &[bytes::Bytes]| -> Vec<String> {
        taken
            .iter()
            .map(|item| String::from_utf8_lossy(item).into_owned())
            .collect()
    };
    let first = queue.take(3).await.expect("take");
    assert_eq!(text(&first), ["item-0", "item-1", "item-2"]);

    let stalling = stall_server(&server, 900);
    tokio::pin!(stalling);
    // Let the stalling script reach the server first; the take queues behind it.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut stalling)
            .await
            .is_err(),
        "the server is busy"
    );
    let lost = queue.take(4).await;
    assert!(lost.is_err(), "the take's reply came too late: {lost:?}");
    stalling.await;
    assert_eq!(
        list_length(&server, queue.processing_key()).await,
        7,
        "the late take moved its items all the same"
    );

    let orphans = queue.take(100).await.expect("take");
    assert_eq!(
        text(&orphans),
        ["item-3", "item-4", "item-5", "item-6"],
        "what the lost take moved comes first"
    );
    let rest = queue.take(100).await.expect("take");
    assert_eq!(text(&rest), ["item-7", "item-8", "item-9"]);
    for taken in [&first, &orphans, &rest] {
        queue.remove(taken).await.expect("remove");
    }
    assert_eq!(list_length(&server, queue.processing_key()).await, 0);
    assert_eq!(list_length(&server, "lost-replies").await, 0);
    let none = queue.take(100).await.expect("take");
    assert!(
        none.is_empty(),
        "nothing handed out twice: {:?}",
        text(&none)
    );
}

/// A take dropped while its blocking move waits on the server takes nothing later: an item pushed
/// after goes to the next take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_take_dropped_while_blocked_takes_nothing_later() {
    let server = server!();
    let broker = ValkeyBroker::connect(ValkeyOptions {
        block_timeout: Duration::from_secs(2),
        ..options(&server)
    })
    .await
    .expect("connect");
    let queue = Arc::new(broker.list_queue("dropped-takes", "reader"));
    let early = tokio::time::timeout(Duration::from_millis(200), queue.take(10)).await;
    assert!(early.is_err(), "the queue is empty: the take blocks");
    let next = tokio::spawn({
        let queue = queue.clone();
        async move { queue.take(10).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    queue.push(&[b"late"]).await.expect("push");
    let taken = next.await.expect("the next take").expect("take");
    assert_eq!(taken, [bytes::Bytes::from_static(b"late")]);
    queue.remove(&taken).await.expect("remove");
    assert_eq!(list_length(&server, queue.processing_key()).await, 0);
}
