//! Names on the Pulsar side: the native topic a [`Topic`] maps to, and the text form of Pulsar
//! message ids carried in [`MessageId`].

use std::fmt;

use worker_core::{MessageId, Topic, TopicScheme};

/// The Pulsar topic name for a framework topic.
///
/// `persistent://…` and `non-persistent://…` pass through unchanged. The neutral forms map by
/// their guarantee: `q1/…` and `q2/…` (at least once; Pulsar has no exactly-once consumption
/// without transactions) become `persistent://tenant/ns/name`, and `q0/…` (best effort) becomes
/// `non-persistent://tenant/ns/name`.
pub fn pulsar_topic(topic: &Topic) -> String {
    match topic.scheme() {
        TopicScheme::Persistent | TopicScheme::NonPersistent => topic.to_string(),
        TopicScheme::Q1 | TopicScheme::Q2 => topic.path_within("persistent://", ""),
        TopicScheme::Q0 => topic.path_within("non-persistent://", ""),
    }
}

const PARTITION_MARKER: &str = "-partition-";

/// The partition index in a partition's topic name (`…/name-partition-3` → 3), if it is one.
pub fn partition_index(topic_name: &str) -> Option<i32> {
    let (_, suffix) = topic_name.rsplit_once(PARTITION_MARKER)?;
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    suffix.parse().ok()
}

/// The topic name of one partition of `base`, or `base` itself for `partition < 0`.
pub fn partition_topic(base: &str, partition: i32) -> String {
    if partition < 0 {
        base.to_owned()
    } else {
        format!("{base}{PARTITION_MARKER}{partition}")
    }
}

/// A Pulsar message position, as the framework carries it in a [`MessageId`].
///
/// Its text is `ledger:entry:partition:batch_index:batch_size`, where `partition` is -1 on a
/// topic that is not partitioned, `batch_index` is -1 for a message that was not batched and
/// `batch_size` is the number of messages in its entry (1 when not batched).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PulsarMessageId {
    /// The partition index, -1 when the topic is not partitioned.
    pub partition: i32,
    /// The ledger id.
    pub ledger: u64,
    /// The entry id within the ledger.
    pub entry: u64,
    /// The message's index within a batched entry, -1 when not batched.
    pub batch_index: i32,
    /// How many messages the entry holds, 1 when not batched.
    pub batch_size: i32,
}

impl PulsarMessageId {
    /// The entry (stored unit) this message belongs to; Pulsar acknowledges whole entries.
    pub fn entry_key(&self) -> EntryKey {
        EntryKey {
            partition: self.partition,
            ledger: self.ledger,
            entry: self.entry,
        }
    }

    /// Converts to the framework's id.
    pub fn to_message_id(self) -> MessageId {
        MessageId::from_text(self.to_string())
    }

    /// Reads an id written by [`Self::to_message_id`]; `None` for any other id.
    pub fn parse(id: &MessageId) -> Option<Self> {
        let mut parts = id.as_text()?.split(':');
        let ledger = parts.next()?.parse().ok()?;
        let entry = parts.next()?.parse().ok()?;
        let partition = parts.next()?.parse().ok()?;
        let batch_index = parts.next()?.parse().ok()?;
        let batch_size = parts.next()?.parse().ok()?;
        if parts.next().is_some() || batch_size < 1 || batch_index >= batch_size {
            return None;
        }
        Some(PulsarMessageId {
            partition,
            ledger,
            entry,
            batch_index,
            batch_size,
        })
    }
}

impl fmt::Display for PulsarMessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}:{}",
            self.ledger, self.entry, self.partition, self.batch_index, self.batch_size
        )
    }
}

/// One stored entry: a message, or a batch of messages published together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey {
    /// The partition index, -1 when the topic is not partitioned.
    pub partition: i32,
    /// The ledger id.
    pub ledger: u64,
    /// The entry id within the ledger.
    pub entry: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(text: &str) -> Topic {
        Topic::parse(text).expect("valid topic")
    }

    #[test]
    fn native_names_pass_through_and_neutral_names_map_by_guarantee() {
        assert_eq!(
            pulsar_topic(&topic("persistent://prod/ingest/raw-data")),
            "persistent://prod/ingest/raw-data"
        );
        assert_eq!(
            pulsar_topic(&topic("non-persistent://prod/ingest/raw")),
            "non-persistent://prod/ingest/raw"
        );
        assert_eq!(pulsar_topic(&topic("q1/t/ns/q")), "persistent://t/ns/q");
        assert_eq!(pulsar_topic(&topic("q2/t/ns/q")), "persistent://t/ns/q");
        assert_eq!(pulsar_topic(&topic("q0/t/ns/q")), "non-persistent://t/ns/q");
    }

    #[test]
    fn partition_names_round_trip() {
        let base = "persistent://t/ns/orders";
        assert_eq!(partition_topic(base, -1), base);
        let third = partition_topic(base, 3);
        assert_eq!(third, "persistent://t/ns/orders-partition-3");
        assert_eq!(partition_index(&third), Some(3));
        assert_eq!(partition_index(base), None);
        assert_eq!(partition_index("persistent://t/ns/a-partition-"), None);
        assert_eq!(partition_index("persistent://t/ns/a-partition-x1"), None);
    }

    #[test]
    fn message_ids_round_trip_through_text() {
        let id = PulsarMessageId {
            partition: 2,
            ledger: 17,
            entry: 40,
            batch_index: 3,
            batch_size: 5,
        };
        let text = id.to_message_id();
        assert_eq!(text.as_text(), Some("17:40:2:3:5"));
        assert_eq!(PulsarMessageId::parse(&text), Some(id));
        let single = PulsarMessageId {
            partition: -1,
            ledger: 1,
            entry: 0,
            batch_index: -1,
            batch_size: 1,
        };
        assert_eq!(
            PulsarMessageId::parse(&single.to_message_id()),
            Some(single)
        );
    }

    #[test]
    fn foreign_or_malformed_ids_are_refused() {
        for text in [
            "",
            "1:2",
            "1:2:3:4",
            "1:2:-1:-1:1:9",
            "a:2:-1:-1:1",
            "1:2:-1:5:5",
            "1:2:-1:-1:0",
        ] {
            assert_eq!(
                PulsarMessageId::parse(&MessageId::from_text(text)),
                None,
                "{text}"
            );
        }
        assert_eq!(PulsarMessageId::parse(&MessageId::from_u64(7)), None);
    }
}
