//! Broker backends.

#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "mqtt")]
pub use mqtt::{MqttBroker, MqttOptions};
