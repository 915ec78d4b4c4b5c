//! Acting on a [`Verdict`]: ack, republish a delayed retry, or publish a dead-letter copy — and ack
//! the original only after that publish is confirmed, so a crash anywhere means redelivery, never loss.

use std::time::{Duration, SystemTime};

use worker_core::{props, Delivery, Message, Topic};

use crate::credits::{ChargeKey, RefundOutcome};
use crate::metrics::SharedStore;
use crate::middleware::dead_letter::{
    dead_letter_message, sanitize_error, DeadLetter, MAX_DLQ_ERROR_LEN,
};

use super::acks::AckTo;
use super::dispatch::Slot;
use super::env::{RetryMode, TaskEnv};
use super::pipeline::{Processed, Verdict};
use super::report::Count;

/// The first and the longest wait between attempts to publish a retry or a DLQ copy.
const PUBLISH_RETRY_FIRST: Duration = Duration::from_millis(100);
const PUBLISH_RETRY_MAX: Duration = Duration::from_secs(10);

/// Acts on the verdict, acking through `acks`. `slot` is the delivery's concurrency slot; it is
/// released early when a retry waits in the worker, so that a waiting retry holds no slot.
pub(crate) async fn settle(
    env: &TaskEnv,
    delivery: Delivery,
    processed: Processed,
    slot: Option<Slot<'_>>,
    acks: AckTo<'_>,
) {
    let Processed {
        verdict,
        attempt,
        message_id,
        principal,
        charge,
    } = processed;
    match verdict {
        Verdict::Succeeded => {
            if let Some(window) = env.config.idempotency_window {
                // Before the ack: a crash between the two costs one extra run at most.
                record_handled(env, &message_id, window).await;
            }
            acks.ack(delivery.id);
            env.metrics.ok();
            env.counters.add(Count::Succeeded, 1);
        }
        Verdict::AlreadyHandled => {
            acks.ack(delivery.id);
            env.metrics.duplicate();
            env.counters.add(Count::Duplicates, 1);
        }
        Verdict::Retry {
            next_attempt,
            delay,
            error,
        } => {
            tracing::info!(
                task = env.task,
                message_id = &*message_id,
                attempt,
                ?delay,
                error = %sanitize_error(&error, MAX_DLQ_ERROR_LEN),
                "attempt failed; retry scheduled"
            );
            let mut retry = (*delivery.message).clone();
            retry
                .properties
                .insert(props::ATTEMPT.to_owned(), next_attempt.to_string());
            retry
                .properties
                .insert(props::MESSAGE_ID.to_owned(), message_id.to_string());
            match env.retry_mode {
                RetryMode::WorkerDelayed => {
                    if let Some(slot) = slot {
                        slot.release();
                    }
                    tokio::select! {
                        biased;
                        _ = tokio::time::sleep(delay) => {}
                        _ = env.stopping.cancelled() => {
                            give_back(env, delivery, "shutting down during a retry delay").await;
                            return;
                        }
                    }
                    retry.deliver_at = None;
                }
                // In-place retries never reach here; a republish with a delivery time is the
                // right fallback for both.
                RetryMode::BrokerDelayed | RetryMode::InPlace => {
                    retry.deliver_at = Some(SystemTime::now() + delay);
                }
            }
            publish_confirmed(env, &env.config.topic, retry, "retry").await;
            acks.ack(delivery.id);
            env.metrics.retried();
            env.counters.add(Count::Retried, 1);
        }
        Verdict::DeadLetter { reason, error } => {
            let error = sanitize_error(&error, MAX_DLQ_ERROR_LEN);
            tracing::warn!(
                task = env.task,
                message_id = &*message_id,
                reason = reason.as_str(),
                attempts = attempt,
                error = %error,
                "dead-lettering message"
            );
            let copy = dead_letter_message(
                &delivery.message,
                &DeadLetter {
                    reason,
                    error: &error,
                    attempts: attempt,
                    original_topic: &env.topic,
                    original_message_id: &delivery.id,
                    message_id: &message_id,
                    task: env.task,
                    consumer: &env.shared.consumer,
                    principal: principal.as_ref().map(|p| p.subject()),
                    time: SystemTime::now(),
                },
            );
            // Refund first: once the copy is out it may be replayed, and its replay must find the
            // charge refunded to be charged again. A worker dying after the refund leaves the
            // message to be delivered again, charged again and dead-lettered again: never a
            // charge kept for a dead letter, never a replay run unpaid.
            if let Some(charge) = &charge {
                refund(env, charge).await;
            }
            publish_confirmed(env, &env.config.dlq_topic, copy, "dead-letter copy").await;
            acks.ack(delivery.id);
            env.metrics.dead_lettered(reason);
            env.counters.add(Count::DeadLettered, 1);
        }
        Verdict::GiveBack { after, error } => {
            if !after.is_zero() {
                tracing::warn!(task = env.task, message_id = &*message_id, %error, ?after, "giving the message back to the broker");
                tokio::select! {
                    biased;
                    _ = tokio::time::sleep(after) => {}
                    _ = env.stopping.cancelled() => {}
                }
            }
            give_back(env, delivery, &error).await;
        }
    }
}

/// Nacks one delivery so the broker delivers it again.
pub(crate) async fn give_back(env: &TaskEnv, delivery: Delivery, why: &str) {
    env.counters.add(Count::Nacked, 1);
    if let Err(error) = env.subscription.nack(vec![delivery.id]).await {
        // Unacked deliveries come back anyway when the consumer goes away.
        tracing::warn!(task = env.task, %error, why, "nack failed");
    }
}

/// Publishes until the broker confirms. The delivery stays unacked meanwhile; if the worker stops
/// first, shutdown cancels this and the delivery is given back.
async fn publish_confirmed(env: &TaskEnv, topic: &Topic, message: Message, what: &'static str) {
    let mut wait = PUBLISH_RETRY_FIRST;
    loop {
        match env.shared.broker.publish(topic, message.clone()).await {
            Ok(_) => {
                env.breaker.record_publish(true);
                return;
            }
            Err(error) => {
                env.breaker.record_publish(false);
                tracing::warn!(task = env.task, topic = %topic, %error, ?wait, "publishing the {what} failed; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(PUBLISH_RETRY_MAX);
            }
        }
    }
}

/// Records a handled message for its task's idempotency window, trying again until the store
/// answers: acking without the record would let a copy run again. The delivery stays unacked
/// meanwhile; if the worker stops first, shutdown cancels this and the delivery is given back
/// (then it runs again: at least once holds).
async fn record_handled(env: &TaskEnv, message_id: &str, window: Duration) {
    let mut wait = PUBLISH_RETRY_FIRST;
    loop {
        match env
            .shared
            .idempotency
            .record(env.task, message_id, window)
            .await
        {
            Ok(()) => return,
            Err(error) => {
                env.metrics.store_error(SharedStore::Idempotency);
                tracing::warn!(task = env.task, message_id, %error, ?wait, "recording the message as handled failed; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(PUBLISH_RETRY_MAX);
            }
        }
    }
}

/// Returns the credits of a dead-lettered delivery's charge, trying again until the ledger
/// answers. Idempotent in the ledger. The delivery stays unacked meanwhile; if the worker stops
/// first, shutdown cancels this and the delivery is given back, to be refunded when it is
/// dead-lettered again.
async fn refund(env: &TaskEnv, key: &ChargeKey) {
    let Some(ledger) = &env.shared.ledger else {
        return;
    };
    let message_id = &*key.message_id;
    let mut wait = PUBLISH_RETRY_FIRST;
    loop {
        match ledger.refund(key).await {
            Ok(RefundOutcome::Refunded(amount)) => {
                tracing::info!(task = env.task, message_id, amount, "credits refunded");
                return;
            }
            Ok(RefundOutcome::NothingToRefund) => return,
            Err(error) => {
                env.metrics.store_error(SharedStore::Credits);
                tracing::error!(task = env.task, message_id, %error, ?wait, "refunding credits failed; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(PUBLISH_RETRY_MAX);
            }
        }
    }
}
