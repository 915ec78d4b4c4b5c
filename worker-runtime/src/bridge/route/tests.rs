use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use worker_core::{ConsumerType, InitialPosition, Message, SubscribeOptions};

use super::*;
use crate::bridge::source::TopicSource;
use crate::bridge::target::TopicTarget;
use crate::broker::MemoryBroker;
use crate::metrics::Metrics;

fn topic(name: &str) -> Topic {
    Topic::parse(&format!("q1/t/bridge/{name}")).expect("topic")
}

async fn subscribe(
    broker: &MemoryBroker,
    topic: &Topic,
    name: &str,
    kind: ConsumerType,
) -> Arc<dyn worker_core::Subscription> {
    Arc::from(
        broker
            .subscribe(SubscribeOptions {
                topic: topic.clone(),
                subscription: name.into(),
                consumer_name: name.into(),
                consumer_type: kind,
                initial_position: InitialPosition::Earliest,
                receiver_queue_size: 1000,
            })
            .await
            .expect("subscribe"),
    )
}

async fn drain(broker: &MemoryBroker, topic: &Topic, count: usize) -> Vec<Message> {
    let reader = subscribe(broker, topic, "check", ConsumerType::Shared).await;
    let mut read = Vec::new();
    while read.len() < count {
        let batch =
            tokio::time::timeout(Duration::from_secs(30), reader.receive(count - read.len()))
                .await
                .expect("in time")
                .expect("receive");
        read.extend(batch.into_iter().map(|d| (*d.message).clone()));
    }
    read
}

/// A target that fails with a transient error while `down` is set, and counts its calls.
struct Flaky {
    inner: TopicTarget,
    down: AtomicBool,
    calls: AtomicUsize,
}

impl Target for Flaky {
    fn describe(&self) -> String {
        "flaky".into()
    }
    fn publish<'a>(
        &'a self,
        item: &'a Item,
    ) -> worker_core::BoxFuture<'a, Result<(), BrokerError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(BrokerError::Timeout {
                    backend: "test",
                    operation: "publish",
                    millis: 1,
                })
            });
        }
        self.inner.publish(item)
    }
}

struct Setup {
    broker: Arc<MemoryBroker>,
    metrics: Metrics,
    stop: CancellationToken,
}

impl Setup {
    fn new() -> Self {
        Setup {
            broker: Arc::new(MemoryBroker::new()),
            metrics: Metrics::new("bridge-test"),
            stop: CancellationToken::new(),
        }
    }

    async fn route(
        &self,
        from: &Topic,
        kind: ConsumerType,
        target: Arc<dyn Target>,
        max_in_flight: usize,
    ) -> Route {
        let subscription = subscribe(&self.broker, from, "bridge", kind).await;
        Route {
            name: "r".into(),
            source: Box::new(TopicSource::new(
                subscription,
                from.clone(),
                kind.preserves_order(),
            )),
            target,
            dead_letters: DeadLetterTopic {
                broker: self.broker.clone(),
                topic: topic("dlq"),
            },
            max_in_flight,
            consumer: Arc::from("bridge-test"),
            metrics: self.metrics.route("r"),
        }
    }

    async fn publish(&self, to: &Topic, n: usize, key: Option<&str>) {
        for i in 0..n {
            let mut message =
                Message::new(format!("{i}")).with_property(props_id(), format!("m-{i}"));
            message.key = key.map(str::to_owned);
            self.broker.publish(to, message).await.expect("publish");
        }
    }

    fn metric(&self, line: &str) -> String {
        self.metrics
            .encode()
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_default()
            .to_owned()
    }
}

fn props_id() -> &'static str {
    worker_core::props::MESSAGE_ID
}

#[tokio::test(start_paused = true)]
async fn everything_is_forwarded_in_order_per_key_and_acked_after_the_copy() {
    let setup = Setup::new();
    let (from, to) = (topic("in"), topic("out"));
    setup.publish(&from, 50, Some("k")).await;
    let target = Arc::new(TopicTarget::new(setup.broker.clone(), Some(to.clone())));
    let route = setup.route(&from, ConsumerType::KeyShared, target, 8).await;
    let running = tokio::spawn(route.run(setup.stop.clone(), Duration::from_secs(5)));
    let copies = drain(&setup.broker, &to, 50).await;
    let order: Vec<String> = copies
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(
        order,
        (0..50).map(|i| i.to_string()).collect::<Vec<_>>(),
        "one key's order kept"
    );
    assert!(copies
        .iter()
        .enumerate()
        .all(|(i, m)| m.property(props_id()) == Some(&format!("m-{i}")[..])));
    tokio::time::sleep(Duration::from_millis(100)).await;
    setup.stop.cancel();
    let report = running.await.expect("the route ran");
    assert_eq!(
        (report.forwarded, report.dead_lettered, report.unfinished),
        (50, 0, 0)
    );
    let stats = setup.broker.stats(&from).expect("stats");
    let bridge = stats
        .subscriptions
        .iter()
        .find(|s| s.name == "bridge")
        .expect("sub");
    assert_eq!(
        (bridge.backlog, bridge.unacked),
        (0, 0),
        "every source message acked"
    );
    assert!(setup
        .metric("bridge_forwarded_total{route=\"r\",status=\"ok\"}")
        .ends_with(" 50"));
}

#[tokio::test(start_paused = true)]
async fn a_target_that_is_down_fills_the_buffer_then_reading_stops_and_resumes_by_itself() {
    let setup = Setup::new();
    let (from, to) = (topic("bp-in"), topic("bp-out"));
    setup.publish(&from, 100, None).await;
    let target = Arc::new(Flaky {
        inner: TopicTarget::new(setup.broker.clone(), Some(to.clone())),
        down: AtomicBool::new(true),
        calls: AtomicUsize::new(0),
    });
    let route = setup
        .route(&from, ConsumerType::Shared, target.clone(), 10)
        .await;
    let running = tokio::spawn(route.run(setup.stop.clone(), Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Only the buffer's worth was read; the rest waits in the broker.
    assert!(
        setup
            .metric("bridge_buffered{route=\"r\"}")
            .ends_with(" 10"),
        "{}",
        setup.metric("bridge_buffered")
    );
    let stats = setup.broker.stats(&from).expect("stats");
    let bridge = stats
        .subscriptions
        .iter()
        .find(|s| s.name == "bridge")
        .expect("sub");
    assert_eq!(bridge.unacked, 10, "nothing beyond the buffer was taken");
    assert!(
        target.calls.load(Ordering::SeqCst) > 10,
        "publishes were tried again"
    );
    assert_eq!(setup.broker.stats(&to).map(|s| s.retained).unwrap_or(0), 0);

    target.down.store(false, Ordering::SeqCst);
    let copies = drain(&setup.broker, &to, 100).await;
    assert_eq!(copies.len(), 100);
    setup.stop.cancel();
    let report = running.await.expect("the route ran");
    assert_eq!(report.forwarded, 100);
    assert!(report.retries > 0);
    assert!(setup
        .metric("bridge_target_failures_total{route=\"r\"}")
        .split(' ')
        .next_back()
        .is_some_and(|n| n != "0"));
}

/// A target that refuses everything for good.
struct Refusing;

impl Target for Refusing {
    fn describe(&self) -> String {
        "refusing".into()
    }
    fn publish<'a>(
        &'a self,
        _item: &'a Item,
    ) -> worker_core::BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async {
            Err(BrokerError::Rejected {
                backend: "test",
                reason: "no thanks".into(),
            })
        })
    }
    fn max_payload_bytes(&self) -> Option<usize> {
        Some(4)
    }
}

#[tokio::test(start_paused = true)]
async fn what_the_target_refuses_goes_to_the_routes_dlq_with_a_reason() {
    let setup = Setup::new();
    let from = topic("refused-in");
    setup
        .broker
        .publish(
            &from,
            Message::new("tiny").with_property(props_id(), "small"),
        )
        .await
        .expect("publish");
    setup
        .broker
        .publish(
            &from,
            Message::new("far too large").with_property(props_id(), "large"),
        )
        .await
        .expect("publish");
    let route = setup
        .route(&from, ConsumerType::Shared, Arc::new(Refusing), 8)
        .await;
    let running = tokio::spawn(route.run(setup.stop.clone(), Duration::from_secs(5)));
    let mut copies = drain(&setup.broker, &topic("dlq"), 2).await;
    copies.sort_by_key(|m| m.property(props_id()).map(str::to_owned));
    setup.stop.cancel();
    let report = running.await.expect("the route ran");
    assert_eq!(report.dead_lettered, 2);
    let reason = |m: &Message| {
        m.property(worker_core::props::DLQ_REASON)
            .map(str::to_owned)
    };
    assert_eq!(reason(&copies[0]).as_deref(), Some("payload_too_large"));
    assert_eq!(reason(&copies[1]).as_deref(), Some("permanent_error"));
    assert!(copies[1]
        .property(worker_core::props::DLQ_ERROR)
        .is_some_and(|e| e.contains("no thanks")));
    assert_eq!(
        copies[1].property(worker_core::props::DLQ_TASK),
        Some("bridge:r")
    );
    assert_eq!(
        copies[1].property(worker_core::props::DLQ_ORIGINAL_TOPIC),
        Some("q1/t/bridge/refused-in")
    );
}
