//! Valkey lists as route ends: plain JSON queues (`LPUSH`/`BRPOP`) and Celery queues (kombu's
//! Redis transport), read with the reliable-queue pattern of [`ListQueue`].

use std::collections::HashMap;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::time::Instant;
use worker_core::{props, BoxFuture, BrokerError, DeadLetterReason, Message, Topic};

use super::source::{Item, Receipt, Source};
use super::target::Target;
use crate::broker::valkey::ListQueue;
use crate::celery::{self, Outgoing};
use crate::content_id::content_id;

/// What the items of a list are.
pub enum ListFormat {
    /// Each item is one message's payload, as is (JSON, by convention).
    Plain,
    /// Each item is a Celery task message; each task name maps to the topic its calls go to.
    Celery {
        /// Celery task name → topic.
        topics: HashMap<String, Topic>,
    },
}

/// A list read as a reliable queue.
pub struct ListSource {
    queue: ListQueue,
    format: ListFormat,
}

impl ListSource {
    /// Reads `queue`, whose items are in `format`.
    pub fn new(queue: ListQueue, format: ListFormat) -> Self {
        ListSource { queue, format }
    }

    /// Moves back what this reader held when it last stopped (see [`ListQueue::recover`]).
    pub async fn recover(&self) -> Result<u64, BrokerError> {
        self.queue.recover().await
    }

    fn item(&self, raw: Bytes, read_at: Instant) -> Item {
        match &self.format {
            ListFormat::Plain => {
                let id = list_item_id(self.queue.key(), &raw);
                Item {
                    message: Message::new(raw.clone()).with_property(props::MESSAGE_ID, id),
                    receipt: Receipt::ListItem(raw),
                    topic: None,
                    defect: None,
                    published: None,
                    read_at,
                }
            }
            ListFormat::Celery { topics } => celery_item(topics, raw, read_at),
        }
    }
}

/// The item of a Celery task message: its call as the payload, the task id as the stable id, the
/// ETA as the delivery time, the topic its task maps to. A message that is not a task this side
/// can run, or whose task maps to no topic, is a defect carrying the raw envelope.
fn celery_item(topics: &HashMap<String, Topic>, raw: Bytes, read_at: Instant) -> Item {
    let defective = |reason, why: String| Item {
        message: Message::new(raw.clone()),
        receipt: Receipt::ListItem(raw.clone()),
        topic: None,
        defect: Some((reason, why)),
        published: None,
        read_at,
    };
    let call = match celery::decode(&raw) {
        Ok(call) => call,
        Err(error) => return defective(DeadLetterReason::DecodeError, error.to_string()),
    };
    let Some(topic) = topics.get(&call.task) else {
        let mut known: Vec<&str> = topics.keys().map(String::as_str).collect();
        known.sort_unstable();
        let why = format!(
            "celery task `{}` maps to no topic; the route maps {}",
            call.task,
            known.join(", ")
        );
        return defective(DeadLetterReason::PermanentError, why);
    };
    let mut message = Message::new(call.payload())
        .with_property(props::MESSAGE_ID, call.id.clone())
        .with_property(celery::TASK_PROPERTY, call.task.clone());
    if call.retries > 0 {
        message = message.with_property(celery::RETRIES_PROPERTY, call.retries.to_string());
    }
    message.deliver_at = call.eta.filter(|eta| *eta > SystemTime::now());
    Item {
        message,
        receipt: Receipt::ListItem(raw),
        topic: Some(topic.clone()),
        defect: None,
        published: None,
        read_at,
    }
}

/// The stable id of a plain list item: `list-` and 32 hex digits of a SHA-256 over the list's key
/// and the item. Two identical items of one list are one message to the framework.
fn list_item_id(key: &str, item: &[u8]) -> String {
    content_id("list", [key.as_bytes(), item])
}

impl Source for ListSource {
    fn describe(&self) -> String {
        match self.format {
            ListFormat::Plain => format!("valkey list {}", self.queue.key()),
            ListFormat::Celery { .. } => format!("celery queue {}", self.queue.key()),
        }
    }

    fn read(&self, max: usize) -> BoxFuture<'_, Result<Vec<Item>, BrokerError>> {
        Box::pin(async move {
            let taken = self.queue.take(max).await?;
            let read_at = Instant::now();
            Ok(taken
                .into_iter()
                .map(|raw| self.item(raw, read_at))
                .collect())
        })
    }

    fn done(&self, receipts: Vec<Receipt>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let items: Vec<Bytes> = receipts
                .into_iter()
                .filter_map(|receipt| match receipt {
                    Receipt::ListItem(item) => Some(item),
                    Receipt::Delivery(_) => None,
                })
                .collect();
            self.queue.remove(&items).await
        })
    }

    /// Nothing to do: what was not done stays in the processing list until the next
    /// [`ListSource::recover`].
    fn close(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }

    fn lag(&self) -> BoxFuture<'_, Result<Option<u64>, BrokerError>> {
        Box::pin(async move { self.queue.waiting().await.map(Some) })
    }
}

/// A plain list written as a producer does (`LPUSH`): each message's payload becomes one item.
/// Properties and keys have no place in a plain list and are not written.
pub struct ListTarget {
    queue: ListQueue,
}

impl ListTarget {
    /// Pushes onto `queue`.
    pub fn new(queue: ListQueue) -> Self {
        ListTarget { queue }
    }
}

impl Target for ListTarget {
    fn describe(&self) -> String {
        format!("valkey list {}", self.queue.key())
    }

    fn publish<'a>(&'a self, item: &'a Item) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move { self.queue.push(&[&item.message.payload[..]]).await })
    }
}

/// A Celery queue: each message becomes a task call that a Celery worker runs.
pub struct CeleryTarget {
    queue: ListQueue,
    task: String,
    origin: String,
}

impl CeleryTarget {
    /// Pushes calls of Celery task `task` onto `queue`; `origin` names the sender in Celery's logs.
    pub fn new(queue: ListQueue, task: String, origin: String) -> Self {
        CeleryTarget {
            queue,
            task,
            origin,
        }
    }
}

/// The arguments a message's payload stands for: a JSON object of `args` (array) and `kwargs`
/// (object) is a call as is ([`celery::Call`]'s shape); any other JSON value is the one positional
/// argument.
fn call_arguments(payload: &[u8]) -> Result<(serde_json::Value, serde_json::Value), String> {
    use serde_json::Value;
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| format!("a celery task's arguments must be JSON: {e}"))?;
    if let Value::Object(object) = &value {
        let shaped = object.keys().all(|k| k == "args" || k == "kwargs")
            && object.get("args").is_none_or(Value::is_array)
            && object.get("kwargs").is_none_or(Value::is_object)
            && !object.is_empty();
        if shaped {
            let args = object
                .get("args")
                .cloned()
                .unwrap_or(Value::Array(Vec::new()));
            let kwargs = object
                .get("kwargs")
                .cloned()
                .unwrap_or(Value::Object(serde_json::Map::new()));
            return Ok((args, kwargs));
        }
    }
    Ok((
        Value::Array(vec![value]),
        Value::Object(serde_json::Map::new()),
    ))
}

impl Target for CeleryTarget {
    fn describe(&self) -> String {
        format!("celery task {} on queue {}", self.task, self.queue.key())
    }

    fn publish<'a>(&'a self, item: &'a Item) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let (args, kwargs) =
                call_arguments(&item.message.payload).map_err(|reason| BrokerError::Rejected {
                    backend: "valkey",
                    reason,
                })?;
            let envelope = celery::encode(&Outgoing {
                task: &self.task,
                id: item.message_id(),
                args: &args,
                kwargs: &kwargs,
                queue: self.queue.key(),
                eta: item.message.deliver_at,
                origin: &self.origin,
            });
            self.queue.push(&[&envelope]).await
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn plain_items_get_ids_from_their_list_and_content() {
        let a = list_item_id("orders", b"{\"id\":1}");
        assert!(a.starts_with("list-") && a.len() == 37, "{a}");
        assert_eq!(a, list_item_id("orders", b"{\"id\":1}"));
        assert_ne!(a, list_item_id("orders", b"{\"id\":2}"));
        assert_ne!(a, list_item_id("invoices", b"{\"id\":1}"));
    }

    #[test]
    fn payloads_become_celery_arguments() {
        let call = |payload: serde_json::Value| call_arguments(payload.to_string().as_bytes());
        assert_eq!(
            call(json!({"args": [1, 2], "kwargs": {"x": 3}})),
            Ok((json!([1, 2]), json!({"x": 3})))
        );
        assert_eq!(call(json!({"args": [1]})), Ok((json!([1]), json!({}))));
        assert_eq!(
            call(json!({"order": 7})),
            Ok((json!([{"order": 7}]), json!({})))
        );
        assert_eq!(call(json!([1, 2])), Ok((json!([[1, 2]]), json!({}))));
        assert!(call_arguments(b"not json").is_err());
    }

    #[test]
    fn celery_items_map_their_task_or_say_why_not() {
        let topics = HashMap::from([(
            "tasks.add".to_owned(),
            Topic::parse("q1/math/ns/add").expect("topic"),
        )]);
        let args = json!([2, 3]);
        let kwargs = json!({});
        let outgoing = |task| {
            Bytes::from(celery::encode(&Outgoing {
                task,
                id: "c-1",
                args: &args,
                kwargs: &kwargs,
                queue: "celery",
                eta: None,
                origin: "test",
            }))
        };
        let item = celery_item(&topics, outgoing("tasks.add"), Instant::now());
        assert_eq!(item.defect, None);
        assert_eq!(item.message_id(), "c-1");
        assert_eq!(
            item.topic.as_ref().map(ToString::to_string).as_deref(),
            Some("q1/math/ns/add")
        );
        assert_eq!(
            item.message.property(celery::TASK_PROPERTY),
            Some("tasks.add")
        );
        let item = celery_item(&topics, outgoing("tasks.unknown"), Instant::now());
        let (reason, why) = item.defect.expect("a defect");
        assert_eq!(reason, DeadLetterReason::PermanentError);
        assert!(
            why.contains("tasks.unknown") && why.contains("tasks.add"),
            "{why}"
        );
        let item = celery_item(&topics, Bytes::from_static(b"garbage"), Instant::now());
        assert_eq!(
            item.defect.map(|d| d.0),
            Some(DeadLetterReason::DecodeError)
        );
        assert_eq!(item.message.payload, Bytes::from_static(b"garbage"));
    }
}
