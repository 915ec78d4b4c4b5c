//! The broker's periodic work on the topics it consumes: moving due delayed messages and trimming
//! streams.
//!
//! Trimming never drops an entry some consumer group still needs. For each group the bound is its
//! oldest pending entry or, with nothing pending, the entry after its last delivered one; the
//! stream is cut (`XTRIM MINID`) below the smallest bound. The bounds and the cut are computed in
//! one Lua script, so no group can be created or read in between. A stream without groups is not
//! trimmed, so a first subscription from the earliest position still sees its history. Publishing
//! never trims (`XADD` without `MAXLEN`).

use std::sync::Weak;
use std::time::Duration;

use tokio::time::Instant;
use worker_core::BrokerError;

use super::{delayed, scripts, Shared, TopicKeys};

/// Runs until the broker is gone (the task is also aborted when the broker drops).
pub(super) async fn run(shared: Weak<Shared>) {
    let Some((poll, trim_every)) = shared.upgrade().map(|s| {
        let poll = s
            .options
            .delayed_poll_interval
            .max(Duration::from_millis(10));
        (poll, s.options.trim_interval)
    }) else {
        return;
    };
    let mut next_trim = trim_every.map(|every| Instant::now() + every);
    loop {
        tokio::time::sleep(poll).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let topics = shared.consumed_topics();
        for keys in &topics {
            if let Err(error) = delayed::move_due(&shared, keys).await {
                tracing::debug!(stream = %keys.stream, %error, "valkey delay mover failed; will retry");
            }
        }
        if let (Some(at), Some(every)) = (next_trim, trim_every) {
            if Instant::now() >= at {
                next_trim = Some(Instant::now() + every);
                for keys in &topics {
                    match trim(&shared, keys).await {
                        Ok(0) => {}
                        Ok(removed) => {
                            tracing::debug!(stream = %keys.stream, removed, "valkey stream trimmed");
                        }
                        Err(error) => {
                            tracing::debug!(stream = %keys.stream, %error, "valkey trim failed; will retry");
                        }
                    }
                }
            }
        }
    }
}

/// Trims one stream below what every consumer group still needs; returns how many entries went.
pub(super) async fn trim(shared: &Shared, keys: &TopicKeys) -> Result<u64, BrokerError> {
    let mut invocation = scripts::TRIM.prepare_invoke();
    invocation.key(&keys.stream);
    shared.invoke("trim stream", &invocation).await
}
