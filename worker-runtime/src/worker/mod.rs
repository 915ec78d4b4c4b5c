//! The worker: consumes every task's topic and drives each message through the pipeline
//! (decode → authorize → charge credits → rate limit → concurrency → timeout(handler)) to an ack, a
//! delayed retry or the dead-letter queue.
//!
//! ```no_run
//! # async fn demo(tasks: Vec<worker_runtime::TaskDefinition>) -> Result<(), worker_runtime::worker::WorkerError> {
//! use std::sync::Arc;
//! use worker_runtime::broker::MemoryBroker;
//! use worker_runtime::worker::Worker;
//!
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let report = Worker::builder()
//!     .broker(Arc::new(MemoryBroker::new()))
//!     .tasks(tasks)
//!     .build()?
//!     .run(shutdown)
//!     .await?;
//! println!("{report:?}");
//! # Ok(()) }
//! ```

mod acks;
mod builder;
mod consumer_name;
mod dispatch;
mod env;
mod pipeline;
mod report;
mod run;
mod settle;

pub use builder::{Worker, WorkerBuilder, WorkerError};
pub use report::{TaskReport, WorkerReport};

pub(crate) use run::{run_task, TaskRun};

pub use acks::ACK_RETRY_LIMIT;

pub use builder::{DEFAULT_BACKLOG_INTERVAL, DEFAULT_SHUTDOWN_GRACE};
pub use consumer_name::default_consumer_name;
pub use pipeline::DELIVERY_SPAN_TARGET;
pub use tokio_util::sync::CancellationToken;
