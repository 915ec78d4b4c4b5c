//! The Valkey (Redis protocol) backend: one stream per topic, one consumer group per subscription.
//!
//! - **Publish** is `XADD` (never with `MAXLEN`: trimming must not drop unacknowledged entries); a
//!   message with a future [`Message::deliver_at`] goes into a sorted set instead, from which a
//!   Lua script moves it into the stream once due, atomically. Keys: see [`TopicKeys`]; fields: see
//!   the `codec` module.
//! - **Receive** is `XREADGROUP … BLOCK` on a connection of the subscription's own (a blocking read
//!   would stall every other command on a shared one). Deliveries the server handed to this
//!   consumer but the caller never got, because a `receive` was cancelled or the connection broke
//!   mid-read, are found again by re-reading the consumer's own pending list (ID `0`). One read
//!   asks for up to the subscription's `receiver_queue_size` (less what is buffered already) and
//!   later receives are served from that prefetch, so a caller that takes a few deliveries at a
//!   time does not pay a round trip for each few; when a receive leaves less than half of it
//!   buffered, the next read starts at once, in the background. As with Pulsar's receiver queue,
//!   deliveries handed out and not yet acked do not count against it.
//! - **Ack** is one `XACK` per batch. **Nack** hands the delivery back to the same consumer at once
//!   and bumps the server's delivery counter.
//! - **Dead consumers**: entries idle longer than [`ValkeyOptions::visibility_timeout`] are taken
//!   over with `XAUTOCLAIM` by the live consumers, which renew the lease on what they hold
//!   themselves, so only a consumer that stopped renewing loses its entries.
//! - **Durability** is the server's: acknowledged publishes survive a restart with `appendonly yes`
//!   (and survive a machine crash with `appendfsync always`). Without AOF the backend still
//!   recovers (groups are re-created), but a restart loses data.
//! - **Consumer types**: shared natively (the group spreads entries over its consumers);
//!   failover and exclusive through a lock key that elects one active consumer (see the
//!   `ownership` module), which reads the stream in order. Key-shared is refused with
//!   [`BrokerError::Unsupported`]: a stream cannot pin keys to consumers.
//!
//! The `redis` crate is used rather than `fred`: it is the protocol's reference client, its
//! `ConnectionManager` reconnects by itself, `Script` reloads Lua after a restart, and with rustls
//! it speaks `rediss://` without system OpenSSL; `fred`'s extra machinery (pools, its own reconnect
//! policy, cluster routing) is not needed for one stream per topic.

mod codec;
mod delayed;
mod lists;
mod maintenance;
mod naming;
mod ownership;
mod read_connection;
mod resp;
mod scripts;
mod subscription;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, FromRedisValue, RedisError, ServerErrorKind, Value};
use worker_core::{
    BoxFuture, Broker, BrokerError, Capabilities, ConsumerType, DelayedDelivery, Message,
    MessageId, SubscribeOptions, Subscription, Topic,
};

pub use lists::ListQueue;
pub use naming::TopicKeys;

use codec::unix_millis;
use subscription::ValkeySubscription;

/// The backend's name in errors, logs and [`Broker::name`].
const BACKEND: &str = "valkey";

/// How to reach the server and how the backend behaves.
#[derive(Clone)]
pub struct ValkeyOptions {
    /// `redis://[:password@]host:port[/db]`, or `rediss://…` for TLS (`…/#insecure` skips
    /// certificate checks). User names work too: `redis://user:password@host`.
    pub url: String,
    /// For `rediss://`: a PEM file of the certificate authority to trust instead of the system's
    /// roots (a private CA, or a self-signed server certificate).
    pub tls_ca_file: Option<PathBuf>,
    /// How long a delivery may stay unacknowledged at a consumer that stopped renewing its lease
    /// (a dead one) before a live consumer takes it over. Live consumers renew theirs every quarter
    /// of this, so a slow handler does not lose its message.
    pub visibility_timeout: Duration,
    /// How long one blocking read waits on the server before it is issued again.
    pub block_timeout: Duration,
    /// The limit on every other command, publishes included: past it they fail with
    /// [`BrokerError::Timeout`] instead of hanging through an outage.
    pub operation_timeout: Duration,
    /// The limit on opening a connection.
    pub connect_timeout: Duration,
    /// How often due delayed messages of the consumed topics are moved into their streams.
    pub delayed_poll_interval: Duration,
    /// How often consumed streams are trimmed below what every group still needs; `None` never
    /// trims (streams then grow until trimmed by other means).
    pub trim_interval: Option<Duration>,
    /// How many entries one claim, recovery or move step handles at most.
    pub batch_size: usize,
}

impl ValkeyOptions {
    /// The defaults, with this server URL.
    pub fn new(url: impl Into<String>) -> Self {
        ValkeyOptions {
            url: url.into(),
            ..ValkeyOptions::default()
        }
    }
}

impl Default for ValkeyOptions {
    fn default() -> Self {
        ValkeyOptions {
            url: "redis://127.0.0.1:6379".to_owned(),
            tls_ca_file: None,
            visibility_timeout: Duration::from_secs(30),
            block_timeout: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            delayed_poll_interval: Duration::from_millis(200),
            trim_interval: Some(Duration::from_secs(60)),
            batch_size: 100,
        }
    }
}

impl fmt::Debug for ValkeyOptions {
    // The URL may hold a password: print it redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValkeyOptions")
            .field("url", &redact(&self.url))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("visibility_timeout", &self.visibility_timeout)
            .field("block_timeout", &self.block_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("delayed_poll_interval", &self.delayed_poll_interval)
            .field("trim_interval", &self.trim_interval)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

/// The URL with any `user:password@` replaced by `***@`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The client for `options.url`, trusting `options.tls_ca_file` if one is given.
fn client_for(options: &ValkeyOptions) -> Result<redis::Client, BrokerError> {
    let invalid_url =
        |e| BrokerError::backend(BACKEND, format!("invalid url {}", redact(&options.url)), e);
    let Some(path) = &options.tls_ca_file else {
        return redis::Client::open(options.url.as_str()).map_err(invalid_url);
    };
    let root_cert = std::fs::read(path).map_err(|e| {
        let message = format!("cannot read tls_ca_file {}", path.display());
        BrokerError::backend(BACKEND, message, e)
    })?;
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    };
    redis::Client::build_with_tls(options.url.as_str(), certificates).map_err(invalid_url)
}

/// A broker on a Valkey or Redis (≥ 6.2) server. See the module docs for how it maps topics,
/// subscriptions and acknowledgements.
pub struct ValkeyBroker {
    shared: Arc<Shared>,
    maintenance: tokio::task::JoinHandle<()>,
}

impl ValkeyBroker {
    /// Connects to the server at `options.url`. Fails with [`BrokerError::Connection`] if it cannot
    /// be reached within [`ValkeyOptions::connect_timeout`]; after that, lost connections are
    /// re-established by themselves.
    pub async fn connect(options: ValkeyOptions) -> Result<Self, BrokerError> {
        if options.url.starts_with("rediss:") {
            // rustls needs a process-wide crypto provider; another part of the program may have
            // installed one already, which is as good.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = client_for(&options)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.operation_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let connecting = ConnectionManager::new_with_config(client.clone(), config);
        let manager = with_timeout("connect", options.connect_timeout * 4, connecting).await?;
        let shared = Arc::new(Shared {
            client,
            manager,
            options,
            consumed: parking_lot::Mutex::new(HashMap::new()),
        });
        let maintenance = tokio::spawn(maintenance::run(Arc::downgrade(&shared)));
        Ok(ValkeyBroker {
            shared,
            maintenance,
        })
    }

    /// The options it was connected with.
    pub fn options(&self) -> &ValkeyOptions {
        &self.shared.options
    }

    /// Trims the topic's stream now, below the oldest entry any consumer group still needs (its
    /// oldest pending entry, or the first it has not read). Returns how many entries it removed.
    /// Consumed topics are also trimmed every [`ValkeyOptions::trim_interval`].
    pub async fn trim(&self, topic: &Topic) -> Result<u64, BrokerError> {
        maintenance::trim(&self.shared, &TopicKeys::of(topic)).await
    }

    /// The Redis list `key` as a reliable queue read by `reader` (a stable name: its processing
    /// list is `{key}:processing:{reader}`), or written to. See [`ListQueue`].
    pub fn list_queue(&self, key: &str, reader: &str) -> ListQueue {
        ListQueue::new(Arc::clone(&self.shared), key, reader)
    }

    /// Moves the topic's due delayed messages into its stream now; returns how many. Consumed
    /// topics are also served every [`ValkeyOptions::delayed_poll_interval`] and on each receive.
    pub async fn move_due(&self, topic: &Topic) -> Result<u64, BrokerError> {
        delayed::move_due(&self.shared, &TopicKeys::of(topic)).await
    }
}

impl Drop for ValkeyBroker {
    fn drop(&mut self) {
        self.maintenance.abort();
    }
}

impl fmt::Debug for ValkeyBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValkeyBroker")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl Broker for ValkeyBroker {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: true,
            delayed_delivery: DelayedDelivery::Native,
            history: true,
            consumer_types: &[
                ConsumerType::Shared,
                ConsumerType::Failover,
                ConsumerType::Exclusive,
            ],
            // One active reader in stream order on failover and exclusive subscriptions.
            key_ordering: true,
            nack_redelivery: true,
            redelivers_abandoned: true,
            // The server's default `proto-max-bulk-len`.
            max_payload_bytes: Some(512 * 1024 * 1024),
        }
    }

    fn publish<'a>(
        &'a self,
        topic: &'a Topic,
        message: Message,
    ) -> BoxFuture<'a, Result<MessageId, BrokerError>> {
        Box::pin(async move {
            let now = SystemTime::now();
            let fields = codec::encode(&message, unix_millis(now))?;
            match message.deliver_at {
                Some(at) if at > now => {
                    let unique = uuid::Uuid::new_v4().simple().to_string();
                    let member = codec::delayed_member(&unique, &fields);
                    let mut cmd = redis::cmd("ZADD");
                    cmd.arg(&TopicKeys::of(topic).delayed)
                        .arg(unix_millis(at))
                        .arg(member);
                    self.shared.query::<i64>("publish (delayed)", &cmd).await?;
                    Ok(MessageId::from_text(format!("delayed-{unique}")))
                }
                _ => {
                    let mut cmd = redis::cmd("XADD");
                    cmd.arg(TopicKeys::stream_of(topic)).arg("*");
                    for (name, value) in &fields {
                        cmd.arg(*name).arg(&value[..]);
                    }
                    let id: String = self.shared.query("publish", &cmd).await?;
                    Ok(MessageId::from_text(id))
                }
            }
        })
    }

    fn subscribe<'a>(
        &'a self,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, BrokerError>> {
        Box::pin(async move {
            if options.consumer_type == ConsumerType::KeyShared {
                return Err(BrokerError::Unsupported {
                    backend: BACKEND,
                    feature: "key_shared subscriptions (shared, failover and exclusive ones only)"
                        .to_owned(),
                });
            }
            let subscription = ValkeySubscription::open(Arc::clone(&self.shared), options).await?;
            Ok(Box::new(subscription) as Box<dyn Subscription>)
        })
    }
}

/// What the broker, its subscriptions and its maintenance task share.
struct Shared {
    client: redis::Client,
    /// Multiplexed, reconnecting: every command except blocking reads.
    manager: ConnectionManager,
    options: ValkeyOptions,
    /// Topics with open subscriptions in this process, and how many: the maintenance task moves
    /// their delayed messages and trims their streams.
    consumed: parking_lot::Mutex<HashMap<TopicKeys, usize>>,
}

impl Shared {
    /// Runs one command on the shared connection, within the operation timeout.
    async fn query<T: FromRedisValue>(
        &self,
        operation: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, BrokerError> {
        let mut connection = self.manager.clone();
        let limit = self.options.operation_timeout;
        with_timeout(operation, limit, cmd.query_async(&mut connection)).await
    }

    /// Runs a pipeline on the shared connection, within the operation timeout.
    async fn pipeline<T: FromRedisValue>(
        &self,
        operation: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, BrokerError> {
        let mut connection = self.manager.clone();
        let limit = self.options.operation_timeout;
        with_timeout(operation, limit, pipe.query_async(&mut connection)).await
    }

    /// Runs a Lua script on the shared connection, within the operation timeout.
    async fn invoke<T: FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, BrokerError> {
        let mut connection = self.manager.clone();
        let limit = self.options.operation_timeout;
        with_timeout(operation, limit, invocation.invoke_async(&mut connection)).await
    }

    /// A new connection of its own, for blocking reads.
    async fn dedicated_connection(&self) -> Result<MultiplexedConnection, BrokerError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.options.connect_timeout))
            .set_response_timeout(Some(
                self.options.block_timeout + self.options.operation_timeout,
            ));
        let connecting = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        with_timeout("connect", self.options.connect_timeout * 2, connecting).await
    }

    /// Creates the consumer group at `start` (`$` or `0`) unless it exists, and the stream with it.
    async fn ensure_group(
        &self,
        stream: &str,
        group: &str,
        start: &str,
    ) -> Result<(), BrokerError> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg(start)
            .arg("MKSTREAM");
        match self.query::<()>("create consumer group", &cmd).await {
            Err(error) if redis_code(&error) == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    fn register(&self, keys: &TopicKeys) {
        *self.consumed.lock().entry(keys.clone()).or_insert(0) += 1;
    }

    fn unregister(&self, keys: &TopicKeys) {
        let mut consumed = self.consumed.lock();
        if let Some(count) = consumed.get_mut(keys) {
            *count -= 1;
            if *count == 0 {
                consumed.remove(keys);
            }
        }
    }

    fn consumed_topics(&self) -> Vec<TopicKeys> {
        self.consumed.lock().keys().cloned().collect()
    }
}

/// Sends `cmd` on `connection` and returns the reply as the server sent it, a top-level error as
/// an error. `Cmd::query_async` would first walk the whole reply for nested errors, moving every
/// value of every array into a new one (about 370 instructions per entry of a stream read); a
/// single command's error comes at the top of its reply, never inside it.
async fn raw_reply(
    connection: &mut MultiplexedConnection,
    cmd: &redis::Cmd,
) -> Result<Value, RedisError> {
    use redis::aio::ConnectionLike as _;
    match connection.req_packed_command(cmd).await? {
        Value::ServerError(error) => Err(error.into()),
        reply => Ok(reply),
    }
}

/// Awaits a client future within `limit`, turning its error into a [`BrokerError`].
async fn with_timeout<T>(
    operation: &'static str,
    limit: Duration,
    future: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(limit, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(classify(operation, error)),
        Err(_) => Err(BrokerError::Timeout {
            backend: BACKEND,
            operation,
            millis: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

/// Connection trouble (including a server still loading its data after a restart) is
/// [`BrokerError::Connection`], transient; everything else is [`BrokerError::Backend`].
fn classify(operation: &'static str, error: RedisError) -> BrokerError {
    let transient = error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(
            error.kind(),
            redis::ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
            )
        );
    // The cause goes into the message too: logs that print only the top error still show it.
    let message = format!("{operation}: {error}");
    if transient {
        BrokerError::connection(BACKEND, message, error)
    } else {
        BrokerError::backend(BACKEND, message, error)
    }
}

/// The server's error code (`NOGROUP`, `BUSYGROUP`, …) behind a [`BrokerError`], if any.
fn redis_code(error: &BrokerError) -> Option<&str> {
    let source = match error {
        BrokerError::Backend { source, .. } | BrokerError::Connection { source, .. } => source,
        _ => return None,
    };
    source
        .as_deref()
        .and_then(|s| s.downcast_ref::<RedisError>())
        .and_then(RedisError::code)
}

/// The error for a reply the backend cannot read.
fn bad_reply(operation: &'static str, detail: String) -> BrokerError {
    BrokerError::Backend {
        backend: BACKEND,
        message: format!("{operation}: unexpected reply: {detail}"),
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_password() {
        let options = ValkeyOptions::new("redis://:s3cret@cache.internal:6380/2");
        let shown = format!("{options:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("redis://***@cache.internal:6380/2"),
            "{shown}"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn defaults_match_the_docs() {
        let options = ValkeyOptions::default();
        assert_eq!(options.url, "redis://127.0.0.1:6379");
        assert_eq!(options.visibility_timeout, Duration::from_secs(30));
    }
}
