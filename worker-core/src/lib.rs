//! The vocabulary every other part of the worker framework speaks.
//!
//! This crate has no async runtime and no broker client. It defines:
//! - [`Broker`] and [`Subscription`], the one trait pair every backend implements;
//! - [`Message`], [`Delivery`] and [`MessageId`], what travels through a broker;
//! - [`Topic`], the three accepted topic forms and their parsing;
//! - [`TaskConfig`] and its parts, the effective configuration of a task;
//! - [`TaskError`] and [`BrokerError`], the error vocabulary;
//! - [`props`], the names of the message properties the framework reads and writes.

#![warn(missing_docs)]

mod broker;
mod config;
mod duration;
mod error;
mod message;
pub mod props;
mod reason;
mod topic;

pub use broker::{
    BoxFuture, Broker, Capabilities, ConsumerType, DelayedDelivery, InitialPosition,
    SubscribeOptions, Subscription,
};
pub use config::{
    default_concurrency, CircuitPolicy, ConfigError, CreditCost, RateLimit, RateLimitScope,
    RetryPolicy, TaskConfig, TaskKind, DEFAULT_CIRCUIT_COOLDOWN, DEFAULT_CIRCUIT_MIN_CALLS,
    DEFAULT_CIRCUIT_PROBES, DEFAULT_CIRCUIT_WINDOW, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_RATE_WINDOW,
    DEFAULT_RECEIVER_QUEUE_SIZE, DEFAULT_TIMEOUT,
};
pub use duration::{format_duration, parse_duration, DurationError};
pub use error::{BrokerError, ErrorKind, TaskError};
pub use message::{Delivery, Message, MessageId, Properties};
pub use reason::DeadLetterReason;
pub use topic::{Topic, TopicError, TopicScheme};
