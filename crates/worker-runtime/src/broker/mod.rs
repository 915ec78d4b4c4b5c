//! Broker backends, one module per backend, none referring to another.
//!
//! - [`memory`]: the embedded in-process broker, the default, so that `cargo run` and `cargo test`
//!   need nothing installed.

pub mod memory;

pub use memory::{MemoryBroker, MemoryBrokerOptions};
