//! How framework names become MQTT names: topics, shared-subscription filters, redelivery topics and
//! client identifiers.
//!
//! | framework                         | MQTT                                                   |
//! |-----------------------------------|--------------------------------------------------------|
//! | `q1/t/ns/name`, `persistent://t/ns/name` | topic `t/ns/name`, QoS 1                       |
//! | `q2/t/ns/name`                    | topic `t/ns/name`, QoS 2                               |
//! | `q0/t/ns/name`, `non-persistent://t/ns/name` | topic `t/ns/name`, QoS 0                    |
//! | subscription `s` on that topic    | filter `$share/s/t/ns/name`                            |
//! | redelivered (nacked) copies for `s` | topic `t/ns/name/_redeliver/s`, filter `$share/s/t/ns/name/_redeliver/s` |
//! | consumer `c` of subscription `s`  | client id `{prefix}c~s~c` (persistent session)         |
//!
//! The scheme only selects the QoS: two names that differ only in their scheme are the same MQTT topic.
//! Topic segments are limited to `[A-Za-z0-9._:=-]`, so they never hold the characters MQTT reserves
//! (`/`, `+`, `#`, a leading `$`, NUL) and pass through unchanged. Subscription and consumer names are
//! free text: every byte outside that set is written as `%XX`, which makes the mapping injective and
//! keeps `/`, `+` and `#` out of share names, as MQTT requires.

use std::fmt::Write as _;

use worker_core::Topic;

/// The path segment under a topic that carries a subscription's redelivered copies.
const REDELIVER_SEGMENT: &str = "_redeliver";

/// Writes `text` with every byte outside `[A-Za-z0-9._:=-]` as `%XX` (uppercase hex).
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"._:=-".contains(&byte) {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The MQTT topic a framework topic is published to: `tenant/namespace/name`.
pub(crate) fn mqtt_topic(topic: &Topic) -> String {
    format!(
        "{}/{}/{}",
        escape(topic.tenant()),
        escape(topic.namespace()),
        escape(topic.name())
    )
}

/// The topic that carries the copies a consumer of `subscription` gave back with `nack`. Only the
/// members of that subscription's share group subscribe to it, so other subscriptions of the topic
/// never see the copies.
pub(crate) fn redelivery_topic(topic: &Topic, subscription: &str) -> String {
    format!(
        "{}/{REDELIVER_SEGMENT}/{}",
        mqtt_topic(topic),
        escape(subscription)
    )
}

/// The shared-subscription filters one consumer of `subscription` subscribes to: the topic itself and
/// the subscription's redelivery topic.
pub(crate) fn share_filters(topic: &Topic, subscription: &str) -> [String; 2] {
    let group = escape(subscription);
    [
        format!("$share/{group}/{}", mqtt_topic(topic)),
        format!("$share/{group}/{}", redelivery_topic(topic, subscription)),
    ]
}

/// The client id of one consumer: stable for a (subscription, consumer name) pair, so that a consumer
/// restarted under the same name resumes its persistent session and gets its unacknowledged messages.
pub(crate) fn consumer_client_id(prefix: &str, subscription: &str, consumer: &str) -> String {
    format!("{prefix}c~{}~{}", escape(subscription), escape(consumer))
}

/// The client id of a publishing connection: unique per process and connection, since publishers
/// keep no session on the broker.
pub(crate) fn publisher_client_id(prefix: &str, role: &str) -> String {
    let host = gethostname::gethostname();
    format!(
        "{prefix}p~{}~{}~{role}~{:08x}",
        escape(&host.to_string_lossy()),
        std::process::id(),
        fastrand::u32(..)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(text: &str) -> Topic {
        Topic::parse(text).expect("valid topic")
    }

    #[test]
    fn topics_map_to_their_path_whatever_the_scheme() {
        for text in [
            "persistent://prod/ingest/raw-data",
            "non-persistent://prod/ingest/raw-data",
            "q0/prod/ingest/raw-data",
            "q2/prod/ingest/raw-data",
        ] {
            assert_eq!(mqtt_topic(&topic(text)), "prod/ingest/raw-data");
        }
        assert_eq!(mqtt_topic(&topic("q1/a.b/c:d/e=f-g")), "a.b/c:d/e=f-g");
    }

    #[test]
    fn reserved_characters_are_escaped_injectively() {
        assert_eq!(escape("a/b+c#d$e%f g"), "a%2Fb%2Bc%23d%24e%25f%20g");
        assert_eq!(escape("ü"), "%C3%BC");
        assert_ne!(escape("a~b"), escape("a%7Eb"));
        assert_ne!(
            consumer_client_id("p-", "a~b", "c"),
            consumer_client_id("p-", "a", "b~c")
        );
    }

    #[test]
    fn subscriptions_map_to_share_groups_and_a_private_redelivery_topic() {
        let t = topic("q1/t/ns/jobs");
        assert_eq!(
            share_filters(&t, "work ers/1"),
            [
                "$share/work%20ers%2F1/t/ns/jobs".to_owned(),
                "$share/work%20ers%2F1/t/ns/jobs/_redeliver/work%20ers%2F1".to_owned()
            ]
        );
        assert_eq!(redelivery_topic(&t, "w"), "t/ns/jobs/_redeliver/w");
        assert_eq!(consumer_client_id("wr-", "w", "host-1"), "wr-c~w~host-1");
        assert!(publisher_client_id("wr-", "q1").starts_with("wr-p~"));
    }
}
