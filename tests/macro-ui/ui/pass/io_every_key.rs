//! An io task with every key, in a crate that denies every warning and requires docs.
#![deny(warnings, missing_docs, missing_debug_implementations)]

use std::time::Duration;

use worker_runtime::prelude::*;
use worker_runtime::{ConsumerType, InitialPosition, TaskKind};

/// A raw event.
#[derive(Debug, Serialize, Deserialize)]
pub struct RawEvent {
    /// Its id.
    pub id: u64,
    /// Its body.
    pub body: String,
}

/// Ingests one event.
#[pulsar_io_task(
    topic = "persistent://prod/ingest/raw-data",
    dlq_topic = "persistent://prod/ingest/raw-data-dead",
    subscription = "ingest-workers",
    rate_limit = 500,
    rate_window = "2m",
    max_retries = 5,
    backoff = 1.5,
    retry_delay = "250ms",
    max_delay = 30,
    jitter = 0.2,
    timeout = "45s",
    concurrency = 16,
    receiver_queue_size = 200,
    consumer_type = "key_shared",
    initial_position = "latest",
    max_payload_bytes = 65536,
)]
pub async fn ingest_data(event: RawEvent) -> Result<u64, TaskError> {
    Ok(event.id + event.body.len() as u64)
}

fn main() {
    let config = ingest_data::config();
    assert_eq!(ingest_data::task().name(), "ingest_data");
    assert_eq!(config.kind, TaskKind::Io);
    assert_eq!(config.topic.to_string(), "persistent://prod/ingest/raw-data");
    assert_eq!(config.dlq_topic.to_string(), "persistent://prod/ingest/raw-data-dead");
    assert_eq!(config.subscription, "ingest-workers");
    let limit = config.rate_limit.expect("a rate limit");
    assert_eq!((limit.messages, limit.window), (500, Duration::from_secs(120)));
    assert_eq!(config.retry.max_retries, 5);
    assert_eq!(config.retry.backoff, 1.5);
    assert_eq!(config.retry.retry_delay, Duration::from_millis(250));
    assert_eq!(config.retry.max_delay, Duration::from_secs(30));
    assert_eq!(config.retry.jitter, 0.2);
    assert_eq!(config.timeout, Duration::from_secs(45));
    assert_eq!(config.concurrency, 16);
    assert_eq!(config.receiver_queue_size, 200);
    assert_eq!(config.consumer_type, ConsumerType::KeyShared);
    assert_eq!(config.initial_position, InitialPosition::Latest);
    assert_eq!(config.max_payload_bytes, 65536);
    assert!(config.validate().is_ok());
}
