//! The `#[pulsar_io_task]` and `#[pulsar_db_task]` attributes. Use them through `worker_runtime`,
//! which re-exports them (`use worker_runtime::prelude::*;`).
//!
//! Layout: [`attr`] reads the `key = value` syntax, [`settings`] gives each key its meaning and
//! checks the values (with `worker_core`'s own parsers and `TaskConfig::validate`), [`signature`]
//! checks the fn, and [`expand`] writes the generated items.

#![warn(missing_docs)]

mod attr;
mod errors;
mod expand;
mod keys;
mod settings;
mod signature;

use proc_macro::TokenStream;
use worker_core::TaskKind;

/// Declares an I/O task: a handler the worker runs for every message on a topic.
///
/// Put it on a free `async fn` whose first parameter is the payload (any
/// `serde::de::DeserializeOwned + Send` type, JSON on the wire), whose optional second parameter is
/// a `TaskContext`, and which returns `Result<T, E>` with `T: Serialize` (or `()`) and `E`
/// convertible into `TaskError`.
///
/// ```ignore
/// use worker_runtime::prelude::*;
///
/// #[derive(Serialize, Deserialize)]
/// struct RawEvent { id: u64, body: String }
///
/// #[pulsar_io_task(
///     topic = "persistent://prod/ingest/raw-data",
///     rate_limit = 500, rate_window = 60,   // 500 messages per 60 s, per worker
///     max_retries = 3, backoff = 2,         // retry after 1 s, 2 s, 4 s (+ jitter)
///     timeout = "30s",
/// )]
/// async fn ingest_data(event: RawEvent) -> Result<(), TaskError> {
///     Ok(())
/// }
///
/// # async fn demo(broker: &dyn Broker) -> anyhow::Result<()> {
/// ingest_data::enqueue(broker, &RawEvent { id: 1, body: "hi".into() }).await?;
/// ingest_data::message(&RawEvent { id: 2, body: "later".into() })
///     .delay(std::time::Duration::from_secs(5))
///     .key("device-7")
///     .send(broker)
///     .await?;
/// # Ok(()) }
/// ```
///
/// # Keys
///
/// Values are literals. Durations are whole seconds (`30`) or a string with a unit (`"500ms"`,
/// `"2m"`, also `s`, `h`, `d`).
///
/// | key | meaning | default |
/// |---|---|---|
/// | `topic` | the topic consumed: `persistent://tenant/ns/name`, `non-persistent://…` or `q0\|q1\|q2/tenant/ns/name` | required |
/// | `dlq_topic` | where exhausted or permanent failures go | `"{topic}-dlq"` |
/// | `subscription` | the subscription shared by every worker of the task | the fn's name |
/// | `rate_limit`, `rate_window` | at most `rate_limit` messages started per `rate_window`, per worker | no limit; window 60 s |
/// | `max_retries` | retries after the first attempt (0 allowed) | 3 |
/// | `backoff` | exponential base (>= 1): delay n = min(`max_delay`, `retry_delay` × backoff^(n−1)) | 2 |
/// | `retry_delay`, `max_delay` | the first delay and the cap | 1 s, 10 min |
/// | `jitter` | random spread of each delay, a fraction in [0, 1) | 0.1 |
/// | `timeout` (or `task_timeout`) | the limit on one attempt | 30 s |
/// | `concurrency` | handlers of this task running at once, per worker | cores, at least 4 |
/// | `receiver_queue_size` | prefetch | 1000 |
/// | `consumer_type` | `"shared"`, `"key_shared"`, `"failover"` or `"exclusive"` | `"shared"` |
/// | `initial_position` | `"latest"` or `"earliest"` | `"earliest"` |
/// | `max_payload_bytes` | larger payloads are dead-lettered | 5 MiB |
/// | `rate_limit_scope` | `"worker"`: each worker on its own; `"global"`: all workers of the task together (needs the worker's rate-limit store) | `"worker"` |
/// | `idempotency_window` | how long a handled message's stable id is remembered, so a redelivered or republished copy is acked without running again | none |
/// | `circuit_failures`, `circuit_failure_rate` | the circuit breaker opens after this many failed deliveries in a row, or when this share of the deliveries of `circuit_window` failed (once `circuit_min_calls` did) | no breaker |
/// | `circuit_min_calls`, `circuit_window` | refine `circuit_failure_rate` | 20, 60 s |
/// | `circuit_cooldown`, `circuit_probes` | how long it stays open; how many messages probe it (half-open) | 30 s, 1 |
///
/// Every mistake is a compile error at the offending token, and all of them are reported at once:
/// unknown or repeated keys, values of the wrong kind or out of range, a malformed topic, a
/// `dlq_topic` equal to `topic`, `rate_window` without `rate_limit`, `max_delay` shorter than
/// `retry_delay`, a fn that is not `async`, generic, a method, or takes other than one or two
/// parameters, a payload that does not implement `DeserializeOwned`, a future that is not `Send`.
///
/// # Expansion
///
/// The fn stays as written, so unit tests can call it. Beside it:
///
/// ```text
/// #[doc(hidden)]
/// struct __worker_task_ingest_data;            // with the fn's visibility
/// impl Task for __worker_task_ingest_data {
///     type Payload = RawEvent;
///     type Output = ();
///     const NAME: &'static str = "ingest_data";
///     fn config() -> TaskConfig { /* TaskConfig::new(..) with the keys given */ }
///     fn handle(payload: RawEvent, ctx: TaskContext)
///         -> impl Future<Output = Result<(), TaskError>> + Send { /* ingest_data(payload) */ }
/// }
///
/// mod ingest_data {                            // with the fn's visibility
///     pub type Task = super::__worker_task_ingest_data;
///     pub type Payload = RawEvent;
///     pub fn task() -> TaskDefinition;          // for the worker builder
///     pub fn config() -> TaskConfig;            // the effective configuration
///     pub async fn enqueue(broker: &dyn Broker, payload: &RawEvent)
///         -> Result<MessageId, EnqueueError>;   // typed publishing to the task's topic
///     pub fn message(payload: &RawEvent) -> Enqueue<Task>; // builder: delay, key, properties, token
/// }
///
/// inventory::submit!(Registration::new(ingest_data::task)); // found by `registered_tasks()`
/// ```
///
/// The module's items are exactly as visible as the fn. Declare tasks at module level, not inside
/// a fn body: the generated module reaches the task type through `super`.
#[proc_macro_attribute]
pub fn pulsar_io_task(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::task_attribute(TaskKind::Io, args.into(), item.into()).into()
}

/// Declares a db task: an I/O task whose messages must come from a sender holding one of the
/// permitted roles, and which may charge credits per message.
///
/// It takes every key of [`macro@pulsar_io_task`], plus:
///
/// | key | meaning | default |
/// |---|---|---|
/// | `permission_roles` | roles of which the sender's verified token must hold one, e.g. `["db_writer", "admin"]` | no role check |
/// | `credit_type`, `credit_amount` | the kind of credit and how many (at least 1) one message costs; both or neither | no charge |
///
/// ```ignore
/// use worker_runtime::prelude::*;
///
/// #[derive(Serialize, Deserialize)]
/// struct Record { key: String, value: i64 }
///
/// #[pulsar_db_task(
///     topic = "persistent://prod/db/writes",
///     permission_roles = ["db_writer"],
///     credit_type = "db_credits", credit_amount = 2,
/// )]
/// async fn write_records(records: Vec<Record>, ctx: TaskContext) -> Result<u64, TaskError> {
///     tracing::info!(message_id = ctx.message_id(), "writing {} records", records.len());
///     Ok(records.len() as u64)
/// }
/// ```
///
/// It expands like [`macro@pulsar_io_task`], with `TaskKind::Db` and the roles and credits set
/// in the configuration.
#[proc_macro_attribute]
pub fn pulsar_db_task(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::task_attribute(TaskKind::Db, args.into(), item.into()).into()
}
