//! Broker backends.

#[cfg(feature = "valkey")]
pub mod valkey;
