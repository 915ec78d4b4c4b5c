//! Messages ↔ MQTT 5 publish packets: the payload travels raw, every property becomes one MQTT 5 user
//! property, and the key and the backend's redelivery counter travel as user properties under the
//! reserved `wr-mqtt-` prefix.
//!
//! A received message without [`props::MESSAGE_ID`] (from a producer other than this framework)
//! gets one derived from its content, since MQTT gives a stored message no identity of its own
//! (packet ids are reused): see `content_id`.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use worker_core::{props, BrokerError, Message, Properties};

use crate::content_id::hex;

/// User property that carries [`Message::key`].
pub(crate) const KEY: &str = "wr-mqtt-key";
/// User property that counts how often a copy was handed back with `nack` and republished.
pub(crate) const REDELIVERIES: &str = "wr-mqtt-redeliveries";
/// Property that carries MQTT 5's Response Topic of a received message: the raw MQTT topic its
/// sender wants the result on. Published again as the Response Topic, not as a user property.
pub const RESPONSE_TOPIC: &str = "wr-mqtt-response-topic";
/// Property that carries MQTT 5's Correlation Data of a received message, in lowercase hex (the
/// data is binary). Published again as the Correlation Data, and sent back with the result.
pub const CORRELATION_DATA: &str = "wr-mqtt-correlation-data";
/// Property names under this prefix belong to this backend; applications may set only
/// [`RESPONSE_TOPIC`] and [`CORRELATION_DATA`] of them.
const RESERVED_PREFIX: &str = "wr-mqtt-";

/// The publish properties that carry `message`'s properties and key, plus a redelivery counter when
/// it is not zero.
pub(crate) fn encode(
    message: &Message,
    redeliveries: u32,
) -> Result<PublishProperties, BrokerError> {
    let rejected = |reason: String| BrokerError::Rejected {
        backend: "mqtt",
        reason,
    };
    let mut user_properties = Vec::with_capacity(message.properties.len() + 1);
    let mut response_topic = None;
    let mut correlation_data = None;
    for (name, value) in &message.properties {
        match name.as_str() {
            RESPONSE_TOPIC => response_topic = Some(value.clone()),
            CORRELATION_DATA => {
                let bytes = from_hex(value).ok_or_else(|| {
                    rejected(format!(
                        "property `{CORRELATION_DATA}` must be hex, got {value:?}"
                    ))
                })?;
                correlation_data = Some(Bytes::from(bytes));
            }
            reserved if reserved.starts_with(RESERVED_PREFIX) => {
                return Err(rejected(format!(
                    "property `{reserved}` uses the prefix `{RESERVED_PREFIX}` reserved by the mqtt backend"
                )));
            }
            _ => user_properties.push((name.clone(), value.clone())),
        }
    }
    if let Some(key) = &message.key {
        user_properties.push((KEY.to_owned(), key.clone()));
    }
    if redeliveries > 0 {
        user_properties.push((REDELIVERIES.to_owned(), redeliveries.to_string()));
    }
    Ok(PublishProperties {
        user_properties,
        response_topic,
        correlation_data,
        ..PublishProperties::default()
    })
}

/// The message a received publish carries, and how often it was redelivered by `nack` before.
///
/// MQTT allows a user property name to repeat; the last value wins, as in a map. A counter that does
/// not parse counts as zero: it is informational only.
pub(crate) fn decode(publish: &Publish) -> (Message, u32) {
    let mut properties = Properties::new();
    let mut key = None;
    let mut redeliveries = 0;
    for (name, value) in publish
        .properties
        .iter()
        .flat_map(|props| props.user_properties.iter())
    {
        match name.as_str() {
            KEY => key = Some(value.clone()),
            REDELIVERIES => redeliveries = value.parse().unwrap_or(0),
            _ => {
                properties.insert(name.clone(), value.clone());
            }
        }
    }
    if let Some(native) = &publish.properties {
        if let Some(topic) = &native.response_topic {
            properties.insert(RESPONSE_TOPIC.to_owned(), topic.clone());
        }
        if let Some(data) = &native.correlation_data {
            properties.insert(CORRELATION_DATA.to_owned(), hex(data));
        }
    }
    if !properties.contains_key(props::MESSAGE_ID) {
        let id = content_id(
            &publish.topic,
            key.as_deref(),
            &publish.payload,
            &properties,
        );
        properties.insert(props::MESSAGE_ID.to_owned(), id);
    }
    let message = Message {
        payload: publish.payload.clone(),
        properties,
        key,
        deliver_at: None,
    };
    (message, redeliveries)
}

/// The stable id of a message that came without one: `mqtt-` and the first 128 bits of a SHA-256
/// over its topic, key, payload and properties, in hex.
///
/// The same stored message gets the same id on every delivery, after a restart and in another
/// worker, so credits are charged once for it; two messages that differ anywhere get different ids.
/// Its limit: two publishes identical in topic, key, payload and properties are one message to the
/// framework. A producer that sends such repeats on purpose sets `wr-message-id` itself.
pub(crate) fn content_id(
    topic: &[u8],
    key: Option<&str>,
    payload: &[u8],
    properties: &Properties,
) -> String {
    let key_parts: [&[u8]; 2] = match key {
        Some(key) => [b"k", key.as_bytes()],
        None => [b"", b""],
    };
    let property_parts = properties
        .iter()
        .flat_map(|(name, value)| [name.as_bytes(), value.as_bytes()]);
    crate::content_id::content_id(
        "mqtt",
        [topic]
            .into_iter()
            .chain(key_parts)
            .chain([payload])
            .chain(property_parts),
    )
}

/// The bytes of hex text (either case), or `None` if it is not hex.
fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digit = |c: u8| char::from(c).to_digit(16);
            u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rumqttc::v5::mqttbytes::QoS;

    use super::*;

    #[test]
    fn properties_and_key_round_trip() {
        let message = Message::new("body")
            .with_property(props::MESSAGE_ID, "m-1")
            .with_property("wr-attempt", "2")
            .with_property("app", "x y")
            .with_key("k-1");
        let props = encode(&message, 3).expect("encodes");
        let publish = Publish::new(
            "t/ns/q",
            QoS::AtLeastOnce,
            message.payload.clone(),
            Some(props),
        );
        let (decoded, redeliveries) = decode(&publish);
        assert_eq!(decoded, message.with_property(props::MESSAGE_ID, "m-1"));
        assert_eq!(redeliveries, 3);
    }

    #[test]
    fn a_message_without_properties_round_trips_without_a_counter() {
        let message = Message::new(vec![0_u8, 255, 1]);
        let props = encode(&message, 0).expect("encodes");
        assert!(props.user_properties.is_empty());
        let publish = Publish::new(
            "t/ns/q",
            QoS::AtMostOnce,
            message.payload.clone(),
            Some(props),
        );
        let (mut decoded, redeliveries) = decode(&publish);
        assert_eq!(redeliveries, 0);
        assert!(decoded.properties.remove(props::MESSAGE_ID).is_some());
        assert_eq!(decoded, message);
        let bare = Publish::new("t/ns/q", QoS::AtMostOnce, "x", None);
        let mut decoded = decode(&bare).0;
        assert!(decoded.properties.remove(props::MESSAGE_ID).is_some());
        assert_eq!(decoded, Message::new("x"));
    }

    #[test]
    fn a_message_without_an_id_gets_one_from_its_content() {
        let id_of = |topic: &str, payload: &'static str, pairs: &[(&str, &str)]| {
            let properties = PublishProperties {
                user_properties: pairs
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                    .collect(),
                ..PublishProperties::default()
            };
            let publish = Publish::new(topic, QoS::AtLeastOnce, payload, Some(properties));
            decode(&publish).0.properties[props::MESSAGE_ID].clone()
        };
        let id = id_of("t/ns/q", "{}", &[("a", "1")]);
        assert!(id.starts_with("mqtt-") && id.len() == 37, "{id}");
        assert_eq!(id, id_of("t/ns/q", "{}", &[("a", "1")]), "stable");
        for other in [
            id_of("t/ns/r", "{}", &[("a", "1")]),
            id_of("t/ns/q", "{ }", &[("a", "1")]),
            id_of("t/ns/q", "{}", &[("a", "2")]),
            id_of("t/ns/q", "{}", &[]),
        ] {
            assert_ne!(id, other);
        }
        // A producer's own id is kept.
        assert_eq!(id_of("t/ns/q", "{}", &[(props::MESSAGE_ID, "m-1")]), "m-1");
    }

    #[test]
    fn reserved_property_names_are_rejected() {
        let message = Message::new("x").with_property(KEY, "forged");
        assert!(matches!(
            encode(&message, 0),
            Err(BrokerError::Rejected { .. })
        ));
    }

    #[test]
    fn response_topic_and_correlation_data_travel_as_properties_and_back() {
        let native = PublishProperties {
            response_topic: Some("replies/client-7".to_owned()),
            correlation_data: Some(Bytes::from_static(&[0, 0xab, 0xff])),
            ..PublishProperties::default()
        };
        let publish = Publish::new("t/ns/q", QoS::AtLeastOnce, "{}", Some(native));
        let (message, _) = decode(&publish);
        assert_eq!(message.property(RESPONSE_TOPIC), Some("replies/client-7"));
        assert_eq!(message.property(CORRELATION_DATA), Some("00abff"));
        let again = encode(&message, 0).expect("encodes");
        assert_eq!(again.response_topic.as_deref(), Some("replies/client-7"));
        assert_eq!(
            again.correlation_data.as_deref(),
            Some(&[0, 0xab, 0xff][..])
        );
        assert!(again
            .user_properties
            .iter()
            .all(|(name, _)| !name.starts_with(RESERVED_PREFIX)));
        let garbled = Message::new("x").with_property(CORRELATION_DATA, "xyz");
        assert!(matches!(
            encode(&garbled, 0),
            Err(BrokerError::Rejected { .. })
        ));
    }

    #[test]
    fn a_garbled_counter_counts_as_zero() {
        let props = PublishProperties {
            user_properties: vec![(REDELIVERIES.to_owned(), "many".to_owned())],
            ..PublishProperties::default()
        };
        let publish = Publish::new("t", QoS::AtLeastOnce, "x", Some(props));
        assert_eq!(decode(&publish).1, 0);
    }
}
