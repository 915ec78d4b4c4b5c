//! What `#[pulsar_io_task]` and `#[pulsar_db_task]` generate, checked at run time: the effective
//! configuration (durations parsed, defaults applied), the task definition, the registry, typed
//! message building and publishing, and the generated handler.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use worker_runtime::prelude::*;
use worker_runtime::{
    default_concurrency, props, registered_tasks, BoxFuture, BrokerError, Capabilities,
    ConsumerType, ContextParts, DelayedDelivery, ErrorKind, InitialPosition, MessageId,
    RetryPolicy, SubscribeOptions, Subscription, TaskKind, DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_RECEIVER_QUEUE_SIZE, DEFAULT_TIMEOUT,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    item: String,
}

fn order() -> Order {
    Order {
        id: 7,
        item: "lamp".into(),
    }
}

#[pulsar_io_task(topic = "persistent://shop/orders/placed")]
async fn place_order(order: Order) -> Result<(), TaskError> {
    if order.item.is_empty() {
        return Err(TaskError::permanent(std::io::Error::other("no item")));
    }
    Ok(())
}

#[pulsar_io_task(
    topic = "q1/shop/orders/shipped",
    subscription = "shipping",
    rate_limit = 20,
    max_retries = 0,
    backoff = 3,
    retry_delay = "2s",
    max_delay = "1h",
    jitter = 0,
    task_timeout = "1500ms",
    concurrency = 2,
    receiver_queue_size = 10,
    consumer_type = "failover",
    initial_position = "latest",
    max_payload_bytes = 4096
)]
async fn ship_order(order: Order) -> Result<String, std::io::Error> {
    if order.id == 0 {
        return Err(std::io::Error::other("order 0 does not exist"));
    }
    Ok(format!("shipped {}", order.item))
}

#[pulsar_db_task(
    topic = "q2/shop/ledger/entries",
    dlq_topic = "q2/shop/ledger/rejected",
    permission_roles = ["ledger_writer", "auditor"],
    credit_type = "ledger_credits",
    credit_amount = 5,
    rate_limit = 100,
    rate_window = "1s",
)]
async fn record_entry(order: Order, ctx: TaskContext) -> Result<u64, TaskError> {
    Ok(order.id * 100 + u64::from(ctx.attempt()))
}

#[pulsar_db_task(topic = "non-persistent://shop/ledger/audit", timeout = 5)]
async fn audit_entry(order: Order) -> Result<(), TaskError> {
    let _ = order;
    Ok(())
}

#[test]
fn defaults_apply_when_no_key_is_given() {
    let config = place_order::config();
    assert_eq!(config.name, "place_order");
    assert_eq!(config.kind, TaskKind::Io);
    assert_eq!(config.topic.to_string(), "persistent://shop/orders/placed");
    assert_eq!(
        config.dlq_topic.to_string(),
        "persistent://shop/orders/placed-dlq"
    );
    assert_eq!(config.subscription, "place_order");
    assert_eq!(config.rate_limit, None);
    assert_eq!(config.retry, RetryPolicy::default());
    assert_eq!(config.timeout, DEFAULT_TIMEOUT);
    assert_eq!(config.concurrency, default_concurrency());
    assert_eq!(config.receiver_queue_size, DEFAULT_RECEIVER_QUEUE_SIZE);
    assert_eq!(config.consumer_type, ConsumerType::Shared);
    assert_eq!(config.initial_position, InitialPosition::Earliest);
    assert!(config.permission_roles.is_empty());
    assert_eq!(config.credits, None);
    assert_eq!(config.max_payload_bytes, DEFAULT_MAX_PAYLOAD_BYTES);
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn the_topic_every_send_uses_is_made_once_and_lent() {
    let topic = <place_order::Task as Task>::topic();
    assert_eq!(*topic, place_order::config().topic);
    // Lent from the task's static, the same one each time: a send builds no configuration.
    let (std::borrow::Cow::Borrowed(first), std::borrow::Cow::Borrowed(again)) =
        (topic, <place_order::Task as Task>::topic())
    else {
        panic!("the attribute's topic is lent, not made per call");
    };
    assert!(std::ptr::eq(first, again));
}

#[test]
fn every_key_given_is_applied_with_durations_parsed() {
    let config = ship_order::config();
    assert_eq!(config.dlq_topic.to_string(), "q1/shop/orders/shipped-dlq");
    assert_eq!(config.subscription, "shipping");
    let limit = config.rate_limit.expect("a rate limit");
    assert_eq!(limit.messages, 20);
    assert_eq!(limit.window, Duration::from_secs(60), "the default window");
    assert_eq!(
        config.retry,
        RetryPolicy {
            max_retries: 0,
            backoff: 3.0,
            retry_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(3600),
            jitter: 0.0,
        }
    );
    assert_eq!(config.timeout, Duration::from_millis(1500));
    assert_eq!(config.concurrency, 2);
    assert_eq!(config.receiver_queue_size, 10);
    assert_eq!(config.consumer_type, ConsumerType::Failover);
    assert_eq!(config.initial_position, InitialPosition::Latest);
    assert_eq!(config.max_payload_bytes, 4096);
    assert_eq!(config.kind, TaskKind::Io);
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn db_tasks_carry_roles_and_credits() {
    let config = record_entry::config();
    assert_eq!(config.kind, TaskKind::Db);
    assert_eq!(config.dlq_topic.to_string(), "q2/shop/ledger/rejected");
    assert_eq!(config.permission_roles, ["ledger_writer", "auditor"]);
    let credits = config.credits.as_ref().expect("a credit cost");
    assert_eq!(credits.credit_type, "ledger_credits");
    assert_eq!(credits.amount, 5);
    let limit = config.rate_limit.expect("a rate limit");
    assert_eq!(
        (limit.messages, limit.window),
        (100, Duration::from_secs(1))
    );
    assert_eq!(config.validate(), Ok(()));

    let audit = audit_entry::config();
    assert_eq!(audit.kind, TaskKind::Db);
    assert!(audit.permission_roles.is_empty());
    assert_eq!(audit.credits, None);
    assert_eq!(audit.timeout, Duration::from_secs(5));
    assert_eq!(
        audit.dlq_topic.to_string(),
        "non-persistent://shop/ledger/audit-dlq"
    );
}

#[test]
fn definitions_match_the_trait_and_the_config() {
    let definition = ship_order::task();
    assert_eq!(definition.name(), "ship_order");
    assert_eq!(definition.config(), &ship_order::config());
    assert_eq!(<ship_order::Task as Task>::NAME, "ship_order");
    assert_eq!(<ship_order::Task as Task>::config(), ship_order::config());
    let _: fn(ship_order::Payload) -> Order = |payload| payload;
}

#[test]
fn every_declared_task_is_registered() {
    let names: Vec<String> = registered_tasks()
        .iter()
        .map(|definition| definition.name().to_owned())
        .collect();
    for name in ["audit_entry", "place_order", "record_entry", "ship_order"] {
        assert_eq!(
            names.iter().filter(|n| *n == name).count(),
            1,
            "{name} in {names:?}"
        );
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    let registered = registered_tasks()
        .into_iter()
        .find(|definition| definition.name() == "record_entry")
        .expect("record_entry is registered");
    assert_eq!(registered.config(), &record_entry::config());
}

#[test]
fn messages_carry_json_payload_key_and_properties() {
    let message = ship_order::message(&order())
        .key("customer-42")
        .property("source", "checkout")
        .message_id("order-7")
        .into_message()
        .expect("the payload encodes");
    let decoded: Order = serde_json::from_slice(&message.payload).expect("JSON payload");
    assert_eq!(decoded, order());
    assert_eq!(message.key.as_deref(), Some("customer-42"));
    assert_eq!(message.property("source"), Some("checkout"));
    assert_eq!(message.property(props::TASK), Some("ship_order"));
    assert_eq!(message.property(props::MESSAGE_ID), Some("order-7"));
    assert!(message.property(props::ENQUEUED_AT).is_some());
    assert_eq!(message.deliver_at, None);

    let fresh = place_order::message(&order());
    assert!(!fresh.id().is_empty());
    let delayed = place_order::message(&order())
        .delay(Duration::from_secs(30))
        .into_message()
        .expect("the payload encodes");
    assert!(delayed.deliver_at.is_some());
}

/// A broker that records what is published and offers no subscriptions.
#[derive(Default)]
struct RecordingBroker {
    published: Mutex<Vec<(Topic, Message)>>,
}

impl Broker for RecordingBroker {
    fn name(&self) -> &'static str {
        "recording"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: false,
            delayed_delivery: DelayedDelivery::Unsupported,
            history: false,
            consumer_types: &[],
            key_ordering: false,
            nack_redelivery: false,
            redelivers_abandoned: false,
            max_payload_bytes: None,
        }
    }

    fn publish<'a>(
        &'a self,
        topic: &'a Topic,
        message: Message,
    ) -> BoxFuture<'a, Result<MessageId, BrokerError>> {
        Box::pin(async move {
            let mut published = self
                .published
                .lock()
                .map_err(|_| BrokerError::Closed("recording"))?;
            published.push((topic.clone(), message));
            Ok(MessageId::from_u64(published.len() as u64))
        })
    }

    fn subscribe<'a>(
        &'a self,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, BrokerError>> {
        Box::pin(async move {
            Err(BrokerError::Unsupported {
                backend: "recording",
                feature: format!("subscribing to {}", options.topic),
            })
        })
    }
}

#[tokio::test]
async fn enqueue_publishes_to_the_task_topic() {
    let broker = RecordingBroker::default();
    let id = record_entry::enqueue(&broker, &order())
        .await
        .expect("published");
    assert_eq!(id, MessageId::from_u64(1));
    ship_order::message(&order())
        .key("k")
        .send(&broker)
        .await
        .expect("published");
    let published = broker.published.lock().expect("not poisoned");
    assert_eq!(published[0].0.to_string(), "q2/shop/ledger/entries");
    assert_eq!(published[0].1.property(props::TASK), Some("record_entry"));
    assert_eq!(published[1].0.to_string(), "q1/shop/orders/shipped");
    assert_eq!(published[1].1.key.as_deref(), Some("k"));
}

fn context(task: &'static str, attempt: u32) -> TaskContext {
    TaskContext::new(ContextParts {
        task,
        topic: Arc::from("q1/t/ns/topic"),
        message_id: Arc::from("m-1"),
        broker_message_id: MessageId::from_u64(1),
        attempt,
        message: Arc::new(Message::default()),
        principal: None,
        consumer: Arc::from("test-consumer"),
        broker: Arc::new(RecordingBroker::default()),
    })
}

#[tokio::test]
async fn generated_handlers_call_the_fn_and_convert_errors() {
    // The fn itself stays callable.
    assert!(place_order(order()).await.is_ok());

    let output = <record_entry::Task as Task>::handle(order(), context("record_entry", 3))
        .await
        .expect("handled");
    assert_eq!(output, 703, "the context reached the fn");

    let shipped = <ship_order::Task as Task>::handle(order(), context("ship_order", 1)).await;
    assert_eq!(shipped.expect("handled"), "shipped lamp");

    let failed = <ship_order::Task as Task>::handle(
        Order {
            id: 0,
            item: "ghost".into(),
        },
        context("ship_order", 1),
    )
    .await
    .expect_err("order 0 fails");
    assert_eq!(failed.kind(), ErrorKind::Retryable);
    assert_eq!(failed.to_string(), "order 0 does not exist");

    let permanent = <place_order::Task as Task>::handle(
        Order {
            id: 1,
            item: String::new(),
        },
        context("place_order", 1),
    )
    .await
    .expect_err("an empty item fails");
    assert!(permanent.is_permanent(), "the fn's TaskError is kept as is");
}
