//! The shipped dashboard and alert rules against a real Prometheus scraping a real worker under
//! traffic (and the Pulsar standalone's own metrics): every dashboard query must run and return
//! series, every alert rule must evaluate without error, and every metric any of them names must
//! exist. A dashboard with a misspelt metric name fails the same check.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use integration_tests::brokers::{free_port, url_encode, Prometheus, PulsarStandalone, ScrapeJob};
use integration_tests::worker_support::RunningWorker;
use serde_json::Value;
use worker_runtime::auth::{Hs256Signer, Hs256Verifier, Secret};
use worker_runtime::bridge::{Bridge, DeadLetterTopic, Route, TopicSource, TopicTarget};
use worker_runtime::broker::pulsar::{PulsarBroker, PulsarOptions};
use worker_runtime::broker::MemoryBroker;
use worker_runtime::credits::MemoryCreditLedger;
use worker_runtime::metrics::{server, Metrics};
use worker_runtime::prelude::*;
use worker_runtime::worker::{CancellationToken, Worker};
use worker_runtime::{ConsumerType, InitialPosition, Message, SubscribeOptions, Topic};

#[pulsar_io_task(
    topic = "q1/monitoring/ns/mixed",
    max_retries = 0,
    rate_limit = 100,
    rate_window = "1s",
    circuit_failures = 1000
)]
async fn mixed(n: u32) -> Result<(), TaskError> {
    match n % 7 {
        0 => Err(TaskError::permanent("refused")),
        1 => Err(TaskError::retryable("flaky")),
        _ => Ok(()),
    }
}

const KEY: &[u8] = b"monitoring-test-key-of-32-bytes!!";

#[pulsar_db_task(
    topic = "q1/monitoring/ns/writes",
    permission_roles = ["db_writer"],
    credit_type = "db_credits",
    credit_amount = 1
)]
async fn write(_n: u32) -> Result<(), TaskError> {
    Ok(())
}

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the repository")
        .to_owned()
}

/// The dashboard's queries with its variables substituted as a test can: every task and route.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    fn walk(panels: &Value, out: &mut Vec<String>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push(
                        expr.replace("${task}", ".*")
                            .replace("$task", ".*")
                            .replace("${route}", ".*")
                            .replace("$route", ".*")
                            .replace("$__rate_interval", "1m")
                            .replace("$__interval", "1m"),
                    );
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut queries = Vec::new();
    walk(&dashboard["panels"], &mut queries);
    queries
}

/// The metric names an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut token = String::new();
    for c in expr.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            token.push(c);
            continue;
        }
        let is_metric = ["worker_", "bridge_", "fanout_", "pulsar_"]
            .iter()
            .any(|prefix| token.starts_with(prefix))
            || (token == "up" && c == '{');
        if is_metric {
            names.insert(std::mem::take(&mut token));
        }
        token.clear();
    }
    names
}

fn query(prometheus: &Prometheus, expr: &str) -> Result<usize, String> {
    let (status, body) = prometheus.api(&format!("/api/v1/query?query={}", url_encode(expr)));
    if status != 200 || body["status"] != "success" {
        return Err(format!("{expr}: {status} {}", body["error"]));
    }
    Ok(body["data"]["result"].as_array().map_or(0, Vec::len))
}

fn series_exist(prometheus: &Prometheus, name: &str) -> bool {
    query(prometheus, &format!("count({{__name__=\"{name}\"}})")).is_ok_and(|n| n > 0)
}

/// What is wrong with a dashboard: queries that fail or return nothing, metrics that do not exist.
fn dashboard_problems(prometheus: &Prometheus, dashboard: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let queries = dashboard_queries(dashboard);
    assert!(
        queries.len() > 20,
        "the dashboard has its panels: {}",
        queries.len()
    );
    for expr in &queries {
        match query(prometheus, expr) {
            Ok(0) => problems.push(format!("{expr}: no series")),
            Ok(_) => {}
            Err(error) => problems.push(error),
        }
        for name in metric_names(expr) {
            if !series_exist(prometheus, &name) {
                problems.push(format!("{expr}: no metric `{name}`"));
            }
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_rule_works_on_a_real_prometheus() {
    let Some(pulsar) = PulsarStandalone::shared() else {
        return;
    };
    // Pulsar's own subscription series: a topic with a subscription and a backlog.
    let pulsar_topic = "persistent://test/monitoring/backlog";
    pulsar.ensure_namespace_of(pulsar_topic);
    let pulsar_broker = PulsarBroker::connect(PulsarOptions::new(pulsar.url()))
        .await
        .expect("connect");
    let pulsar_subscription = pulsar_broker
        .subscribe(SubscribeOptions {
            topic: Topic::parse(pulsar_topic).expect("topic"),
            subscription: "monitoring".into(),
            consumer_name: "monitoring".into(),
            consumer_type: ConsumerType::Shared,
            initial_position: InitialPosition::Earliest,
            receiver_queue_size: 1,
        })
        .await
        .expect("subscribe");
    for n in 0..5 {
        pulsar_broker
            .publish(
                &Topic::parse(pulsar_topic).expect("topic"),
                Message::new(format!("{n}")),
            )
            .await
            .expect("publish");
    }

    // A worker under traffic, with a bridge route in the same process and registry.
    let broker = Arc::new(MemoryBroker::new());
    let metrics = Metrics::new("monitoring");
    let ledger = Arc::new(MemoryCreditLedger::new());
    ledger.set_balance("alice", "db_credits", 1_000);
    let worker = RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .tasks([mixed::task(), write::task()])
            .consumer_name("monitoring")
            .metrics(metrics.clone())
            .verifier(Arc::new(Hs256Verifier::new(Secret::new(KEY.to_vec()))))
            .credit_ledger(ledger)
            .backlog_interval(Duration::from_millis(500)),
    );
    let bridge_in = Topic::parse("q1/monitoring/ns/bridge-in").expect("topic");
    let bridge_subscription = broker
        .subscribe(SubscribeOptions {
            topic: bridge_in.clone(),
            subscription: "bridge-copy".into(),
            consumer_name: "monitoring".into(),
            consumer_type: ConsumerType::Shared,
            initial_position: InitialPosition::Earliest,
            receiver_queue_size: 100,
        })
        .await
        .expect("subscribe");
    let bridge = Bridge::new(vec![Route {
        name: "copy".into(),
        source: Box::new(TopicSource::new(
            Arc::from(bridge_subscription),
            bridge_in.clone(),
            false,
        )),
        target: Arc::new(TopicTarget::new(
            broker.clone(),
            Some(Topic::parse("q1/monitoring/ns/bridge-out").expect("topic")),
        )),
        dead_letters: DeadLetterTopic {
            broker: broker.clone(),
            topic: Topic::parse("q1/monitoring/ns/bridge-dlq").expect("topic"),
        },
        max_in_flight: 64,
        consumer: Arc::from("monitoring"),
        metrics: metrics.route("copy"),
    }]);
    let stop = CancellationToken::new();
    let bridge_run = tokio::spawn(bridge.run(stop.clone(), Duration::from_secs(2)));
    let metrics_port = free_port();
    let served = server::bind(([127, 0, 0, 1], metrics_port).into())
        .await
        .expect("bind the metrics endpoint");
    tokio::spawn(served.serve(metrics.clone(), stop.clone()));
    let traffic = tokio::spawn({
        let broker = broker.clone();
        let token = Hs256Signer::new(Secret::new(KEY.to_vec()))
            .sign("alice", &["db_writer"], Duration::from_secs(600))
            .expect("sign");
        async move {
            for n in 0..600u32 {
                let _ = mixed::enqueue(&*broker, &n).await;
                let _ = write::message(&n)
                    .auth_token(token.clone())
                    .send(&*broker)
                    .await;
                let _ = broker
                    .publish(&bridge_in, Message::new(format!("{n}")))
                    .await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });

    let alerts = repository().join("deploy/prometheus/alerts.yml");
    let jobs = [
        ScrapeJob {
            name: "worker",
            targets: vec![format!("127.0.0.1:{metrics_port}")],
            path: "/metrics",
        },
        ScrapeJob {
            name: "pulsar",
            targets: vec![format!("127.0.0.1:{}", pulsar.web_port())],
            path: "/metrics/",
        },
    ];
    let Some(prometheus) =
        tokio::task::spawn_blocking(move || Prometheus::start(&jobs, &[alerts.as_path()]))
            .await
            .expect("started")
    else {
        return;
    };
    // Enough scrapes for every rate over 1m to have two samples, the Pulsar series included.
    tokio::time::sleep(Duration::from_secs(8)).await;

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repository().join("deploy/grafana/dashboards/worker.json"))
            .expect("read the dashboard"),
    )
    .expect("the dashboard is JSON");
    let problems = tokio::task::block_in_place(|| dashboard_problems(&prometheus, &dashboard));
    assert!(
        problems.is_empty(),
        "dashboard problems:\n{}",
        problems.join("\n")
    );

    // A misspelt metric name fails the same check.
    let typo: Value = serde_json::from_str(
        &dashboard
            .to_string()
            .replace("worker_dead_letters_total", "worker_dead_leters_total"),
    )
    .expect("JSON");
    let problems = tokio::task::block_in_place(|| dashboard_problems(&prometheus, &typo));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("no metric `worker_dead_leters_total`")),
        "the typo went unnoticed: {problems:?}"
    );

    // Every alert rule evaluated, without error, and reads metrics that exist.
    let (_, rules) = tokio::task::block_in_place(|| prometheus.api("/api/v1/rules"));
    let mut alert_problems = Vec::new();
    let mut alert_count = 0;
    for group in rules["data"]["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            alert_count += 1;
            let name = rule["name"].as_str().unwrap_or("?");
            let expr = rule["query"].as_str().unwrap_or_default();
            if rule["health"] != "ok" {
                alert_problems.push(format!(
                    "{name}: health {} {}",
                    rule["health"], rule["lastError"]
                ));
            }
            if let Err(error) = tokio::task::block_in_place(|| query(&prometheus, expr)) {
                alert_problems.push(format!("{name}: {error}"));
            }
            for metric in metric_names(expr) {
                if !tokio::task::block_in_place(|| series_exist(&prometheus, &metric)) {
                    alert_problems.push(format!("{name}: no metric `{metric}`"));
                }
            }
        }
    }
    println!(
        "{alert_count} alert rules, {} dashboard queries checked",
        dashboard_queries(&dashboard).len()
    );
    assert!(alert_count >= 15, "the rules are loaded: {alert_count}");
    assert!(
        alert_problems.is_empty(),
        "alert problems:\n{}",
        alert_problems.join("\n")
    );

    traffic.abort();
    stop.cancel();
    let _ = bridge_run.await;
    worker.stop().await;
    drop(pulsar_subscription);
}
