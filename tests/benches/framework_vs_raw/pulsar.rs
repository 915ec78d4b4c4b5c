//! Pulsar: the framework worker on [`PulsarBroker`] against a raw loop of the same pulsar-rs crate
//! on the same Apache Pulsar standalone — a consumer of a shared subscription (the framework's
//! receiver queue size) takes each message, decodes its JSON payload, runs the handler and acks the
//! message with pulsar-rs's own `ack`, one call per message.
//!
//! Both sides read what the framework's producer published: unbatched, each publish waiting for
//! its send receipt (the fill keeps several in flight).

use std::sync::Arc;

use anyhow::Context as _;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt as _;
use integration_tests::brokers::PulsarStandalone;
use pulsar::consumer::{InitialPosition, Message as PulsarMessage};
use pulsar::{Consumer as PulsarConsumer, ConsumerOptions, SubType, TokioExecutor};
use worker_runtime::broker::pulsar::naming::pulsar_topic;
use worker_runtime::broker::pulsar::{PulsarBroker, PulsarOptions};
use worker_runtime::worker::CancellationToken;
use worker_runtime::{Broker, Topic, DEFAULT_RECEIVER_QUEUE_SIZE};

use crate::probe::{Event as Payload, Handler};
use crate::{Consumer, Side, Spec};

/// The subscription the raw loop reads as.
const RAW_SUBSCRIPTION: &str = "raw";
/// The tenant and namespace of the runs' topics.
const NAMESPACE: &str = "q1/bench/pulsar";

/// A pulsar-rs client, as the raw loop uses it.
type Client = pulsar::Pulsar<TokioExecutor>;
type RawConsumer = PulsarConsumer<Vec<u8>, TokioExecutor>;

pub struct Pulsar {
    server: Arc<PulsarStandalone>,
    producer: Arc<PulsarBroker>,
}

impl Pulsar {
    /// Starts a private Pulsar standalone JVM (tens of seconds) and creates the runs' namespace,
    /// or `None` if Java or Maven is missing.
    pub async fn start() -> anyhow::Result<Option<Pulsar>> {
        let started = tokio::task::spawn_blocking(|| {
            let server = PulsarStandalone::start()?;
            server.ensure_namespace_of(&format!("{NAMESPACE}/any"));
            let version = server
                .admin_get("/admin/v2/brokers/version")
                .map_or_else(|| "unknown".to_owned(), |(_, body)| body);
            Some((server, version))
        })
        .await?;
        let Some((server, version)) = started else {
            return Ok(None);
        };
        println!("  pulsar broker: {}", version.trim());
        // Unbatched, every publish waiting for its receipt: the defaults, spelled out.
        let options = PulsarOptions {
            batching: None,
            ..PulsarOptions::new(server.url())
        };
        let producer = Arc::new(PulsarBroker::connect(options).await?);
        Ok(Some(Pulsar {
            server: Arc::new(server),
            producer,
        }))
    }

    async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::builder(self.server.url(), TokioExecutor)
            .build()
            .await?)
    }
}

/// The subscription each side reads as.
fn subscription(side: Side, spec: &Spec) -> &'static str {
    match side {
        Side::Framework => spec.handler.name(),
        Side::Raw => RAW_SUBSCRIPTION,
    }
}

/// A raw consumer of `subscription` on `topic`, with the framework's receiver queue and flow
/// permits (pulsar-rs's batch size) for its consumers.
async fn raw_consumer(
    client: &Client,
    topic: &Topic,
    subscription: &str,
    spec: &Spec,
) -> anyhow::Result<RawConsumer> {
    let queue = spec
        .receiver_queue_size
        .unwrap_or(DEFAULT_RECEIVER_QUEUE_SIZE);
    let queue = u32::try_from(queue).context("receiver queue size")?;
    let consumer = client
        .consumer()
        .with_topic(pulsar_topic(topic))
        .with_subscription(subscription)
        .with_subscription_type(SubType::Shared)
        .with_consumer_name(format!("{subscription}-r{}", spec.run))
        .with_batch_size(queue)
        .with_options(
            ConsumerOptions::default()
                .with_initial_position(InitialPosition::Earliest)
                .with_receiver_queue_size(queue),
        )
        .build()
        .await?;
    Ok(consumer)
}

impl crate::Backend for Pulsar {
    fn name(&self) -> &'static str {
        "pulsar"
    }

    fn broker_pid(&self) -> u32 {
        self.server.pid().unwrap_or(0)
    }

    fn producer(&self) -> Arc<dyn Broker> {
        self.producer.clone()
    }

    /// Creates the side's subscription (from the earliest message) and leaves it, so that it
    /// retains the fill.
    async fn prepare(&self, side: Side, spec: &Spec, run: u64) -> anyhow::Result<Topic> {
        let topic = Topic::parse(&format!("{NAMESPACE}/r{run}"))?;
        let client = self.client().await?;
        let mut consumer = raw_consumer(&client, &topic, subscription(side, spec), spec).await?;
        consumer.close().await?;
        Ok(topic)
    }

    async fn start(&self, side: Side, spec: &Spec, topic: &Topic) -> anyhow::Result<Consumer> {
        match side {
            Side::Framework => {
                let broker = PulsarBroker::connect(PulsarOptions::new(self.server.url())).await?;
                Consumer::framework(Arc::new(broker), spec, topic, "bench")
            }
            Side::Raw => {
                let client = self.client().await?;
                let consumer = raw_consumer(&client, topic, RAW_SUBSCRIPTION, spec).await?;
                let stop = CancellationToken::new();
                let handle = tokio::spawn(raw_loop(consumer, spec.clone(), stop.clone()));
                Ok(Consumer::new(stop, handle))
            }
        }
    }

    /// The subscription's backlog, from the broker's topic stats: with every message delivered,
    /// what was not acknowledged.
    async fn unacked(&self, side: Side, spec: &Spec, topic: &Topic) -> anyhow::Result<u64> {
        let server = self.server.clone();
        let name = pulsar_topic(topic);
        let stats = tokio::task::spawn_blocking(move || server.topic_stats(&name))
            .await?
            .with_context(|| format!("no topic stats for {topic}"))?;
        stats["subscriptions"][subscription(side, spec)]["msgBacklog"]
            .as_u64()
            .with_context(|| format!("no backlog in the topic stats of {topic}"))
    }
}

/// The raw consumer: take a message, decode it, run the handler (the 1 ms one up to
/// `concurrency` at once), ack it; until stopped, then ack what finished and close.
async fn raw_loop(
    mut consumer: RawConsumer,
    spec: Spec,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(message) = running.next(), if !running.is_empty() => {
                consumer.ack(&message).await.context("ack")?;
            }
            next = consumer.next(), if running.len() < spec.concurrency => {
                let message: PulsarMessage<Vec<u8>> =
                    next.context("the consumer's stream ended")?.context("receive")?;
                let payload = match serde_json::from_slice::<Payload>(&message.payload.data) {
                    Ok(payload) => payload,
                    Err(error) => {
                        eprintln!("raw pulsar loop: undecodable payload: {error}");
                        consumer.ack(&message).await.context("ack")?;
                        continue;
                    }
                };
                match spec.handler {
                    Handler::Noop => {
                        Handler::Noop.run(payload).await;
                        consumer.ack(&message).await.context("ack")?;
                    }
                    Handler::Sleep1ms => running.push(async move {
                        Handler::Sleep1ms.run(payload).await;
                        message
                    }),
                }
            }
        }
    }
    while let Some(message) = running.next().await {
        consumer.ack(&message).await.context("ack")?;
    }
    // The close travels behind the acks (both go through the consumer's engine).
    consumer.close().await?;
    Ok(())
}
