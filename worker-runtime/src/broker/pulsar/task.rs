//! The task that owns one subscription's consumer.
//!
//! It hands messages to `receive` through a bounded channel, groups acks, and re-creates the
//! consumer when pulsar-rs gives up on it. Nothing taken from the consumer's stream is dropped:
//! the task first reserves a place in the channel, then takes one message, so every message
//! has somewhere to go, and `receive` only ever awaits the channel (cancel-safe).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use worker_core::{BrokerError, Delivery};

use super::acks::{AckFrame, AckTracker};
use super::consumer::{to_delivery, ConsumerHandle, ConsumerSource, Incoming};
use super::error::{timeout, to_broker_error, BACKEND};
use super::naming::{partition_topic, PulsarMessageId};

/// What travels from the task to `receive`.
pub(super) type Item = Result<Delivery, BrokerError>;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A consumer that lasted this long resets the re-creation backoff when it goes away.
const STABLE_CONSUMER: Duration = Duration::from_secs(30);

/// What the subscription asks of its task.
pub(super) enum Command {
    Ack(Vec<PulsarMessageId>),
    Nack(Vec<PulsarMessageId>),
    Close(oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(oneshot::Sender<Result<(), BrokerError>>),
}

type Build = JoinHandle<Result<Box<dyn ConsumerHandle>, pulsar::Error>>;

/// Starts building a consumer after `delay`, in a task of its own: a subscribe cancelled
/// halfway could leave a consumer registered on the broker that nobody reads, so a build always
/// runs to its end (the client's retry limits bound it). A consumer nobody waits for any more
/// is dropped, which closes it.
pub(super) fn spawn_build(source: &Arc<dyn ConsumerSource>, delay: Duration) -> Build {
    let build = source.build();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        build.await
    })
}

/// Owns the consumer. Ends when the subscription is closed or dropped, flushing acks first.
pub(super) struct ConsumerTask {
    pub source: Arc<dyn ConsumerSource>,
    /// The topic as the task named it, for deliveries.
    pub topic: Arc<str>,
    pub consumer: Option<Box<dyn ConsumerHandle>>,
    pub acks: AckTracker,
    pub deliveries: mpsc::Sender<Item>,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub ack_group_time: Duration,
    pub operation_timeout: Duration,
    /// A consumer being re-created, while `consumer` is `None`.
    pub rebuild: Option<Build>,
    /// Re-creations in a row that failed or whose consumer did not last: the pause before the
    /// next one grows with it, so a broker that keeps dropping the consumer is not hammered.
    pub failures: u32,
    /// When the current consumer was made.
    pub created_at: Instant,
}

enum Event {
    Command(Option<Command>),
    FlushTick,
    Reserved(Option<mpsc::OwnedPermit<Item>>),
    Pulled(Box<Option<Result<Incoming, pulsar::Error>>>),
    Rebuilt(Result<Box<dyn ConsumerHandle>, BrokerError>),
}

impl ConsumerTask {
    pub(super) async fn run(mut self) {
        let mut flush = tokio::time::interval(self.ack_group_time);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut permit: Option<mpsc::OwnedPermit<Item>> = None;
        loop {
            if self.consumer.is_none() && self.rebuild.is_none() {
                self.rebuild = Some(spawn_build(&self.source, backoff(self.failures)));
            }
            let event = tokio::select! {
                biased;
                command = self.commands.recv() => Event::Command(command),
                _ = flush.tick() => Event::FlushTick,
                rebuilt = join(&mut self.rebuild) => Event::Rebuilt(rebuilt),
                reserved = self.deliveries.clone().reserve_owned(), if permit.is_none() => {
                    Event::Reserved(reserved.ok())
                }
                pulled = next_message(&mut self.consumer), if permit.is_some() => {
                    Event::Pulled(Box::new(pulled))
                }
            };
            match event {
                Event::Command(None) | Event::Reserved(None) => {
                    let _ = self.shut_down(false).await;
                    return;
                }
                Event::Command(Some(Command::Close(reply))) => {
                    let result = self.shut_down(false).await;
                    let _ = reply.send(result);
                    return;
                }
                Event::Command(Some(Command::Unsubscribe(reply))) => {
                    let result = self.shut_down(true).await;
                    let _ = reply.send(result);
                    return;
                }
                Event::Command(Some(Command::Ack(ids))) => {
                    for id in &ids {
                        self.acks.ack(id);
                    }
                    if self.acks.should_flush() {
                        self.flush().await;
                    }
                }
                Event::Command(Some(Command::Nack(ids))) => self.nack(ids).await,
                Event::FlushTick => {
                    if self.acks.has_ready() {
                        self.flush().await;
                    }
                }
                Event::Rebuilt(Ok(consumer)) => {
                    tracing::info!(topic = %self.source.topic_name(), "pulsar consumer re-created");
                    self.rebuild = None;
                    self.consumer = Some(consumer);
                    self.created_at = Instant::now();
                    self.flush().await;
                }
                Event::Rebuilt(Err(error)) => {
                    self.rebuild = None;
                    self.failures = self.failures.saturating_add(1);
                    tracing::warn!(topic = %self.source.topic_name(), %error, "re-creating the pulsar consumer failed");
                    if let Some(permit) = permit.take() {
                        permit.send(Err(error));
                    }
                }
                Event::Reserved(Some(reserved)) => permit = Some(reserved),
                Event::Pulled(pulled) => {
                    if let Some(reserved) = permit.take() {
                        self.pulled(*pulled, reserved);
                    }
                }
            }
        }
    }

    fn pulled(
        &mut self,
        pulled: Option<Result<Incoming, pulsar::Error>>,
        reserved: mpsc::OwnedPermit<Item>,
    ) {
        match pulled {
            Some(Ok(message)) => {
                let (id, delivery) = to_delivery(&self.topic, message);
                self.acks.delivered(&id);
                reserved.send(Ok(delivery));
            }
            Some(Err(error)) => {
                tracing::warn!(topic = %self.source.topic_name(), %error, "pulsar consumer error");
                let what = format!("receive from {}", self.source.topic_name());
                reserved.send(Err(to_broker_error(what, error)));
            }
            None => {
                // pulsar-rs gave up reconnecting this consumer: start over. The broker delivers
                // every unacknowledged message again.
                tracing::warn!(topic = %self.source.topic_name(), "pulsar consumer stream ended, re-creating it");
                self.consumer = None;
                self.acks.restart_sequences();
                if self.created_at.elapsed() >= STABLE_CONSUMER {
                    self.failures = 0;
                } else {
                    self.failures = self.failures.saturating_add(1);
                }
                reserved.send(Err(BrokerError::Connection {
                    backend: BACKEND,
                    message: format!(
                        "the consumer of {} lost its connection; subscribing again",
                        self.source.topic_name()
                    ),
                    source: None,
                }));
            }
        }
    }

    /// Sends the ack frames the tracker has ready. pulsar-rs queues them for its consumer engine
    /// (fire and forget); with no consumer they wait for the next one.
    async fn flush(&mut self) {
        let Some(consumer) = self.consumer.as_mut() else {
            return;
        };
        for AckFrame { entry, cumulative } in self.acks.drain() {
            let topic = partition_topic(self.source.topic_name(), entry.partition);
            if let Err(error) = consumer.ack(topic, entry, cumulative).await {
                // The consumer is going away; the broker will deliver these again.
                tracing::warn!(%error, "a pulsar ack could not be queued");
            }
        }
    }

    /// Asks for redelivery of whole entries, after sending every ack that is ready (on exclusive
    /// and failover subscriptions the broker rewinds to the first unacknowledged message).
    async fn nack(&mut self, ids: Vec<PulsarMessageId>) {
        self.flush().await;
        let mut entries = BTreeSet::new();
        for id in &ids {
            self.acks.nack(id);
            entries.insert(id.entry_key());
        }
        let Some(consumer) = self.consumer.as_mut() else {
            return; // a re-created consumer gets every unacknowledged message again anyway
        };
        for entry in entries {
            let topic = partition_topic(self.source.topic_name(), entry.partition);
            if let Err(error) = consumer.nack(topic, entry).await {
                tracing::warn!(%error, "a pulsar nack could not be queued");
            }
        }
    }

    /// Flushes acks, then closes the consumer on the broker (its unacked messages go back to the
    /// subscription).
    /// Flushes acks and closes the consumer, or deletes its subscription with `unsubscribe`.
    async fn shut_down(&mut self, unsubscribe: bool) -> Result<(), BrokerError> {
        self.flush().await;
        if let Some(rebuild) = self.rebuild.take() {
            // A consumer still being made is closed when it is dropped.
            tokio::spawn(rebuild);
        }
        let Some(mut consumer) = self.consumer.take() else {
            return Ok(());
        };
        let (operation, done) = if unsubscribe {
            ("unsubscribe", consumer.unsubscribe())
        } else {
            ("close", consumer.close())
        };
        match tokio::time::timeout(self.operation_timeout, done).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(to_broker_error(
                format!("{operation} the consumer of {}", self.source.topic_name()),
                error,
            )),
            Err(_) => Err(timeout(operation, self.operation_timeout)),
        }
    }
}

fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    FIRST_BACKOFF
        .saturating_mul(1 << failures.min(8))
        .min(MAX_BACKOFF)
}

/// Waits for the consumer being re-created, or forever when none is.
async fn join(rebuild: &mut Option<Build>) -> Result<Box<dyn ConsumerHandle>, BrokerError> {
    let Some(handle) = rebuild.as_mut() else {
        return std::future::pending().await;
    };
    match handle.await {
        Ok(Ok(consumer)) => Ok(consumer),
        Ok(Err(error)) => Err(to_broker_error("subscribe again", error)),
        Err(join_error) => Err(BrokerError::backend(
            BACKEND,
            "the subscribe task failed",
            join_error,
        )),
    }
}

/// The next message of the consumer, or forever pending when there is none.
async fn next_message(
    consumer: &mut Option<Box<dyn ConsumerHandle>>,
) -> Option<Result<Incoming, pulsar::Error>> {
    match consumer.as_mut() {
        Some(consumer) => consumer.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuild_backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(400));
        assert_eq!(backoff(20), MAX_BACKOFF);
    }
}
