//! Replaying a route: forwarding a topic's history again, from a position, through a
//! subscription of its own that is deleted at the end.
//!
//! The replay reads the route's source topic from its first retained message with an exclusive
//! subscription (`bridge-{route}-replay-{ms}`), in order, skips what lies before the position
//! (earlier than a time, or before a message id), and publishes the rest to the route's target one
//! by one, each confirmed before the next. It ends when nothing arrives for
//! [`ReplayOptions::quiet`] or after [`ReplayOptions::limit`] messages. A dry run reads and counts
//! the same messages and publishes nothing. Lists and Celery queues keep no history, and neither
//! does MQTT: their routes cannot be replayed.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use worker_core::{
    BrokerError, ConsumerType, Delivery, InitialPosition, SubscribeOptions, Subscription,
};

use super::source::{Item, Receipt};
use super::{BridgeConfig, BridgeError, Brokers, SourceSpec};
use crate::metrics::Metrics;

/// Where a replay starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayFrom {
    /// The first message the topic retains.
    Earliest,
    /// The first message published at or after this time.
    Time(SystemTime),
    /// This message (the broker's id: a Pulsar position, a Valkey entry id) and what follows it.
    MessageId(String),
}

impl FromStr for ReplayFrom {
    type Err = std::convert::Infallible;

    /// `earliest`, an RFC 3339 time (`2026-12-01T08:00:00Z`), or else a message id.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("earliest") {
            return Ok(ReplayFrom::Earliest);
        }
        Ok(match humantime::parse_rfc3339_weak(text) {
            Ok(time) => ReplayFrom::Time(time),
            Err(_) => ReplayFrom::MessageId(text.to_owned()),
        })
    }
}

/// How a replay runs.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Count what would be forwarded, forward nothing.
    pub dry_run: bool,
    /// Forward (or count) at most this many.
    pub limit: Option<u64>,
    /// The replay ends when nothing arrives for this long.
    pub quiet: Duration,
    /// The consumer name of the replay's subscription.
    pub consumer: String,
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Messages read before the position and skipped.
    pub skipped: u64,
    /// Messages forwarded (or, in a dry run, that would have been).
    pub forwarded: u64,
    /// Messages the target refused for good (logged, not dead-lettered).
    pub refused: u64,
    /// For a message-id position: whether that message was found.
    pub position_found: bool,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

/// Replays route `route` of `config` from `from`.
pub async fn replay_route(
    config: &BridgeConfig,
    route: &str,
    from: &ReplayFrom,
    options: &ReplayOptions,
) -> Result<ReplayReport, BridgeError> {
    let Some(spec) = config.routes.iter().find(|r| r.name == route) else {
        let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        return Err(BridgeError::UnknownRoute(
            route.to_owned(),
            names.join(", "),
        ));
    };
    let SourceSpec::Topic { broker, topic, .. } = &spec.source else {
        return Err(BridgeError::Unsupported(format!(
            "route `{route}` reads a list or a celery queue, which keep no history to replay"
        )));
    };
    let brokers = Brokers::connect(config, &Metrics::new(&options.consumer)).await?;
    let source = brokers.get(broker)?.broker.clone();
    if !source.capabilities().history {
        return Err(BridgeError::Unsupported(format!(
            "route `{route}` reads from {}, which keeps no history to replay",
            source.name()
        )));
    }
    let consumer: Arc<str> = Arc::from(options.consumer.as_str());
    let target = brokers.target(spec, &consumer)?;
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let subscription = source
        .subscribe(SubscribeOptions {
            topic: topic.clone(),
            subscription: format!("bridge-{route}-replay-{stamp}"),
            consumer_name: options.consumer.clone(),
            consumer_type: ConsumerType::Exclusive,
            initial_position: InitialPosition::Earliest,
            receiver_queue_size: 256,
        })
        .await
        .map_err(|source| BridgeError::Source {
            route: route.to_owned(),
            source,
        })?;
    let report = forward_history(&*subscription, &*target, from, options).await;
    // The replay's subscription goes with it, so the broker keeps nothing for it.
    if let Err(error) = subscription.unsubscribe().await {
        tracing::warn!(route, %error, "deleting the replay's subscription failed");
    }
    report.map_err(|source| BridgeError::Source {
        route: route.to_owned(),
        source,
    })
}

async fn forward_history(
    subscription: &dyn Subscription,
    target: &dyn super::Target,
    from: &ReplayFrom,
    options: &ReplayOptions,
) -> Result<ReplayReport, BrokerError> {
    let mut report = ReplayReport {
        dry_run: options.dry_run,
        position_found: !matches!(from, ReplayFrom::MessageId(_)),
        ..ReplayReport::default()
    };
    let limit = options.limit.unwrap_or(u64::MAX);
    while report.forwarded < limit {
        let batch = match tokio::time::timeout(options.quiet, subscription.receive(256)).await {
            Err(_) => break,
            Ok(batch) => batch?,
        };
        let mut done = Vec::with_capacity(batch.len());
        for delivery in batch {
            if report.forwarded >= limit {
                // Left unacked: the subscription is deleted anyway.
                break;
            }
            done.push(delivery.id.clone());
            if !reached(from, &delivery, &mut report.position_found) {
                report.skipped += 1;
                continue;
            }
            report.forwarded += 1;
            if options.dry_run {
                continue;
            }
            let item = Item::from_delivery(delivery);
            if !publish_confirmed(target, &item).await {
                report.forwarded -= 1;
                report.refused += 1;
            }
        }
        subscription.ack(done).await?;
    }
    Ok(report)
}

/// Whether `delivery` lies at or after the position. For a message id, `found` remembers that
/// it was seen.
fn reached(from: &ReplayFrom, delivery: &Delivery, found: &mut bool) -> bool {
    match from {
        ReplayFrom::Earliest => true,
        ReplayFrom::Time(at) => delivery
            .publish_time
            .is_none_or(|published| published >= *at),
        ReplayFrom::MessageId(id) => {
            if !*found && delivery.id.to_string() == *id {
                *found = true;
            }
            *found
        }
    }
}

/// Publishes until the target confirms; `false` if it refuses for good.
async fn publish_confirmed(target: &dyn super::Target, item: &Item) -> bool {
    let mut pause = Duration::from_millis(100);
    loop {
        match target.publish(item).await {
            Ok(()) => return true,
            Err(error) if error.is_transient() => {
                tracing::warn!(message_id = item.message_id(), %error, ?pause, "replaying a message failed; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                tracing::warn!(message_id = item.message_id(), %error, "the target refused a replayed message");
                return false;
            }
        }
    }
}

impl Item {
    /// The item of a delivery read from a topic, with its stable id set as a route would.
    pub(crate) fn from_delivery(delivery: Delivery) -> Item {
        let mut message = Arc::unwrap_or_clone(delivery.message);
        if message
            .property(worker_core::props::MESSAGE_ID)
            .is_none_or(str::is_empty)
        {
            message.properties.insert(
                worker_core::props::MESSAGE_ID.to_owned(),
                delivery.id.to_string(),
            );
        }
        // A delivery time that has passed means nothing to the target any more.
        message.deliver_at = message.deliver_at.filter(|at| *at > SystemTime::now());
        Item {
            message,
            receipt: Receipt::Delivery(delivery.id),
            topic: None,
            defect: delivery
                .defect
                .map(|why| (worker_core::DeadLetterReason::DecodeError, why.to_string())),
            published: delivery.publish_time,
            read_at: tokio::time::Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse() {
        assert_eq!("earliest".parse(), Ok(ReplayFrom::Earliest));
        assert!(matches!(
            "2026-12-01T08:00:00Z".parse(),
            Ok(ReplayFrom::Time(_))
        ));
        assert_eq!(
            "1733000000000-0".parse(),
            Ok(ReplayFrom::MessageId("1733000000000-0".into()))
        );
    }
}
