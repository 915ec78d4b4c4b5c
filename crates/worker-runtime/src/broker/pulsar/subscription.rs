//! Consuming: a task per subscription owns the pulsar-rs consumer and its stream, hands messages
//! to [`PulsarSubscription::receive`] through a bounded channel, groups acks, and re-creates the
//! consumer when pulsar-rs gives up on it.
//!
//! Nothing pulled from the stream is dropped: the task first reserves a place in the channel,
//! then takes one message from the stream, so a message always has somewhere to go, and
//! `receive` only awaits the channel (cancel-safe), never the stream.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use pulsar::consumer::{InitialPosition as PulsarPosition, Message as PulsarMessage};
use pulsar::proto::MessageIdData;
use pulsar::{Consumer, ConsumerOptions, Pulsar, SubType, TokioExecutor};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use worker_core::{
    BoxFuture, BrokerError, ConsumerType, Delivery, InitialPosition, Message, MessageId,
    SubscribeOptions, Subscription,
};

use super::acks::{AckFrame, AckMode, AckTracker};
use super::error::{timeout, to_broker_error, BACKEND};
use super::naming::{partition_index, partition_topic, pulsar_topic, PulsarMessageId};
use super::options::PulsarOptions;

type PulsarConsumer = Consumer<Vec<u8>, TokioExecutor>;
type Item = Result<Delivery, BrokerError>;

/// The most deliveries buffered between the consumer task and `receive`, on top of the
/// consumer's own receiver queue.
const MAX_HANDOFF: usize = 256;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A consumer that lasted this long resets the re-creation backoff when it goes away.
const STABLE_CONSUMER: Duration = Duration::from_secs(30);

/// One consumer of a Pulsar subscription. Made by [`super::PulsarBroker`]'s `subscribe`.
///
/// `receive` returns a transient [`BrokerError::Connection`] when the consumer lost its
/// connection for good or could not be re-created; the subscription keeps trying on its own
/// (with a growing pause), so calling `receive` again is the way to go on.
pub struct PulsarSubscription {
    commands: mpsc::UnboundedSender<Command>,
    inbox: tokio::sync::Mutex<Inbox>,
    close_timeout: Duration,
}

struct Inbox {
    deliveries: mpsc::Receiver<Item>,
    /// An error met after some deliveries were already taken; returned by the next `receive`.
    held_error: Option<BrokerError>,
}

enum Command {
    Ack(Vec<PulsarMessageId>),
    Nack(Vec<PulsarMessageId>),
    Close(oneshot::Sender<Result<(), BrokerError>>),
}

/// What a consumer is built from, kept to re-create it.
#[derive(Clone)]
struct ConsumerSpec {
    client: Pulsar<TokioExecutor>,
    topic_name: String,
    subscribe: SubscribeOptions,
}

impl ConsumerSpec {
    /// Builds the consumer in a task of its own: a subscribe cancelled halfway could leave a
    /// consumer registered on the broker that nobody reads, so it always runs to its end (it is
    /// bounded by the client's retry limits). A consumer nobody waits for any more is dropped,
    /// which closes it on the broker.
    fn spawn_build(&self, delay: Duration) -> JoinHandle<Result<PulsarConsumer, pulsar::Error>> {
        let spec = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            spec.build().await
        })
    }

    async fn build(&self) -> Result<PulsarConsumer, pulsar::Error> {
        let queue = u32::try_from(self.subscribe.receiver_queue_size.max(1)).unwrap_or(u32::MAX);
        let options = ConsumerOptions::default()
            .with_initial_position(match self.subscribe.initial_position {
                InitialPosition::Earliest => PulsarPosition::Earliest,
                InitialPosition::Latest => PulsarPosition::Latest,
            })
            .with_receiver_queue_size(queue);
        self.client
            .consumer()
            .with_topic(&self.topic_name)
            .with_subscription(&self.subscribe.subscription)
            .with_subscription_type(sub_type(self.subscribe.consumer_type))
            .with_consumer_name(&self.subscribe.consumer_name)
            .with_batch_size(queue)
            .with_options(options)
            .build()
            .await
    }
}

/// The Pulsar subscription type of a consumer type.
pub(super) fn sub_type(consumer_type: ConsumerType) -> SubType {
    match consumer_type {
        ConsumerType::Shared => SubType::Shared,
        ConsumerType::KeyShared => SubType::KeyShared,
        ConsumerType::Failover => SubType::Failover,
        ConsumerType::Exclusive => SubType::Exclusive,
    }
}

/// Whether cumulative acks are valid for a consumer type.
pub(super) fn ack_mode(consumer_type: ConsumerType) -> AckMode {
    match consumer_type {
        ConsumerType::Exclusive | ConsumerType::Failover => AckMode::Cumulative,
        ConsumerType::Shared | ConsumerType::KeyShared => AckMode::Individual,
    }
}

impl PulsarSubscription {
    /// Subscribes, and starts the task that owns the consumer.
    pub(super) async fn open(
        client: Pulsar<TokioExecutor>,
        options: &PulsarOptions,
        subscribe: SubscribeOptions,
    ) -> Result<Self, BrokerError> {
        let spec = ConsumerSpec {
            client,
            topic_name: pulsar_topic(&subscribe.topic),
            subscribe,
        };
        let limit = options.operation_timeout;
        let mut build = spec.spawn_build(Duration::ZERO);
        let consumer = match tokio::time::timeout(limit, &mut build).await {
            Ok(Ok(Ok(consumer))) => consumer,
            Ok(Ok(Err(error))) => {
                return Err(to_broker_error(
                    format!(
                        "subscribe to {} as {}",
                        spec.topic_name, spec.subscribe.subscription
                    ),
                    error,
                ))
            }
            Ok(Err(join_error)) => {
                return Err(BrokerError::backend(
                    BACKEND,
                    "the subscribe task failed",
                    join_error,
                ))
            }
            Err(_elapsed) => {
                // Let it finish; the consumer it may make is dropped, which closes it.
                tokio::spawn(build);
                return Err(timeout("subscribe", limit));
            }
        };
        let capacity = spec.subscribe.receiver_queue_size.clamp(1, MAX_HANDOFF);
        let (deliveries_tx, deliveries) = mpsc::channel(capacity);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let worker = ConsumerTask {
            topic: Arc::from(spec.subscribe.topic.to_string()),
            acks: AckTracker::new(
                ack_mode(spec.subscribe.consumer_type),
                options.ack_group_max,
            ),
            spec,
            consumer: Some(consumer),
            rebuild: None,
            failures: 0,
            created_at: tokio::time::Instant::now(),
            deliveries: deliveries_tx,
            commands: commands_rx,
            ack_group_time: options.ack_group_time,
            operation_timeout: limit,
        };
        tokio::spawn(worker.run());
        Ok(PulsarSubscription {
            commands,
            inbox: tokio::sync::Mutex::new(Inbox {
                deliveries,
                held_error: None,
            }),
            close_timeout: limit.saturating_mul(2),
        })
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
        Box::pin(async move {
            let (reply, closed) = oneshot::channel();
            if self.send(Command::Close(reply)).is_err() {
                return Ok(()); // the task ended already
            }
            match tokio::time::timeout(self.close_timeout, closed).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Ok(()),
                Err(_) => Err(timeout("close", self.close_timeout)),
            }
        })
    }
}

/// Owns the consumer. Ends when the subscription is closed or dropped, flushing acks first.
struct ConsumerTask {
    spec: ConsumerSpec,
    topic: Arc<str>,
    consumer: Option<PulsarConsumer>,
    /// A consumer being re-created, while `consumer` is `None`.
    rebuild: Option<JoinHandle<Result<PulsarConsumer, pulsar::Error>>>,
    /// Re-creations in a row that failed, or whose consumer did not last: the backoff grows
    /// with it, so that a broker that keeps dropping the consumer is not hammered.
    failures: u32,
    /// When the current consumer was made.
    created_at: tokio::time::Instant,
    acks: AckTracker,
    deliveries: mpsc::Sender<Item>,
    commands: mpsc::UnboundedReceiver<Command>,
    ack_group_time: Duration,
    operation_timeout: Duration,
}

enum Event {
    Command(Option<Command>),
    FlushTick,
    Reserved(Option<mpsc::OwnedPermit<Item>>),
    Pulled(Option<Result<PulsarMessage<Vec<u8>>, pulsar::Error>>),
    Rebuilt(Result<PulsarConsumer, BrokerError>),
}

impl ConsumerTask {
    async fn run(mut self) {
        let mut flush = tokio::time::interval(self.ack_group_time);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut permit: Option<mpsc::OwnedPermit<Item>> = None;
        loop {
            if self.consumer.is_none() && self.rebuild.is_none() {
                let delay = backoff(self.failures);
                self.rebuild = Some(self.spec.spawn_build(delay));
            }
            let event = tokio::select! {
                biased;
                command = self.commands.recv() => Event::Command(command),
                _ = flush.tick() => Event::FlushTick,
                rebuilt = join(&mut self.rebuild) => Event::Rebuilt(rebuilt),
                reserved = self.deliveries.clone().reserve_owned(), if permit.is_none() => {
                    Event::Reserved(reserved.ok())
                }
                pulled = next_message(&mut self.consumer), if permit.is_some() => {
                    Event::Pulled(pulled)
                }
            };
            match event {
                Event::Command(None) => {
                    let _ = self.shut_down().await;
                    return;
                }
                Event::Command(Some(Command::Close(reply))) => {
                    let result = self.shut_down().await;
                    let _ = reply.send(result);
                    return;
                }
                Event::Command(Some(Command::Ack(ids))) => {
                    for id in &ids {
                        self.acks.ack(id);
                    }
                    if self.acks.should_flush() {
                        self.flush().await;
                    }
                }
                Event::Command(Some(Command::Nack(ids))) => self.nack(ids).await,
                Event::FlushTick => {
                    if self.acks.has_ready() {
                        self.flush().await;
                    }
                }
                Event::Rebuilt(Ok(consumer)) => {
                    tracing::info!(topic = %self.spec.topic_name, "pulsar consumer re-created");
                    self.rebuild = None;
                    self.consumer = Some(consumer);
                    self.created_at = tokio::time::Instant::now();
                    self.flush().await;
                }
                Event::Rebuilt(Err(error)) => {
                    self.rebuild = None;
                    self.failures = self.failures.saturating_add(1);
                    tracing::warn!(topic = %self.spec.topic_name, %error, "re-creating the pulsar consumer failed");
                    if let Some(permit) = permit.take() {
                        permit.send(Err(error));
                    }
                }
                Event::Reserved(None) => {
                    let _ = self.shut_down().await;
                    return;
                }
                Event::Reserved(Some(reserved)) => permit = Some(reserved),
                Event::Pulled(pulled) => {
                    let Some(reserved) = permit.take() else {
                        continue;
                    };
                    match pulled {
                        Some(Ok(message)) => {
                            let (id, delivery) = to_delivery(&self.topic, message);
                            self.acks.delivered(&id);
                            reserved.send(Ok(delivery));
                        }
                        Some(Err(error)) => {
                            tracing::warn!(topic = %self.spec.topic_name, %error, "pulsar consumer error");
                            let error = to_broker_error(
                                format!("receive from {}", self.spec.topic_name),
                                error,
                            );
                            reserved.send(Err(error));
                        }
                        None => {
                            // pulsar-rs gave up reconnecting this consumer: start over. The
                            // broker delivers every unacknowledged message again.
                            tracing::warn!(topic = %self.spec.topic_name, "pulsar consumer stream ended, re-creating it");
                            self.consumer = None;
                            self.acks.restart_sequences();
                            if self.created_at.elapsed() >= STABLE_CONSUMER {
                                self.failures = 0;
                            } else {
                                self.failures = self.failures.saturating_add(1);
                            }
                            reserved.send(Err(BrokerError::Connection {
                                backend: BACKEND,
                                message: format!(
                                    "the consumer of {} lost its connection; subscribing again",
                                    self.spec.topic_name
                                ),
                                source: None,
                            }));
                        }
                    }
                }
            }
        }
    }

    /// Sends the ack frames the tracker has ready. pulsar-rs queues them for its consumer engine
    /// (fire and forget); with no consumer they wait for the next one.
    async fn flush(&mut self) {
        let Some(consumer) = self.consumer.as_mut() else {
            return;
        };
        for AckFrame { entry, cumulative } in self.acks.drain() {
            let topic = partition_topic(&self.spec.topic_name, entry.partition);
            let id = MessageIdData {
                ledger_id: entry.ledger,
                entry_id: entry.entry,
                partition: (entry.partition >= 0).then_some(entry.partition),
                ..MessageIdData::default()
            };
            let sent = if cumulative {
                consumer.cumulative_ack_with_id(&topic, id).await
            } else {
                consumer.ack_with_id(&topic, id).await
            };
            if let Err(error) = sent {
                // The consumer is going away; the broker will deliver these again.
                tracing::warn!(%topic, %error, "a pulsar ack could not be queued");
            }
        }
    }

    /// Asks for redelivery of whole entries, after sending every ack that is ready (on exclusive
    /// and failover subscriptions the broker rewinds to the first unacknowledged message).
    async fn nack(&mut self, ids: Vec<PulsarMessageId>) {
        self.flush().await;
        let mut entries = BTreeSet::new();
        for id in &ids {
            self.acks.nack(id);
            entries.insert(id.entry_key());
        }
        let Some(consumer) = self.consumer.as_mut() else {
            return; // re-created consumers get every unacknowledged message again anyway
        };
        for entry in entries {
            let topic = partition_topic(&self.spec.topic_name, entry.partition);
            let id = MessageIdData {
                ledger_id: entry.ledger,
                entry_id: entry.entry,
                partition: (entry.partition >= 0).then_some(entry.partition),
                ..MessageIdData::default()
            };
            if let Err(error) = consumer.nack_with_id(&topic, id).await {
                tracing::warn!(%topic, %error, "a pulsar nack could not be queued");
            }
        }
    }

    /// Flushes acks, then closes the consumer on the broker (its unacked messages go back to the
    /// subscription).
    async fn shut_down(&mut self) -> Result<(), BrokerError> {
        self.flush().await;
        if let Some(rebuild) = self.rebuild.take() {
            // A consumer still being made is closed when it is dropped.
            tokio::spawn(rebuild);
        }
        let Some(mut consumer) = self.consumer.take() else {
            return Ok(());
        };
        match tokio::time::timeout(self.operation_timeout, consumer.close()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(to_broker_error(
                format!("close the consumer of {}", self.spec.topic_name),
                error,
            )),
            Err(_) => Err(timeout("close", self.operation_timeout)),
        }
    }
}

fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    FIRST_BACKOFF
        .saturating_mul(1 << failures.min(8))
        .min(MAX_BACKOFF)
}

/// Waits for the consumer being re-created, or forever when none is.
async fn join(
    rebuild: &mut Option<JoinHandle<Result<PulsarConsumer, pulsar::Error>>>,
) -> Result<PulsarConsumer, BrokerError> {
    let Some(handle) = rebuild.as_mut() else {
        return std::future::pending().await;
    };
    match handle.await {
        Ok(Ok(consumer)) => Ok(consumer),
        Ok(Err(error)) => Err(to_broker_error("re-subscribe", error)),
        Err(join_error) => Err(BrokerError::backend(
            BACKEND,
            "the re-subscribe task failed",
            join_error,
        )),
    }
}

/// The next message of the consumer's stream, or forever pending when there is no consumer.
async fn next_message(
    consumer: &mut Option<PulsarConsumer>,
) -> Option<Result<PulsarMessage<Vec<u8>>, pulsar::Error>> {
    match consumer.as_mut() {
        Some(consumer) => consumer.next().await,
        None => std::future::pending().await,
    }
}

/// The framework's delivery for a consumed message, and its Pulsar position.
fn to_delivery(topic: &Arc<str>, message: PulsarMessage<Vec<u8>>) -> (PulsarMessageId, Delivery) {
    let position = message.message_id().clone();
    let partition = partition_index(&message.topic).unwrap_or(-1);
    let metadata = message.payload.metadata;
    let batch_size = metadata.num_messages_in_batch.unwrap_or(1).max(1);
    let id = PulsarMessageId {
        partition,
        ledger: position.ledger_id,
        entry: position.entry_id,
        batch_index: if metadata.num_messages_in_batch.is_some() {
            position.batch_index.unwrap_or(-1)
        } else {
            -1
        },
        batch_size,
    };
    let key = metadata.partition_key.clone().or_else(|| {
        metadata
            .ordering_key
            .as_ref()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
    });
    let millis = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
    let delivered = Message {
        payload: Bytes::from(message.payload.data),
        properties: metadata
            .properties
            .into_iter()
            .map(|pair| (pair.key, pair.value))
            .collect(),
        key,
        deliver_at: metadata
            .deliver_at_time
            .and_then(|ms| u64::try_from(ms).ok())
            .map(millis),
    };
    let publish_time: Option<SystemTime> = Some(millis(metadata.publish_time));
    let delivery = Delivery {
        id: id.to_message_id(),
        topic: topic.clone(),
        message: Arc::new(delivered),
        // pulsar-rs does not pass the broker's redelivery count on; the framework counts
        // attempts in a property anyway.
        redelivery_count: 0,
        publish_time,
    };
    (id, delivery)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulsar::consumer::data::MessageData;
    use pulsar::proto::{KeyValue, MessageMetadata};
    use pulsar::Payload;

    fn consumed(topic: &str, batch: Option<(i32, i32)>) -> PulsarMessage<Vec<u8>> {
        let id = MessageIdData {
            ledger_id: 4,
            entry_id: 11,
            batch_index: batch.map(|(index, _)| index),
            ..MessageIdData::default()
        };
        let metadata = MessageMetadata {
            producer_name: "p".into(),
            sequence_id: 1,
            publish_time: 1_700_000_000_000,
            properties: vec![KeyValue {
                key: "wr-attempt".into(),
                value: "1".into(),
            }],
            partition_key: Some("k1".into()),
            num_messages_in_batch: batch.map(|(_, size)| size),
            deliver_at_time: Some(1_700_000_005_000),
            ..MessageMetadata::default()
        };
        PulsarMessage::new(
            topic,
            MessageData {
                id,
                batch_size: batch.map(|(_, size)| size),
            },
            Payload {
                metadata,
                data: b"hello".to_vec(),
            },
        )
    }

    #[test]
    fn consumed_messages_become_deliveries() {
        let topic: Arc<str> = Arc::from("q1/t/ns/q");
        let (id, delivery) = to_delivery(&topic, consumed("persistent://t/ns/q", None));
        assert_eq!(delivery.id.as_text(), Some("4:11:-1:-1:1"));
        assert_eq!(PulsarMessageId::parse(&delivery.id), Some(id));
        assert_eq!(&*delivery.topic, "q1/t/ns/q");
        assert_eq!(delivery.payload(), &Bytes::from_static(b"hello"));
        assert_eq!(delivery.property("wr-attempt"), Some("1"));
        assert_eq!(delivery.message.key.as_deref(), Some("k1"));
        assert_eq!(
            delivery.publish_time,
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_000))
        );
        assert_eq!(
            delivery.message.deliver_at,
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_005_000))
        );
    }

    #[test]
    fn batched_and_partitioned_messages_keep_their_position() {
        let topic: Arc<str> = Arc::from("persistent://t/ns/q");
        let (id, _) = to_delivery(
            &topic,
            consumed("persistent://t/ns/q-partition-2", Some((1, 3))),
        );
        assert_eq!(
            id,
            PulsarMessageId {
                partition: 2,
                ledger: 4,
                entry: 11,
                batch_index: 1,
                batch_size: 3
            }
        );
    }

    #[test]
    fn consumer_types_map_to_subscription_types_and_ack_modes() {
        assert_eq!(sub_type(ConsumerType::Shared), SubType::Shared);
        assert_eq!(sub_type(ConsumerType::KeyShared), SubType::KeyShared);
        assert_eq!(sub_type(ConsumerType::Failover), SubType::Failover);
        assert_eq!(sub_type(ConsumerType::Exclusive), SubType::Exclusive);
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

    #[test]
    fn rebuild_backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(400));
        assert_eq!(backoff(20), MAX_BACKOFF);
    }
}
