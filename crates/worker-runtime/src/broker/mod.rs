//! Broker backends.

#[cfg(feature = "pulsar")]
pub mod pulsar;
#[cfg(feature = "pulsar")]
pub use self::pulsar::{PulsarBroker, PulsarOptions};
