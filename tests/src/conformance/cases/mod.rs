//! The cases, one async function each, all taking the harness. Each checks the backend's declared
//! capabilities to decide what it must observe, and prints one summary line.

mod abandoned;
mod basics;
mod cancel;
mod delayed;
mod history;
mod ordering;
mod payload;
mod restart;
mod sharing;

pub use abandoned::abandoned_redelivery;
pub use basics::{ack_is_final, nack_redelivers, publish_and_consume};
pub use cancel::receive_cancel_safety;
pub use delayed::delayed_delivery;
pub use history::earliest_position;
pub use ordering::key_order;
pub use payload::large_payload;
pub use restart::broker_restart;
pub use sharing::{consumer_types, fan_out, shared_split};
