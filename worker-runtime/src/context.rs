//! [`TaskContext`]: what a handler may know about the message it is running for.

use std::fmt;
use std::sync::Arc;

use worker_core::{Broker, BrokerError, Message, MessageId, Properties, Topic};

use crate::auth::Principal;

/// Facts about the delivery a handler runs for, and a way to publish follow-up messages.
///
/// Take it as an optional second parameter of a task fn: `async fn t(p: P, ctx: TaskContext)`.
#[derive(Clone)]
pub struct TaskContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    worker: Arc<WorkerSide>,
    message_id: Arc<str>,
    broker_message_id: MessageId,
    attempt: u32,
    message: Arc<Message>,
    principal: Option<Principal>,
}

/// What every context of one task in one worker shares, behind one reference count rather than
/// one each: a context is made for every delivery, on every thread.
#[derive(Clone)]
pub(crate) struct WorkerSide {
    pub task: &'static str,
    /// The same name, shared: charge keys hold it without copying it.
    pub task_name: Arc<str>,
    pub topic: Arc<str>,
    pub consumer: Arc<str>,
    pub broker: Arc<dyn Broker>,
}

impl WorkerSide {
    /// A copy for one dispatch loop or lane, with reference counts of its own for itself and for
    /// what its deliveries clone (the task's name): counts that every thread moved would move
    /// their cache line from core to core on every delivery.
    pub fn for_one_runner(&self) -> Arc<WorkerSide> {
        Arc::new(WorkerSide {
            task_name: Arc::from(self.task),
            ..self.clone()
        })
    }
}

/// The parts a [`TaskContext`] is made of.
#[doc(hidden)]
pub struct ContextParts {
    pub task: &'static str,
    pub topic: Arc<str>,
    pub message_id: Arc<str>,
    pub broker_message_id: MessageId,
    pub attempt: u32,
    pub message: Arc<Message>,
    pub principal: Option<Principal>,
    pub consumer: Arc<str>,
    pub broker: Arc<dyn Broker>,
}

impl TaskContext {
    /// Builds a context. The worker does this for every delivery; tests of handlers may too.
    pub fn new(parts: ContextParts) -> Self {
        let ContextParts {
            task,
            topic,
            message_id,
            broker_message_id,
            attempt,
            message,
            principal,
            consumer,
            broker,
        } = parts;
        let worker = Arc::new(WorkerSide {
            task,
            task_name: Arc::from(task),
            topic,
            consumer,
            broker,
        });
        TaskContext::for_delivery(
            worker,
            message_id,
            broker_message_id,
            attempt,
            message,
            principal,
        )
    }

    /// The worker's way to build a context: the task's shared side plus this delivery's facts.
    pub(crate) fn for_delivery(
        worker: Arc<WorkerSide>,
        message_id: Arc<str>,
        broker_message_id: MessageId,
        attempt: u32,
        message: Arc<Message>,
        principal: Option<Principal>,
    ) -> Self {
        TaskContext {
            inner: Arc::new(ContextInner {
                worker,
                message_id,
                broker_message_id,
                attempt,
                message,
                principal,
            }),
        }
    }

    /// The task's name.
    pub fn task_name(&self) -> &'static str {
        self.inner.worker.task
    }

    /// The topic the message was consumed from.
    pub fn topic(&self) -> &str {
        &self.inner.worker.topic
    }

    /// The stable, logical id of the message: the same on every attempt and redelivery.
    pub fn message_id(&self) -> &str {
        &self.inner.message_id
    }

    /// The broker's id of this particular delivery; it changes when a retry is republished.
    pub fn broker_message_id(&self) -> &MessageId {
        &self.inner.broker_message_id
    }

    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// Every property of the message.
    pub fn properties(&self) -> &Properties {
        &self.inner.message.properties
    }

    /// One property of the message.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.inner.message.property(name)
    }

    /// The message's key, if it has one.
    pub fn key(&self) -> Option<&str> {
        self.inner.message.key.as_deref()
    }

    /// The verified sender, for db tasks (and io tasks whose messages carry a valid token).
    pub fn principal(&self) -> Option<&Principal> {
        self.inner.principal.as_ref()
    }

    /// The name of the worker consuming the message.
    pub fn consumer_name(&self) -> &str {
        &self.inner.worker.consumer
    }

    /// The broker the worker consumes from, to enqueue follow-up tasks:
    /// `other_task::enqueue(ctx.broker(), &payload).await`.
    pub fn broker(&self) -> &dyn Broker {
        &*self.inner.worker.broker
    }

    /// Publishes a raw message to any topic on the worker's broker.
    pub async fn publish(&self, topic: &Topic, message: Message) -> Result<MessageId, BrokerError> {
        self.inner.worker.broker.publish(topic, message).await
    }
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("TaskContext")
            .field("task", &inner.worker.task)
            .field("topic", &inner.worker.topic)
            .field("message_id", &inner.message_id)
            .field("attempt", &inner.attempt)
            .field("principal", &inner.principal)
            .field("consumer", &inner.worker.consumer)
            .finish_non_exhaustive()
    }
}
