//! Messages ↔ MQTT 5 publish packets: the payload travels raw, every property becomes one MQTT 5 user
//! property, and the key and the backend's redelivery counter travel as user properties under the
//! reserved `wr-mqtt-` prefix.

use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use worker_core::{BrokerError, Message, Properties};

/// User property that carries [`Message::key`].
pub(crate) const KEY: &str = "wr-mqtt-key";
/// User property that counts how often a copy was handed back with `nack` and republished.
pub(crate) const REDELIVERIES: &str = "wr-mqtt-redeliveries";
/// Property names under this prefix belong to this backend; applications may not set them.
const RESERVED_PREFIX: &str = "wr-mqtt-";

/// The publish properties that carry `message`'s properties and key, plus a redelivery counter when
/// it is not zero.
pub(crate) fn encode(
    message: &Message,
    redeliveries: u32,
) -> Result<PublishProperties, BrokerError> {
    if let Some(name) = message
        .properties
        .keys()
        .find(|name| name.starts_with(RESERVED_PREFIX))
    {
        return Err(BrokerError::Rejected {
            backend: "mqtt",
            reason: format!("property `{name}` uses the prefix `{RESERVED_PREFIX}` reserved by the mqtt backend"),
        });
    }
    let mut user_properties: Vec<(String, String)> = message
        .properties
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    if let Some(key) = &message.key {
        user_properties.push((KEY.to_owned(), key.clone()));
    }
    if redeliveries > 0 {
        user_properties.push((REDELIVERIES.to_owned(), redeliveries.to_string()));
    }
    Ok(PublishProperties {
        user_properties,
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
    let message = Message {
        payload: publish.payload.clone(),
        properties,
        key,
        deliver_at: None,
    };
    (message, redeliveries)
}

#[cfg(test)]
mod tests {
    use rumqttc::v5::mqttbytes::QoS;

    use super::*;

    #[test]
    fn properties_and_key_round_trip() {
        let message = Message::new("body")
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
        assert_eq!(decoded, message);
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
        assert_eq!(decode(&publish), (message, 0));
        let bare = Publish::new("t/ns/q", QoS::AtMostOnce, "x", None);
        assert_eq!(decode(&bare).0, Message::new("x"));
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
    fn a_garbled_counter_counts_as_zero() {
        let props = PublishProperties {
            user_properties: vec![(REDELIVERIES.to_owned(), "many".to_owned())],
            ..PublishProperties::default()
        };
        let publish = Publish::new("t", QoS::AtLeastOnce, "x", Some(props));
        assert_eq!(decode(&publish).1, 0);
    }
}
