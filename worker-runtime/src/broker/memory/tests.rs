//! Behaviour of the memory broker, through the `Broker` and `Subscription` traits. Timing runs on
//! paused tokio time: nothing here sleeps for real.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use tokio::time::{timeout, Instant};
use worker_core::{
    Broker, BrokerError, ConsumerType, DelayedDelivery, Delivery, InitialPosition, Message,
    MessageId, SubscribeOptions, Subscription, Topic,
};

use super::{MemoryBroker, MemoryBrokerOptions};

fn topic(name: &str) -> Topic {
    Topic::parse(&format!("persistent://test/ns/{name}")).expect("valid topic")
}

fn options(
    topic: &Topic,
    subscription: &str,
    consumer: &str,
    kind: ConsumerType,
) -> SubscribeOptions {
    SubscribeOptions {
        topic: topic.clone(),
        subscription: subscription.to_owned(),
        consumer_name: consumer.to_owned(),
        consumer_type: kind,
        initial_position: InitialPosition::Earliest,
        receiver_queue_size: 1000,
    }
}

async fn subscribe(
    broker: &MemoryBroker,
    topic: &Topic,
    subscription: &str,
    consumer: &str,
    kind: ConsumerType,
) -> Box<dyn Subscription> {
    broker
        .subscribe(options(topic, subscription, consumer, kind))
        .await
        .expect("subscribe")
}

async fn publish(broker: &MemoryBroker, topic: &Topic, payload: &str) -> u64 {
    let id = broker
        .publish(topic, Message::new(payload.to_owned()))
        .await
        .expect("publish");
    id.as_u64().expect("numeric id")
}

async fn publish_keyed(broker: &MemoryBroker, topic: &Topic, key: &str, payload: &str) -> u64 {
    let message = Message::new(payload.to_owned()).with_key(key);
    let id = broker.publish(topic, message).await.expect("publish");
    id.as_u64().expect("numeric id")
}

fn text(delivery: &Delivery) -> String {
    String::from_utf8_lossy(delivery.payload()).into_owned()
}

fn texts(batch: &[Delivery]) -> Vec<String> {
    batch.iter().map(text).collect()
}

fn ids(batch: &[Delivery]) -> Vec<MessageId> {
    batch.iter().map(|d| d.id.clone()).collect()
}

/// Receives, failing the test if nothing comes within a (paused-time) minute.
async fn recv(subscription: &dyn Subscription, max: usize) -> Vec<Delivery> {
    timeout(Duration::from_secs(60), subscription.receive(max))
        .await
        .expect("a message within a minute")
        .expect("receive")
}

/// Whether a receive stays empty for a (paused-time) second.
async fn stays_empty(subscription: &dyn Subscription) -> bool {
    timeout(Duration::from_secs(1), subscription.receive(100))
        .await
        .is_err()
}

fn poll_once<F: Future + ?Sized>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

#[tokio::test(start_paused = true)]
async fn publish_creates_the_topic_and_numbers_messages_in_order() {
    let broker = MemoryBroker::new();
    let t = topic("numbering");
    assert!(broker.stats(&t).is_none());
    let first = publish(&broker, &t, "a").await;
    let second = publish(&broker, &t, "b").await;
    let third = publish(&broker, &t, "c").await;
    assert!(first < second && second < third);
    assert_eq!(broker.stats(&t).map(|s| s.published), Some(3));
    // Another topic numbers on its own.
    assert_eq!(publish(&broker, &topic("other"), "x").await, first);
    assert_eq!(broker.name(), "memory");
}

#[tokio::test(start_paused = true)]
async fn clones_share_topics() {
    let broker = MemoryBroker::new();
    let clone = broker.clone();
    let t = topic("clones");
    publish(&clone, &t, "a").await;
    assert_eq!(broker.peek(&t).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn oversized_payloads_are_rejected() {
    let broker = MemoryBroker::with_options(MemoryBrokerOptions {
        max_payload_bytes: 4,
        ..MemoryBrokerOptions::default()
    });
    let t = topic("oversize");
    publish(&broker, &t, "1234").await;
    let error = broker.publish(&t, Message::new("12345")).await.unwrap_err();
    assert!(
        matches!(&error, BrokerError::Rejected { backend: "memory", reason } if reason.contains("5 bytes")),
        "{error}"
    );
    assert_eq!(broker.peek(&t).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn retention_bound_reports_full_and_recovers_once_acked() {
    let broker = MemoryBroker::with_options(MemoryBrokerOptions {
        max_retained_per_topic: 3,
        ..MemoryBrokerOptions::default()
    });
    let t = topic("bounded");
    for payload in ["a", "b", "c"] {
        publish(&broker, &t, payload).await;
    }
    let error = broker.publish(&t, Message::new("d")).await.unwrap_err();
    match &error {
        BrokerError::Full {
            topic,
            retained,
            limit,
        } => {
            assert_eq!(topic, "persistent://test/ns/bounded");
            assert_eq!((*retained, *limit), (3, 3));
        }
        other => panic!("expected Full, got {other}"),
    }
    assert!(error.is_transient());

    // Delivered but unacknowledged still counts; acknowledged frees room.
    let sub = subscribe(&broker, &t, "s", "c1", ConsumerType::Shared).await;
    let batch = recv(&*sub, 10).await;
    assert_eq!(batch.len(), 3);
    assert!(broker.publish(&t, Message::new("d")).await.is_err());
    sub.ack(ids(&batch[..2])).await.expect("ack");
    publish(&broker, &t, "d").await;
    publish(&broker, &t, "e").await;
    assert!(broker.publish(&t, Message::new("f")).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn retention_bound_follows_the_slowest_subscription() {
    let broker = MemoryBroker::with_options(MemoryBrokerOptions {
        max_retained_per_topic: 2,
        ..MemoryBrokerOptions::default()
    });
    let t = topic("slowest");
    let fast = subscribe(&broker, &t, "fast", "c1", ConsumerType::Shared).await;
    let idle = subscribe(&broker, &t, "idle", "c2", ConsumerType::Shared).await;
    for payload in ["a", "b"] {
        publish(&broker, &t, payload).await;
    }
    let batch = recv(&*fast, 10).await;
    fast.ack(ids(&batch)).await.expect("ack");
    assert_eq!(broker.backlog(&t, "fast"), Some(0));
    assert_eq!(broker.backlog(&t, "idle"), Some(2));
    assert!(matches!(
        broker.publish(&t, Message::new("c")).await,
        Err(BrokerError::Full { retained: 2, .. })
    ));
    // Removing the idle subscription releases its backlog.
    assert!(matches!(
        broker.unsubscribe(&t, "idle"),
        Err(BrokerError::Rejected { .. })
    ));
    drop(idle);
    assert!(matches!(broker.unsubscribe(&t, "idle"), Ok(true)));
    assert!(matches!(broker.unsubscribe(&t, "idle"), Ok(false)));
    publish(&broker, &t, "c").await;
}

#[tokio::test(start_paused = true)]
async fn messages_published_before_any_subscription_wait_for_an_earliest_one() {
    let broker = MemoryBroker::new();
    let t = topic("history");
    for payload in ["a", "b", "c"] {
        publish(&broker, &t, payload).await;
    }
    let peeked: Vec<_> = broker.peek(&t).iter().map(|m| m.payload.clone()).collect();
    assert_eq!(peeked, ["a", "b", "c"]);
    let early = subscribe(&broker, &t, "early", "c1", ConsumerType::Shared).await;
    assert_eq!(texts(&recv(&*early, 10).await), ["a", "b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn latest_sees_only_what_is_published_after_it() {
    let broker = MemoryBroker::new();
    let t = topic("latest");
    publish(&broker, &t, "before").await;
    let late = broker
        .subscribe(SubscribeOptions {
            initial_position: InitialPosition::Latest,
            ..options(&t, "late", "c1", ConsumerType::Shared)
        })
        .await
        .expect("subscribe");
    publish(&broker, &t, "after").await;
    assert_eq!(texts(&recv(&*late, 10).await), ["after"]);
    assert!(stays_empty(&*late).await);
}

#[tokio::test(start_paused = true)]
async fn a_new_earliest_subscription_sees_what_others_have_not_acknowledged() {
    let broker = MemoryBroker::new();
    let t = topic("inherit");
    for payload in ["m1", "m2", "m3"] {
        publish(&broker, &t, payload).await;
    }
    let first = subscribe(&broker, &t, "first", "c1", ConsumerType::Shared).await;
    let batch = recv(&*first, 10).await;
    first.ack(ids(&batch[..2])).await.expect("ack");
    publish(&broker, &t, "m4").await;
    // m1 and m2 are acknowledged by every subscription, so gone; m3 is still held by `first`.
    let second = subscribe(&broker, &t, "second", "c2", ConsumerType::Shared).await;
    assert_eq!(texts(&recv(&*second, 10).await), ["m3", "m4"]);
}

#[tokio::test(start_paused = true)]
async fn every_subscription_gets_every_message_sharing_one_allocation() {
    let broker = MemoryBroker::new();
    let t = topic("fanout");
    let a = subscribe(&broker, &t, "a", "c1", ConsumerType::Shared).await;
    let b = subscribe(&broker, &t, "b", "c2", ConsumerType::Shared).await;
    for i in 0..5 {
        publish(&broker, &t, &format!("m{i}")).await;
    }
    let from_a = recv(&*a, 10).await;
    let from_b = recv(&*b, 10).await;
    assert_eq!(texts(&from_a), ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(texts(&from_a), texts(&from_b));
    for (x, y) in from_a.iter().zip(&from_b) {
        assert_eq!(x.id, y.id);
        assert!(Arc::ptr_eq(&x.message, &y.message), "no payload copy");
    }
}

#[tokio::test(start_paused = true)]
async fn deliveries_carry_everything_the_publisher_set() {
    let broker = MemoryBroker::new();
    let t = topic("fields");
    let sub = subscribe(&broker, &t, "s", "c1", ConsumerType::Shared).await;
    let before = SystemTime::now();
    let message = Message::new("body")
        .with_key("k1")
        .with_property("x-id", "42")
        .with_property("attempt", "1");
    let id = broker.publish(&t, message.clone()).await.expect("publish");
    let batch = recv(&*sub, 1).await;
    let delivery = &batch[0];
    assert_eq!(delivery.id, id);
    assert_eq!(&*delivery.topic, "persistent://test/ns/fields");
    assert_eq!(*delivery.message, message);
    assert_eq!(delivery.property("x-id"), Some("42"));
    assert_eq!(delivery.message.key.as_deref(), Some("k1"));
    assert_eq!(delivery.redelivery_count, 0);
    assert!(delivery.publish_time.is_some_and(|at| at >= before));
}

#[tokio::test(start_paused = true)]
async fn shared_consumers_get_each_message_exactly_once() {
    let broker = MemoryBroker::new();
    let t = topic("shared");
    let total = 1000;
    let mut workers = Vec::new();
    for name in ["c1", "c2"] {
        let sub = subscribe(&broker, &t, "s", name, ConsumerType::Shared).await;
        workers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Ok(Ok(batch)) = timeout(Duration::from_secs(5), sub.receive(16)).await {
                got.extend(batch.iter().map(|d| d.id.as_u64().expect("numeric")));
                sub.ack(ids(&batch)).await.expect("ack");
                // Hand the thread over so that both consumers take turns.
                tokio::task::yield_now().await;
            }
            got
        }));
    }
    let mut published = BTreeSet::new();
    for i in 0..total {
        published.insert(publish(&broker, &t, &format!("m{i}")).await);
        if i % 10 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let mut seen = Vec::new();
    for worker in workers {
        let got = worker.await.expect("worker");
        assert!(!got.is_empty(), "both receiving consumers get a share");
        seen.extend(got);
    }
    assert_eq!(seen.len(), total, "no message twice");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), published);
    assert_eq!(broker.backlog(&t, "s"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn idle_shared_consumers_are_woken_in_turn() {
    let broker = MemoryBroker::new();
    let t = topic("turns");
    let a: Arc<dyn Subscription> = subscribe(&broker, &t, "s", "a", ConsumerType::Shared)
        .await
        .into();
    let b: Arc<dyn Subscription> = subscribe(&broker, &t, "s", "b", ConsumerType::Shared)
        .await
        .into();
    let mut counts = HashMap::new();
    for i in 0..6 {
        let wait_a = tokio::spawn({
            let a = Arc::clone(&a);
            async move { a.receive(10).await }
        });
        let wait_b = tokio::spawn({
            let b = Arc::clone(&b);
            async move { b.receive(10).await }
        });
        // Let both register as waiting, then publish one message: exactly one of them wakes.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        publish(&broker, &t, &format!("m{i}")).await;
        while !wait_a.is_finished() && !wait_b.is_finished() {
            tokio::task::yield_now().await;
        }
        let (winner, loser, name) = if wait_a.is_finished() {
            (wait_a, wait_b, "a")
        } else {
            (wait_b, wait_a, "b")
        };
        let batch = winner.await.expect("task").expect("receive");
        assert_eq!(batch.len(), 1);
        *counts.entry(name).or_insert(0) += 1;
        loser.abort();
        let _ = loser.await;
    }
    assert_eq!(counts.get("a"), Some(&3));
    assert_eq!(counts.get("b"), Some(&3));
}

#[tokio::test(start_paused = true)]
async fn acknowledged_messages_never_come_back() {
    let broker = MemoryBroker::new();
    let t = topic("acked");
    publish(&broker, &t, "a").await;
    publish(&broker, &t, "b").await;
    let sub = subscribe(&broker, &t, "s", "c1", ConsumerType::Shared).await;
    let batch = recv(&*sub, 10).await;
    sub.ack(ids(&batch)).await.expect("ack");
    // Acking twice, or an id the subscription never had, is harmless.
    sub.ack(ids(&batch)).await.expect("ack again");
    sub.ack(vec![MessageId::from_u64(999), MessageId::from_text("x")])
        .await
        .expect("unknown ids");
    sub.close().await.expect("close");
    let again = subscribe(&broker, &t, "s", "c2", ConsumerType::Shared).await;
    assert!(stays_empty(&*again).await);
    assert!(broker.peek(&t).is_empty());
}

#[tokio::test(start_paused = true)]
async fn nacked_messages_come_back_with_a_higher_redelivery_count() {
    let broker = MemoryBroker::new();
    let t = topic("nack");
    let sub = subscribe(&broker, &t, "s", "c1", ConsumerType::Shared).await;
    publish(&broker, &t, "a").await;
    publish(&broker, &t, "b").await;
    let batch = recv(&*sub, 1).await;
    assert_eq!(texts(&batch), ["a"]);
    sub.nack(ids(&batch)).await.expect("nack");
    // Redeliveries go out before newer messages.
    let again = recv(&*sub, 10).await;
    assert_eq!(texts(&again), ["a", "b"]);
    assert_eq!(again[0].redelivery_count, 1);
    assert_eq!(again[0].id, batch[0].id);
    assert_eq!(again[1].redelivery_count, 0);
    sub.nack(ids(&again[..1])).await.expect("nack");
    let third = recv(&*sub, 10).await;
    assert_eq!(third[0].redelivery_count, 2);
    sub.ack(ids(&third)).await.expect("ack");
    sub.ack(ids(&again[1..])).await.expect("ack");
    assert!(stays_empty(&*sub).await);
}

#[tokio::test(start_paused = true)]
async fn an_ack_after_a_nack_settles_the_message() {
    let broker = MemoryBroker::new();
    let t = topic("nack-then-ack");
    for kind in [ConsumerType::Shared, ConsumerType::KeyShared] {
        let name = kind.as_str();
        let sub = subscribe(&broker, &t, name, "a", kind).await;
        publish_keyed(&broker, &t, "k", name).await;
        let batch = recv(&*sub, 10).await;
        assert_eq!(texts(&batch), [name]);
        sub.nack(ids(&batch)).await.expect("nack");
        // The message waits for redelivery (key_shared: in the consumer's queue); acking it
        // now still counts.
        sub.ack(ids(&batch)).await.expect("ack");
        assert!(stays_empty(&*sub).await, "{name}");
        assert_eq!(broker.backlog(&t, name), Some(0), "{name}");
        sub.close().await.expect("close");
        assert!(matches!(broker.unsubscribe(&t, name), Ok(true)));
    }
}

#[tokio::test(start_paused = true)]
async fn nack_goes_to_another_consumer_when_it_is_waiting() {
    let broker = MemoryBroker::new();
    let t = topic("nack-other");
    let a = subscribe(&broker, &t, "s", "a", ConsumerType::Shared).await;
    let b: Arc<dyn Subscription> = subscribe(&broker, &t, "s", "b", ConsumerType::Shared)
        .await
        .into();
    publish(&broker, &t, "m").await;
    let batch = recv(&*a, 10).await;
    let waiting = tokio::spawn({
        let b = Arc::clone(&b);
        async move { b.receive(10).await }
    });
    tokio::task::yield_now().await;
    a.nack(ids(&batch)).await.expect("nack");
    let redelivered = waiting.await.expect("task").expect("receive");
    assert_eq!(texts(&redelivered), ["m"]);
    assert_eq!(redelivered[0].redelivery_count, 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_subscription_redelivers_what_it_held() {
    let broker = MemoryBroker::new();
    let t = topic("drop");
    let a = subscribe(&broker, &t, "s", "a", ConsumerType::Shared).await;
    let b = subscribe(&broker, &t, "s", "b", ConsumerType::Shared).await;
    for payload in ["m1", "m2", "m3"] {
        publish(&broker, &t, payload).await;
    }
    let held = recv(&*a, 10).await;
    assert_eq!(held.len(), 3);
    a.ack(ids(&held[..1])).await.expect("ack");
    assert!(stays_empty(&*b).await);
    drop(a);
    let redelivered = recv(&*b, 10).await;
    assert_eq!(texts(&redelivered), ["m2", "m3"]);
    assert!(redelivered.iter().all(|d| d.redelivery_count == 1));
}

#[tokio::test(start_paused = true)]
async fn closing_redelivers_and_refuses_further_use() {
    let broker = MemoryBroker::new();
    let t = topic("close");
    let a = subscribe(&broker, &t, "s", "a", ConsumerType::Shared).await;
    publish(&broker, &t, "m").await;
    let held = recv(&*a, 10).await;
    a.close().await.expect("close");
    a.close().await.expect("closing twice is fine");
    assert!(matches!(
        a.receive(1).await,
        Err(BrokerError::Closed("memory"))
    ));
    assert!(matches!(
        a.ack(ids(&held)).await,
        Err(BrokerError::Closed(_))
    ));
    assert!(matches!(
        a.nack(ids(&held)).await,
        Err(BrokerError::Closed(_))
    ));
    let b = subscribe(&broker, &t, "s", "b", ConsumerType::Shared).await;
    let again = recv(&*b, 10).await;
    assert_eq!(texts(&again), ["m"]);
    assert_eq!(again[0].redelivery_count, 1);
}

#[tokio::test(start_paused = true)]
async fn closing_wakes_a_receive_in_progress() {
    let broker = MemoryBroker::new();
    let t = topic("close-wakes");
    let sub: Arc<dyn Subscription> = subscribe(&broker, &t, "s", "a", ConsumerType::Shared)
        .await
        .into();
    let waiting = tokio::spawn({
        let sub = Arc::clone(&sub);
        async move { sub.receive(10).await }
    });
    tokio::task::yield_now().await;
    sub.close().await.expect("close");
    let result = timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken")
        .expect("task");
    assert!(matches!(result, Err(BrokerError::Closed(_))));
}

#[tokio::test(start_paused = true)]
async fn key_shared_keeps_each_key_on_one_consumer_in_order() {
    let broker = MemoryBroker::new();
    let t = topic("key-shared");
    let mut consumers = Vec::new();
    for name in ["c0", "c1", "c2"] {
        consumers.push(subscribe(&broker, &t, "s", name, ConsumerType::KeyShared).await);
    }
    let keys: Vec<String> = (0..12).map(|k| format!("key-{k}")).collect();
    let total = 120;
    for i in 0..total {
        let key = &keys[i % keys.len()];
        publish_keyed(&broker, &t, key, &format!("{key}:{i}")).await;
    }
    let mut owner_of: HashMap<String, usize> = HashMap::new();
    let mut order: HashMap<String, Vec<u64>> = HashMap::new();
    let mut received = 0;
    while received < total {
        for (index, consumer) in consumers.iter().enumerate() {
            let Ok(batch) = timeout(Duration::from_millis(10), consumer.receive(7)).await else {
                continue;
            };
            let batch = batch.expect("receive");
            for delivery in &batch {
                let key = delivery.message.key.clone().expect("keyed");
                let owner = *owner_of.entry(key.clone()).or_insert(index);
                assert_eq!(owner, index, "{key} went to two consumers");
                order
                    .entry(key)
                    .or_default()
                    .push(delivery.id.as_u64().expect("numeric"));
            }
            received += batch.len();
            consumer.ack(ids(&batch)).await.expect("ack");
        }
    }
    for (key, seqs) in &order {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{key} out of order: {seqs:?}"
        );
        assert_eq!(seqs.len(), total / keys.len());
    }
    let used: HashSet<usize> = owner_of.values().copied().collect();
    assert!(used.len() > 1, "keys spread over consumers");
}

#[tokio::test(start_paused = true)]
async fn key_shared_newcomer_gets_no_key_another_consumer_is_working_on() {
    let broker = MemoryBroker::new();
    let t = topic("key-shared-join");
    let a = subscribe(&broker, &t, "s", "a", ConsumerType::KeyShared).await;
    let keys: Vec<String> = (0..20).map(|k| format!("k{k}")).collect();
    for key in &keys {
        publish_keyed(&broker, &t, key, "first").await;
    }
    let first = recv(&*a, 100).await;
    assert_eq!(first.len(), keys.len());

    let b = subscribe(&broker, &t, "s", "b", ConsumerType::KeyShared).await;
    for key in &keys {
        publish_keyed(&broker, &t, key, "second").await;
    }
    // Every key has a message in flight at `a`, so its next messages stay with `a`.
    assert!(stays_empty(&*b).await);
    let second = recv(&*a, 100).await;
    assert_eq!(texts(&second), vec!["second"; keys.len()]);

    // Once settled, keys are free to move to where their hash points.
    a.ack(ids(&first)).await.expect("ack");
    a.ack(ids(&second)).await.expect("ack");
    for key in &keys {
        publish_keyed(&broker, &t, key, "third").await;
    }
    let to_b = recv(&*b, 100).await;
    let to_a = recv(&*a, 100).await;
    assert_eq!(to_a.len() + to_b.len(), keys.len());
    assert!(!to_b.is_empty(), "the newcomer gets its share");
}

#[tokio::test(start_paused = true)]
async fn key_shared_keys_of_a_departed_consumer_move_in_order() {
    let broker = MemoryBroker::new();
    let t = topic("key-shared-leave");
    let a = subscribe(&broker, &t, "s", "a", ConsumerType::KeyShared).await;
    let b = subscribe(&broker, &t, "s", "b", ConsumerType::KeyShared).await;
    let keys: Vec<String> = (0..10).map(|k| format!("k{k}")).collect();
    for round in 0..3 {
        for key in &keys {
            publish_keyed(&broker, &t, key, &format!("{key}:{round}")).await;
        }
    }
    // `a` takes part of its share and leaves without acking; `b` inherits, oldest first.
    let taken = recv(&*a, 5).await;
    let taken_seqs: Vec<u64> = taken.iter().filter_map(|d| d.id.as_u64()).collect();
    drop(a);
    let mut per_key: HashMap<String, Vec<(u64, u32)>> = HashMap::new();
    while let Ok(batch) = timeout(Duration::from_millis(10), b.receive(100)).await {
        let batch = batch.expect("receive");
        for d in &batch {
            let key = d.message.key.clone().expect("keyed");
            per_key
                .entry(key)
                .or_default()
                .push((d.id.as_u64().expect("numeric"), d.redelivery_count));
        }
        b.ack(ids(&batch)).await.expect("ack");
    }
    assert_eq!(
        per_key.values().map(Vec::len).sum::<usize>(),
        keys.len() * 3
    );
    for (key, seqs) in &per_key {
        assert!(
            seqs.windows(2).all(|w| w[0].0 < w[1].0),
            "{key} out of order: {seqs:?}"
        );
        for (seq, count) in seqs {
            assert_eq!(*count, u32::from(taken_seqs.contains(seq)));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn key_shared_nacked_message_goes_before_later_ones_of_its_key() {
    let broker = MemoryBroker::new();
    let t = topic("key-shared-nack");
    let sub = subscribe(&broker, &t, "s", "a", ConsumerType::KeyShared).await;
    for payload in ["m1", "m2", "m3"] {
        publish_keyed(&broker, &t, "k", payload).await;
    }
    let first = recv(&*sub, 1).await;
    assert_eq!(texts(&first), ["m1"]);
    sub.nack(ids(&first)).await.expect("nack");
    let again = recv(&*sub, 10).await;
    assert_eq!(texts(&again), ["m1", "m2", "m3"]);
    assert_eq!(again[0].redelivery_count, 1);
}

#[tokio::test(start_paused = true)]
async fn a_shared_consumer_at_its_limit_does_not_hold_back_the_others() {
    let broker = MemoryBroker::new();
    let t = topic("shared-full");
    let full: Arc<dyn Subscription> = broker
        .subscribe(SubscribeOptions {
            receiver_queue_size: 1,
            ..options(&t, "s", "full", ConsumerType::Shared)
        })
        .await
        .expect("subscribe")
        .into();
    let free = subscribe(&broker, &t, "s", "free", ConsumerType::Shared).await;
    publish(&broker, &t, "m0").await;
    assert_eq!(recv(&*full, 10).await.len(), 1);
    // `full` waits in receive with no room; `free` takes everything, not just half.
    let waiting = tokio::spawn({
        let full = Arc::clone(&full);
        async move { full.receive(10).await }
    });
    tokio::task::yield_now().await;
    for i in 1..=10 {
        publish(&broker, &t, &format!("m{i}")).await;
    }
    assert_eq!(recv(&*free, 100).await.len(), 10);
    waiting.abort();
}

#[tokio::test(start_paused = true)]
async fn failover_standby_takes_over_in_order() {
    let broker = MemoryBroker::new();
    let t = topic("failover");
    let active = subscribe(&broker, &t, "s", "a", ConsumerType::Failover).await;
    let standby: Arc<dyn Subscription> = subscribe(&broker, &t, "s", "b", ConsumerType::Failover)
        .await
        .into();
    for payload in ["m1", "m2", "m3"] {
        publish(&broker, &t, payload).await;
    }
    assert!(stays_empty(&*standby).await);
    let batch = recv(&*active, 2).await;
    assert_eq!(texts(&batch), ["m1", "m2"]);
    active.ack(ids(&batch[..1])).await.expect("ack");
    let waiting = tokio::spawn({
        let standby = Arc::clone(&standby);
        async move { standby.receive(10).await }
    });
    tokio::task::yield_now().await;
    drop(active);
    let took_over = timeout(Duration::from_secs(5), waiting)
        .await
        .expect("standby woken")
        .expect("task")
        .expect("receive");
    assert_eq!(texts(&took_over), ["m2", "m3"]);
    assert_eq!(took_over[0].redelivery_count, 1);
    assert_eq!(took_over[1].redelivery_count, 0);
    publish(&broker, &t, "m4").await;
    assert_eq!(texts(&recv(&*standby, 10).await), ["m4"]);
}

#[tokio::test(start_paused = true)]
async fn exclusive_rejects_a_second_consumer_until_the_first_leaves() {
    let broker = MemoryBroker::new();
    let t = topic("exclusive");
    let first = subscribe(&broker, &t, "s", "first", ConsumerType::Exclusive).await;
    publish(&broker, &t, "m").await;
    let held = recv(&*first, 10).await;
    let Err(error) = broker
        .subscribe(options(&t, "s", "second", ConsumerType::Exclusive))
        .await
    else {
        panic!("a second exclusive consumer must be rejected");
    };
    assert!(
        matches!(&error, BrokerError::Rejected { reason, .. } if reason.contains("exclusive") && reason.contains("first")),
        "{error}"
    );
    // Another subscription of the same topic is independent.
    subscribe(&broker, &t, "other", "x", ConsumerType::Exclusive).await;
    drop(first);
    let next = subscribe(&broker, &t, "s", "second", ConsumerType::Exclusive).await;
    let again = recv(&*next, 10).await;
    assert_eq!(again[0].id, held[0].id);
}

#[tokio::test(start_paused = true)]
async fn a_consumer_of_another_type_cannot_join() {
    let broker = MemoryBroker::new();
    let t = topic("types");
    let shared = subscribe(&broker, &t, "s", "a", ConsumerType::Shared).await;
    let result = broker
        .subscribe(options(&t, "s", "b", ConsumerType::KeyShared))
        .await;
    assert!(matches!(result, Err(BrokerError::Rejected { .. })));
    // Without consumers, the subscription takes the next consumer's type.
    drop(shared);
    subscribe(&broker, &t, "s", "b", ConsumerType::KeyShared).await;
    let stats = broker.stats(&t).expect("stats");
    assert_eq!(
        stats.subscriptions[0].consumer_type,
        ConsumerType::KeyShared
    );
    assert!(matches!(
        broker
            .subscribe(options(&t, "", "c", ConsumerType::Shared))
            .await,
        Err(BrokerError::Rejected { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn delayed_messages_wait_for_their_time() {
    let broker = MemoryBroker::new();
    let t = topic("delayed");
    let sub = subscribe(&broker, &t, "s", "c1", ConsumerType::Shared).await;
    let start = Instant::now();
    let later = Message::new("later").with_deliver_at(SystemTime::now() + Duration::from_secs(10));
    broker.publish(&t, later).await.expect("publish");
    let past = Message::new("now").with_deliver_at(SystemTime::now() - Duration::from_secs(1));
    broker.publish(&t, past).await.expect("publish");
    assert_eq!(broker.stats(&t).map(|s| s.delayed), Some(1));
    assert_eq!(broker.backlog(&t, "s"), Some(2));

    let now = recv(&*sub, 10).await;
    assert_eq!(texts(&now), ["now"]);
    sub.ack(ids(&now)).await.expect("ack");
    assert!(timeout(Duration::from_secs(9), sub.receive(10))
        .await
        .is_err());
    let due = recv(&*sub, 10).await;
    assert_eq!(texts(&due), ["later"]);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(9_900) && waited < Duration::from_secs(11),
        "{waited:?}"
    );
    assert_eq!(broker.stats(&t).map(|s| s.delayed), Some(0));
}

#[tokio::test(start_paused = true)]
async fn a_sooner_delayed_message_wakes_a_waiting_receiver() {
    let broker = MemoryBroker::new();
    let t = topic("delayed-sooner");
    let sub: Arc<dyn Subscription> = subscribe(&broker, &t, "s", "c1", ConsumerType::Shared)
        .await
        .into();
    let far = Message::new("far").with_deliver_at(SystemTime::now() + Duration::from_secs(3600));
    broker.publish(&t, far).await.expect("publish");
    let start = Instant::now();
    let waiting = tokio::spawn({
        let sub = Arc::clone(&sub);
        async move { sub.receive(10).await }
    });
    tokio::task::yield_now().await;
    // The receiver sleeps until the far message; a nearer one must shorten that.
    let near = Message::new("near").with_deliver_at(SystemTime::now() + Duration::from_secs(5));
    broker.publish(&t, near).await.expect("publish");
    let batch = waiting.await.expect("task").expect("receive");
    assert_eq!(texts(&batch), ["near"]);
    assert!(start.elapsed() < Duration::from_secs(6));
    let peeked: Vec<_> = broker.peek(&t).iter().map(|m| m.payload.clone()).collect();
    assert_eq!(peeked, ["near", "far"]);
}

#[tokio::test(start_paused = true)]
async fn receiver_queue_size_bounds_unacknowledged_deliveries() {
    let broker = MemoryBroker::new();
    let t = topic("prefetch");
    let sub: Arc<dyn Subscription> = broker
        .subscribe(SubscribeOptions {
            receiver_queue_size: 2,
            ..options(&t, "s", "c1", ConsumerType::Shared)
        })
        .await
        .expect("subscribe")
        .into();
    for i in 0..5 {
        publish(&broker, &t, &format!("m{i}")).await;
    }
    let first = recv(&*sub, 10).await;
    assert_eq!(texts(&first), ["m0", "m1"]);
    let waiting = tokio::spawn({
        let sub = Arc::clone(&sub);
        async move { sub.receive(10).await }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "full: waits for an ack");
    sub.ack(ids(&first[..1])).await.expect("ack");
    let next = timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken by the ack")
        .expect("task")
        .expect("receive");
    assert_eq!(texts(&next), ["m2"]);
}

#[tokio::test(start_paused = true)]
async fn ack_timeout_redelivers_what_was_left_unacknowledged() {
    let broker = MemoryBroker::with_options(MemoryBrokerOptions {
        ack_timeout: Some(Duration::from_secs(30)),
        ..MemoryBrokerOptions::default()
    });
    let t = topic("ack-timeout");
    let sub = subscribe(&broker, &t, "s", "c1", ConsumerType::Shared).await;
    publish(&broker, &t, "kept").await;
    publish(&broker, &t, "acked").await;
    let start = Instant::now();
    let batch = recv(&*sub, 10).await;
    sub.ack(ids(&batch[1..])).await.expect("ack");
    assert!(timeout(Duration::from_secs(29), sub.receive(10))
        .await
        .is_err());
    let again = recv(&*sub, 10).await;
    assert_eq!(texts(&again), ["kept"]);
    assert_eq!(again[0].redelivery_count, 1);
    assert!(start.elapsed() >= Duration::from_secs(30));
    // A late ack of the timed-out delivery still counts.
    sub.ack(ids(&batch[..1])).await.expect("ack");
    assert!(timeout(Duration::from_secs(120), sub.receive(10))
        .await
        .is_err());
    assert_eq!(broker.backlog(&t, "s"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_receive_loses_nothing() {
    let broker = MemoryBroker::new();
    let t = topic("cancel");
    let sub = subscribe(&broker, &t, "s", "c1", ConsumerType::Shared).await;
    let mut pending = sub.receive(10);
    assert!(poll_once(pending.as_mut()).is_pending());
    publish(&broker, &t, "m").await;
    // Woken, but dropped before it ran: the message must still be there.
    drop(pending);
    assert_eq!(texts(&recv(&*sub, 10).await), ["m"]);
}

#[tokio::test(start_paused = true)]
async fn receiving_under_constant_cancellation_loses_nothing() {
    let broker = MemoryBroker::new();
    let t = topic("cancel-loop");
    let sub = subscribe(&broker, &t, "s", "c1", ConsumerType::Shared).await;
    let total = 200;
    let publisher = tokio::spawn({
        let broker = broker.clone();
        let t = t.clone();
        async move {
            for i in 0..total {
                publish(&broker, &t, &format!("m{i}")).await;
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
        }
    });
    let mut seen = Vec::new();
    while seen.len() < total {
        // Timeouts shorter than the publish interval cancel most receives mid-wait.
        if let Ok(batch) = timeout(Duration::from_millis(3), sub.receive(5)).await {
            let batch = batch.expect("receive");
            seen.extend(texts(&batch));
            sub.ack(ids(&batch)).await.expect("ack");
        }
    }
    publisher.await.expect("publisher");
    let expected: Vec<String> = (0..total).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, expected);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_receive_passes_its_wakeup_on() {
    let broker = MemoryBroker::new();
    let t = topic("pass-on");
    let a = subscribe(&broker, &t, "s", "a", ConsumerType::Shared).await;
    let b: Arc<dyn Subscription> = subscribe(&broker, &t, "s", "b", ConsumerType::Shared)
        .await
        .into();
    let mut at_a = a.receive(1);
    assert!(poll_once(at_a.as_mut()).is_pending());
    let at_b = tokio::spawn({
        let b = Arc::clone(&b);
        async move { b.receive(1).await }
    });
    tokio::task::yield_now().await;
    // One message, one wakeup: it goes to `a`, which is dropped without looking.
    publish(&broker, &t, "m").await;
    drop(at_a);
    let batch = timeout(Duration::from_secs(5), at_b)
        .await
        .expect("the wakeup reached b")
        .expect("task")
        .expect("receive");
    assert_eq!(texts(&batch), ["m"]);
}

#[tokio::test(start_paused = true)]
async fn stats_backlog_and_peek_describe_a_topic() {
    let broker = MemoryBroker::new();
    let t = topic("stats");
    assert_eq!(broker.backlog(&t, "s"), None);
    assert!(broker.peek(&t).is_empty());
    let sub = subscribe(&broker, &t, "s", "c1", ConsumerType::Failover).await;
    for payload in ["a", "b", "c"] {
        publish(&broker, &t, payload).await;
    }
    let batch = recv(&*sub, 2).await;
    sub.ack(ids(&batch[..1])).await.expect("ack");
    let stats = broker.stats(&t).expect("stats");
    assert_eq!(stats.published, 3);
    assert_eq!(stats.retained, 2);
    assert_eq!(stats.delayed, 0);
    assert_eq!(stats.subscriptions.len(), 1);
    let s = &stats.subscriptions[0];
    assert_eq!(s.name, "s");
    assert_eq!(s.consumer_type, ConsumerType::Failover);
    assert_eq!((s.consumers, s.backlog, s.unacked), (1, 2, 1));
    assert_eq!(broker.backlog(&t, "s"), Some(2));
    let peeked: Vec<_> = broker.peek(&t).iter().map(|m| m.payload.clone()).collect();
    assert_eq!(peeked, ["b", "c"]);
    drop(sub);
    assert_eq!(
        broker.stats(&t).map(|s| s.subscriptions[0].consumers),
        Some(0)
    );
}

#[tokio::test(start_paused = true)]
async fn capabilities_declare_what_the_broker_does() {
    let broker = MemoryBroker::new();
    let caps = broker.capabilities();
    assert!(!caps.durable);
    assert_eq!(caps.delayed_delivery, DelayedDelivery::Native);
    assert!(caps.history && caps.key_ordering && caps.nack_redelivery && caps.redelivers_abandoned);
    assert_eq!(caps.consumer_types.len(), 4);
    assert_eq!(
        caps.max_payload_bytes,
        Some(broker.options().max_payload_bytes)
    );
}

/// A rough per-message cost through the trait objects, for a human to read. No assertion: timing
/// depends on the machine. Run with
/// `cargo test --release -p worker-runtime memory::tests::throughput -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a manual measurement, not a check"]
async fn throughput() {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let t = topic("throughput");
    let sub = broker
        .subscribe(options(&t, "s", "c1", ConsumerType::Shared))
        .await
        .expect("subscribe");
    let total: usize = 1_000_000;
    let batch_size = 256;
    let payload = bytes::Bytes::from_static(b"{\"id\":1,\"body\":\"x\"}");
    let start = std::time::Instant::now();
    let mut received = 0;
    while received < total {
        for _ in 0..batch_size {
            broker
                .publish(&t, Message::new(payload.clone()))
                .await
                .expect("publish");
        }
        let mut pending = batch_size;
        while pending > 0 {
            let batch = sub.receive(pending).await.expect("receive");
            pending -= batch.len();
            received += batch.len();
            sub.ack(ids(&batch)).await.expect("ack");
        }
    }
    let elapsed = start.elapsed();
    println!(
        "{total} messages published, received and acked in {elapsed:?}: {:.0} ns/message",
        elapsed.as_nanos() as f64 / total as f64
    );
}

/// Like [`throughput`], with the publisher and the consumer on two worker threads, as in a worker.
/// Run with `--ignored --nocapture` in release mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a manual measurement, not a check"]
async fn throughput_two_threads() {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let t = topic("throughput-two-threads");
    let sub = broker
        .subscribe(options(&t, "s", "c1", ConsumerType::Shared))
        .await
        .expect("subscribe");
    let total: usize = 2_000_000;
    let start = std::time::Instant::now();
    let publisher = tokio::spawn({
        let broker = Arc::clone(&broker);
        let t = t.clone();
        async move {
            let payload = bytes::Bytes::from_static(b"{\"id\":1,\"body\":\"x\"}");
            for _ in 0..total {
                // The bound pushes back when the consumer falls behind; try again shortly.
                while let Err(BrokerError::Full { .. }) =
                    broker.publish(&t, Message::new(payload.clone())).await
                {
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    let mut received = 0;
    let mut batches = 0;
    while received < total {
        let batch = sub.receive(512).await.expect("receive");
        received += batch.len();
        batches += 1;
        sub.ack(ids(&batch)).await.expect("ack");
    }
    publisher.await.expect("publisher");
    let elapsed = start.elapsed();
    println!(
        "{total} messages on two threads in {elapsed:?}: {:.0} ns/message, {:.1} per batch",
        elapsed.as_nanos() as f64 / total as f64,
        received as f64 / batches as f64
    );
}
