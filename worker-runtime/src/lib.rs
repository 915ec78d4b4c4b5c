//! Message-driven task workers on Apache Pulsar, Valkey, MQTT or an embedded broker.
//!
//! Write a plain `async fn`, put `#[pulsar_io_task(...)]` or `#[pulsar_db_task(...)]` on it, and make
//! [`cli::run`] the whole `main` of a worker binary. Every message then goes through decoding, role
//! checks and credit charging (db tasks), rate limiting, bounded concurrency and a per-attempt
//! timeout; failures are retried with exponential backoff and end, with their provenance, in a
//! dead-letter topic. See the README for the guided tour.

#![warn(missing_docs)]

pub mod auth;
pub mod bridge;
pub mod broker;
pub mod celery;
pub mod cli;
#[cfg(any(feature = "mqtt", feature = "valkey"))]
mod content_id;
mod context;
pub mod credits;
pub mod dead_letters;
mod enqueue;
pub mod idempotency;
pub mod metrics;
pub mod middleware;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod prelude;
mod task;
pub mod worker;

pub use context::{ContextParts, TaskContext};
pub use enqueue::{Enqueue, EnqueueError};
pub use task::{registered_tasks, Task, TaskDefinition};
pub use worker_core::*;
pub use worker_macros::{pulsar_db_task, pulsar_io_task};

/// What the attributes expand to. Not a stable API: names here may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::enqueue::{EncodeAs, Enqueue, EnqueueError};
    pub use crate::task::{Registration, Task, TaskDefinition};
    pub use crate::TaskContext;
    pub use inventory;
    pub use serde;
    pub use worker_core::{
        Broker, CircuitPolicy, ConsumerType, CreditCost, InitialPosition, MessageId, RateLimit,
        RateLimitScope, TaskConfig, TaskError, TaskKind, Topic,
    };

    /// Parses a topic literal the attribute already validated at compile time.
    pub fn topic(text: &str) -> Topic {
        match Topic::parse(text) {
            Ok(topic) => topic,
            // The attribute rejects every literal this parser rejects, with the same parser.
            Err(error) => panic!("topic literal validated at compile time is invalid: {error}"),
        }
    }

    /// Checks that a handler's future is `Send`; the attribute calls it with the fn's span.
    pub fn assert_send<F: core::future::Future + Send>(future: F) -> F {
        future
    }
}
