//! One route's forwarding loop: read from the source, publish to the target with many publishes in
//! flight, and tell the source an item is done only once the target confirmed its copy.
//!
//! - **At least once.** An item is done (acked, removed from the processing list) only after the
//!   target, or the route's dead-letter topic, confirmed it. A crash anywhere before means the
//!   source hands it out again.
//! - **Back-pressure.** At most `max_in_flight` items are read and not yet done. A publish that
//!   fails with a transient error is tried again with backoff, holding its place: a target that is
//!   down fills that budget and the route stops reading until it is back, without dropping
//!   anything.
//! - **Order** where the source keeps it (a key_shared, failover or exclusive subscription): items
//!   of one key are published one after another, each only once the previous one was confirmed.
//! - **What the target refuses** (too large, rejected, or a defect the source found) goes to the
//!   route's dead-letter topic with a reason, and the route keeps going.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use worker_core::{BoxFuture, Broker, BrokerError, DeadLetterReason, Topic};

use super::source::{Item, Receipt, Source};
use super::target::Target;
use crate::metrics::RouteMetrics;
use crate::middleware::dead_letter::{
    dead_letter_message, sanitize_error, DeadLetter, MAX_DLQ_ERROR_LEN,
};

/// The first and the longest pause before a failed publish is tried again.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often the source's lag is sampled.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// Where a route's refused messages go.
pub struct DeadLetterTopic {
    /// The broker that holds the topic.
    pub broker: Arc<dyn Broker>,
    /// The topic.
    pub topic: Topic,
}

/// A route, ready to run: a source, a target and what the loop needs.
pub struct Route {
    /// The route's name (metrics label, logs, `wr-dlq-task` of its dead letters as `bridge:{name}`).
    pub name: String,
    /// Where it reads.
    pub source: Box<dyn Source>,
    /// Where it writes.
    pub target: Arc<dyn Target>,
    /// Where refused messages go.
    pub dead_letters: DeadLetterTopic,
    /// The most items read and not yet done: the bounded buffer.
    pub max_in_flight: usize,
    /// This bridge process's name, stamped on dead letters.
    pub consumer: Arc<str>,
    /// The route's series.
    pub metrics: RouteMetrics,
}

/// What one route did, when it stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteReport {
    /// The route.
    pub route: String,
    /// Messages the target confirmed.
    pub forwarded: u64,
    /// Messages sent to the route's dead-letter topic.
    pub dead_lettered: u64,
    /// Publishes that failed and were tried again.
    pub retries: u64,
    /// Items still not done when the route stopped (they come back from the source).
    pub unfinished: u64,
}

/// How a publish ended.
enum Sent {
    /// Confirmed by the target.
    Forwarded,
    /// Confirmed by the dead-letter topic.
    DeadLettered,
    /// Failed with a transient error: try again.
    Failed(BrokerError),
}

type Publish = Pin<Box<dyn Future<Output = (Item, u32, Sent)> + Send>>;

/// Telling the source that items are done: the receipts, and how it went.
type Telling<'a> = BoxFuture<'a, (Vec<Receipt>, Result<(), BrokerError>)>;

impl Route {
    /// Runs until `stop`, then finishes what is in flight within `grace` and closes the source.
    pub async fn run(self, stop: CancellationToken, grace: Duration) -> RouteReport {
        let Route {
            name,
            source,
            target,
            dead_letters,
            max_in_flight,
            consumer,
            metrics,
        } = self;
        let max_in_flight = max_in_flight.max(1);
        let ordered = source.ordered();
        let context = Arc::new(PublishContext {
            route: name.clone(),
            source: source.describe(),
            target,
            dead_letters,
            consumer,
        });
        let mut report = RouteReport {
            route: name.clone(),
            ..RouteReport::default()
        };
        tracing::info!(
            route = %name,
            source = %context.source,
            target = %context.target.describe(),
            max_in_flight,
            ordered,
            "forwarding"
        );

        let mut publishing: FuturesUnordered<Publish> = FuturesUnordered::new();
        let mut keys = KeyOrder::new(ordered);
        // Items read and not done yet: in a publish, or waiting behind their key.
        let mut held = 0usize;
        // Every call to the source is a future kept here and polled with the publishes, never
        // awaited on its own: while one is awaited alone, the publishes sharing its connection
        // would not be polled, and a multiplexed client waits for them.
        let mut reading: Option<BoxFuture<'_, Result<Vec<Item>, BrokerError>>> = None;
        let mut read_resume: Option<Instant> = None;
        let mut read_pause = RETRY_FIRST;
        // Receipts of items done, not yet told to the source; and the telling in flight.
        let mut done: Vec<Receipt> = Vec::new();
        let mut telling: Option<Telling<'_>> = None;
        let mut tell_resume: Option<Instant> = None;
        let mut lagging: Option<BoxFuture<'_, Result<Option<u64>, BrokerError>>> = None;
        let mut lag_tick = tokio::time::interval(LAG_EVERY);
        let mut stopping = false;
        let grace_over = tokio::time::sleep(Duration::MAX);
        tokio::pin!(grace_over);

        loop {
            if !stopping && reading.is_none() && read_resume.is_none() && held < max_in_flight {
                reading = Some(source.read(max_in_flight - held));
            }
            if telling.is_none() && tell_resume.is_none() && !done.is_empty() {
                let receipts = std::mem::take(&mut done);
                let source = &*source;
                telling = Some(Box::pin(async move {
                    let result = source.done(receipts.clone()).await;
                    (receipts, result)
                }));
            }
            if stopping && reading.is_none() && held == 0 && done.is_empty() && telling.is_none() {
                break;
            }
            tokio::select! {
                biased;
                _ = stop.cancelled(), if !stopping => {
                    stopping = true;
                    // Stop reading at once: a subscription's receive gives back what it had not
                    // handed out, and a list read cut short leaves its items in the processing
                    // list, where the next start finds them.
                    reading = None;
                    grace_over.as_mut().reset(Instant::now() + grace);
                }
                _ = &mut grace_over, if stopping => {
                    tracing::warn!(route = %name, unfinished = held, ?grace, "grace period over; leaving the rest to the source");
                    report.unfinished = held as u64;
                    break;
                }
                finished = publishing.next(), if !publishing.is_empty() => {
                    let Some(first) = finished else { continue };
                    // Take every publish that has finished too, so their items are done at once.
                    let mut batch = vec![first];
                    while let Some(Some(next)) = publishing.next().now_or_never() {
                        batch.push(next);
                    }
                    for (item, tries, sent) in batch {
                        match sent {
                            Sent::Forwarded | Sent::DeadLettered => {
                                if matches!(sent, Sent::Forwarded) {
                                    report.forwarded += 1;
                                    metrics.forwarded(latency_of(&item));
                                } else {
                                    report.dead_lettered += 1;
                                    metrics.dead_lettered();
                                }
                                held -= 1;
                                metrics.buffered(-1);
                                if let Some(next) = keys.finished(&item) {
                                    publishing.push(context.publish(next, 0, Duration::ZERO));
                                }
                                done.push(item.receipt);
                            }
                            Sent::Failed(error) => {
                                report.retries += 1;
                                metrics.target_failed();
                                let pause = backoff(tries);
                                if tries == 0 || tries.is_multiple_of(20) {
                                    tracing::warn!(route = %name, message_id = item.message_id(), %error, ?pause, "publishing failed; trying again");
                                }
                                publishing.push(context.publish(item, tries + 1, pause));
                            }
                        }
                    }
                }
                (receipts, told) = poll_some(&mut telling), if telling.is_some() => {
                    telling = None;
                    if let Err(error) = told {
                        if error.is_transient() {
                            // Kept for another try: a source down for a moment must not keep
                            // them, and hand them out again, until the next restart.
                            tracing::warn!(route = %name, %error, count = receipts.len(), "telling the source that items are done failed; trying again");
                            done.extend(receipts);
                            tell_resume = Some(Instant::now() + RETRY_FIRST * 5);
                        } else {
                            // The source hands them out again and they are forwarded twice,
                            // which at least once allows.
                            tracing::warn!(route = %name, %error, count = receipts.len(), "telling the source that items are done failed; they will be forwarded again");
                        }
                    }
                }
                _ = sleep_until_some(tell_resume) => tell_resume = None,
                read = poll_some(&mut reading), if reading.is_some() => {
                    reading = None;
                    match read {
                        Ok(items) => {
                            read_pause = RETRY_FIRST;
                            held += items.len();
                            metrics.buffered(items.len() as i64);
                            for item in items {
                                if let Some(item) = keys.admit(item) {
                                    publishing.push(context.publish(item, 0, Duration::ZERO));
                                }
                            }
                        }
                        Err(error) => {
                            tracing::warn!(route = %name, %error, pause = ?read_pause, "reading the source failed; trying again");
                            read_resume = Some(Instant::now() + read_pause);
                            read_pause = (read_pause * 2).min(RETRY_MAX);
                        }
                    }
                }
                _ = sleep_until_some(read_resume) => read_resume = None,
                lag = poll_some(&mut lagging), if lagging.is_some() => {
                    lagging = None;
                    if let Ok(Some(lag)) = lag {
                        metrics.source_lag(lag);
                    }
                }
                _ = lag_tick.tick(), if lagging.is_none() => lagging = Some(source.lag()),
            }
        }
        drop((publishing, reading, telling, lagging));
        if report.unfinished > 0 {
            metrics.buffered(-(report.unfinished as i64));
        }
        if let Err(error) = source.close().await {
            tracing::warn!(route = %name, %error, "closing the source failed");
        }
        tracing::info!(route = %name, ?report, "stopped");
        report
    }
}

/// Polls the future in `slot`, which the caller checked is there.
async fn poll_some<T>(slot: &mut Option<BoxFuture<'_, T>>) -> T {
    match slot.as_mut() {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What every publish of a route shares.
struct PublishContext {
    route: String,
    source: String,
    target: Arc<dyn Target>,
    dead_letters: DeadLetterTopic,
    consumer: Arc<str>,
}

impl PublishContext {
    /// Publishes `item` after `pause`: to the target, or to the dead-letter topic when the source
    /// found it defective or the target refuses it for good.
    fn publish(self: &Arc<Self>, item: Item, tries: u32, pause: Duration) -> Publish {
        let context = Arc::clone(self);
        Box::pin(async move {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let refusal = match &item.defect {
                Some((reason, why)) => Some((*reason, why.clone())),
                None => context.too_large(&item),
            };
            let refusal = match refusal {
                Some(refusal) => refusal,
                None => match context.target.publish(&item).await {
                    Ok(()) => return (item, tries, Sent::Forwarded),
                    Err(error) if error.is_transient() => {
                        return (item, tries, Sent::Failed(error))
                    }
                    Err(error) => (DeadLetterReason::PermanentError, error.to_string()),
                },
            };
            match context.dead_letter(&item, refusal, tries).await {
                Ok(()) => (item, tries, Sent::DeadLettered),
                Err(error) => (item, tries, Sent::Failed(error)),
            }
        })
    }

    fn too_large(&self, item: &Item) -> Option<(DeadLetterReason, String)> {
        let limit = self.target.max_payload_bytes()?;
        let size = item.message.payload.len();
        (size > limit).then(|| {
            (
                DeadLetterReason::PayloadTooLarge,
                format!("payload of {size} bytes exceeds the target's limit of {limit} bytes"),
            )
        })
    }

    /// Publishes the item's dead-letter copy, with the route as its task.
    async fn dead_letter(
        &self,
        item: &Item,
        (reason, error): (DeadLetterReason, String),
        tries: u32,
    ) -> Result<(), BrokerError> {
        if tries == 0 {
            tracing::warn!(route = %self.route, message_id = item.message_id(), reason = reason.as_str(), %error, "dead-lettering message");
        }
        let error = sanitize_error(&error, MAX_DLQ_ERROR_LEN);
        let task = format!("bridge:{}", self.route);
        let copy = dead_letter_message(
            &item.message,
            &DeadLetter {
                reason,
                error: &error,
                attempts: 1,
                original_topic: &self.source,
                original_message_id: &item.receipt.shown_id(),
                message_id: item.message_id(),
                task: &task,
                consumer: &self.consumer,
                principal: None,
                time: SystemTime::now(),
            },
        );
        let DeadLetterTopic { broker, topic } = &self.dead_letters;
        broker.publish(topic, copy).await.map(drop)
    }
}

/// Keeps each key's items one at a time when the source is ordered.
struct KeyOrder {
    ordered: bool,
    busy: HashSet<Option<String>>,
    waiting: HashMap<Option<String>, VecDeque<Item>>,
}

impl KeyOrder {
    fn new(ordered: bool) -> Self {
        KeyOrder {
            ordered,
            busy: HashSet::new(),
            waiting: HashMap::new(),
        }
    }

    /// `Some(item)` to publish it now, `None` when it waits behind an earlier item of its key.
    fn admit(&mut self, item: Item) -> Option<Item> {
        if !self.ordered {
            return Some(item);
        }
        let key = item.key().map(str::to_owned);
        if self.busy.insert(key.clone()) {
            Some(item)
        } else {
            self.waiting.entry(key).or_default().push_back(item);
            None
        }
    }

    /// The next item of the finished item's key, if one waits.
    fn finished(&mut self, item: &Item) -> Option<Item> {
        if !self.ordered {
            return None;
        }
        let key = item.key().map(str::to_owned);
        let next = self.waiting.get_mut(&key).and_then(VecDeque::pop_front);
        if next.is_none() {
            self.waiting.remove(&key);
            self.busy.remove(&key);
        }
        next
    }
}

/// The pause before try `tries + 1`: doubling from [`RETRY_FIRST`] up to [`RETRY_MAX`].
fn backoff(tries: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(2u32.saturating_pow(tries.min(16)))
        .min(RETRY_MAX)
}

/// From the source's timestamp where it has one (and it is not in the future), else from the read.
fn latency_of(item: &Item) -> Duration {
    item.published
        .and_then(|at| SystemTime::now().duration_since(at).ok())
        .unwrap_or_else(|| item.read_at.elapsed())
}

#[cfg(test)]
mod tests;
