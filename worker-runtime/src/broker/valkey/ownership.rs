//! The single active consumer of a failover or exclusive subscription.
//!
//! Streams have no notion of an active consumer, so one is elected with a lock key per group
//! (`<stream>:owner:<group>`, see [`super::TopicKeys::owner`]) holding the owner's token with a
//! TTL of the visibility timeout. The owner renews it every quarter of that; the others (standbys)
//! try to take it as often. Only the owner reads; a standby's `receive` waits. A new owner first
//! claims everything still pending in the group (what the previous owner left unacked, older
//! than anything unread) and only then reads new entries, so the group's order holds across a
//! takeover. An exclusive subscription is refused while another consumer holds the lock; a
//! worker restarted under the same consumer name takes its own lock back at once.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use worker_core::BrokerError;

use super::{scripts, Shared, TopicKeys};

/// The outcome of one attempt to take or keep the lock.
pub(super) enum Attempt {
    /// This consumer owns the lock (again) for one more TTL.
    Owner,
    /// Another consumer does; its token (`<id>@<consumer name>`).
    HeldBy(String),
}

/// One consumer's side of the election.
pub(super) struct Ownership {
    key: String,
    token: String,
    consumer: String,
    active: watch::Sender<bool>,
}

impl Ownership {
    pub(super) fn new(keys: &TopicKeys, group: &str, consumer: &str) -> Self {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        Ownership {
            key: keys.owner(group),
            token: format!("{unique}@{consumer}"),
            consumer: consumer.to_owned(),
            active: watch::Sender::new(false),
        }
    }

    /// Takes the lock if it is free (or this consumer's), or renews it if held.
    pub(super) async fn attempt(&self, shared: &Shared) -> Result<Attempt, BrokerError> {
        let ttl = u64::try_from(shared.options.visibility_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = scripts::ACQUIRE_OWNERSHIP.prepare_invoke();
        invocation
            .key(&self.key)
            .arg(&self.token)
            .arg(ttl.max(1))
            .arg(&self.consumer);
        let reply: redis::Value = shared.invoke("take ownership", &invocation).await?;
        Ok(match reply {
            redis::Value::Int(1) => Attempt::Owner,
            other => Attempt::HeldBy(super::codec::text(other).unwrap_or_default()),
        })
    }

    /// Gives the lock up, if this consumer holds it, so that a standby takes over soon.
    pub(super) async fn release(&self, shared: &Shared) -> Result<(), BrokerError> {
        self.active.send_replace(false);
        let mut invocation = scripts::RELEASE_OWNERSHIP.prepare_invoke();
        invocation.key(&self.key).arg(&self.token);
        shared
            .invoke::<i64>("release ownership", &invocation)
            .await
            .map(drop)
    }

    pub(super) fn is_active(&self) -> bool {
        *self.active.borrow()
    }

    pub(super) fn set_active(&self, active: bool) {
        self.active.send_replace(active);
    }

    /// Waits until this consumer is the owner, or `closed`. Cancel safe.
    pub(super) async fn wait_active(&self, closed: &CancellationToken) {
        let mut changes = self.active.subscribe();
        tokio::select! {
            () = closed.cancelled() => {}
            _ = changes.wait_for(|active| *active) => {}
        }
    }
}
