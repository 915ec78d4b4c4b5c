//! Settling: acks, nacks (back to the front of the buffer, the server's counter raised), and
//! giving everything held back to the group on close.

use std::borrow::Cow;

use worker_core::{BrokerError, Delivery, MessageId};

use super::{held_key, held_text, millis, Held, Inner, Local};
use crate::broker::valkey::scripts;

impl Inner {
    pub(super) async fn xack(&self, ids: &[impl redis::ToRedisArgs]) -> Result<(), BrokerError> {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&self.keys.stream).arg(&self.group).arg(ids);
        self.shared.query::<i64>("ack", &cmd).await.map(drop)
    }

    pub(super) async fn ack(&self, ids: Vec<MessageId>) -> Result<(), BrokerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let keys: Vec<Cow<'_, str>> = ids.iter().map(held_text).collect();
        let texts: Vec<&str> = keys.iter().map(|k| k.as_ref()).collect();
        let acked = self.xack(&texts).await;
        let released: Vec<Held> = {
            let mut local = self.local.lock();
            let mut released = Vec::with_capacity(texts.len());
            let mut unbuffer = false;
            for text in &texts {
                if let Some(held) = local.held.remove(*text) {
                    unbuffer |= matches!(held, Held::Buffered);
                    released.push(held);
                }
            }
            if unbuffer {
                let Local { buffer, held } = &mut *local;
                buffer.retain(|d| held.contains_key(held_text(&d.id).as_ref()));
            }
            released
        };
        // Their messages are freed here, not while the buffer is locked.
        drop(released);
        // On failure the entries are forgotten all the same: no longer renewed, they are
        // reclaimed after the visibility timeout and delivered again (at least once), instead of
        // staying pending with this consumer for as long as it lives.
        acked
    }

    pub(super) async fn nack(&self, ids: Vec<MessageId>) -> Result<(), BrokerError> {
        // Give them back to this consumer's buffer at once (they stay in its PEL), in order.
        let requeued: Vec<Delivery> = {
            let mut local = self.local.lock();
            let mut requeued = Vec::new();
            for id in &ids {
                let key = held_key(id);
                if let Some(held) = local.held.get_mut(&key) {
                    if let Held::Handed(delivery) = std::mem::replace(held, Held::Buffered) {
                        requeued.push(Delivery {
                            redelivery_count: delivery.redelivery_count.saturating_add(1),
                            ..delivery
                        });
                    }
                }
            }
            for delivery in requeued.iter().rev() {
                local.buffer.push_front(delivery.clone());
            }
            requeued
        };
        if requeued.is_empty() {
            return Ok(());
        }
        // Keep the server's delivery counter in step (the counter is the count plus one).
        let mut pipe = redis::pipe();
        for delivery in &requeued {
            pipe.cmd("XCLAIM")
                .arg(&self.keys.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(0)
                .arg(delivery.id.to_string())
                .arg("RETRYCOUNT")
                .arg(delivery.redelivery_count.saturating_add(1))
                .arg("JUSTID")
                .ignore();
        }
        if let Err(error) = self
            .shared
            .pipeline::<()>("count a redelivery", &pipe)
            .await
        {
            // The deliveries are back in the buffer either way; only the counter lags.
            tracing::debug!(%error, "valkey could not raise the delivery counter on nack");
        }
        Ok(())
    }

    pub(super) async fn close(&self) -> Result<(), BrokerError> {
        // Waits for a receive in flight, which sees `closed` and returns.
        let mut reader = self.reader.lock().await;
        reader.connection = None;
        *self.local.lock() = Local::default();
        if let Some(ownership) = &self.ownership {
            if let Err(error) = ownership.release(&self.shared).await {
                // A standby takes over when the lock expires instead.
                tracing::warn!(stream = %self.keys.stream, %error,
                    "valkey could not give up the subscription's ownership");
            }
        }
        let mut invocation = scripts::RELEASE.prepare_invoke();
        invocation
            .key(&self.keys.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(millis(self.shared.options.visibility_timeout));
        match self
            .shared
            .invoke::<u64>("release on close", &invocation)
            .await
        {
            Ok(released) => {
                if released > 0 {
                    tracing::debug!(stream = %self.keys.stream, released,
                        "valkey gave unacked deliveries back on close");
                }
            }
            Err(error) => {
                // They still come back, after the visibility timeout.
                tracing::warn!(stream = %self.keys.stream, %error,
                    "valkey could not give deliveries back on close");
            }
        }
        Ok(())
    }
}
