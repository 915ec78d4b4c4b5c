//! Celery's task messages (protocol v2, JSON), as Celery 5 and kombu put them on a Redis queue:
//! what the bridge's Celery routes read and write.
//!
//! A task message on a kombu Redis queue is one list item, a JSON envelope:
//!
//! ```json
//! {"body": "<base64 of [args, kwargs, embed]>", "content-type": "application/json",
//!  "content-encoding": "utf-8",
//!  "headers": {"lang": "py", "task": "shop.tasks.add", "id": "<uuid>", "retries": 0,
//!              "eta": null, "root_id": "<uuid>", "parent_id": null, "argsrepr": "…", …},
//!  "properties": {"correlation_id": "<uuid>", "delivery_tag": "<uuid>", "body_encoding": "base64",
//!                 "delivery_mode": 2, "priority": 0,
//!                 "delivery_info": {"exchange": "", "routing_key": "celery"}}}
//! ```
//!
//! On this side a Celery task call is a message whose payload is [`Call`]'s JSON,
//! `{"args": [...], "kwargs": {...}}`, with the Celery task id as its `wr-message-id` and the task
//! name in the `celery-task` property; a Rust handler takes it as `Call<(i64, i64)>` (or any
//! deserializable args and kwargs types).

mod envelope;

pub use envelope::{decode, encode, CeleryError, Outgoing, TaskCall};

use serde::{Deserialize, Serialize};

/// The property that carries a Celery task's name on a bridged message.
pub const TASK_PROPERTY: &str = "celery-task";
/// The property that carries how often Celery had retried the task before it was bridged.
pub const RETRIES_PROPERTY: &str = "celery-retries";

/// The payload of a bridged Celery task call: its positional and keyword arguments.
///
/// ```
/// use worker_runtime::celery::Call;
/// let call: Call<(i64, i64)> = serde_json::from_str(r#"{"args": [2, 3], "kwargs": {}}"#).unwrap();
/// assert_eq!(call.args, (2, 3));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Call<A = Vec<serde_json::Value>, K = serde_json::Map<String, serde_json::Value>> {
    /// The positional arguments (a JSON array: a tuple, a `Vec` or a tuple struct).
    pub args: A,
    /// The keyword arguments (a JSON object: a map or a struct).
    #[serde(default)]
    pub kwargs: K,
}
