//! The delay mover: appends due delayed messages to their stream.
//!
//! A delayed message waits as one member of the topic's sorted set, scored by its due time. The
//! move of each due member (`XADD` to the stream, then `ZREM`) happens inside one Lua script, so
//! a mover that dies, or a connection that breaks, mid-move leaves every message either still
//! waiting or in the stream, never both and never neither. Any number of processes may run the
//! mover on the same topic at once: each script sees the others' effects whole.
//!
//! Who moves: the maintenance task of every broker that consumes the topic, every
//! [`super::ValkeyOptions::delayed_poll_interval`], and each `receive` before it blocks.

use std::time::SystemTime;

use worker_core::BrokerError;

use super::codec::{unix_millis, MEMBER_PREFIX_LEN};
use super::{scripts, Shared, TopicKeys};

/// Moves every delayed message of `keys` that is due now; returns how many it moved.
pub(super) async fn move_due(shared: &Shared, keys: &TopicKeys) -> Result<u64, BrokerError> {
    let batch = shared.options.batch_size.max(1);
    let mut moved = 0;
    loop {
        let mut invocation = scripts::MOVE_DUE.prepare_invoke();
        invocation
            .key(&keys.delayed)
            .key(&keys.stream)
            .arg(unix_millis(SystemTime::now()))
            .arg(batch)
            .arg(MEMBER_PREFIX_LEN);
        let count: u64 = shared
            .invoke("move due delayed messages", &invocation)
            .await?;
        moved += count;
        if count < batch as u64 {
            return Ok(moved);
        }
    }
}
