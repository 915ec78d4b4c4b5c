//! Hybrid publish: one publish fanned out to several brokers, for consumers on both sides of a
//! migration (a Valkey stream and a Pulsar topic, say).
//!
//! [`FanoutBroker`] is a [`Broker`]: publishes go to every member, subscriptions to the first
//! (primary) one. When a publish counts as confirmed is the [`FanoutPolicy`]:
//! - [`FanoutPolicy::All`]: once every member confirmed it. If one fails, the publish fails (with
//!   that member's error) and the caller's retry publishes to all again, so members that had taken
//!   it get it twice: at least once on every member.
//! - [`FanoutPolicy::First`]: once the primary confirmed it. The copies for the other members wait
//!   in a bounded buffer per member (the publish waits for room when it is full) and are published
//!   in the background, retried with backoff until their member confirms them. The buffer lives in
//!   this process: copies still in it when the process dies are lost for those members, though
//!   the primary holds them.
//!
//! Each member's publishes are counted in `fanout_published_total{broker,status}` (`ok`, `failed`)
//! and its buffer in `fanout_buffered{broker}` when a [`Metrics`] registry is given.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::mpsc;
use worker_core::{
    BoxFuture, Broker, BrokerError, Capabilities, Message, MessageId, SubscribeOptions,
    Subscription, Topic,
};

use crate::metrics::{FanoutMetrics, Metrics};

/// When a fanned-out publish counts as confirmed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FanoutPolicy {
    /// Every member confirmed it.
    #[default]
    All,
    /// The primary confirmed it; the other members' copies are buffered and retried.
    First,
}

impl FanoutPolicy {
    /// Parses `all` or `first`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "all" => Some(FanoutPolicy::All),
            "first" => Some(FanoutPolicy::First),
            _ => None,
        }
    }
}

/// How many copies per member wait at most under [`FanoutPolicy::First`].
pub const DEFAULT_BUFFER: usize = 10_000;

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

struct Member {
    name: String,
    broker: Arc<dyn Broker>,
    metrics: Option<FanoutMetrics>,
    /// Under [`FanoutPolicy::First`], the queue of this (non-primary) member's copies.
    backlog: Option<mpsc::Sender<(Topic, Message)>>,
}

impl Member {
    fn count(&self, ok: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.published(ok);
        }
    }
}

/// One publish to several brokers. See the [module docs](self).
pub struct FanoutBroker {
    members: Vec<Arc<Member>>,
    policy: FanoutPolicy,
    drains: Vec<tokio::task::JoinHandle<()>>,
}

impl FanoutBroker {
    /// Fans out to `members` (`(name, broker)`, the first primary) under `policy`, with per-member
    /// series in `metrics` when given. Must be called within a tokio runtime.
    pub fn new(
        members: Vec<(String, Arc<dyn Broker>)>,
        policy: FanoutPolicy,
        metrics: Option<&Metrics>,
    ) -> Self {
        let mut drains = Vec::new();
        let members = members
            .into_iter()
            .enumerate()
            .map(|(index, (name, broker))| {
                let metrics = metrics.map(|m| m.fanout_member(&name));
                let backlog = (policy == FanoutPolicy::First && index > 0).then(|| {
                    let (sender, receiver) = mpsc::channel(DEFAULT_BUFFER);
                    drains.push(tokio::spawn(drain(
                        name.clone(),
                        broker.clone(),
                        metrics.clone(),
                        receiver,
                    )));
                    sender
                });
                Arc::new(Member {
                    name,
                    broker,
                    metrics,
                    backlog,
                })
            })
            .collect();
        FanoutBroker {
            members,
            policy,
            drains,
        }
    }

    fn primary(&self) -> &Member {
        &self.members[0]
    }
}

/// Publishes one member's buffered copies in order, each retried until confirmed.
async fn drain(
    name: String,
    broker: Arc<dyn Broker>,
    metrics: Option<FanoutMetrics>,
    mut copies: mpsc::Receiver<(Topic, Message)>,
) {
    while let Some((topic, message)) = copies.recv().await {
        let mut pause = RETRY_FIRST;
        loop {
            match broker.publish(&topic, message.clone()).await {
                Ok(_) => {
                    if let Some(metrics) = &metrics {
                        metrics.published(true);
                        metrics.buffered(-1);
                    }
                    break;
                }
                Err(error) => {
                    if let Some(metrics) = &metrics {
                        metrics.published(false);
                    }
                    tracing::warn!(broker = %name, %topic, %error, ?pause, "fanout copy not confirmed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

impl Drop for FanoutBroker {
    fn drop(&mut self) {
        for drain in &self.drains {
            drain.abort();
        }
    }
}

impl Broker for FanoutBroker {
    fn name(&self) -> &'static str {
        "fanout"
    }

    /// The primary's: subscriptions are the primary's.
    fn capabilities(&self) -> Capabilities {
        self.primary().broker.capabilities()
    }

    /// Resolves with the primary's id.
    fn publish<'a>(
        &'a self,
        topic: &'a Topic,
        message: Message,
    ) -> BoxFuture<'a, Result<MessageId, BrokerError>> {
        Box::pin(async move {
            match self.policy {
                FanoutPolicy::All => {
                    let sends = self.members.iter().map(|member| {
                        let message = message.clone();
                        async move {
                            let result = member.broker.publish(topic, message).await;
                            member.count(result.is_ok());
                            result
                        }
                    });
                    let mut results = join_all(sends).await.into_iter();
                    let primary = results.next().unwrap_or(Err(BrokerError::Closed("fanout")));
                    for (member, result) in self.members.iter().skip(1).zip(results) {
                        if let Err(error) = result {
                            tracing::debug!(broker = %member.name, %error, "fanout member refused a copy");
                            return Err(error);
                        }
                    }
                    primary
                }
                FanoutPolicy::First => {
                    let primary = self.primary();
                    let id = primary.broker.publish(topic, message.clone()).await;
                    primary.count(id.is_ok());
                    let id = id?;
                    for member in self.members.iter().skip(1) {
                        let Some(backlog) = &member.backlog else {
                            continue;
                        };
                        if let Some(metrics) = &member.metrics {
                            metrics.buffered(1);
                        }
                        if backlog
                            .send((topic.clone(), message.clone()))
                            .await
                            .is_err()
                        {
                            return Err(BrokerError::Closed("fanout"));
                        }
                    }
                    Ok(id)
                }
            }
        })
    }

    fn subscribe<'a>(
        &'a self,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, BrokerError>> {
        self.primary().broker.subscribe(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::MemoryBroker;
    use worker_core::{ConsumerType, InitialPosition};

    async fn read_one(broker: &MemoryBroker, topic: &Topic) -> Message {
        let subscription = broker
            .subscribe(SubscribeOptions {
                topic: topic.clone(),
                subscription: "check".into(),
                consumer_name: "check".into(),
                consumer_type: ConsumerType::Shared,
                initial_position: InitialPosition::Earliest,
                receiver_queue_size: 10,
            })
            .await
            .expect("subscribe");
        let mut got = subscription.receive(1).await.expect("receive");
        (*got.remove(0).message).clone()
    }

    #[tokio::test(start_paused = true)]
    async fn every_member_gets_each_publish_under_both_policies() {
        for policy in [FanoutPolicy::All, FanoutPolicy::First] {
            let metrics = Metrics::new("c");
            let (a, b) = (Arc::new(MemoryBroker::new()), Arc::new(MemoryBroker::new()));
            let fanout = FanoutBroker::new(
                vec![
                    ("a".into(), a.clone() as Arc<dyn Broker>),
                    ("b".into(), b.clone() as Arc<dyn Broker>),
                ],
                policy,
                Some(&metrics),
            );
            let topic = Topic::parse("q1/t/ns/events").expect("topic");
            fanout
                .publish(&topic, Message::new("hello"))
                .await
                .expect("publish");
            assert_eq!(read_one(&a, &topic).await.payload, "hello");
            assert_eq!(read_one(&b, &topic).await.payload, "hello");
            let text = metrics.encode();
            assert!(
                text.contains("fanout_published_total{broker=\"b\",status=\"ok\"} 1"),
                "{text}"
            );
            assert!(text.contains("fanout_buffered{broker=\"b\"} 0"), "{text}");
        }
    }
}
