//! Reading and writing the kombu JSON envelope of a Celery task message (protocol v2; the older
//! protocol v1 body is read too).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// Why a list item is not a Celery task message this side can run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CeleryError {
    /// The envelope or its body is not what kombu writes.
    #[error("not a celery task message: {0}")]
    Malformed(String),
    /// The body is encoded in a way only Python can read (pickle, yaml, msgpack).
    #[error(
        "celery body in `{0}`: only application/json is supported (set task_serializer = \"json\")"
    )]
    ContentType(String),
}

/// A Celery task call read from an envelope.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskCall {
    /// The task's registered name (`headers.task`).
    pub task: String,
    /// The task id (`headers.id`), the call's stable identity.
    pub id: String,
    /// The positional arguments, a JSON array.
    pub args: Value,
    /// The keyword arguments, a JSON object.
    pub kwargs: Value,
    /// How often Celery had retried it.
    pub retries: u64,
    /// Not before this time (`headers.eta`), if set.
    pub eta: Option<SystemTime>,
}

impl TaskCall {
    /// The payload of the bridged message: `{"args": [...], "kwargs": {...}}`.
    pub fn payload(&self) -> Vec<u8> {
        // Serializing a JSON value cannot fail.
        serde_json::to_vec(&json!({"args": self.args, "kwargs": self.kwargs})).unwrap_or_default()
    }
}

/// Reads a kombu envelope (one item of a Celery queue list).
pub fn decode(raw: &[u8]) -> Result<TaskCall, CeleryError> {
    let malformed = |what: &str| CeleryError::Malformed(what.to_owned());
    let envelope: Map<String, Value> = serde_json::from_slice(raw)
        .map_err(|e| CeleryError::Malformed(format!("the envelope is not a JSON object: {e}")))?;
    let content_type = envelope
        .get("content-type")
        .and_then(Value::as_str)
        .unwrap_or("application/json");
    if content_type != "application/json" {
        return Err(CeleryError::ContentType(content_type.to_owned()));
    }
    let properties = envelope.get("properties").and_then(Value::as_object);
    let body_encoding = properties
        .and_then(|p| p.get("body_encoding"))
        .and_then(Value::as_str);
    let body_text = envelope
        .get("body")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("`body` is missing or not text"))?;
    let body_bytes = match body_encoding {
        Some("base64") => BASE64
            .decode(body_text)
            .map_err(|e| CeleryError::Malformed(format!("`body` is not base64: {e}")))?,
        None | Some("utf-8") => body_text.as_bytes().to_vec(),
        Some(other) => return Err(CeleryError::Malformed(format!("body encoding `{other}`"))),
    };
    let body: Value = serde_json::from_slice(&body_bytes)
        .map_err(|e| CeleryError::Malformed(format!("the body is not JSON: {e}")))?;
    let headers = envelope.get("headers").and_then(Value::as_object);
    match headers.and_then(|h| h.get("task")).and_then(Value::as_str) {
        Some(task) => from_v2(task, headers.unwrap_or(&Map::new()), body),
        None => from_v1(body),
    }
}

/// Protocol v2: the call in the headers, the body `[args, kwargs, embed]`.
fn from_v2(task: &str, headers: &Map<String, Value>, body: Value) -> Result<TaskCall, CeleryError> {
    let Value::Array(parts) = body else {
        return Err(CeleryError::Malformed(
            "the body is not [args, kwargs, embed]".to_owned(),
        ));
    };
    let mut parts = parts.into_iter();
    let args = parts.next().unwrap_or_else(|| json!([]));
    let kwargs = parts.next().unwrap_or_else(|| json!({}));
    call(task, headers, args, kwargs)
}

/// Protocol v1: everything in the body.
fn from_v1(body: Value) -> Result<TaskCall, CeleryError> {
    let Value::Object(body) = body else {
        return Err(CeleryError::Malformed(
            "no `headers.task`, and the body is no protocol v1 object".to_owned(),
        ));
    };
    let task = body
        .get("task")
        .and_then(Value::as_str)
        .ok_or_else(|| CeleryError::Malformed("no task name".to_owned()))?
        .to_owned();
    let args = body.get("args").cloned().unwrap_or_else(|| json!([]));
    let kwargs = body.get("kwargs").cloned().unwrap_or_else(|| json!({}));
    call(&task, &body, args, kwargs)
}

fn call(
    task: &str,
    fields: &Map<String, Value>,
    args: Value,
    kwargs: Value,
) -> Result<TaskCall, CeleryError> {
    if !args.is_array() || !kwargs.is_object() {
        return Err(CeleryError::Malformed(
            "args must be a JSON array and kwargs a JSON object".to_owned(),
        ));
    }
    let id = fields
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| CeleryError::Malformed("no task id".to_owned()))?
        .to_owned();
    let eta = match fields.get("eta") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(parse_iso8601(text).ok_or_else(|| {
            CeleryError::Malformed(format!("eta {text:?} is not an ISO 8601 time"))
        })?),
        Some(other) => return Err(CeleryError::Malformed(format!("eta {other}"))),
    };
    Ok(TaskCall {
        task: task.to_owned(),
        id,
        args,
        kwargs,
        retries: fields.get("retries").and_then(Value::as_u64).unwrap_or(0),
        eta,
    })
}

/// A task call to write for Celery.
#[derive(Clone, Debug)]
pub struct Outgoing<'a> {
    /// The task's registered name on the Celery side.
    pub task: &'a str,
    /// The task id (reused as correlation id and root id).
    pub id: &'a str,
    /// The positional arguments (a JSON array).
    pub args: &'a Value,
    /// The keyword arguments (a JSON object).
    pub kwargs: &'a Value,
    /// The queue (routing key) the message is pushed to.
    pub queue: &'a str,
    /// Not before this time.
    pub eta: Option<SystemTime>,
    /// Who sent it (`headers.origin`), for Celery's logs.
    pub origin: &'a str,
}

/// The kombu envelope of `call`, as Celery 5's own `send_task` writes it (protocol v2, JSON,
/// base64 body), ready to `LPUSH` onto the queue's list.
pub fn encode(call: &Outgoing<'_>) -> Vec<u8> {
    let body = json!([
        call.args,
        call.kwargs,
        {"callbacks": null, "errbacks": null, "chain": null, "chord": null}
    ]);
    let body = BASE64.encode(serde_json::to_vec(&body).unwrap_or_default());
    let envelope = json!({
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": call.task,
            "id": call.id,
            "shadow": null,
            "eta": call.eta.map(format_iso8601),
            "expires": null,
            "group": null,
            "group_index": null,
            "retries": 0,
            "timelimit": [null, null],
            "root_id": call.id,
            "parent_id": null,
            "argsrepr": call.args.to_string(),
            "kwargsrepr": call.kwargs.to_string(),
            "origin": call.origin,
            "ignore_result": false,
        },
        "properties": {
            "correlation_id": call.id,
            "reply_to": uuid::Uuid::new_v4().to_string(),
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": call.queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": uuid::Uuid::new_v4().to_string(),
        },
    });
    serde_json::to_vec(&envelope).unwrap_or_default()
}

/// `2024-05-01T12:00:00.123456+00:00` (Python's `isoformat()`), `…Z`, or without an offset
/// (taken as UTC, as Celery does with `enable_utc`).
fn parse_iso8601(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (local, offset_secs) = split_offset(text)?;
    let at = humantime::parse_rfc3339_weak(local).ok()?;
    let offset = Duration::from_secs(offset_secs.unsigned_abs());
    if offset_secs >= 0 {
        at.checked_sub(offset)
    } else {
        at.checked_add(offset)
    }
}

/// The local part of an ISO 8601 time and its offset from UTC in seconds.
fn split_offset(text: &str) -> Option<(&str, i64)> {
    if let Some(local) = text.strip_suffix('Z') {
        return Some((local, 0));
    }
    let time_start = text.find('T').or_else(|| text.find(' '))?;
    let Some(sign_at) = text[time_start..].rfind(['+', '-']).map(|i| i + time_start) else {
        return Some((text, 0));
    };
    let (local, offset) = text.split_at(sign_at);
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let digits: String = offset[1..].chars().filter(char::is_ascii_digit).collect();
    if digits.len() != 4 {
        return None;
    }
    let hours: i64 = digits[..2].parse().ok()?;
    let minutes: i64 = digits[2..].parse().ok()?;
    Some((local, sign * (hours * 3600 + minutes * 60)))
}

/// UTC with microseconds and an explicit offset, as Python's `isoformat()` writes it.
fn format_iso8601(at: SystemTime) -> String {
    let micros = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_micros())
        .unwrap_or(0);
    let seconds = humantime::format_rfc3339_seconds(at).to_string();
    let seconds = seconds.trim_end_matches('Z');
    format!("{seconds}.{micros:06}+00:00")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Celery 5.7's `app.send_task("tasks.add", args=(2, 3), kwargs={"scale": 10},
    /// task_id="5d1c7a3e-1", eta=datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=+02:00),
    /// retries=1)` pushed onto the `celery` list of a Redis broker, read back with `LRANGE`.
    const FROM_CELERY: &str = r#"{"body": "W1syLCAzXSwgeyJzY2FsZSI6IDEwfSwgeyJjYWxsYmFja3MiOiBudWxsLCAiZXJyYmFja3MiOiBudWxsLCAiY2hhaW4iOiBudWxsLCAiY2hvcmQiOiBudWxsfV0=", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "tasks.add", "id": "5d1c7a3e-1", "shadow": null, "eta": "2024-05-01T12:00:00.250000+02:00", "expires": null, "group": null, "group_index": null, "retries": 1, "timelimit": [null, null], "root_id": "5d1c7a3e-1", "parent_id": null, "argsrepr": "(2, 3)", "kwargsrepr": "{'scale': 10}", "origin": "gen19491@host", "ignore_result": null, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}}, "properties": {"correlation_id": "5d1c7a3e-1", "reply_to": "dc374587-c4be-3637-903c-c40aee9bc9a0", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "4f66dbaf-2e0e-41fa-9e8f-b703cfd6a89e"}}"#;

    #[test]
    fn a_celery_5_message_is_read() {
        let call = decode(FROM_CELERY.as_bytes()).expect("decodes");
        assert_eq!(call.task, "tasks.add");
        assert_eq!(call.id, "5d1c7a3e-1");
        assert_eq!(call.args, json!([2, 3]));
        assert_eq!(call.kwargs, json!({"scale": 10}));
        assert_eq!(call.retries, 1);
        // 12:00:00.25 at +02:00 is 10:00:00.25 UTC.
        let eta = call.eta.expect("an eta");
        assert_eq!(
            humantime::format_rfc3339_millis(eta).to_string(),
            "2024-05-01T10:00:00.250Z"
        );
        let payload: Value = serde_json::from_slice(&call.payload()).expect("json");
        assert_eq!(payload, json!({"args": [2, 3], "kwargs": {"scale": 10}}));
    }

    #[test]
    fn what_is_written_reads_back() {
        let args = json!([1, "two"]);
        let kwargs = json!({"three": 3});
        let eta = UNIX_EPOCH + Duration::from_micros(1_714_557_600_123_456);
        let raw = encode(&Outgoing {
            task: "shop.tasks.on_order",
            id: "id-1",
            args: &args,
            kwargs: &kwargs,
            queue: "celery",
            eta: Some(eta),
            origin: "bridge@host",
        });
        let envelope: Value = serde_json::from_slice(&raw).expect("json");
        assert_eq!(
            envelope["properties"]["delivery_info"]["routing_key"],
            "celery"
        );
        assert_eq!(
            envelope["headers"]["eta"],
            "2024-05-01T10:00:00.123456+00:00"
        );
        let call = decode(&raw).expect("decodes");
        assert_eq!(call.task, "shop.tasks.on_order");
        assert_eq!(call.id, "id-1");
        assert_eq!((call.args, call.kwargs), (args, kwargs));
        assert_eq!(call.eta, Some(eta));
    }

    #[test]
    fn protocol_1_bodies_are_read_too() {
        let body = BASE64.encode(r#"{"task": "t.v1", "id": "old-1", "args": [1], "kwargs": {}}"#);
        let raw = json!({"body": body, "content-type": "application/json",
                         "properties": {"body_encoding": "base64"}, "headers": {}});
        let call = decode(raw.to_string().as_bytes()).expect("decodes");
        assert_eq!((call.task.as_str(), call.id.as_str()), ("t.v1", "old-1"));
    }

    #[test]
    fn what_cannot_run_says_why() {
        assert!(matches!(
            decode(b"not json"),
            Err(CeleryError::Malformed(_))
        ));
        let pickled = json!({"body": "gAR9lC4=", "content-type": "application/x-python-serialize",
                             "headers": {"task": "t", "id": "1"}});
        assert_eq!(
            decode(pickled.to_string().as_bytes()),
            Err(CeleryError::ContentType(
                "application/x-python-serialize".into()
            ))
        );
        let no_id = json!({"body": BASE64.encode("[[], {}, {}]"), "content-type": "application/json",
                           "properties": {"body_encoding": "base64"}, "headers": {"task": "t"}});
        assert!(
            matches!(decode(no_id.to_string().as_bytes()), Err(CeleryError::Malformed(m)) if m.contains("id"))
        );
    }
}
