//! The keeper: the background task that renews leases on what this consumer holds, claims what
//! dead consumers abandoned, and keeps or seeks ownership of failover and exclusive
//! subscriptions.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use worker_core::BrokerError;

use super::{held_key, held_text, millis, Held, Inner, Local};
use crate::broker::valkey::codec::{self, RawEntry};
use crate::broker::valkey::ownership::{Attempt, Ownership};
use crate::broker::valkey::{bad_reply, redis_code, scripts};

impl Inner {
    /// Resets the idle time of everything held that this consumer still owns on the server, and
    /// forgets what it no longer owns (a buffered entry taken over elsewhere is not delivered).
    async fn renew(&self) -> Result<(), BrokerError> {
        let ids: Vec<Arc<str>> = self.local.lock().held.keys().cloned().collect();
        for chunk in ids.chunks(500) {
            let mut invocation = scripts::RENEW.prepare_invoke();
            invocation
                .key(&self.keys.stream)
                .arg(&self.group)
                .arg(&self.consumer);
            for id in chunk {
                invocation.arg(&**id);
            }
            let lost: Vec<String> = self.shared.invoke("renew leases", &invocation).await?;
            if lost.is_empty() {
                continue;
            }
            let mut local = self.local.lock();
            let mut unbuffer = false;
            for id in lost {
                match local.held.remove(id.as_str()) {
                    Some(Held::Buffered) => unbuffer = true,
                    Some(Held::Handed(_)) => {
                        // Acked by a receive whose ack future was dropped, or taken over by
                        // another consumer: either way no longer this consumer's to renew.
                        tracing::debug!(entry = %id, "valkey delivery no longer held here");
                    }
                    None => {}
                }
            }
            if unbuffer {
                let Local { buffer, held } = &mut *local;
                buffer.retain(|d| held.contains_key(held_text(&d.id).as_ref()));
            }
        }
        Ok(())
    }

    /// Claims entries that dead consumers left idle past the visibility timeout, while the buffer
    /// has room. `cursor` carries the scan position from one sweep to the next.
    async fn claim_abandoned(&self, cursor: &mut String) -> Result<(), BrokerError> {
        let options = &self.shared.options;
        for _ in 0..10 {
            let room = self.prefetch.saturating_sub(self.local.lock().buffer.len());
            if room == 0 {
                return Ok(());
            }
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(&self.keys.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(millis(options.visibility_timeout))
                .arg(&*cursor)
                .arg("COUNT")
                .arg(room.min(options.batch_size.max(1)));
            let reply: Value = self.shared.query("claim abandoned", &cmd).await?;
            let (next, entries) =
                codec::autoclaim_reply(reply).map_err(|e| bad_reply("claim abandoned", e))?;
            let fresh: Vec<RawEntry> = {
                let local = self.local.lock();
                entries
                    .into_iter()
                    .filter(|e| e.fields.is_some() && !local.held.contains_key(e.id.as_str()))
                    .collect()
            };
            if !fresh.is_empty() {
                tracing::debug!(stream = %self.keys.stream, consumer = %self.consumer,
                    claimed = fresh.len(), "valkey claimed abandoned deliveries");
            }
            self.buffer_with_counts(fresh).await?;
            *cursor = next;
            if cursor == "0-0" {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The keeper: keeps or seeks ownership (failover, exclusive), renews leases and claims
/// abandoned entries, every quarter of the visibility timeout, until the subscription closes or
/// drops.
pub(super) async fn keep(inner: Arc<Inner>) {
    let period = (inner.shared.options.visibility_timeout / 4)
        .clamp(Duration::from_millis(20), Duration::from_secs(5));
    let mut cursor = "0-0".to_owned();
    loop {
        tokio::select! {
            () = inner.closed.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        if let Some(ownership) = &inner.ownership {
            inner.keep_ownership(ownership).await;
        }
        if let Err(error) = inner.renew().await {
            tracing::debug!(stream = %inner.keys.stream, %error, "valkey lease renewal failed");
        }
        if inner.is_standby() {
            // A standby must not take deliveries it may not hand out.
            continue;
        }
        match inner.claim_abandoned(&mut cursor).await {
            Ok(()) => {}
            Err(error) if redis_code(&error) == Some("NOGROUP") => {
                if let Err(error) = inner.recreate_group().await {
                    tracing::debug!(%error, "valkey could not create the consumer group");
                }
            }
            Err(error) => {
                tracing::debug!(stream = %inner.keys.stream, %error, "valkey claim sweep failed");
            }
        }
    }
}

impl Inner {
    /// Renews this consumer's ownership, takes it when free, or steps down when another consumer
    /// holds it.
    async fn keep_ownership(&self, ownership: &Ownership) {
        match ownership.attempt(&self.shared).await {
            Ok(Attempt::Owner) if ownership.is_active() => {}
            Ok(Attempt::Owner) => {
                if let Err(error) = self.take_over(ownership).await {
                    tracing::warn!(stream = %self.keys.stream, %error,
                        "valkey could not take over the subscription; will retry");
                }
            }
            Ok(Attempt::HeldBy(holder)) => {
                if ownership.is_active() {
                    tracing::warn!(stream = %self.keys.stream, group = %self.group, %holder,
                        "valkey subscription ownership lost to another consumer");
                    ownership.set_active(false);
                    // What waits in the buffer stays pending; the new owner claims it.
                    let mut local = self.local.lock();
                    let Local { buffer, held } = &mut *local;
                    for delivery in buffer.drain(..) {
                        held.remove(&held_key(&delivery.id));
                    }
                }
            }
            // Unknown: the lock's TTL decides, and the next attempt tells.
            Err(error) => {
                tracing::debug!(stream = %self.keys.stream, %error, "valkey ownership check failed");
            }
        }
    }

    /// Becomes the active consumer: first claims everything pending in the group, older than
    /// anything unread, so that it is delivered first and in order.
    pub(super) async fn take_over(&self, ownership: &Ownership) -> Result<(), BrokerError> {
        let batch = self.shared.options.batch_size.max(1);
        let mut cursor = "0-0".to_owned();
        loop {
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(&self.keys.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(0)
                .arg(&cursor)
                .arg("COUNT")
                .arg(batch);
            let reply: Value = self.shared.query("take over pending", &cmd).await?;
            let (next, entries) =
                codec::autoclaim_reply(reply).map_err(|e| bad_reply("take over pending", e))?;
            let entries = entries.into_iter().filter(|e| e.fields.is_some()).collect();
            self.buffer_with_counts(entries).await?;
            if next == "0-0" {
                break;
            }
            cursor = next;
        }
        tracing::debug!(stream = %self.keys.stream, group = %self.group, consumer = %self.consumer,
            "valkey consumer is now the subscription's active one");
        ownership.set_active(true);
        Ok(())
    }
}
