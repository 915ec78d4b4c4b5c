//! One task's consumer: subscribe, dispatch deliveries until shutdown, then wind down in order —
//! wait for in-flight handlers within the grace period, drop the rest, flush acks, give back every
//! unsettled delivery, close the subscription.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use worker_core::{SubscribeOptions, Subscription, TaskConfig};

use crate::context::WorkerSide;
use crate::dead_letters;
use crate::middleware::circuit_breaker::CircuitBreaker;
use crate::middleware::rate_limit::{RateLimiter, TaskLimiter};
use crate::task::Task;

use super::acks::start_ack_flusher;
use super::builder::WorkerError;
use super::dispatch::Dispatch;
use super::env::{RetryMode, TaskEnv, WorkerShared};
use super::report::{Counters, TaskReport};

const SUBSCRIBE_RETRY_FIRST: Duration = Duration::from_millis(200);
const SUBSCRIBE_RETRY_MAX: Duration = Duration::from_secs(10);

/// What one task's consumer loop needs from the worker.
pub struct TaskRun {
    config: TaskConfig,
    shared: Arc<WorkerShared>,
    stop: CancellationToken,
}

impl TaskRun {
    pub(crate) fn new(
        config: TaskConfig,
        shared: Arc<WorkerShared>,
        stop: CancellationToken,
    ) -> Self {
        TaskRun {
            config,
            shared,
            stop,
        }
    }
}

/// Runs task `T`'s consumer until `stop` is cancelled.
pub(crate) async fn run_task<T: Task>(run: TaskRun) -> Result<TaskReport, WorkerError> {
    let TaskRun {
        config,
        shared,
        stop,
    } = run;
    let Some(subscription) = subscribe(&config, &shared, &stop).await? else {
        return Ok(Counters::default().report(T::NAME));
    };
    if let Err(error) = dead_letters::keep(&*shared.broker, &config.dlq_topic).await {
        // Dead-lettering still works; only copies the broker drops for want of a reader are at
        // risk until the `dlq` command has read the topic once.
        tracing::warn!(task = T::NAME, dlq = %config.dlq_topic, %error, "could not subscribe the dead-letter readers");
    }
    shared.subscribed();
    let metrics = shared.metrics.task(T::NAME, &config.topic.to_string());
    metrics.configured(config.concurrency, config.timeout, &config.subscription);
    let sampler = tokio::spawn(sample_backlog(
        Arc::downgrade(&subscription),
        metrics.clone(),
        shared.backlog_interval,
    ));
    let breaker = CircuitBreaker::new(T::NAME, config.circuit, Box::new(metrics.clone()));
    let (acks, flusher) = start_ack_flusher(subscription.clone(), T::NAME, metrics.clone());
    let topic: Arc<str> = Arc::from(config.topic.to_string());
    let context = Arc::new(WorkerSide {
        task: T::NAME,
        task_name: Arc::from(T::NAME),
        topic: topic.clone(),
        consumer: shared.consumer.clone(),
        broker: shared.broker.clone(),
    });
    let env = Arc::new(TaskEnv {
        task: T::NAME,
        topic,
        context,
        retry_mode: TaskEnv::retry_mode(&config, &shared.capabilities),
        limiter: config
            .rate_limit
            .map(|limit| task_limiter(T::NAME, limit, config.rate_limit_scope, &shared)),
        metrics,
        counters: Counters::default(),
        subscription: subscription.clone(),
        acks,
        stopping: stop,
        breaker,
        shared,
        config,
    });
    let (unsettled_sender, mut unsettled) = mpsc::unbounded_channel();
    let dispatch = Arc::new(Dispatch {
        env: env.clone(),
        tracker: TaskTracker::new(),
        abort: Arc::new(CancellationToken::new()),
        unsettled: unsettled_sender,
    });
    // If this future is dropped (the worker aborted), its handlers stop too, releasing the
    // subscription so the broker redelivers what they held — as if the process had died.
    let _abort_handlers_if_dropped = CancellationToken::clone(&dispatch.abort).drop_guard();
    tracing::info!(
        task = T::NAME,
        topic = %env.config.topic,
        subscription = %env.config.subscription,
        consumer = %env.shared.consumer,
        consumer_type = env.config.consumer_type.as_str(),
        concurrency = env.config.concurrency,
        "consuming"
    );
    if env.retry_mode == RetryMode::InPlace {
        dispatch.clone().lanes::<T>().await;
    } else {
        dispatch.clone().pool::<T>().await;
    }

    // Shutdown: fetching has stopped. Let in-flight handlers finish within the grace period.
    dispatch.tracker.close();
    let grace = env.shared.grace;
    if tokio::time::timeout(grace, dispatch.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            task = T::NAME,
            ?grace,
            "grace period over; stopping unfinished handlers"
        );
        dispatch.abort.cancel();
        dispatch.tracker.wait().await;
    }
    let mut give_back = Vec::new();
    while let Ok(id) = unsettled.try_recv() {
        give_back.push(id);
    }
    let mut report = env.counters.report(T::NAME);
    report.nacked += give_back.len() as u64;
    // Dropping the last handles to the ack sender lets the flusher send what is queued and end.
    drop(dispatch);
    drop(env);
    if let Err(error) = flusher.await {
        tracing::error!(task = T::NAME, %error, "the ack flusher failed");
    }
    if !give_back.is_empty() {
        tracing::info!(
            task = T::NAME,
            count = give_back.len(),
            "giving unfinished deliveries back to the broker"
        );
        if let Err(error) = subscription.nack(give_back).await {
            tracing::warn!(task = T::NAME, %error, "nack at shutdown failed; the broker redelivers them when the consumer closes");
        }
    }
    sampler.abort();
    if let Err(error) = subscription.close().await {
        tracing::warn!(task = T::NAME, %error, "closing the subscription failed");
    }
    tracing::info!(task = T::NAME, ?report, "stopped");
    Ok(report)
}

/// The task's limiter: this worker's own, or its share of the global one (the builder checked
/// that the worker has the store a global one needs).
fn task_limiter(
    task: &'static str,
    limit: worker_core::RateLimit,
    scope: worker_core::RateLimitScope,
    shared: &WorkerShared,
) -> TaskLimiter {
    #[cfg(feature = "valkey")]
    if scope == worker_core::RateLimitScope::Global {
        if let Some(limits) = &shared.global_rate_limits {
            return TaskLimiter::Global(limits.limiter(task, limit));
        }
    }
    let _ = (task, scope, shared);
    TaskLimiter::Local(RateLimiter::new(limit))
}

/// Samples the subscription's backlog into `metrics` every `every`, for as long as the task runs.
/// It holds the subscription weakly: a worker that is dropped (as a crash would) must release its
/// subscription, so that the broker delivers what it held to others.
async fn sample_backlog(
    subscription: std::sync::Weak<dyn Subscription>,
    metrics: crate::metrics::TaskMetrics,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(subscription) = subscription.upgrade() else {
            return;
        };
        match subscription.backlog().await {
            Ok(backlog) => metrics.backlog(backlog),
            Err(error) => tracing::debug!(%error, "sampling the backlog failed"),
        }
    }
}

/// Subscribes, retrying transient failures until `stop`. `None` if stopped first.
async fn subscribe(
    config: &TaskConfig,
    shared: &WorkerShared,
    stop: &CancellationToken,
) -> Result<Option<Arc<dyn Subscription>>, WorkerError> {
    let options = SubscribeOptions {
        topic: config.topic.clone(),
        subscription: config.subscription.clone(),
        consumer_name: shared.consumer.to_string(),
        consumer_type: config.consumer_type,
        initial_position: config.initial_position,
        receiver_queue_size: config.receiver_queue_size,
    };
    let mut pause = SUBSCRIBE_RETRY_FIRST;
    loop {
        let attempt = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(None),
            attempt = shared.broker.subscribe(options.clone()) => attempt,
        };
        match attempt {
            Ok(subscription) => return Ok(Some(Arc::from(subscription))),
            Err(error) if error.is_transient() => {
                tracing::warn!(task = %config.name, topic = %config.topic, %error, ?pause, "subscribing failed; trying again");
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(SUBSCRIBE_RETRY_MAX);
            }
            Err(source) => {
                return Err(WorkerError::Subscribe {
                    task: config.name.clone(),
                    topic: config.topic.to_string(),
                    source,
                })
            }
        }
    }
}
