//! MQTT: the framework worker on [`MqttBroker`] against a raw rumqttc loop on the same mosquitto —
//! a persistent session on a shared subscription at QoS 1 with manual acks; each PUBLISH is
//! decoded, handled and then acknowledged.
//!
//! mosquitto runs with persistence on, but without the tests' save-after-every-change (which would
//! rewrite its whole database for every queued message of a large fill).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use integration_tests::brokers::{free_port, which, BrokerProcess};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions as RawOptions};
use worker_runtime::broker::mqtt::{MqttBroker, MqttOptions};
use worker_runtime::worker::CancellationToken;
use worker_runtime::{Broker, ConsumerType, InitialPosition, SubscribeOptions, Topic};

use crate::probe::{self, Event as Payload, Handler};
use crate::{Consumer, Side, Spec};

/// The share group the raw loop reads as.
const RAW_GROUP: &str = "raw";
/// The receive maximum of both sides (the framework's default `receiver_queue_size`).
const RECEIVE_MAXIMUM: u16 = 1000;

pub struct Mqtt {
    process: BrokerProcess,
    producer: Arc<MqttBroker>,
}

impl Mqtt {
    /// Starts a private mosquitto, or `None` if it is not installed.
    pub async fn start() -> anyhow::Result<Option<Mqtt>> {
        let Some(program) = which("mosquitto") else {
            eprintln!("mosquitto is not installed: skipping the MQTT runs");
            return Ok(None);
        };
        let port = free_port();
        let dir = BrokerProcess::scratch_dir("bench-mosquitto");
        let config = dir.join("mosquitto.conf");
        std::fs::write(&config, config_text(port, &dir))?;
        let args = vec!["-c".to_owned(), config.display().to_string()];
        let process = BrokerProcess::start("mosquitto", &program, args, port, dir);
        let producer = Arc::new(MqttBroker::connect(options(port)).await?);
        Ok(Some(Mqtt { process, producer }))
    }

    fn port(&self) -> u16 {
        self.process.port()
    }
}

fn options(port: u16) -> MqttOptions {
    MqttOptions::new("127.0.0.1", port)
}

fn config_text(port: u16, dir: &std::path::Path) -> String {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         {}\
         persistence true\n\
         persistence_location {}/\n\
         max_queued_messages 2000000\n\
         max_inflight_messages 1000\n\
         message_size_limit 0\n\
         log_dest stdout\n\
         log_type error\n\
         log_type warning\n",
        if root { "user root\n" } else { "" },
        dir.display()
    )
}

fn mqtt_topic(topic: &Topic) -> String {
    format!("{}/{}/{}", topic.tenant(), topic.namespace(), topic.name())
}

/// The framework consumer's name in run `run` (each run its own session).
fn consumer_name(run: u64) -> String {
    format!("fw-r{run}")
}

fn raw_client(port: u16, run: u64, messages: u64) -> (AsyncClient, EventLoop) {
    let mut options = RawOptions::new(format!("raw-r{run}"), "127.0.0.1", port);
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(3600))
        .set_manual_acks(true)
        .set_receive_maximum(Some(RECEIVE_MAXIMUM))
        .set_keep_alive(Duration::from_secs(30));
    // The loop acks (try_ack) in the task that polls the event loop, which reads requests only
    // between incoming packets: room for every ack of the run, since a drain's incoming packets
    // can keep it from reading any for a long time (a full channel failed the loop).
    let capacity = usize::try_from(messages).unwrap_or(usize::MAX).max(1 << 16) + 1024;
    AsyncClient::new(options, capacity)
}

impl crate::Backend for Mqtt {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn broker_pid(&self) -> u32 {
        self.process.pid().unwrap_or(0)
    }

    fn producer(&self) -> Arc<dyn Broker> {
        self.producer.clone()
    }

    /// Creates the consumer's persistent session and its subscription, then leaves, so that the
    /// session queues the fill (MQTT keeps messages only for subscriptions that exist).
    async fn prepare(&self, side: Side, spec: &Spec, run: u64) -> anyhow::Result<Topic> {
        let topic = Topic::parse(&format!("q1/bench/mqtt/r{run}"))?;
        match side {
            Side::Framework => {
                let broker = MqttBroker::connect(options(self.port())).await?;
                let subscription = broker
                    .subscribe(SubscribeOptions {
                        topic: topic.clone(),
                        subscription: spec.handler.name().to_owned(),
                        consumer_name: consumer_name(run),
                        consumer_type: ConsumerType::Shared,
                        initial_position: InitialPosition::Earliest,
                        receiver_queue_size: usize::from(RECEIVE_MAXIMUM),
                    })
                    .await?;
                subscription.close().await?;
            }
            Side::Raw => {
                let (client, mut events) = raw_client(self.port(), run, 0);
                let filter = format!("$share/{RAW_GROUP}/{}", mqtt_topic(&topic));
                client.subscribe(filter, QoS::AtLeastOnce).await?;
                let limit = Duration::from_secs(10);
                tokio::time::timeout(limit, async {
                    loop {
                        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await? {
                            return anyhow::Ok(());
                        }
                    }
                })
                .await
                .context("no SUBACK")??;
                client.disconnect().await?;
                let _ = tokio::time::timeout(limit, async { while events.poll().await.is_ok() {} })
                    .await;
            }
        }
        Ok(topic)
    }

    async fn start(&self, side: Side, spec: &Spec, topic: &Topic) -> anyhow::Result<Consumer> {
        match side {
            Side::Framework => {
                let broker = MqttBroker::connect(options(self.port())).await?;
                Consumer::framework(Arc::new(broker), spec, topic, &consumer_name(spec.run))
            }
            Side::Raw => {
                let (client, events) = raw_client(self.port(), spec.run, spec.messages);
                let stop = CancellationToken::new();
                let handle = tokio::spawn(raw_loop(client, events, spec.clone(), stop.clone()));
                Ok(Consumer::new(stop, handle))
            }
        }
    }

    /// MQTT cannot be asked what a session still holds; the ledger (handled, duplicates) stands.
    async fn unacked(&self, _: Side, _: &Spec, _: &Topic) -> anyhow::Result<u64> {
        Ok(0)
    }
}

/// The raw consumer: poll the event loop; decode, handle and ack each PUBLISH (the 1 ms handler
/// runs in its own task, at most `concurrency` at once, and acks when done).
async fn raw_loop(
    client: AsyncClient,
    mut events: EventLoop,
    spec: Spec,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(spec.concurrency));
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            event = events.poll() => event.context("mqtt event loop")?,
        };
        let Event::Incoming(Packet::Publish(publish)) = event else {
            continue;
        };
        let payload = match serde_json::from_slice::<Payload>(&publish.payload) {
            Ok(payload) => payload,
            Err(error) => {
                eprintln!("raw mqtt loop: undecodable payload: {error}");
                client.try_ack(&publish)?;
                continue;
            }
        };
        match spec.handler {
            Handler::Noop => {
                probe::finished(&payload);
                client.try_ack(&publish)?;
            }
            Handler::Sleep1ms => {
                let slot = tokio::select! {
                    _ = stop.cancelled() => break,
                    slot = slots.clone().acquire_owned() => slot?,
                };
                let client = client.clone();
                tokio::spawn(async move {
                    Handler::Sleep1ms.run(payload).await;
                    let _ = client.ack(&publish).await;
                    drop(slot);
                });
            }
        }
    }
    // Let the last acks out before leaving.
    client.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while events.poll().await.is_ok() {}
    })
    .await;
    Ok(())
}
