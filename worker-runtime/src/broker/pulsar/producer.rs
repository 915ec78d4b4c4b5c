//! Publishing: one cached producer per topic (two when batching is on), a bounded number of
//! publishes in flight, and retries across reconnections until the publish deadline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pulsar::producer::Message as OutgoingMessage;
use pulsar::{CommandSendReceipt, Producer, ProducerOptions, Pulsar, TokioExecutor};
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;
use worker_core::{BrokerError, Message, MessageId, Topic};

use super::error::{classify, timeout, to_broker_error, Class, BACKEND};
use super::naming::{pulsar_topic, PulsarMessageId};
use super::options::{Compression, PulsarOptions};

/// The first pause between two attempts of one publish; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Framing around a message besides its payload, properties and key: the command, the metadata's
/// fixed fields, the producer name and the checksums, generously counted.
const FRAME_OVERHEAD: usize = 1024;

/// Refuses what the broker would not take, before it is sent: a broker closes the connection of
/// a client whose frame is over its `maxMessageSize`, and the client would resend it forever.
fn check_size(message: &Message, options: &PulsarOptions) -> Result<(), String> {
    let payload_limit = options.max_payload_bytes();
    if message.payload.len() > payload_limit {
        return Err(format!(
            "payload of {} bytes is over the limit of {payload_limit} bytes",
            message.payload.len()
        ));
    }
    let frame = message.payload.len()
        + message
            .properties
            .iter()
            .map(|(name, value)| name.len() + value.len() + 4)
            .sum::<usize>()
        + message.key.as_ref().map_or(0, String::len)
        + FRAME_OVERHEAD;
    if frame > options.max_message_bytes {
        return Err(format!(
            "message of about {frame} bytes with its properties is over the broker's limit of {} bytes",
            options.max_message_bytes
        ));
    }
    Ok(())
}

/// The producers of one broker handle, created on first use of each topic.
pub(super) struct Producers {
    client: Pulsar<TokioExecutor>,
    options: Arc<PulsarOptions>,
    topics: parking_lot::Mutex<HashMap<String, Arc<TopicProducers>>>,
    in_flight: Semaphore,
}

/// The producers of one Pulsar topic.
struct TopicProducers {
    name: String,
    /// Messages sent one by one: keyed or delayed ones, or all when batching is off.
    direct: Mutex<Slot>,
    /// Messages that may share a batch (used only when batching is on).
    batched: Mutex<Slot>,
}

/// A cached producer and a generation number, so that a failed sender evicts only the producer
/// it used, never a newer one another sender already made.
#[derive(Default)]
struct Slot {
    producer: Option<Producer<TokioExecutor>>,
    generation: u64,
}

impl Producers {
    pub(super) fn new(client: Pulsar<TokioExecutor>, options: Arc<PulsarOptions>) -> Self {
        let in_flight = Semaphore::new(options.max_pending_publishes);
        Producers {
            client,
            options,
            topics: parking_lot::Mutex::new(HashMap::new()),
            in_flight,
        }
    }

    /// Publishes one message and waits for the broker's receipt, retrying transient failures
    /// (the broker restarting, a topic moving) until `publish_timeout` has passed.
    ///
    /// A retry after a receipt that never came may store the message twice: publishing is at
    /// least once, and consumers deduplicate on the framework's message-id property.
    pub(super) async fn publish(
        &self,
        topic: &Topic,
        message: Message,
    ) -> Result<MessageId, BrokerError> {
        let limit = self.options.publish_timeout;
        let deadline = Instant::now() + limit;
        if let Err(reason) = check_size(&message, &self.options) {
            return Err(BrokerError::Rejected {
                backend: BACKEND,
                reason,
            });
        }
        let _permit = match tokio::time::timeout_at(deadline, self.in_flight.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err(BrokerError::Closed(BACKEND)),
            Err(_elapsed) => return Err(timeout("publish", limit)),
        };
        let batched = self.options.batching.is_some()
            && message.key.is_none()
            && message.deliver_at.is_none();
        let outgoing = outgoing_message(&message);
        let producers = self.topic(pulsar_topic(topic));
        let mut backoff = FIRST_BACKOFF;
        loop {
            let attempt = self.send_once(&producers, batched, outgoing.clone());
            let (generation, error) = match tokio::time::timeout_at(deadline, attempt).await {
                Err(_elapsed) => return Err(timeout("publish", limit)),
                Ok(Ok(receipt)) => return Ok(receipt_id(&receipt)),
                Ok(Err(failure)) => failure,
            };
            let class = classify(&error);
            if class == Class::Permanent {
                return Err(to_broker_error(
                    format!("publish to {}", producers.name),
                    error,
                ));
            }
            if class == Class::HandleLost {
                producers.evict(batched, generation).await;
            }
            if Instant::now() + backoff >= deadline {
                return Err(to_broker_error(
                    format!(
                        "publish to {} (gave up before the deadline)",
                        producers.name
                    ),
                    error,
                ));
            }
            tracing::warn!(topic = %producers.name, %error, "pulsar publish failed, retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Closes every producer, waiting at most the operation timeout for each.
    pub(super) async fn close(&self) {
        let topics: Vec<Arc<TopicProducers>> = self.topics.lock().drain().map(|(_, p)| p).collect();
        self.in_flight.close();
        for producers in topics {
            for slot in [&producers.direct, &producers.batched] {
                let Some(mut producer) = slot.lock().await.producer.take() else {
                    continue;
                };
                let closing =
                    tokio::time::timeout(self.options.operation_timeout, producer.close());
                if let Ok(Err(error)) = closing.await {
                    tracing::debug!(topic = %producers.name, %error, "closing a pulsar producer failed");
                }
            }
        }
    }

    fn topic(&self, name: String) -> Arc<TopicProducers> {
        let mut topics = self.topics.lock();
        topics
            .entry(name)
            .or_insert_with_key(|name| {
                Arc::new(TopicProducers {
                    name: name.clone(),
                    direct: Mutex::new(Slot::default()),
                    batched: Mutex::new(Slot::default()),
                })
            })
            .clone()
    }

    /// One attempt: hands the message to a producer (creating it if needed), then waits for the
    /// receipt without holding the producer, so that other publishes proceed meanwhile.
    async fn send_once(
        &self,
        producers: &TopicProducers,
        batched: bool,
        message: OutgoingMessage,
    ) -> Result<CommandSendReceipt, (u64, pulsar::Error)> {
        let (generation, receipt) = {
            let mut slot = producers.slot(batched).lock().await;
            let generation = slot.generation;
            let producer = match &mut slot.producer {
                Some(producer) => producer,
                empty @ None => {
                    let created = self
                        .create(&producers.name, batched)
                        .await
                        .map_err(|e| (generation, e))?;
                    empty.insert(created)
                }
            };
            let receipt = producer
                .send_non_blocking(message)
                .await
                .map_err(|e| (generation, e))?;
            (generation, receipt)
        };
        receipt.await.map_err(|e| (generation, e))
    }

    async fn create(
        &self,
        topic: &str,
        batched: bool,
    ) -> Result<Producer<TokioExecutor>, pulsar::Error> {
        let mut options = ProducerOptions {
            // Wait for room in the connection's queue instead of failing with `SlowDown`: the
            // number of publishes in flight is bounded by `max_pending_publishes` already.
            block_queue_if_full: true,
            compression: Some(compression(self.options.compression)),
            ..ProducerOptions::default()
        };
        if let (true, Some(batching)) = (batched, self.options.batching) {
            options.batch_size = Some(batching.max_messages.max(2));
            options.batch_timeout = Some(batching.max_delay);
        }
        tracing::debug!(topic, batched, "creating a pulsar producer");
        self.client
            .producer()
            .with_topic(topic)
            .with_options(options)
            .build()
            .await
    }
}

impl TopicProducers {
    fn slot(&self, batched: bool) -> &Mutex<Slot> {
        if batched {
            &self.batched
        } else {
            &self.direct
        }
    }

    /// Drops the producer of `generation` (its close is sent in the background), so that the next
    /// attempt creates a new one.
    async fn evict(&self, batched: bool, generation: u64) {
        let mut slot = self.slot(batched).lock().await;
        if slot.generation == generation {
            slot.producer = None;
            slot.generation += 1;
        }
    }
}

fn compression(choice: Compression) -> pulsar::compression::Compression {
    use pulsar::compression::{Compression as C, CompressionLz4, CompressionZstd};
    match choice {
        Compression::None => C::None,
        Compression::Lz4 => C::Lz4(CompressionLz4::default()),
        Compression::Zstd => C::Zstd(CompressionZstd::default()),
    }
}

/// The pulsar-rs message for a framework message: properties as they are, the key as both the
/// partition key (routing) and the ordering key (key_shared dispatch), the delivery time in
/// milliseconds since the epoch.
pub(super) fn outgoing_message(message: &Message) -> OutgoingMessage {
    OutgoingMessage {
        payload: message.payload.to_vec(),
        properties: message
            .properties
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect(),
        partition_key: message.key.clone(),
        ordering_key: message.key.as_ref().map(|key| key.as_bytes().to_vec()),
        deliver_at_time: message.deliver_at.map(epoch_millis),
        ..OutgoingMessage::default()
    }
}

fn epoch_millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The framework id of a published message, from its receipt.
fn receipt_id(receipt: &CommandSendReceipt) -> MessageId {
    match &receipt.message_id {
        Some(id) => PulsarMessageId {
            partition: id.partition.unwrap_or(-1),
            ledger: id.ledger_id,
            entry: id.entry_id,
            batch_index: id.batch_index.unwrap_or(-1),
            batch_size: id.batch_size.unwrap_or(1).max(1),
        }
        .to_message_id(),
        None => MessageId::from_text(format!(
            "producer-{}-sequence-{}",
            receipt.producer_id, receipt.sequence_id
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_and_frames_over_the_broker_limit_are_refused() {
        let options = PulsarOptions {
            max_message_bytes: 100 * 1024,
            ..PulsarOptions::default()
        };
        let limit = options.max_payload_bytes();
        assert_eq!(limit, 36 * 1024);
        assert_eq!(
            check_size(&Message::new(vec![0u8; limit]), &options),
            Ok(())
        );
        let over = check_size(&Message::new(vec![0u8; limit + 1]), &options);
        assert!(over.is_err_and(|e| e.contains("over the limit of 36864 bytes")));
        // A payload within its limit, with properties that take the frame over the broker's.
        let heavy = Message::new(vec![0u8; limit]).with_property("big", "x".repeat(64 * 1024));
        let refused = check_size(&heavy, &options);
        assert!(refused.is_err_and(|e| e.contains("broker's limit of 102400 bytes")));
    }

    #[test]
    fn outgoing_messages_carry_properties_key_and_delivery_time() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let message = Message::new("body")
            .with_property("wr-attempt", "2")
            .with_key("customer-7")
            .with_deliver_at(at);
        let outgoing = outgoing_message(&message);
        assert_eq!(outgoing.payload, b"body");
        assert_eq!(
            outgoing.properties.get("wr-attempt").map(String::as_str),
            Some("2")
        );
        assert_eq!(outgoing.partition_key.as_deref(), Some("customer-7"));
        assert_eq!(outgoing.ordering_key.as_deref(), Some(&b"customer-7"[..]));
        assert_eq!(outgoing.deliver_at_time, Some(1_700_000_000_123));

        let plain = outgoing_message(&Message::new("x"));
        assert!(plain.partition_key.is_none());
        assert!(plain.deliver_at_time.is_none());
    }

    #[test]
    fn receipts_become_pulsar_message_ids() {
        let receipt = CommandSendReceipt {
            producer_id: 1,
            sequence_id: 9,
            message_id: Some(pulsar::proto::MessageIdData {
                ledger_id: 12,
                entry_id: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(receipt_id(&receipt).as_text(), Some("12:3:-1:-1:1"));
    }
}
