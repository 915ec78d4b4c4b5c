//! The Apache Pulsar backend, on pulsar-rs (feature `pulsar`).
//!
//! - Topics: `persistent://…` and `non-persistent://…` as written; `q1/…` and `q2/…` become
//!   `persistent://tenant/ns/name`, `q0/…` becomes `non-persistent://tenant/ns/name`
//!   ([`naming::pulsar_topic`]).
//! - Publishing resolves with the broker's receipt. Producers are cached per topic; at most
//!   [`PulsarOptions::max_pending_publishes`] publishes are in flight, the others wait; a publish
//!   that meets a broker restart is retried (pulsar-rs also resends what was pending on a
//!   re-created producer) until [`PulsarOptions::publish_timeout`], and then fails: nothing the
//!   caller was told is stored can be lost, and no publish hangs.
//! - [`Message::deliver_at`](worker_core::Message::deliver_at) becomes Pulsar's
//!   `deliver_at_time`. The broker honours it on shared subscriptions only; on the ordered types
//!   the runtime retries in place instead.
//! - Consuming: one task per subscription owns the pulsar-rs consumer, `receive` is cancel-safe,
//!   and a consumer pulsar-rs gives up on is re-created with backoff ([`PulsarSubscription`]).
//! - Acks are grouped (see `acks.rs`): cumulative where the subscription type allows it, always per
//!   whole entry, flushed every [`PulsarOptions::ack_group_time`], before a nack and on close.
//!
//! What pulsar-rs 6 cannot do, and this backend therefore does not: advertised listener names
//! ([`PulsarOptions::listener`] makes `connect` fail), the broker's redelivery count
//! ([`worker_core::Delivery::redelivery_count`] is always 0), and skipping TLS certificate checks.
//! pulsar-rs logs the frames it sends at trace level, token included: keep the `pulsar` target
//! ([`LOG_TARGET_WITH_TOKENS`]) at `debug` or above when a token is used.

mod acks;
mod admin;
mod consumer;
mod error;
pub mod naming;
mod options;
mod producer;
mod subscription;
mod task;

use std::sync::Arc;
use std::time::Duration;

use pulsar::{
    Authentication, ConnectionRetryOptions, OperationRetryOptions, Pulsar, TokioExecutor,
};
use worker_core::{
    BoxFuture, Broker, BrokerError, Capabilities, ConsumerType, DelayedDelivery, Message,
    MessageId, SubscribeOptions, Subscription, Topic,
};

pub use options::{
    Batching, Compression, PulsarOptions, PulsarOptionsError, Token, DEFAULT_URL, ENV_ADMIN_URL,
    ENV_API_KEY, ENV_HOST, ENV_LISTENER, ENV_TLS_CA_FILE, FRAME_HEADROOM, LOG_TARGET_WITH_TOKENS,
};
pub use subscription::PulsarSubscription;

use error::{timeout, to_broker_error, BACKEND};
use producer::Producers;

/// The consumer types Pulsar honours: all of them.
const CONSUMER_TYPES: &[ConsumerType] = &[
    ConsumerType::Shared,
    ConsumerType::KeyShared,
    ConsumerType::Failover,
    ConsumerType::Exclusive,
];

/// A connection to a Pulsar cluster: publishes and opens subscriptions. Cheap to clone.
#[derive(Clone)]
pub struct PulsarBroker {
    shared: Arc<Shared>,
}

struct Shared {
    client: Pulsar<TokioExecutor>,
    options: Arc<PulsarOptions>,
    producers: Producers,
}

impl PulsarBroker {
    /// Connects to the cluster at [`PulsarOptions::url`]. Fails if the options are invalid, if
    /// the cluster cannot be reached within the operation timeout, or if the token is refused.
    pub async fn connect(options: PulsarOptions) -> Result<Self, BrokerError> {
        options
            .validate()
            .map_err(|error| BrokerError::backend(BACKEND, "invalid pulsar options", error))?;
        if options.listener.is_some() {
            return Err(BrokerError::Unsupported {
                backend: BACKEND,
                feature: "advertised listener names (pulsar-rs cannot send one): connect to the \
                          listener's address directly or through a Pulsar proxy"
                    .to_owned(),
            });
        }
        let mut builder = Pulsar::builder(options.url.clone(), TokioExecutor)
            .with_connection_retry_options(ConnectionRetryOptions {
                min_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                max_retries: 5,
                connection_timeout: options.connection_timeout,
                ..ConnectionRetryOptions::default()
            })
            .with_operation_retry_options(OperationRetryOptions {
                operation_timeout: options.operation_timeout,
                // Bounded, so that a refused subscribe (an exclusive subscription taken) or a
                // broker that stays away ends in an error the backend can act on.
                retry_delay: Duration::from_millis(500),
                max_retries: Some(4),
            });
        if let Some(token) = &options.token {
            builder = builder.with_auth(Authentication {
                name: "token".to_owned(),
                data: token.expose().as_bytes().to_vec(),
            });
        }
        if let Some(path) = &options.tls_ca_file {
            builder = builder.with_certificate_chain_file(path).map_err(|error| {
                BrokerError::backend(
                    BACKEND,
                    format!("read the TLS CA file {}", path.display()),
                    error,
                )
            })?;
        }
        let limit = options.operation_timeout;
        let client = match tokio::time::timeout(limit, builder.build()).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => {
                return Err(to_broker_error(
                    format!("connect to {}", options.url),
                    error,
                ))
            }
            Err(_) => return Err(timeout("connect", limit)),
        };
        let options = Arc::new(options);
        Ok(PulsarBroker {
            shared: Arc::new(Shared {
                producers: Producers::new(client.clone(), options.clone()),
                client,
                options,
            }),
        })
    }

    /// The options it was connected with.
    pub fn options(&self) -> &PulsarOptions {
        &self.shared.options
    }

    /// Opens a subscription, returning the concrete type.
    pub async fn subscribe_pulsar(
        &self,
        options: SubscribeOptions,
    ) -> Result<PulsarSubscription, BrokerError> {
        PulsarSubscription::open(self.shared.client.clone(), &self.shared.options, options).await
    }

    /// Closes the producers of this handle (and its clones). Publishes started afterwards fail
    /// with [`BrokerError::Closed`]; subscriptions are closed on their own.
    pub async fn close(&self) {
        self.shared.producers.close().await;
    }
}

impl Broker for PulsarBroker {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: true,
            delayed_delivery: DelayedDelivery::Native,
            history: true,
            consumer_types: CONSUMER_TYPES,
            key_ordering: true,
            nack_redelivery: true,
            redelivers_abandoned: true,
            max_payload_bytes: Some(self.shared.options.max_payload_bytes()),
        }
    }

    fn publish<'a>(
        &'a self,
        topic: &'a Topic,
        message: Message,
    ) -> BoxFuture<'a, Result<MessageId, BrokerError>> {
        Box::pin(self.shared.producers.publish(topic, message))
    }

    fn subscribe<'a>(
        &'a self,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, BrokerError>> {
        Box::pin(async move {
            let subscription = self.subscribe_pulsar(options).await?;
            Ok(Box::new(subscription) as Box<dyn Subscription>)
        })
    }
}

impl std::fmt::Debug for PulsarBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarBroker")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}
