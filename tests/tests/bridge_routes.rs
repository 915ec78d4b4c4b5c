//! Bridge routes between topics on real brokers, run in this process from a `[bridge]` section:
//! - a Valkey stream to another stream, then replayed from a message id, from a time and as a
//!   dry run, the replay's consumer group deleted afterwards;
//! - a Pulsar topic to a Valkey stream, replayed from the earliest message, the replay's
//!   subscription deleted afterwards;
//! - hybrid publish: a route whose target is a fanout broker puts every message on a Valkey
//!   stream and an MQTT topic both.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::brokers::{Mosquitto, PulsarStandalone, RedisServer};
use integration_tests::worker_support::read_topic;
use worker_runtime::bridge::{replay_route, Bridge, BridgeConfig, ReplayFrom, ReplayOptions};
use worker_runtime::broker::mqtt::{MqttBroker, MqttOptions};
use worker_runtime::broker::pulsar::{PulsarBroker, PulsarOptions};
use worker_runtime::broker::valkey::{ValkeyBroker, ValkeyOptions};
use worker_runtime::metrics::Metrics;
use worker_runtime::worker::CancellationToken;
use worker_runtime::{
    props, Broker, ConsumerType, InitialPosition, Message, MessageId, SubscribeOptions, Topic,
};

async fn valkey(server: &RedisServer) -> Arc<dyn Broker> {
    let mut options = ValkeyOptions::new(server.url());
    options.block_timeout = Duration::from_millis(200);
    Arc::new(ValkeyBroker::connect(options).await.expect("connect"))
}

/// Publishes `count` messages numbered from `first`, returning the broker's ids.
async fn publish(broker: &dyn Broker, topic: &str, first: usize, count: usize) -> Vec<MessageId> {
    let topic = Topic::parse(topic).expect("topic");
    let mut ids = Vec::new();
    for n in first..first + count {
        let message = Message::new(format!("{{\"n\": {n}}}"))
            .with_property(props::MESSAGE_ID, format!("m-{n}"));
        ids.push(broker.publish(&topic, message).await.expect("publish"));
    }
    ids
}

/// The numbers of the messages on `topic`, read from the start by a fresh subscription.
async fn numbers(broker: &dyn Broker, topic: &str, expected: usize) -> Vec<u64> {
    // Wait until the expected count is there, then read everything once more, extras included.
    read_topic(broker, topic, expected, Duration::from_secs(20)).await;
    let read = read_topic(broker, topic, expected + 100, Duration::from_secs(2)).await;
    let mut numbers: Vec<u64> = read
        .iter()
        .filter_map(|d| {
            serde_json::from_slice::<serde_json::Value>(d.payload()).ok()?["n"].as_u64()
        })
        .collect();
    numbers.sort_unstable();
    numbers
}

async fn run_bridge(config: &BridgeConfig) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let bridge = Bridge::from_config(config, &[], "bridge-routes", &Metrics::new("bridge-routes"))
        .await
        .expect("the bridge starts");
    let stop = CancellationToken::new();
    let handle = tokio::spawn({
        let stop = stop.clone();
        async move {
            bridge.run(stop, Duration::from_secs(5)).await;
        }
    });
    (stop, handle)
}

fn replay_options(dry_run: bool) -> ReplayOptions {
    ReplayOptions {
        dry_run,
        limit: None,
        quiet: Duration::from_secs(1),
        consumer: "replayer".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_route_forwards_and_replays_from_an_id_a_time_and_dry() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let broker = valkey(&server).await;
    let config = BridgeConfig::parse(
        &format!(
            r#"[bridge.brokers.cache]
backend = "valkey"
url = "{}"

[bridge.routes.copy]
source = {{ broker = "cache", topic = "q1/test/bridge/stream-in" }}
target = {{ broker = "cache", topic = "q1/test/bridge/stream-out" }}
"#,
            server.url()
        ),
        "bridge.toml",
    )
    .expect("valid");
    let ids = publish(&*broker, "q1/test/bridge/stream-in", 0, 10).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    publish(&*broker, "q1/test/bridge/stream-in", 10, 10).await;

    let (stop, bridge) = run_bridge(&config).await;
    assert_eq!(
        numbers(&*broker, "q1/test/bridge/stream-out", 20).await,
        (0..20).collect::<Vec<_>>()
    );
    stop.cancel();
    bridge.await.expect("the bridge ran");

    // A dry run counts, and forwards nothing.
    let report = replay_route(
        &config,
        "copy",
        &ReplayFrom::Earliest,
        &replay_options(true),
    )
    .await
    .expect("dry run");
    assert_eq!((report.forwarded, report.skipped), (20, 0));
    // From message 5's entry id: 5..19 again.
    let from_id = ReplayFrom::MessageId(ids[5].to_string());
    let report = replay_route(&config, "copy", &from_id, &replay_options(false))
        .await
        .expect("replay from an id");
    assert!(report.position_found);
    assert_eq!((report.forwarded, report.skipped), (15, 5));
    // From the time between message 9 and 10: 10..19 again.
    let report = replay_route(
        &config,
        "copy",
        &ReplayFrom::Time(cut),
        &replay_options(false),
    )
    .await
    .expect("replay from a time");
    assert_eq!((report.forwarded, report.skipped), (10, 10));

    let mut expected: Vec<u64> = (0..20).chain(5..20).chain(10..20).collect();
    expected.sort_unstable();
    assert_eq!(
        numbers(&*broker, "q1/test/bridge/stream-out", expected.len()).await,
        expected
    );
    let groups = server
        .cli(&["XINFO", "GROUPS", "wr:{test/bridge/stream-in}"])
        .unwrap_or_default();
    assert!(groups.contains("bridge-copy"), "{groups}");
    assert!(
        !groups.contains("replay"),
        "the replays' groups are deleted: {groups}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulsar_route_forwards_to_valkey_and_replays_from_the_earliest() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let Some(pulsar) = PulsarStandalone::shared() else {
        return;
    };
    let source = "persistent://test/bridge/pulsar-in";
    pulsar.ensure_namespace_of(source);
    let events = Arc::new(
        PulsarBroker::connect(PulsarOptions::new(pulsar.url()))
            .await
            .expect("connect"),
    ) as Arc<dyn Broker>;
    let cache = valkey(&server).await;
    let config = BridgeConfig::parse(
        &format!(
            r#"[bridge.brokers.cache]
backend = "valkey"
url = "{}"

[bridge.brokers.events]
backend = "pulsar"
url = "{}"

[bridge.routes.to_valkey]
source = {{ broker = "events", topic = "{source}" }}
target = {{ broker = "cache", topic = "q1/test/bridge/from-pulsar" }}
"#,
            server.url(),
            pulsar.url()
        ),
        "bridge.toml",
    )
    .expect("valid");
    publish(&*events, source, 0, 30).await;
    let (stop, bridge) = run_bridge(&config).await;
    assert_eq!(
        numbers(&*cache, "q1/test/bridge/from-pulsar", 30).await,
        (0..30).collect::<Vec<_>>()
    );
    stop.cancel();
    bridge.await.expect("the bridge ran");

    let report = replay_route(
        &config,
        "to_valkey",
        &ReplayFrom::Earliest,
        &replay_options(false),
    )
    .await
    .expect("replay");
    assert_eq!(report.forwarded, 30);
    let mut expected: Vec<u64> = (0..30).chain(0..30).collect();
    expected.sort_unstable();
    assert_eq!(
        numbers(&*cache, "q1/test/bridge/from-pulsar", 60).await,
        expected
    );
    let stats = pulsar.topic_stats(source).expect("stats");
    let subscriptions: BTreeSet<String> = stats["subscriptions"]
        .as_object()
        .map(|s| s.keys().cloned().collect())
        .unwrap_or_default();
    assert!(
        subscriptions.contains("bridge-to_valkey"),
        "{subscriptions:?}"
    );
    assert!(
        subscriptions.iter().all(|s| !s.contains("replay")),
        "the replay's subscription is deleted: {subscriptions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanout_target_puts_each_message_on_valkey_and_mqtt_both() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let Some(mosquitto) = Mosquitto::start() else {
        return;
    };
    let cache = valkey(&server).await;
    let mqtt = MqttBroker::connect(MqttOptions::new(mosquitto.host(), mosquitto.port()))
        .await
        .expect("connect");
    // MQTT keeps messages only for subscriptions made before them.
    let mqtt_reader = mqtt
        .subscribe(SubscribeOptions {
            topic: Topic::parse("q1/test/bridge/hybrid").expect("topic"),
            subscription: "reader".into(),
            consumer_name: "reader".into(),
            consumer_type: ConsumerType::Shared,
            initial_position: InitialPosition::Latest,
            receiver_queue_size: 1000,
        })
        .await
        .expect("subscribe");
    let config = BridgeConfig::parse(
        &format!(
            r#"[bridge.brokers.cache]
backend = "valkey"
url = "{}"

[bridge.brokers.devices]
backend = "mqtt"
url = "mqtt://{}:{}"

[bridge.brokers.both]
backend = "fanout"
brokers = ["cache", "devices"]
policy = "first"

[bridge.routes.hybrid]
source = {{ broker = "cache", topic = "q1/test/bridge/hybrid-in" }}
target = {{ broker = "both", topic = "q1/test/bridge/hybrid" }}
"#,
            server.url(),
            mosquitto.host(),
            mosquitto.port()
        ),
        "bridge.toml",
    )
    .expect("valid");
    publish(&*cache, "q1/test/bridge/hybrid-in", 0, 200).await;
    let (stop, bridge) = run_bridge(&config).await;
    assert_eq!(
        numbers(&*cache, "q1/test/bridge/hybrid", 200).await,
        (0..200).collect::<Vec<_>>()
    );
    let mut from_mqtt = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while from_mqtt.len() < 200 && Instant::now() < deadline {
        if let Ok(Ok(batch)) =
            tokio::time::timeout(Duration::from_secs(1), mqtt_reader.receive(200)).await
        {
            for delivery in &batch {
                from_mqtt.insert(
                    delivery
                        .property(props::MESSAGE_ID)
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
            let _ = mqtt_reader
                .ack(batch.into_iter().map(|d| d.id).collect())
                .await;
        }
    }
    stop.cancel();
    bridge.await.expect("the bridge ran");
    assert_eq!(from_mqtt.len(), 200, "every message reached MQTT too");
}
