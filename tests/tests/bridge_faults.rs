//! The bridge as a process of its own (`scale_worker bridge --config …`) forwarding 10,000
//! messages from a Valkey list (`LPUSH`ed as a Python service would) to a Pulsar topic, while
//! faults hit every part in turn: the bridge is killed (SIGKILL) and restarted, redis-server is
//! killed and restarted, and the Pulsar standalone is killed and restarted. Counted with the ledger
//! method: every push that redis confirmed must reach the topic (lost = 0); messages forwarded twice
//! are counted and printed (at least once allows them).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::brokers::{free_port, PulsarStandalone, RedisServer};
use integration_tests::processes::{example_binary, http_get, metric_sum, ChildGuard};
use serde_json::Value;
use worker_runtime::broker::pulsar::{PulsarBroker, PulsarOptions};
use worker_runtime::broker::valkey::{ValkeyBroker, ValkeyOptions};
use worker_runtime::{Broker, ConsumerType, InitialPosition, SubscribeOptions, Topic};

const MESSAGES: usize = 10_000;
const TARGET: &str = "persistent://test/bridge/orders";

/// The bridge process: started, killed and started again under the same consumer name.
struct BridgeProcess {
    config: std::path::PathBuf,
    metrics_port: u16,
    child: Option<ChildGuard>,
}

impl BridgeProcess {
    fn start(&mut self) {
        let child = ChildGuard::spawn(
            Command::new(example_binary("scale_worker"))
                .arg("bridge")
                .args(["--config", &self.config.display().to_string()])
                .args(["--consumer-name", "bridge-1"])
                .args([
                    "--metrics-addr",
                    &format!("127.0.0.1:{}", self.metrics_port),
                ])
                .env("RUST_LOG", "warn"),
        );
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if http_get(self.metrics_port, "/readyz").is_some_and(|(status, _)| status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the bridge did not become ready");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.0.kill();
            let _ = child.0.wait();
        }
    }

    fn metric(&self, series: &str, labels: &[&str]) -> f64 {
        http_get(self.metrics_port, "/metrics")
            .map(|(_, body)| metric_sum(&body, series, labels))
            .unwrap_or(-1.0)
    }
}

#[test]
fn every_confirmed_push_reaches_pulsar_across_crashes_of_the_bridge_and_both_brokers() {
    let Some(mut redis) = RedisServer::start_fsync_always() else {
        return;
    };
    let Some(pulsar) = PulsarStandalone::start() else {
        return;
    };
    pulsar.ensure_namespace_of(TARGET);
    let dir = std::env::temp_dir().join(format!("bridge-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let config = dir.join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            r#"[bridge.brokers.cache]
backend = "valkey"
url = "{}"

[bridge.brokers.events]
backend = "pulsar"
url = "{}"

[bridge.routes.orders]
source = {{ broker = "cache", list = "orders" }}
target = {{ broker = "events", topic = "{TARGET}" }}
max_in_flight = 512
"#,
            redis.url(),
            pulsar.url()
        ),
    )
    .expect("write the configuration");
    let mut bridge = BridgeProcess {
        config,
        metrics_port: free_port(),
        child: None,
    };

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // The reader of the target topic: every payload's sequence number, with the positions it was
    // stored at. A copy the reader sees twice because its own ack died with the broker has one
    // position; a copy the bridge sent twice has two.
    let received: Arc<Mutex<BTreeMap<u64, BTreeSet<String>>>> =
        Arc::new(Mutex::new(BTreeMap::new()));
    let (reader_broker, subscription) = runtime.block_on(async {
        let mut options = PulsarOptions::new(pulsar.url());
        options.operation_timeout = Duration::from_secs(10);
        let broker = PulsarBroker::connect(options)
            .await
            .expect("connect the reader");
        let subscription = broker
            .subscribe(SubscribeOptions {
                topic: Topic::parse(TARGET).expect("topic"),
                subscription: "ledger".into(),
                consumer_name: "ledger".into(),
                consumer_type: ConsumerType::Shared,
                initial_position: InitialPosition::Earliest,
                receiver_queue_size: 1000,
            })
            .await
            .expect("subscribe the reader");
        (broker, subscription)
    });
    let reader = runtime.spawn({
        let received = received.clone();
        async move {
            let _broker = reader_broker;
            loop {
                let Ok(batch) = subscription.receive(1000).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let ids = batch.iter().map(|d| d.id.clone()).collect();
                {
                    let mut received = received.lock().unwrap_or_else(|p| p.into_inner());
                    for delivery in &batch {
                        let seq = serde_json::from_slice::<Value>(delivery.payload())
                            .ok()
                            .and_then(|v| v["seq"].as_u64());
                        if let Some(seq) = seq {
                            received
                                .entry(seq)
                                .or_default()
                                .insert(delivery.id.to_string());
                        }
                    }
                }
                let _ = subscription.ack(ids).await;
            }
        }
    });

    bridge.start();
    let started = Instant::now();

    // The producer: LPUSHes each message until redis confirms it, 50 every 20 ms.
    let confirmed = Arc::new(AtomicUsize::new(0));
    let producer = {
        let confirmed = confirmed.clone();
        let url = redis.url();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async move {
                let mut options = ValkeyOptions::new(url);
                options.operation_timeout = Duration::from_secs(2);
                let valkey = ValkeyBroker::connect(options)
                    .await
                    .expect("connect the producer");
                let list = valkey.list_queue("orders", "producer");
                for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(50) {
                    let items: Vec<Vec<u8>> = chunk
                        .iter()
                        .map(|seq| format!("{{\"seq\": {seq}, \"from\": \"python\"}}").into_bytes())
                        .collect();
                    let items: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
                    while list.push(&items).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    confirmed.fetch_add(chunk.len(), Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        })
    };
    let wait_for_pushes = |n: usize| {
        while confirmed.load(Ordering::SeqCst) < n {
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    wait_for_pushes(MESSAGES / 4);
    bridge.kill();
    let bridge_killed_at = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    bridge.start();

    wait_for_pushes(MESSAGES / 2);
    redis.kill();
    let redis_killed_at = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    redis.restart();

    wait_for_pushes(3 * MESSAGES / 4);
    pulsar.kill();
    let pulsar_killed_at = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    pulsar.restart();
    let pulsar_back_at = started.elapsed();

    producer.join().expect("the producer finished");
    let deadline = Instant::now() + Duration::from_secs(180);
    let all = loop {
        let got = received.lock().unwrap_or_else(|p| p.into_inner()).len();
        if got >= MESSAGES || Instant::now() > deadline {
            break got >= MESSAGES;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let drained_at = started.elapsed();
    let forwarded = bridge.metric(
        "bridge_forwarded_total",
        &["route=\"orders\"", "status=\"ok\""],
    );
    if let Some(child) = &bridge.child {
        child.terminate();
    }
    let status = bridge
        .child
        .as_mut()
        .and_then(|child| child.wait_for_exit(Duration::from_secs(20)));
    reader.abort();

    let received = received.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let confirmed = confirmed.load(Ordering::SeqCst);
    let lost: Vec<u64> = (0..confirmed as u64)
        .filter(|s| !received.contains_key(s))
        .collect();
    let duplicates: usize = received.values().map(|positions| positions.len() - 1).sum();
    println!(
        "bridge ledger: pushed and confirmed {confirmed}, received {} unique, {duplicates} forwarded more than once, lost {} {:?}\n\
         bridge killed at {bridge_killed_at:?}, redis killed at {redis_killed_at:?}, pulsar killed at {pulsar_killed_at:?} \
         (back at {pulsar_back_at:?}), all received at {drained_at:?}; the restarted bridge forwarded {forwarded}",
        received.len(),
        lost.len(),
        &lost[..lost.len().min(20)],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(confirmed, MESSAGES);
    assert!(
        all,
        "not everything arrived within 180 s after the producer finished"
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(
        received.keys().all(|seq| (*seq as usize) < MESSAGES),
        "the topic holds messages nobody pushed"
    );
    // Only what was in flight can be sent twice. When the bridge is killed: what it held (512)
    // and what was confirmed but not yet removed from its processing list (at most as many).
    // When Pulsar dies: what pulsar-rs resends on its new connection and what the backend sends
    // again (each at most what was in flight, 512).
    assert!(duplicates <= 4 * 512, "{duplicates} duplicates");
    assert!(
        status.is_some_and(|s| s.success()),
        "the bridge stopped with {status:?}"
    );
}
