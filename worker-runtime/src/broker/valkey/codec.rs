//! Messages to stream entry fields and back, and the parsing of stream replies.
//!
//! An entry has up to four fields, each binary safe:
//!
//! | field | value | when |
//! |---|---|---|
//! | `payload` | the payload bytes, raw | always |
//! | `props` | the properties as one JSON object (`{"name":"value",…}`) | if there are any |
//! | `key` | the key | if set |
//! | `published` | publish time, decimal milliseconds since the Unix epoch | always |
//!
//! All properties sit in one JSON field rather than one stream field each, so that no property
//! name, whatever it is, can collide with the message's own fields. An entry written by another
//! program (no `payload` field) is still delivered: with an empty payload and its fields as
//! properties, so that the runtime can dead-letter it instead of wedging on it.
//!
//! A message waiting for its [`Message::deliver_at`] is one member of a sorted set: a 32-character
//! unique prefix (two identical messages must stay two members), then each field name and value as
//! `<decimal length>:<bytes>`. The Lua mover in `scripts.rs` parses that form back into fields.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::Value;
use worker_core::{BrokerError, Delivery, Message, MessageId, Properties};

use super::BACKEND;

const PAYLOAD: &str = "payload";
const PROPS: &str = "props";
const KEY: &str = "key";
const PUBLISHED: &str = "published";

/// The length of the unique prefix of a delayed member (a simple-format UUID).
pub(super) const MEMBER_PREFIX_LEN: usize = 32;

/// The fields of one entry, borrowing the payload rather than copying it.
pub(super) type Fields<'a> = Vec<(&'static str, Cow<'a, [u8]>)>;

/// The fields that store `message`, published at `published_ms`.
pub(super) fn encode(message: &Message, published_ms: u64) -> Result<Fields<'_>, BrokerError> {
    let mut fields: Fields<'_> = Vec::with_capacity(4);
    fields.push((PAYLOAD, Cow::Borrowed(&message.payload[..])));
    if !message.properties.is_empty() {
        let json = serde_json::to_vec(&message.properties).map_err(|e| BrokerError::Rejected {
            backend: BACKEND,
            reason: format!("properties cannot be encoded as JSON: {e}"),
        })?;
        fields.push((PROPS, Cow::Owned(json)));
    }
    if let Some(key) = &message.key {
        fields.push((KEY, Cow::Borrowed(key.as_bytes())));
    }
    fields.push((PUBLISHED, Cow::Owned(published_ms.to_string().into_bytes())));
    Ok(fields)
}

/// The sorted-set member that holds a delayed message: `unique` (exactly [`MEMBER_PREFIX_LEN`]
/// bytes) followed by every field name and value as `<len>:<bytes>`.
pub(super) fn delayed_member(unique: &str, fields: &Fields<'_>) -> Vec<u8> {
    debug_assert_eq!(unique.len(), MEMBER_PREFIX_LEN);
    let size = fields
        .iter()
        .map(|(n, v)| n.len() + v.len() + 24)
        .sum::<usize>();
    let mut member = Vec::with_capacity(unique.len() + size);
    member.extend_from_slice(unique.as_bytes());
    for (name, value) in fields {
        for part in [name.as_bytes(), &value[..]] {
            member.extend_from_slice(part.len().to_string().as_bytes());
            member.push(b':');
            member.extend_from_slice(part);
        }
    }
    member
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub(super) fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One stream entry as a reply carries it. `fields` is `None` for an entry that is still pending
/// but was deleted from the stream (trimmed or `XDEL`ed).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RawEntry {
    pub id: String,
    pub fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// The entries of an `XREADGROUP` reply for one stream; empty when the read timed out.
pub(super) fn read_reply(value: Value) -> Result<Vec<RawEntry>, String> {
    match value {
        Value::Nil => Ok(Vec::new()),
        // RESP2: [[stream, [entry, …]], …]
        Value::Array(streams) => {
            let mut all = Vec::new();
            for stream in streams {
                let Value::Array(pair) = stream else {
                    return Err("a stream of the reply is not an array".into());
                };
                let mut pair = pair.into_iter();
                let (Some(_name), Some(entries)) = (pair.next(), pair.next()) else {
                    return Err("a stream of the reply is not [name, entries]".into());
                };
                all.extend(entry_list(entries)?);
            }
            Ok(all)
        }
        // RESP3: {stream: [entry, …], …}
        Value::Map(streams) => {
            let mut all = Vec::new();
            for (_name, entries) in streams {
                all.extend(entry_list(entries)?);
            }
            Ok(all)
        }
        other => Err(format!("unexpected read reply {other:?}")),
    }
}

/// The next cursor and the claimed entries of an `XAUTOCLAIM` reply.
pub(super) fn autoclaim_reply(value: Value) -> Result<(String, Vec<RawEntry>), String> {
    let Value::Array(parts) = value else {
        return Err(format!("unexpected autoclaim reply {value:?}"));
    };
    let mut parts = parts.into_iter();
    let (Some(cursor), Some(entries)) = (parts.next(), parts.next()) else {
        return Err("autoclaim reply is not [cursor, entries, …]".into());
    };
    let cursor = text(cursor).ok_or("autoclaim cursor is not text")?;
    Ok((cursor, entry_list(entries)?))
}

fn entry_list(value: Value) -> Result<Vec<RawEntry>, String> {
    let Value::Array(entries) = value else {
        return Err(format!("entries are not an array: {value:?}"));
    };
    entries.into_iter().map(entry).collect()
}

fn entry(value: Value) -> Result<RawEntry, String> {
    let Value::Array(pair) = value else {
        return Err(format!("an entry is not an array: {value:?}"));
    };
    let mut pair = pair.into_iter();
    let id = pair
        .next()
        .and_then(text)
        .ok_or("an entry has no text id")?;
    let fields = match pair.next() {
        None | Some(Value::Nil) => None,
        Some(Value::Array(flat)) => {
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut flat = flat.into_iter();
            while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                fields.push((bytes_of(name)?, bytes_of(value)?));
            }
            Some(fields)
        }
        Some(Value::Map(pairs)) => Some(
            pairs
                .into_iter()
                .map(|(n, v)| Ok((bytes_of(n)?, bytes_of(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        Some(other) => return Err(format!("entry {id} has fields {other:?}")),
    };
    Ok(RawEntry { id, fields })
}

/// A reply value that is text.
pub(super) fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn bytes_of(value: Value) -> Result<Vec<u8>, String> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(n) => Ok(n.to_string().into_bytes()),
        other => Err(format!("a field is not a string: {other:?}")),
    }
}

/// `lag + pending` of consumer group `group` in an `XINFO GROUPS` reply (RESP2 or RESP3), if the
/// group is there and the server knows its lag.
pub(super) fn group_backlog(reply: &Value, group: &str) -> Option<u64> {
    let Value::Array(groups) = reply else {
        return None;
    };
    groups.iter().find_map(|entry| {
        let fields: Vec<(&[u8], &Value)> = match entry {
            Value::Array(flat) => flat
                .chunks(2)
                .filter_map(|pair| match pair {
                    [Value::BulkString(name), value] => Some((&name[..], value)),
                    [Value::SimpleString(name), value] => Some((name.as_bytes(), value)),
                    _ => None,
                })
                .collect(),
            Value::Map(pairs) => pairs
                .iter()
                .filter_map(|(name, value)| match name {
                    Value::BulkString(name) => Some((&name[..], value)),
                    Value::SimpleString(name) => Some((name.as_bytes(), value)),
                    _ => None,
                })
                .collect(),
            _ => return None,
        };
        let field = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| *n == name.as_bytes())
                .map(|(_, v)| *v)
        };
        let is_group = match field("name") {
            Some(Value::BulkString(name)) => name == group.as_bytes(),
            Some(Value::SimpleString(name)) => name == group,
            _ => false,
        };
        if !is_group {
            return None;
        }
        let number = |value: Option<&Value>| match value {
            Some(Value::Int(n)) => u64::try_from(*n).ok(),
            _ => None,
        };
        Some(number(field("lag"))? + number(field("pending"))?)
    })
}

/// The delivery of entry `id` with these fields.
///
/// The fields are owned bytes or slices of a reply ([`Bytes`]): the payload becomes the
/// message's without a copy either way.
pub(super) fn decode<B: AsRef<[u8]> + Into<Bytes>>(
    topic: &Arc<str>,
    id: &Arc<str>,
    fields: Vec<(B, B)>,
    redelivery_count: u32,
) -> Delivery {
    let mut message = Message::default();
    let mut published = None;
    let mut defect = None;
    let foreign = !fields
        .iter()
        .any(|(name, _)| name.as_ref() == PAYLOAD.as_bytes());
    for (name, value) in fields {
        let (name, value_bytes) = (name.as_ref(), value.as_ref());
        if foreign {
            let name = String::from_utf8_lossy(name).into_owned();
            let value = String::from_utf8_lossy(value_bytes).into_owned();
            message.properties.insert(name, value);
            continue;
        }
        match name {
            b"payload" => message.payload = value.into(),
            b"props" => match serde_json::from_slice::<Properties>(value_bytes) {
                Ok(properties) => message.properties = properties,
                Err(_) => {
                    let (properties, problem) = lenient_properties(value_bytes);
                    message.properties = properties;
                    defect = problem.map(Arc::from);
                }
            },
            b"key" => message.key = Some(String::from_utf8_lossy(value_bytes).into_owned()),
            b"published" => {
                published = std::str::from_utf8(value_bytes)
                    .ok()
                    .and_then(|t| t.parse::<u64>().ok());
            }
            _ => {}
        }
    }
    // Entry ids start with the milliseconds at which the server stored them.
    let published = published.or_else(|| id.split('-').next().and_then(|ms| ms.parse().ok()));
    Delivery {
        id: MessageId::from_text(Arc::clone(id)),
        topic: Arc::clone(topic),
        message: Arc::new(message),
        redelivery_count,
        publish_time: published.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
        defect,
    }
}

/// The properties of a `props` field that is not a JSON object of strings (the fast path failed),
/// and why the message cannot run, if it cannot.
///
/// Other producers write numbers and booleans as JSON scalars (`{"count": 5}`): those are taken as
/// their JSON text (`null` as `"null"`), and the message runs. A field that is no JSON object, or
/// an object with arrays or objects among its values, is a defect: the message is dead-lettered
/// with the field named, and nothing is dropped on the way — nested values keep their JSON text,
/// and unreadable text is kept whole as the property `props`.
fn lenient_properties(raw: &[u8]) -> (Properties, Option<String>) {
    let whole = |why: String| {
        let mut properties = Properties::new();
        properties.insert(PROPS.to_owned(), String::from_utf8_lossy(raw).into_owned());
        (
            properties,
            Some(format!(
                "valkey field `{PROPS}` must be a JSON object of scalars: {why}"
            )),
        )
    };
    let object = match serde_json::from_slice::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Object(object)) => object,
        Ok(other) => return whole(format!("got {}", json_kind(&other))),
        Err(error) => return whole(error.to_string()),
    };
    let mut properties = Properties::new();
    let mut nested = Vec::new();
    for (name, value) in object {
        let text = match value {
            serde_json::Value::String(text) => text,
            serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
                nested.push(format!("`{name}` is {}", json_kind(&value)));
                value.to_string()
            }
            scalar => scalar.to_string(),
        };
        properties.insert(name, text);
    }
    let problem = (!nested.is_empty()).then(|| {
        format!(
            "valkey field `{PROPS}` must be a JSON object of scalars: {}",
            nested.join(", ")
        )
    });
    (properties, problem)
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(fields: &Fields<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
        fields
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn a_message_round_trips_through_its_fields() {
        let message = Message::new(vec![0u8, 255, 10, 13])
            .with_property("payload", "not the payload")
            .with_property("key", "not the key")
            .with_property("ünï", "{\"json\": true}")
            .with_key("k-1");
        let fields = encode(&message, 1_700_000_000_123).expect("encodes");
        let topic: Arc<str> = Arc::from("q1/a/b/c");
        let delivery = decode(&topic, &Arc::from("1700000000999-0"), flat(&fields), 2);
        assert_eq!(*delivery.message, message);
        assert_eq!(delivery.redelivery_count, 2);
        assert_eq!(delivery.id, MessageId::from_text("1700000000999-0"));
        assert_eq!(
            delivery.publish_time,
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
    }

    #[test]
    fn foreign_entries_become_properties() {
        let topic: Arc<str> = Arc::from("q1/a/b/c");
        let fields = vec![(b"temp".to_vec(), b"21".to_vec())];
        let delivery = decode(&topic, &Arc::from("5-0"), fields, 0);
        assert!(delivery.payload().is_empty());
        assert_eq!(delivery.property("temp"), Some("21"));
        assert_eq!(
            delivery.publish_time,
            Some(UNIX_EPOCH + Duration::from_millis(5))
        );
    }

    #[test]
    fn scalar_property_values_are_taken_as_their_text() {
        let topic: Arc<str> = Arc::from("q1/a/b/c");
        let props =
            br#"{"count": 5, "ok": true, "ratio": 0.5, "none": null, "wr-message-id": "m-1"}"#;
        let fields = vec![
            (b"payload".to_vec(), b"{}".to_vec()),
            (b"props".to_vec(), props.to_vec()),
        ];
        let delivery = decode(&topic, &Arc::from("5-0"), fields, 0);
        assert_eq!(delivery.defect, None);
        assert_eq!(delivery.property("count"), Some("5"));
        assert_eq!(delivery.property("ok"), Some("true"));
        assert_eq!(delivery.property("ratio"), Some("0.5"));
        assert_eq!(delivery.property("none"), Some("null"));
        assert_eq!(delivery.property("wr-message-id"), Some("m-1"));
    }

    #[test]
    fn a_props_field_that_is_no_object_of_scalars_is_a_defect_that_keeps_everything() {
        let topic: Arc<str> = Arc::from("q1/a/b/c");
        let decode_props = |props: &[u8]| {
            let fields = vec![
                (b"payload".to_vec(), b"{}".to_vec()),
                (b"props".to_vec(), props.to_vec()),
            ];
            decode(&topic, &Arc::from("5-0"), fields, 0)
        };

        let nested = decode_props(br#"{"tags": ["a"], "meta": {"x": 1}, "wr-message-id": "m-2"}"#);
        let defect = nested.defect.as_deref().expect("a defect");
        assert!(defect.contains("field `props`"), "{defect}");
        assert!(defect.contains("`tags` is an array"), "{defect}");
        assert!(defect.contains("`meta` is an object"), "{defect}");
        assert_eq!(nested.property("tags"), Some(r#"["a"]"#));
        assert_eq!(nested.property("wr-message-id"), Some("m-2"));

        for (raw, says) in [
            (&b"[1, 2]"[..], "got an array"),
            (b"{not json", "key must be a string"),
        ] {
            let broken = decode_props(raw);
            let defect = broken.defect.as_deref().expect("a defect");
            assert!(
                defect.contains("field `props`") && defect.contains(says),
                "{defect}"
            );
            assert_eq!(broken.property("props").map(str::as_bytes), Some(raw));
        }
    }

    #[test]
    fn a_groups_backlog_is_its_lag_and_pending() {
        let group = |name: &str, lag: Value, pending: i64| {
            Value::Array(vec![
                Value::BulkString(b"name".to_vec()),
                Value::BulkString(name.as_bytes().to_vec()),
                Value::BulkString(b"pending".to_vec()),
                Value::Int(pending),
                Value::BulkString(b"lag".to_vec()),
                lag,
            ])
        };
        let reply = Value::Array(vec![
            group("other", Value::Int(100), 1),
            group("workers", Value::Int(7), 3),
            group("trimmed", Value::Nil, 3),
        ]);
        assert_eq!(group_backlog(&reply, "workers"), Some(10));
        assert_eq!(group_backlog(&reply, "trimmed"), None, "lag unknown");
        assert_eq!(group_backlog(&reply, "missing"), None);
    }

    #[test]
    fn delayed_members_are_length_prefixed() {
        let message = Message::new("a:b").with_key("k");
        let fields = encode(&message, 7).expect("encodes");
        let member = delayed_member(&"0".repeat(32), &fields);
        let expected = format!("{}7:payload3:a:b3:key1:k9:published1:7", "0".repeat(32));
        assert_eq!(member, expected.into_bytes());
    }

    #[test]
    fn read_replies_parse_in_both_protocols() {
        let entry = |id: &str, fields: Option<Vec<&str>>| {
            Value::Array(vec![
                Value::BulkString(id.as_bytes().to_vec()),
                match fields {
                    Some(f) => Value::Array(
                        f.into_iter()
                            .map(|s| Value::BulkString(s.as_bytes().to_vec()))
                            .collect(),
                    ),
                    None => Value::Nil,
                },
            ])
        };
        let entries = Value::Array(vec![
            entry("1-0", Some(vec!["payload", "x"])),
            entry("2-0", None),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"s".to_vec()),
            entries.clone(),
        ])]);
        let resp3 = Value::Map(vec![(Value::BulkString(b"s".to_vec()), entries)]);
        for reply in [resp2, resp3] {
            let parsed = read_reply(reply).expect("parses");
            assert_eq!(parsed.len(), 2);
            assert_eq!(
                parsed[0].fields,
                Some(vec![(b"payload".to_vec(), b"x".to_vec())])
            );
            assert_eq!(parsed[1].fields, None);
        }
        assert_eq!(read_reply(Value::Nil), Ok(Vec::new()));
    }
}
