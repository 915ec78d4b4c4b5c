//! Broker backends, one module per backend, none referring to another.
//!
//! - [`memory`]: the embedded in-process broker, the default, so that `cargo run` and `cargo test`
//!   need nothing installed.
//! - `pulsar` (feature `pulsar`): Apache Pulsar through pulsar-rs.
//! - `valkey` (feature `valkey`): Valkey or Redis streams.
//! - `mqtt` (feature `mqtt`): an MQTT 5 broker through rumqttc.

pub mod fanout;
pub mod memory;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "pulsar")]
pub mod pulsar;
#[cfg(feature = "valkey")]
pub mod valkey;

#[cfg(feature = "pulsar")]
pub use self::pulsar::{PulsarBroker, PulsarOptions};
#[cfg(feature = "valkey")]
pub use self::valkey::{ValkeyBroker, ValkeyOptions};
pub use fanout::{FanoutBroker, FanoutPolicy};
pub use memory::{MemoryBroker, MemoryBrokerOptions};
#[cfg(feature = "mqtt")]
pub use mqtt::{MqttBroker, MqttOptions};
