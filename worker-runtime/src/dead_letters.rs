//! Reading and replaying a dead-letter topic.
//!
//! Both go through a subscription of the DLQ topic like any consumer, so they work on every
//! backend. A broker may drop what nobody subscribed to (MQTT keeps no history; Pulsar without a
//! retention policy deletes what no subscription still needs), so the worker calls [`keep`] for
//! each task's DLQ when it starts: from then on the copies wait in the readers' [`SUBSCRIPTION`]
//! (on MQTT in the persistent session of its [`READER`]) until they are replayed.
//! - [`inspect`] reads copies and gives them back (nack), so they stay in the DLQ;
//! - [`replay`] republishes each copy to the topic it came from, without the `wr-dlq-*` properties
//!   and with its attempts reset, and acks the copy only after the republish was confirmed. The
//!   stable message id is kept, so credit charges stay idempotent across the replay. Copies keep
//!   no sender token; a replay to a task that verifies senders is given one to send them with.

use std::time::{Duration, SystemTime};

use worker_core::{
    props, Broker, BrokerError, ConsumerType, DeadLetterReason, Delivery, InitialPosition, Message,
    SubscribeOptions, Subscription, Topic,
};

/// The subscription [`inspect`] and [`replay`] read the DLQ with: its backlog is what the DLQ
/// holds (inspecting gives copies back, replaying acks them).
pub const SUBSCRIPTION: &str = "wr-dlq";
/// The consumer name [`inspect`], [`replay`] and [`keep`] use: the same on every run, so that on
/// MQTT each resumes the one persistent session that holds the copies (a plain MQTT client reads
/// them by resuming it too: client id `{prefix}c~wr-dlq~wr-dlq-reader`, clean start off), and on
/// Valkey a run picks up what an interrupted one held at once.
pub const READER: &str = "wr-dlq-reader";

/// One dead-letter copy, with its provenance read from its properties.
#[derive(Clone, Debug)]
pub struct DeadLetterRecord {
    /// Why it was dead-lettered (`None` if the property is missing or unknown).
    pub reason: Option<DeadLetterReason>,
    /// The sanitized last error.
    pub error: String,
    /// How many attempts ran.
    pub attempts: Option<u32>,
    /// The topic it was consumed from.
    pub original_topic: Option<String>,
    /// The task that gave up on it.
    pub task: Option<String>,
    /// The worker that gave up on it.
    pub consumer: Option<String>,
    /// When, as written (RFC 3339).
    pub time: Option<String>,
    /// The stable message id.
    pub message_id: Option<String>,
    /// The principal the worker had verified for the message.
    pub principal: Option<String>,
    /// The copy itself: original payload, key and properties.
    pub message: Message,
}

impl DeadLetterRecord {
    /// Reads the provenance properties of a delivered DLQ copy.
    pub fn from_delivery(delivery: &Delivery) -> Self {
        let prop = |name: &str| delivery.property(name).map(str::to_owned);
        DeadLetterRecord {
            reason: delivery
                .property(props::DLQ_REASON)
                .and_then(DeadLetterReason::parse),
            error: prop(props::DLQ_ERROR).unwrap_or_default(),
            attempts: delivery
                .property(props::DLQ_ATTEMPTS)
                .and_then(|a| a.parse().ok()),
            original_topic: prop(props::DLQ_ORIGINAL_TOPIC),
            task: prop(props::DLQ_TASK),
            consumer: prop(props::DLQ_CONSUMER),
            time: prop(props::DLQ_TIME),
            message_id: prop(props::MESSAGE_ID),
            principal: prop(props::DLQ_PRINCIPAL),
            message: (*delivery.message).clone(),
        }
    }
}

/// Why a DLQ could not be read or replayed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The broker failed.
    #[error("dead-letter topic `{topic}`: {source}")]
    Broker {
        /// The DLQ topic.
        topic: String,
        /// The broker's error.
        #[source]
        source: BrokerError,
    },
}

/// How long to wait for more copies before deciding the DLQ is drained.
const QUIET_PERIOD: Duration = Duration::from_secs(2);

async fn open(broker: &dyn Broker, dlq: &Topic) -> Result<Box<dyn Subscription>, DeadLetterError> {
    broker
        .subscribe(SubscribeOptions {
            topic: dlq.clone(),
            subscription: SUBSCRIPTION.to_owned(),
            consumer_name: READER.to_owned(),
            consumer_type: ConsumerType::Shared,
            initial_position: InitialPosition::Earliest,
            receiver_queue_size: 100,
        })
        .await
        .map_err(|source| broker_error(dlq, source))
}

fn broker_error(dlq: &Topic, source: BrokerError) -> DeadLetterError {
    DeadLetterError::Broker {
        topic: dlq.to_string(),
        source,
    }
}

/// Makes sure `dlq` keeps its copies for [`inspect`] and [`replay`] from now on, even while
/// nothing reads it: opens their subscription (from the earliest position) and detaches.
pub async fn keep(broker: &dyn Broker, dlq: &Topic) -> Result<(), DeadLetterError> {
    open(broker, dlq)
        .await?
        .close()
        .await
        .map_err(|e| broker_error(dlq, e))
}

/// Receives up to `max`, or `None` once nothing arrives for `quiet`.
async fn next_batch(
    subscription: &dyn Subscription,
    dlq: &Topic,
    max: usize,
    quiet: Duration,
) -> Result<Option<Vec<Delivery>>, DeadLetterError> {
    match tokio::time::timeout(quiet, subscription.receive(max)).await {
        Err(_) => Ok(None),
        Ok(Ok(batch)) => Ok(Some(batch)),
        Ok(Err(source)) => Err(broker_error(dlq, source)),
    }
}

/// Reads up to `limit` copies from `dlq` and gives them back, so they stay in the DLQ.
pub async fn inspect(
    broker: &dyn Broker,
    dlq: &Topic,
    limit: usize,
) -> Result<Vec<DeadLetterRecord>, DeadLetterError> {
    let subscription = open(broker, dlq).await?;
    let mut records = Vec::new();
    let mut held = Vec::new();
    while records.len() < limit {
        let Some(batch) =
            next_batch(&*subscription, dlq, limit - records.len(), QUIET_PERIOD).await?
        else {
            break;
        };
        for delivery in batch {
            records.push(DeadLetterRecord::from_delivery(&delivery));
            held.push(delivery.id);
        }
    }
    // Holding every copy until the end keeps a nacked one from being read twice.
    subscription
        .nack(held)
        .await
        .map_err(|e| broker_error(dlq, e))?;
    subscription
        .close()
        .await
        .map_err(|e| broker_error(dlq, e))?;
    Ok(records)
}

/// The message to republish for a DLQ copy: its payload, key and application properties, the
/// stable id kept, the framework's delivery bookkeeping removed, and a `wr-replayed-at` stamp. It
/// carries `token` as its sender's token, and no other (a copy written by an older worker may
/// still hold its sender's).
pub fn replay_message(copy: &Message, token: Option<&str>) -> Message {
    let mut message = copy.clone();
    message.deliver_at = None;
    message.properties.retain(|name, _| {
        !name.starts_with("wr-dlq-") && name != props::ATTEMPT && name != props::AUTH_TOKEN
    });
    if let Some(token) = token {
        message
            .properties
            .insert(props::AUTH_TOKEN.to_owned(), token.to_owned());
    }
    message.properties.insert(
        REPLAYED_AT.to_owned(),
        humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    );
    message
}

/// Set on a replayed message: when it was replayed.
pub const REPLAYED_AT: &str = "wr-replayed-at";

/// Republishes up to `limit` copies from `dlq` to the topic each came from (or `fallback` when a
/// copy does not name one), acking each copy once its republish is confirmed; each carries `token`
/// as its sender's token (see [`replay_message`]). Returns how many were replayed.
pub async fn replay(
    broker: &dyn Broker,
    dlq: &Topic,
    fallback: &Topic,
    limit: usize,
    token: Option<&str>,
) -> Result<usize, DeadLetterError> {
    let subscription = open(broker, dlq).await?;
    let mut replayed = 0;
    while replayed < limit {
        let Some(batch) = next_batch(
            &*subscription,
            dlq,
            (limit - replayed).min(100),
            QUIET_PERIOD,
        )
        .await?
        else {
            break;
        };
        let mut acked = Vec::with_capacity(batch.len());
        let mut failure = None;
        for delivery in batch {
            if failure.is_some() {
                break;
            }
            let target = delivery
                .property(props::DLQ_ORIGINAL_TOPIC)
                .and_then(|t| Topic::parse(t).ok())
                .unwrap_or_else(|| fallback.clone());
            match broker
                .publish(&target, replay_message(&delivery.message, token))
                .await
            {
                Ok(_) => acked.push(delivery.id),
                Err(source) => failure = Some(broker_error(&target, source)),
            }
        }
        replayed += acked.len();
        subscription
            .ack(acked)
            .await
            .map_err(|e| broker_error(dlq, e))?;
        if let Some(error) = failure {
            // Unacked copies stay in the DLQ; closing gives them back.
            let _ = subscription.close().await;
            return Err(error);
        }
    }
    subscription
        .close()
        .await
        .map_err(|e| broker_error(dlq, e))?;
    Ok(replayed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::MemoryBroker;

    fn dead_copy(n: u32) -> Message {
        Message::new(format!("{{\"n\":{n}}}"))
            .with_key("k")
            .with_property(props::MESSAGE_ID, format!("id-{n}"))
            .with_property(props::ATTEMPT, "4")
            .with_property("app", "kept")
            .with_property(props::DLQ_REASON, "retries_exhausted")
            .with_property(props::DLQ_ERROR, "boom")
            .with_property(props::DLQ_ATTEMPTS, "4")
            .with_property(props::DLQ_ORIGINAL_TOPIC, "q1/t/ns/jobs")
            .with_property(props::DLQ_TASK, "jobs")
            .with_property(props::DLQ_PRINCIPAL, "alice")
    }

    #[tokio::test(start_paused = true)]
    async fn inspect_reads_provenance_and_leaves_the_copies_in_place() {
        let broker = MemoryBroker::new();
        let dlq = Topic::parse("q1/t/ns/jobs-dlq").unwrap();
        for n in 0..3 {
            broker.publish(&dlq, dead_copy(n)).await.unwrap();
        }
        let records = inspect(&broker, &dlq, 10).await.unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].reason, Some(DeadLetterReason::RetriesExhausted));
        assert_eq!(records[0].attempts, Some(4));
        assert_eq!(records[0].task.as_deref(), Some("jobs"));
        assert_eq!(records[0].error, "boom");
        assert_eq!(records[0].principal.as_deref(), Some("alice"));
        let again = inspect(&broker, &dlq, 10).await.unwrap();
        assert_eq!(again.len(), 3, "inspecting consumes nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn replay_republishes_to_the_original_topic_and_drains_the_dlq() {
        let broker = MemoryBroker::new();
        let dlq = Topic::parse("q1/t/ns/jobs-dlq").unwrap();
        let jobs = Topic::parse("q1/t/ns/jobs").unwrap();
        let reader = open(&broker, &jobs).await.unwrap();
        for n in 0..5 {
            broker.publish(&dlq, dead_copy(n)).await.unwrap();
        }
        assert_eq!(replay(&broker, &dlq, &jobs, 100, None).await.unwrap(), 5);
        let replayed = reader.receive(10).await.unwrap();
        assert_eq!(replayed.len(), 5);
        let first = &replayed[0].message;
        assert_eq!(
            first.property(props::MESSAGE_ID),
            Some("id-0"),
            "the stable id is kept"
        );
        assert_eq!(first.property("app"), Some("kept"));
        assert_eq!(first.key.as_deref(), Some("k"));
        assert_eq!(
            first.property(props::ATTEMPT),
            None,
            "attempts start afresh"
        );
        assert!(first.properties.keys().all(|k| !k.starts_with("wr-dlq-")));
        assert!(first.property(REPLAYED_AT).is_some());
        assert_eq!(
            first.property(props::AUTH_TOKEN),
            None,
            "copies keep no token"
        );
        assert_eq!(
            replay(&broker, &dlq, &jobs, 100, None).await.unwrap(),
            0,
            "the DLQ is drained"
        );
    }

    #[test]
    fn a_replayed_message_carries_the_replay_token_and_no_other() {
        let stale = dead_copy(1).with_property(props::AUTH_TOKEN, "old-sender-token");
        let without = replay_message(&stale, None);
        assert_eq!(without.property(props::AUTH_TOKEN), None);
        let with = replay_message(&stale, Some("replay-token"));
        assert_eq!(with.property(props::AUTH_TOKEN), Some("replay-token"));
        assert_eq!(with.property(props::DLQ_PRINCIPAL), None);
    }
}
