//! One delivery through the pipeline: decode → authorize → charge credits → rate limit →
//! timeout(handler), ending in a [`Verdict`]. Acting on the verdict (ack, retry, dead-letter) is
//! `settle`'s job.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;
use worker_core::{props, DeadLetterReason, Delivery, ErrorKind, Topic};

use crate::auth::Principal;
use crate::context::{TaskContext, WorkerSide};
use crate::credits::{ChargeKey, ChargeOutcome};
use crate::metrics::SharedStore;
use crate::middleware::auth::authorize;
use crate::middleware::circuit_breaker::Outcome;
use crate::middleware::panic::catch_panic;
use crate::middleware::retry::{decide, RetryDecision};
use crate::middleware::timeout::timeout_from;
use crate::task::Task;

use super::env::{RetryMode, TaskEnv};
use super::report::Count;

/// The target of the span every delivery runs in (level DEBUG), for `RUST_LOG` directives.
pub const DELIVERY_SPAN_TARGET: &str = "worker_runtime::delivery";

/// What should happen to a delivery.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// The handler succeeded: ack.
    Succeeded,
    /// The attempt failed and may be tried again after `delay`.
    Retry {
        next_attempt: u32,
        delay: Duration,
        error: String,
    },
    /// Give up: publish a DLQ copy, then ack.
    DeadLetter {
        reason: DeadLetterReason,
        error: String,
    },
    /// Something outside the handler failed (the credit ledger): give the delivery back after
    /// waiting, without counting an attempt.
    GiveBack { after: Duration, error: String },
    /// The message was handled before, within the task's idempotency window: ack, run nothing.
    AlreadyHandled,
}

impl Verdict {
    /// What the circuit breaker counts of it: retryable failures, timeouts, panics and exhausted
    /// retries fail; permanent errors and deliveries given back without an attempt do not count.
    pub fn circuit_outcome(&self) -> Outcome {
        match self {
            Verdict::Succeeded => Outcome::Success,
            Verdict::Retry { .. }
            | Verdict::DeadLetter {
                reason: DeadLetterReason::RetriesExhausted,
                ..
            } => Outcome::Failure,
            Verdict::DeadLetter { .. } | Verdict::GiveBack { .. } | Verdict::AlreadyHandled => {
                Outcome::Neutral
            }
        }
    }
}

/// A delivery's verdict with the facts `settle` needs.
#[derive(Debug)]
pub(crate) struct Processed {
    pub verdict: Verdict,
    /// The attempt that produced the verdict (1-based).
    pub attempt: u32,
    /// The stable message id.
    pub message_id: Arc<str>,
    /// The sender the worker verified, if it verified one (db tasks that check roles or credits).
    pub principal: Option<Principal>,
    /// The charge this delivery made or found standing, which a dead letter refunds. None when
    /// it never got as far as the ledger (undecodable, forbidden, …): such a copy refunds
    /// nothing, whatever id it carries.
    pub charge: Option<ChargeKey>,
}

/// Runs a delivery through the pipeline. On ordered subscriptions a retry happens here, in place.
pub(crate) async fn process<T: Task>(
    env: &TaskEnv,
    delivery: &Delivery,
    context: &Arc<WorkerSide>,
) -> Processed {
    let message_id = stable_id(delivery);
    let readable = match &delivery.defect {
        None => attempt_of(delivery),
        Some(defect) => Err(defect.to_string()),
    };
    let mut attempt = match readable {
        Ok(attempt) => attempt,
        Err(error) => {
            return Processed {
                verdict: Verdict::DeadLetter {
                    reason: DeadLetterReason::DecodeError,
                    error,
                },
                attempt: 1,
                message_id,
                principal: None,
                charge: None,
            }
        }
    };
    if env.config.idempotency_window.is_some() {
        match env.shared.idempotency.seen(env.task, &message_id).await {
            Ok(true) => {
                tracing::debug!(
                    task = env.task,
                    message_id = &*message_id,
                    "handled before; not run again"
                );
                return Processed {
                    verdict: Verdict::AlreadyHandled,
                    attempt,
                    message_id,
                    principal: None,
                    charge: None,
                };
            }
            Ok(false) => {}
            Err(error) => {
                env.metrics.store_error(SharedStore::Idempotency);
                return Processed {
                    verdict: Verdict::GiveBack {
                        after: env.config.retry.retry_delay,
                        error: error.to_string(),
                    },
                    attempt,
                    message_id,
                    principal: None,
                    charge: None,
                };
            }
        }
    }
    // At DEBUG, under a target of its own: at the default `info` a span per delivery would cost
    // the fmt layer's formatting of its fields (about 10,000 instructions and 6 allocations a
    // delivery, more than the rest of the worker's path) for logs that mostly never come. The
    // framework's own events name the task and message id themselves;
    // `RUST_LOG=info,worker_runtime::delivery=debug` adds the span to every event of a handler.
    let span = tracing::debug_span!(
        target: DELIVERY_SPAN_TARGET,
        "delivery",
        task = env.task,
        topic = &*env.topic,
        message_id = &*message_id,
        attempt
    );
    let mut verified = None;
    let mut charged = None;
    let verdict = async {
        let (mut payload, principal) = match admit::<T>(
            env,
            context,
            delivery,
            &message_id,
            &mut verified,
            &mut charged,
        )
        .await
        {
            Ok(admitted) => admitted,
            Err(verdict) => return verdict,
        };
        loop {
            if let Some(limiter) = &env.limiter {
                let waited = tokio::select! {
                    biased;
                    waited = limiter.acquire() => waited,
                    _ = env.stopping.cancelled() => return give_back_now("shutting down"),
                };
                env.metrics.rate_limit_wait(waited);
            }
            let verdict = run_handler::<T>(
                env,
                context,
                delivery,
                payload,
                attempt,
                &message_id,
                &principal,
            )
            .await;
            match verdict {
                Verdict::Retry {
                    next_attempt,
                    delay,
                    error,
                } if env.retry_mode == RetryMode::InPlace => {
                    tracing::info!(
                        task = env.task,
                        message_id = &*message_id,
                        attempt,
                        %error,
                        ?delay,
                        "attempt failed; retrying in place"
                    );
                    env.metrics.retried();
                    env.counters.add(Count::Retried, 1);
                    tokio::select! {
                        biased;
                        _ = tokio::time::sleep(delay) => {}
                        _ = env.stopping.cancelled() => return give_back_now("shutting down"),
                    }
                    attempt = next_attempt;
                    // The payload was moved into the handler; decoding the same bytes succeeds again.
                    payload = match decode::<T>(env, delivery) {
                        Ok(payload) => payload,
                        Err(verdict) => return verdict,
                    };
                }
                verdict => return verdict,
            }
        }
    }
    .instrument(span)
    .await;
    Processed {
        verdict,
        attempt,
        message_id,
        principal: verified,
        charge: charged,
    }
}

fn give_back_now(error: &str) -> Verdict {
    Verdict::GiveBack {
        after: Duration::ZERO,
        error: error.to_owned(),
    }
}

/// The stable id: the property if the producer set one, else the broker's id of this first sighting
/// (redeliveries of the same stored message keep it, and retries carry it forward as the property).
fn stable_id(delivery: &Delivery) -> Arc<str> {
    match delivery.property(props::MESSAGE_ID) {
        Some(id) if !id.is_empty() => Arc::from(id),
        _ => Arc::from(delivery.id.to_string()),
    }
}

fn attempt_of(delivery: &Delivery) -> Result<u32, String> {
    match delivery.property(props::ATTEMPT) {
        None => Ok(1),
        Some(text) => match text.parse::<u32>() {
            Ok(attempt) if attempt >= 1 => Ok(attempt),
            _ => Err(format!(
                "property `{}` must be a positive integer, got {:?}",
                props::ATTEMPT,
                truncate(text, 64)
            )),
        },
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

/// Decode, authorize and charge: the checks that happen once per delivery, before any attempt.
/// The sender, once verified, is also left in `verified` for a dead-letter copy to name, and the
/// charge standing for this delivery in `charged`, for a dead letter to refund.
async fn admit<T: Task>(
    env: &TaskEnv,
    context: &WorkerSide,
    delivery: &Delivery,
    message_id: &Arc<str>,
    verified: &mut Option<Principal>,
    charged: &mut Option<ChargeKey>,
) -> Result<(T::Payload, Option<Principal>), Verdict> {
    let payload = decode::<T>(env, delivery)?;
    let principal = authorize_sender(env, delivery)?;
    verified.clone_from(&principal);
    if let (Some(cost), Some(principal), Some(ledger)) =
        (&env.config.credits, &principal, &env.shared.ledger)
    {
        let key = ChargeKey {
            task: context.task_name.clone(),
            principal: principal.shared_subject(),
            message_id: message_id.clone(),
        };
        match ledger.charge(&key, &cost.credit_type, cost.amount).await {
            Ok(ChargeOutcome::Charged) => {
                env.metrics.credits_charged(&cost.credit_type, cost.amount);
                *charged = Some(key);
            }
            // A redelivery of a message charged before: its dead letter refunds that charge.
            Ok(ChargeOutcome::AlreadyCharged) => *charged = Some(key),
            Ok(ChargeOutcome::Insufficient { available }) => {
                return Err(Verdict::DeadLetter {
                    reason: DeadLetterReason::InsufficientCredits,
                    error: format!(
                        "principal `{}` has {available} `{}` credits, needs {}",
                        principal.subject(),
                        cost.credit_type,
                        cost.amount
                    ),
                });
            }
            Err(error) => {
                env.metrics.store_error(SharedStore::Credits);
                return Err(Verdict::GiveBack {
                    after: env.config.retry.retry_delay,
                    error: error.to_string(),
                });
            }
        }
    }
    Ok((payload, principal))
}

fn decode<T: Task>(env: &TaskEnv, delivery: &Delivery) -> Result<T::Payload, Verdict> {
    let payload = delivery.payload();
    if payload.len() > env.config.max_payload_bytes {
        return Err(Verdict::DeadLetter {
            reason: DeadLetterReason::PayloadTooLarge,
            error: format!(
                "payload of {} bytes exceeds the limit of {} bytes",
                payload.len(),
                env.config.max_payload_bytes
            ),
        });
    }
    serde_json::from_slice(payload).map_err(|error| Verdict::DeadLetter {
        reason: DeadLetterReason::DecodeError,
        error: format!(
            "payload is not a valid `{}`: {error}",
            short_type_name::<T::Payload>()
        ),
    })
}

fn short_type_name<P>() -> &'static str {
    let full = std::any::type_name::<P>();
    let base = full.split('<').next().unwrap_or(full);
    let start = base.rfind("::").map(|i| i + 2).unwrap_or(0);
    &full[start..]
}

/// Db tasks that check roles or charge credits need a verified sender; others need none.
fn authorize_sender(env: &TaskEnv, delivery: &Delivery) -> Result<Option<Principal>, Verdict> {
    let config = &env.config;
    if !config.needs_sender() {
        return Ok(None);
    }
    let forbidden = |error: String| Verdict::DeadLetter {
        reason: DeadLetterReason::Forbidden,
        error,
    };
    let Some(verifier) = env.shared.verifier.as_deref() else {
        return Err(forbidden("the worker has no token verifier".to_owned()));
    };
    let token = delivery.property(props::AUTH_TOKEN);
    match authorize(verifier, token, &config.permission_roles) {
        Ok(principal) => Ok(Some(principal)),
        // AuthError never contains the token, so it is safe to log and to put in the DLQ copy.
        Err(error) => Err(forbidden(error.to_string())),
    }
}

/// One attempt: the handler under panic capture and the per-attempt timeout.
async fn run_handler<T: Task>(
    env: &TaskEnv,
    context: &Arc<WorkerSide>,
    delivery: &Delivery,
    payload: T::Payload,
    attempt: u32,
    message_id: &Arc<str>,
    principal: &Option<Principal>,
) -> Verdict {
    let ctx = TaskContext::for_delivery(
        context.clone(),
        message_id.clone(),
        delivery.id.clone(),
        attempt,
        delivery.message.clone(),
        principal.clone(),
    );
    env.metrics.attempt(attempt);
    let started = Instant::now();
    let result = timeout_from(
        started,
        env.config.timeout,
        catch_panic(T::handle(payload, ctx)),
    )
    .await;
    env.metrics.handler_duration(started.elapsed());
    let (kind, error) = match result {
        Ok(Ok(Ok(output))) => {
            let reply_to = delivery.property(props::REPLY_TO);
            let native = env.shared.broker.wants_reply(&delivery.message);
            if reply_to.is_some() || native {
                // Encode before awaiting so the output need not be `Sync`.
                let encoded = serde_json::to_vec(&output);
                drop(output);
                reply(env, delivery, reply_to, native, message_id, encoded).await;
            }
            return Verdict::Succeeded;
        }
        Ok(Ok(Err(error))) => (error.kind(), error.to_string()),
        Ok(Err(panic)) => {
            env.metrics.panicked();
            (ErrorKind::Retryable, panic.to_string())
        }
        Err(elapsed) => {
            env.metrics.timed_out();
            (ErrorKind::Retryable, elapsed.to_string())
        }
    };
    match decide(&env.config.retry, attempt, kind, fastrand::f64()) {
        RetryDecision::Retry {
            next_attempt,
            delay,
        } => Verdict::Retry {
            next_attempt,
            delay,
            error,
        },
        RetryDecision::DeadLetter(reason) => Verdict::DeadLetter { reason, error },
    }
}

/// Publishes the handler's result where the sender asked: to the `wr-reply-to` topic and, where
/// the backend has its own reply address (MQTT 5's Response Topic), there too. A failure here is
/// logged, not retried: the task itself succeeded and running it again would repeat its effects.
async fn reply(
    env: &TaskEnv,
    delivery: &Delivery,
    reply_to: Option<&str>,
    native: bool,
    message_id: &str,
    encoded: Result<Vec<u8>, serde_json::Error>,
) {
    let payload = match encoded {
        Ok(payload) => payload,
        Err(error) => {
            tracing::warn!(task = env.task, message_id, %error, "not publishing the result: it cannot be encoded as JSON");
            return;
        }
    };
    let message = worker_core::Message::new(payload)
        .with_property(props::MESSAGE_ID, message_id)
        .with_property(props::TASK, env.task);
    let broker = &env.shared.broker;
    if native {
        if let Err(error) = broker
            .publish_reply(&delivery.message, message.clone())
            .await
        {
            tracing::warn!(task = env.task, message_id, %error, "publishing the result to the response topic failed");
        }
    }
    let Some(reply_to) = reply_to else {
        return;
    };
    let topic = match Topic::parse(reply_to) {
        Ok(topic) => topic,
        Err(error) => {
            tracing::warn!(task = env.task, message_id, %error, "not publishing the result: invalid reply topic");
            return;
        }
    };
    if let Err(error) = broker.publish(&topic, message).await {
        tracing::warn!(task = env.task, message_id, %error, topic = %topic, "publishing the result failed");
    }
}
