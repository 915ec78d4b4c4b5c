use super::*;

fn parse(text: &str) -> Result<BridgeConfig, ConfigFileError> {
    BridgeConfig::parse_with_env(text, "worker.toml", &|name| {
        (name == "CACHE_URL").then(|| "redis://:pw@127.0.0.1:6379".to_owned())
    })
}

const GOOD: &str = r#"
[tasks.ingest]
rate_limit = 5

[bridge.brokers.cache]
backend = "memory"

[bridge.brokers.events]
backend = "memory"

[bridge.brokers.both]
backend = "fanout"
brokers = ["cache", "events"]
policy = "first"

[bridge.routes.orders]
source = { broker = "cache", topic = "q1/shop/orders/created", consumer_type = "key_shared" }
target = { broker = "both", topic = "persistent://shop/orders/created" }
max_in_flight = 64

[bridge.routes.to_celery]
source = { broker = "events", topic = "q1/shop/orders/paid", subscription = "bridge-paid" }
target = { broker = "events", topic = "q1/shop/orders/paid-copy" }
dlq = "q1/bridge/dlq/paid"
dlq_broker = "cache"
"#;

#[test]
fn a_complete_section_reads() {
    let config = parse(GOOD).expect("valid");
    assert_eq!(config.brokers.len(), 3);
    assert!(matches!(
        &config.brokers["both"],
        BrokerSpec::Fanout { members, policy: crate::broker::fanout::FanoutPolicy::First }
            if members == &["cache", "events"]
    ));
    let orders = &config.routes[0];
    assert_eq!(orders.name, "orders");
    assert_eq!(orders.max_in_flight, 64);
    assert!(matches!(
        &orders.source,
        SourceSpec::Topic { subscription, consumer_type: ConsumerType::KeyShared, .. }
            if subscription == "bridge-orders"
    ));
    assert_eq!(
        orders.dead_letter_topic().to_string(),
        "persistent://shop/orders/created-dlq"
    );
    assert_eq!(orders.dead_letter_broker(), "both");
    let paid = &config.routes[1];
    assert_eq!(paid.dead_letter_topic().to_string(), "q1/bridge/dlq/paid");
    assert_eq!(paid.dead_letter_broker(), "cache");
    assert_eq!(paid.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
}

#[test]
fn a_file_without_a_bridge_has_no_routes() {
    let config = parse("[tasks.ingest]\nrate_limit = 5\n").expect("valid");
    assert!(config.routes.is_empty() && config.brokers.is_empty());
}

#[test]
fn every_problem_is_reported_with_its_line_and_key() {
    let text = r#"[bridge.brokers.cache]
backend = "valkey"
url_env = "MISSING_URL"

[bridge.brokers.odd]
backend = "kafka"
url = "x"

[bridge.routes.orders]
source = { broker = "cache", list = "orders", subscription = "s" }
target = { broker = "nowhere", topic = "not a topic" }
max_in_flight = 0
colour = "blue"
"#;
    let error = parse(text).expect_err("invalid");
    let shown = error.to_string();
    for expected in [
        "worker.toml:3: broker `cache`: `url_env` names the environment variable `MISSING_URL`, which is not set",
        "worker.toml:6: broker `odd`: `backend` must be one of valkey, pulsar, mqtt, memory, fanout, got \"kafka\"",
        "worker.toml:10: route `orders`: `subscription` applies to topic sources only",
        "worker.toml:11: route `orders`: `topic` topic `not a topic` must look like",
        "worker.toml:12: route `orders`: `max_in_flight` must be a positive integer, got 0",
        "worker.toml:13: route `orders`: `colour` is not a valid key here; valid keys: source, target, dlq, dlq_broker, max_in_flight",
    ] {
        assert!(shown.contains(expected), "missing {expected:?} in:\n{shown}");
    }
}

#[test]
fn references_are_checked() {
    let text = r#"[bridge.brokers.cache]
backend = "memory"

[bridge.routes.orders]
source = { broker = "cache", list = "orders" }
target = { broker = "ghost", topic = "q1/a/b/c" }

[bridge.routes.plain]
source = { broker = "cache", topic = "q1/a/b/c" }
target = { broker = "cache" }
"#;
    let shown = parse(text).expect_err("invalid").to_string();
    for expected in [
        "worker.toml:5: route `orders`: `broker` lists and celery queues live on a valkey broker",
        "worker.toml:6: route `orders`: `broker` names broker `ghost`, which is not defined; defined: cache",
        "worker.toml:10: route `plain`: `target` needs `topic`: only a celery_queue source names each message's topic",
    ] {
        assert!(shown.contains(expected), "missing {expected:?} in:\n{shown}");
    }
}

// A valkey broker is only valid in a build that has the backend.
#[cfg(feature = "valkey")]
#[test]
fn secrets_come_from_the_environment_and_never_print() {
    let text = r#"[bridge.brokers.cache]
backend = "valkey"
url_env = "CACHE_URL"
"#;
    let config = parse(text).expect("valid");
    let shown = format!("{config:?}");
    assert!(!shown.contains("pw"), "{shown}");
    assert!(
        matches!(&config.brokers["cache"], BrokerSpec::Valkey { url, .. } if url.expose() == b"redis://:pw@127.0.0.1:6379")
    );
}

#[test]
fn celery_sources_need_their_task_map() {
    let text = r#"[bridge.brokers.cache]
backend = "valkey"
url = "redis://127.0.0.1:6379"

[bridge.routes.celery_in]
source = { broker = "cache", celery_queue = "celery" }
target = { broker = "cache" }

[bridge.routes.celery_out]
source = { broker = "cache", topic = "q1/a/b/c" }
target = { broker = "cache", celery_queue = "celery" }
"#;
    let shown = parse(text).expect_err("invalid").to_string();
    assert!(
        shown.contains("worker.toml:6: route `celery_in`: `source` needs `tasks`"),
        "{shown}"
    );
    assert!(
        shown.contains("worker.toml:11: route `celery_out`: `target` needs `task`"),
        "{shown}"
    );
}
