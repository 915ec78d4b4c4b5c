//! [`PulsarSubscription`]: one consumer of a subscription, as the runtime sees it. The consumer
//! itself lives in a task (see `task.rs`); this side receives from it and sends it commands.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use worker_core::{
    BoxFuture, BrokerError, ConsumerType, Delivery, MessageId, SubscribeOptions, Subscription,
};

use super::acks::{AckMode, AckTracker};
use super::admin::Admin;
use super::consumer::{ConsumerHandle, ConsumerSource, PulsarSource};
use super::error::{timeout, to_broker_error, BACKEND};
use super::naming::{pulsar_topic, PulsarMessageId};
use super::options::PulsarOptions;
use super::task::{spawn_build, Command, ConsumerTask, Item};

/// The most deliveries buffered between the consumer task and `receive`, on top of the
/// consumer's own receiver queue.
const MAX_HANDOFF: usize = 256;

/// One consumer of a Pulsar subscription. Made by [`super::PulsarBroker`]'s `subscribe`.
///
/// `receive` returns a transient [`BrokerError::Connection`] when the consumer lost its
/// connection for good or could not be re-created; the subscription keeps trying on its own
/// (with a growing pause), so calling `receive` again is the way to go on. Dropping it without
/// `close` still sends the acks that are waiting, then closes the consumer in the background.
pub struct PulsarSubscription {
    commands: mpsc::UnboundedSender<Command>,
    inbox: tokio::sync::Mutex<Inbox>,
    close_timeout: Duration,
    /// The admin API, the Pulsar topic and the subscription, to read the backlog from.
    backlog_from: Option<(Admin, String, String)>,
}

struct Inbox {
    deliveries: mpsc::Receiver<Item>,
    /// An error met after some deliveries were already taken; returned by the next `receive`.
    held_error: Option<BrokerError>,
}

/// What the task needs besides its consumer.
struct Settings {
    topic: Arc<str>,
    consumer_type: ConsumerType,
    receiver_queue_size: usize,
    ack_group_time: Duration,
    ack_group_max: usize,
    operation_timeout: Duration,
}

/// Whether cumulative acks are valid for a consumer type.
fn ack_mode(consumer_type: ConsumerType) -> AckMode {
    match consumer_type {
        ConsumerType::Exclusive | ConsumerType::Failover => AckMode::Cumulative,
        ConsumerType::Shared | ConsumerType::KeyShared => AckMode::Individual,
    }
}

impl PulsarSubscription {
    /// Subscribes, and starts the task that owns the consumer.
    pub(super) async fn open(
        client: pulsar::Pulsar<pulsar::TokioExecutor>,
        options: &PulsarOptions,
        subscribe: SubscribeOptions,
    ) -> Result<Self, BrokerError> {
        let settings = Settings {
            topic: Arc::from(subscribe.topic.to_string()),
            consumer_type: subscribe.consumer_type,
            receiver_queue_size: subscribe.receiver_queue_size,
            ack_group_time: options.ack_group_time,
            ack_group_max: options.ack_group_max,
            operation_timeout: options.operation_timeout,
        };
        let what = format!(
            "subscribe to {} as {}",
            pulsar_topic(&subscribe.topic),
            subscribe.subscription
        );
        let backlog_from = match &options.admin_url {
            Some(url) => {
                let admin = Admin::new(url, options.token.clone(), options.operation_timeout)
                    .map_err(|reason| BrokerError::Rejected {
                        backend: BACKEND,
                        reason,
                    })?;
                Some((
                    admin,
                    pulsar_topic(&subscribe.topic),
                    subscribe.subscription.clone(),
                ))
            }
            None => None,
        };
        let source: Arc<dyn ConsumerSource> = Arc::new(PulsarSource {
            client,
            topic_name: pulsar_topic(&subscribe.topic),
            subscribe,
        });
        let limit = options.operation_timeout;
        let mut build = spawn_build(&source, Duration::ZERO);
        let consumer = match tokio::time::timeout(limit, &mut build).await {
            Ok(Ok(Ok(consumer))) => consumer,
            Ok(Ok(Err(error))) => return Err(to_broker_error(what, error)),
            Ok(Err(join_error)) => {
                return Err(BrokerError::backend(BACKEND, what, join_error));
            }
            Err(_elapsed) => {
                // Let it finish; the consumer it may make is dropped, which closes it.
                tokio::spawn(build);
                return Err(timeout("subscribe", limit));
            }
        };
        let mut subscription = Self::start(source, consumer, settings);
        subscription.backlog_from = backlog_from;
        Ok(subscription)
    }

    /// Starts the task around a first consumer.
    fn start(
        source: Arc<dyn ConsumerSource>,
        consumer: Box<dyn ConsumerHandle>,
        settings: Settings,
    ) -> Self {
        let capacity = settings.receiver_queue_size.clamp(1, MAX_HANDOFF);
        let (deliveries_tx, deliveries) = mpsc::channel(capacity);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let task = ConsumerTask {
            source,
            topic: settings.topic,
            consumer: Some(consumer),
            acks: AckTracker::new(ack_mode(settings.consumer_type), settings.ack_group_max),
            deliveries: deliveries_tx,
            commands: commands_rx,
            ack_group_time: settings.ack_group_time,
            operation_timeout: settings.operation_timeout,
            rebuild: None,
            failures: 0,
            created_at: Instant::now(),
        };
        tokio::spawn(task.run());
        PulsarSubscription {
            commands,
            inbox: tokio::sync::Mutex::new(Inbox {
                deliveries,
                held_error: None,
            }),
            close_timeout: settings.operation_timeout.saturating_mul(2),
            backlog_from: None,
        }
    }

    fn send(&self, command: Command) -> Result<(), BrokerError> {
        self.commands
            .send(command)
            .map_err(|_| BrokerError::Closed(BACKEND))
    }
}

fn parse_ids(ids: &[MessageId]) -> Result<Vec<PulsarMessageId>, BrokerError> {
    ids.iter()
        .map(|id| {
            PulsarMessageId::parse(id).ok_or_else(|| BrokerError::Rejected {
                backend: BACKEND,
                reason: format!("`{id}` is not a pulsar message id"),
            })
        })
        .collect()
}

impl Subscription for PulsarSubscription {
    fn receive(&self, max: usize) -> BoxFuture<'_, Result<Vec<Delivery>, BrokerError>> {
        Box::pin(async move {
            let mut inbox = self.inbox.lock().await;
            if let Some(error) = inbox.held_error.take() {
                return Err(error);
            }
            let first = inbox
                .deliveries
                .recv()
                .await
                .ok_or(BrokerError::Closed(BACKEND))??;
            let mut taken = vec![first];
            while taken.len() < max {
                match inbox.deliveries.try_recv() {
                    Ok(Ok(delivery)) => taken.push(delivery),
                    Ok(Err(error)) => {
                        inbox.held_error = Some(error);
                        break;
                    }
                    Err(_) => break,
                }
            }
            Ok(taken)
        })
    }

    fn ack(&self, ids: Vec<MessageId>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move { self.send(Command::Ack(parse_ids(&ids)?)) })
    }

    fn nack(&self, ids: Vec<MessageId>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move { self.send(Command::Nack(parse_ids(&ids)?)) })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(self.end(Command::Close, "close"))
    }

    fn unsubscribe(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(self.end(Command::Unsubscribe, "unsubscribe"))
    }

    /// The subscription's `msgBacklog` from the topic's stats, when the options name the admin
    /// API ([`PulsarOptions::admin_url`]).
    fn backlog(&self) -> BoxFuture<'_, Result<Option<u64>, BrokerError>> {
        Box::pin(async move {
            match &self.backlog_from {
                Some((admin, topic, subscription)) => admin.backlog(topic, subscription).await,
                None => Ok(None),
            }
        })
    }
}

impl PulsarSubscription {
    /// Asks the task to end with `command` and waits for its answer.
    async fn end(
        &self,
        command: fn(oneshot::Sender<Result<(), BrokerError>>) -> Command,
        operation: &'static str,
    ) -> Result<(), BrokerError> {
        let (reply, ended) = oneshot::channel();
        if self.send(command(reply)).is_err() {
            return Ok(()); // the task ended already
        }
        match tokio::time::timeout(self.close_timeout, ended).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Ok(()),
            Err(_) => Err(timeout(operation, self.close_timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::FutureExt;
    use pulsar::error::ConsumerError;

    use super::*;
    use crate::broker::pulsar::consumer::tests::consumed;
    use crate::broker::pulsar::consumer::Incoming;
    use crate::broker::pulsar::naming::EntryKey;

    const TOPIC: &str = "persistent://t/ns/q";

    /// Stands in for the broker: every consumer it builds reads from a channel the test feeds,
    /// and what consumers send is written to a shared log.
    #[derive(Default)]
    struct FakeBroker {
        log: parking_lot::Mutex<Vec<String>>,
        feeds: parking_lot::Mutex<Vec<mpsc::UnboundedSender<Incoming>>>,
        builds: AtomicUsize,
    }

    impl FakeBroker {
        fn consumer(self: &Arc<Self>) -> Box<dyn ConsumerHandle> {
            self.builds.fetch_add(1, Ordering::SeqCst);
            let (feed, messages) = mpsc::unbounded_channel();
            self.feeds.lock().push(feed);
            Box::new(FakeConsumer {
                broker: self.clone(),
                messages,
            })
        }

        /// Delivers a message to the newest consumer.
        fn deliver(&self, entry: u64, batch: Option<(i32, i32)>, body: &str) {
            let feeds = self.feeds.lock();
            let feed = feeds.last().expect("a consumer exists");
            feed.send(consumed(TOPIC, entry, batch, body))
                .expect("the consumer is alive");
        }

        /// Ends the newest consumer's stream, as pulsar-rs does when it gives up.
        fn drop_consumer(&self) {
            self.feeds.lock().pop();
        }

        fn log(&self) -> Vec<String> {
            self.log.lock().clone()
        }
    }

    struct FakeConsumer {
        broker: Arc<FakeBroker>,
        messages: mpsc::UnboundedReceiver<Incoming>,
    }

    impl ConsumerHandle for FakeConsumer {
        fn next(&mut self) -> BoxFuture<'_, Option<Result<Incoming, pulsar::Error>>> {
            Box::pin(async move { self.messages.recv().await.map(Ok) })
        }

        fn ack(
            &mut self,
            _topic: String,
            entry: EntryKey,
            cumulative: bool,
        ) -> BoxFuture<'_, Result<(), ConsumerError>> {
            let kind = if cumulative { "cumulative" } else { "ack" };
            self.broker
                .log
                .lock()
                .push(format!("{kind} {}", entry.entry));
            Box::pin(async { Ok(()) })
        }

        fn nack(
            &mut self,
            _topic: String,
            entry: EntryKey,
        ) -> BoxFuture<'_, Result<(), ConsumerError>> {
            self.broker.log.lock().push(format!("nack {}", entry.entry));
            Box::pin(async { Ok(()) })
        }

        fn close(&mut self) -> BoxFuture<'_, Result<(), pulsar::Error>> {
            self.broker.log.lock().push("close".into());
            Box::pin(async { Ok(()) })
        }

        fn unsubscribe(&mut self) -> BoxFuture<'_, Result<(), pulsar::Error>> {
            self.broker.log.lock().push("unsubscribe".into());
            Box::pin(async { Ok(()) })
        }
    }

    struct FakeSource(Arc<FakeBroker>);

    impl ConsumerSource for FakeSource {
        fn build(&self) -> BoxFuture<'static, Result<Box<dyn ConsumerHandle>, pulsar::Error>> {
            let consumer = self.0.consumer();
            Box::pin(async move { Ok(consumer) })
        }

        fn topic_name(&self) -> &str {
            TOPIC
        }
    }

    fn subscription(consumer_type: ConsumerType) -> (Arc<FakeBroker>, PulsarSubscription) {
        let broker = Arc::new(FakeBroker::default());
        let first = broker.consumer();
        let settings = Settings {
            topic: Arc::from("q1/t/ns/q"),
            consumer_type,
            receiver_queue_size: 10,
            ack_group_time: Duration::from_millis(100),
            ack_group_max: 1000,
            operation_timeout: Duration::from_secs(5),
        };
        let source = Arc::new(FakeSource(broker.clone()));
        let subscription = PulsarSubscription::start(source, first, settings);
        (broker, subscription)
    }

    async fn receive_bodies(subscription: &PulsarSubscription, max: usize) -> Vec<String> {
        let deliveries = subscription.receive(max).await.expect("receive");
        deliveries
            .iter()
            .map(|d| String::from_utf8_lossy(d.payload()).into_owned())
            .collect()
    }

    async fn receive_ids(subscription: &PulsarSubscription, count: usize) -> Vec<MessageId> {
        let mut ids = Vec::new();
        while ids.len() < count {
            let deliveries = subscription
                .receive(count - ids.len())
                .await
                .expect("receive");
            ids.extend(deliveries.into_iter().map(|d| d.id));
        }
        ids
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_receive_loses_nothing() {
        let (broker, subscription) = subscription(ConsumerType::Shared);
        // Cancelled while waiting: nothing was there yet.
        assert!(subscription.receive(10).now_or_never().is_none());
        broker.deliver(1, None, "a");
        broker.deliver(2, None, "b");
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Cancelled again after the task pulled both messages into the hand-off channel.
        let cancelled = tokio::time::timeout(Duration::ZERO, subscription.receive(10)).await;
        let mut bodies = match cancelled {
            Ok(received) => received
                .expect("receive")
                .iter()
                .map(|d| String::from_utf8_lossy(d.payload()).into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        while bodies.len() < 2 {
            bodies.extend(receive_bodies(&subscription, 10).await);
        }
        assert_eq!(bodies, ["a", "b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn acks_are_grouped_and_sent_on_the_flush_interval() {
        let (broker, subscription) = subscription(ConsumerType::Shared);
        for entry in 1..=3 {
            broker.deliver(entry, None, "m");
        }
        let ids = receive_ids(&subscription, 3).await;
        subscription.ack(ids).await.expect("ack");
        tokio::task::yield_now().await;
        assert!(broker.log().is_empty(), "acks wait for the interval");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(broker.log(), ["ack 1", "ack 2", "ack 3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_exclusive_subscription_sends_one_cumulative_ack_and_flushes_on_close() {
        let (broker, subscription) = subscription(ConsumerType::Exclusive);
        for entry in 1..=4 {
            broker.deliver(entry, None, "m");
        }
        let ids = receive_ids(&subscription, 4).await;
        subscription.ack(ids).await.expect("ack");
        subscription.close().await.expect("close");
        assert_eq!(broker.log(), ["cumulative 4", "close"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_nack_sends_the_waiting_acks_first() {
        let (broker, subscription) = subscription(ConsumerType::Shared);
        broker.deliver(1, None, "a");
        broker.deliver(2, None, "b");
        let ids = receive_ids(&subscription, 2).await;
        subscription.ack(vec![ids[0].clone()]).await.expect("ack");
        subscription.nack(vec![ids[1].clone()]).await.expect("nack");
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(broker.log(), ["ack 1", "nack 2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batched_entry_is_acked_once_all_its_messages_are() {
        let (broker, subscription) = subscription(ConsumerType::Shared);
        for index in 0..3 {
            broker.deliver(7, Some((index, 3)), "m");
        }
        let ids = receive_ids(&subscription, 3).await;
        subscription.ack(ids[..2].to_vec()).await.expect("ack");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            broker.log().is_empty(),
            "one message of the batch is unacked"
        );
        subscription.ack(ids[2..].to_vec()).await.expect("ack");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(broker.log(), ["ack 7"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_consumer_is_reported_and_re_created() {
        let (broker, subscription) = subscription(ConsumerType::Shared);
        broker.drop_consumer();
        let error = subscription
            .receive(1)
            .await
            .expect_err("the loss is reported");
        assert!(error.is_transient(), "{error}");
        // The task subscribes again by itself; the new consumer delivers.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(broker.builds.load(Ordering::SeqCst), 2);
        broker.deliver(5, None, "after");
        assert_eq!(receive_bodies(&subscription, 1).await, ["after"]);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_subscription_flushes_acks_and_closes_the_consumer() {
        let (broker, subscription) = subscription(ConsumerType::Shared);
        broker.deliver(3, None, "m");
        let ids = receive_ids(&subscription, 1).await;
        subscription.ack(ids).await.expect("ack");
        drop(subscription);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(broker.log(), ["ack 3", "close"]);
    }

    #[test]
    fn ordered_types_ack_cumulatively() {
        assert_eq!(ack_mode(ConsumerType::Shared), AckMode::Individual);
        assert_eq!(ack_mode(ConsumerType::KeyShared), AckMode::Individual);
        assert_eq!(ack_mode(ConsumerType::Failover), AckMode::Cumulative);
        assert_eq!(ack_mode(ConsumerType::Exclusive), AckMode::Cumulative);
    }

    #[test]
    fn foreign_ids_are_refused_before_anything_is_sent() {
        let error = parse_ids(&[MessageId::from_u64(3)]).unwrap_err();
        assert!(matches!(error, BrokerError::Rejected { .. }));
        assert_eq!(parse_ids(&[]).map(|ids| ids.len()).ok(), Some(0));
    }
}
