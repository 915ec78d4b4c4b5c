//! The pulsar-rs consumer behind the two small traits the subscription task drives, and the
//! conversion of a consumed message into a [`Delivery`].

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use pulsar::consumer::{InitialPosition as PulsarPosition, Message as PulsarMessage};
use pulsar::error::ConsumerError;
use pulsar::proto::MessageIdData;
use pulsar::{Consumer, ConsumerOptions, Pulsar, SubType, TokioExecutor};
use worker_core::{BoxFuture, ConsumerType, Delivery, InitialPosition, Message, SubscribeOptions};

use super::naming::{partition_index, EntryKey, PulsarMessageId};

/// A message as pulsar-rs hands it over.
pub(super) type Incoming = PulsarMessage<Vec<u8>>;

/// One live consumer: its message stream and the frames it can send. Implemented by the
/// pulsar-rs consumer, and by a fake in the task's tests.
pub(super) trait ConsumerHandle: Send {
    /// The next message; `None` once the consumer is gone for good.
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Incoming, pulsar::Error>>>;
    /// Queues an ack of `entry` (on `topic`, a partition's name for partitioned topics).
    fn ack(
        &mut self,
        topic: String,
        entry: EntryKey,
        cumulative: bool,
    ) -> BoxFuture<'_, Result<(), ConsumerError>>;
    /// Queues a request to deliver `entry` again.
    fn nack(&mut self, topic: String, entry: EntryKey) -> BoxFuture<'_, Result<(), ConsumerError>>;
    /// Closes the consumer on the broker.
    fn close(&mut self) -> BoxFuture<'_, Result<(), pulsar::Error>>;
    /// Deletes the subscription on the broker (which closes the consumer).
    fn unsubscribe(&mut self) -> BoxFuture<'_, Result<(), pulsar::Error>>;
}

/// Makes consumers of one subscription: the first one, and new ones after a loss.
pub(super) trait ConsumerSource: Send + Sync + 'static {
    /// Subscribes. Must not be cancelled halfway (see [`PulsarSource`]).
    fn build(&self) -> BoxFuture<'static, Result<Box<dyn ConsumerHandle>, pulsar::Error>>;
    /// The Pulsar topic consumed, for acks and log lines.
    fn topic_name(&self) -> &str;
}

/// Builds pulsar-rs consumers for one subscription.
#[derive(Clone)]
pub(super) struct PulsarSource {
    pub client: Pulsar<TokioExecutor>,
    pub topic_name: String,
    pub subscribe: SubscribeOptions,
}

impl ConsumerSource for PulsarSource {
    fn build(&self) -> BoxFuture<'static, Result<Box<dyn ConsumerHandle>, pulsar::Error>> {
        let source = self.clone();
        Box::pin(async move {
            let queue =
                u32::try_from(source.subscribe.receiver_queue_size.max(1)).unwrap_or(u32::MAX);
            let options = ConsumerOptions::default()
                .with_initial_position(match source.subscribe.initial_position {
                    InitialPosition::Earliest => PulsarPosition::Earliest,
                    InitialPosition::Latest => PulsarPosition::Latest,
                })
                .with_receiver_queue_size(queue);
            let consumer: Consumer<Vec<u8>, TokioExecutor> = source
                .client
                .consumer()
                .with_topic(&source.topic_name)
                .with_subscription(&source.subscribe.subscription)
                .with_subscription_type(sub_type(source.subscribe.consumer_type))
                .with_consumer_name(&source.subscribe.consumer_name)
                .with_batch_size(queue)
                .with_options(options)
                .build()
                .await?;
            Ok(Box::new(consumer) as Box<dyn ConsumerHandle>)
        })
    }

    fn topic_name(&self) -> &str {
        &self.topic_name
    }
}

/// The id pulsar-rs takes for an entry: ledger and entry (the broker acks whole entries).
fn entry_id(entry: EntryKey) -> MessageIdData {
    MessageIdData {
        ledger_id: entry.ledger,
        entry_id: entry.entry,
        partition: (entry.partition >= 0).then_some(entry.partition),
        ..MessageIdData::default()
    }
}

impl ConsumerHandle for Consumer<Vec<u8>, TokioExecutor> {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Incoming, pulsar::Error>>> {
        Box::pin(StreamExt::next(self))
    }

    fn ack(
        &mut self,
        topic: String,
        entry: EntryKey,
        cumulative: bool,
    ) -> BoxFuture<'_, Result<(), ConsumerError>> {
        Box::pin(async move {
            if cumulative {
                self.cumulative_ack_with_id(&topic, entry_id(entry)).await
            } else {
                self.ack_with_id(&topic, entry_id(entry)).await
            }
        })
    }

    fn nack(&mut self, topic: String, entry: EntryKey) -> BoxFuture<'_, Result<(), ConsumerError>> {
        Box::pin(async move { self.nack_with_id(&topic, entry_id(entry)).await })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), pulsar::Error>> {
        Box::pin(Consumer::close(self))
    }

    fn unsubscribe(&mut self) -> BoxFuture<'_, Result<(), pulsar::Error>> {
        Box::pin(Consumer::unsubscribe(self))
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

/// The framework's delivery for a consumed message, and its Pulsar position.
///
/// The key is the partition key, or else the ordering key read as UTF-8. pulsar-rs does not
/// pass the broker's redelivery count on, so `redelivery_count` is 0; the framework counts
/// attempts in a property anyway.
pub(super) fn to_delivery(topic: &Arc<str>, message: Incoming) -> (PulsarMessageId, Delivery) {
    let position = message.message_id().clone();
    let partition = partition_index(&message.topic).unwrap_or(-1);
    let metadata = message.payload.metadata;
    let batched = metadata.num_messages_in_batch.is_some();
    let id = PulsarMessageId {
        partition,
        ledger: position.ledger_id,
        entry: position.entry_id,
        batch_index: if batched {
            position.batch_index.unwrap_or(-1)
        } else {
            -1
        },
        batch_size: metadata.num_messages_in_batch.unwrap_or(1).max(1),
    };
    let key = metadata.partition_key.clone().or_else(|| {
        metadata
            .ordering_key
            .as_ref()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
    });
    let at_millis = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
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
            .map(at_millis),
    };
    let delivery = Delivery {
        id: id.to_message_id(),
        topic: topic.clone(),
        message: Arc::new(delivered),
        redelivery_count: 0,
        publish_time: Some(at_millis(metadata.publish_time)),
        defect: None,
    };
    (id, delivery)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use pulsar::consumer::data::MessageData;
    use pulsar::proto::{KeyValue, MessageMetadata};
    use pulsar::Payload;

    /// A consumed message as pulsar-rs would hand it over.
    pub(in crate::broker::pulsar) fn consumed(
        topic: &str,
        entry: u64,
        batch: Option<(i32, i32)>,
        body: &str,
    ) -> Incoming {
        let id = MessageIdData {
            ledger_id: 4,
            entry_id: entry,
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
                data: body.as_bytes().to_vec(),
            },
        )
    }

    #[test]
    fn consumed_messages_become_deliveries() {
        let topic: Arc<str> = Arc::from("q1/t/ns/q");
        let (id, delivery) =
            to_delivery(&topic, consumed("persistent://t/ns/q", 11, None, "hello"));
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
            consumed("persistent://t/ns/q-partition-2", 11, Some((1, 3)), "x"),
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
    fn consumer_types_map_to_subscription_types() {
        assert_eq!(sub_type(ConsumerType::Shared), SubType::Shared);
        assert_eq!(sub_type(ConsumerType::KeyShared), SubType::KeyShared);
        assert_eq!(sub_type(ConsumerType::Failover), SubType::Failover);
        assert_eq!(sub_type(ConsumerType::Exclusive), SubType::Exclusive);
    }

    #[test]
    fn acks_name_whole_entries() {
        let id = entry_id(EntryKey {
            partition: -1,
            ledger: 3,
            entry: 9,
        });
        assert_eq!((id.ledger_id, id.entry_id), (3, 9));
        assert_eq!(id.partition, None);
        assert_eq!(id.batch_index, None);
    }
}
