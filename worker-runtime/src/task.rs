//! What a task is to the runtime: the [`Task`] trait the attributes implement, the type-erased
//! [`TaskDefinition`] the worker runs, and the registry that finds every task linked into a binary.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use worker_core::{TaskConfig, TaskError, Topic};

use crate::context::TaskContext;
use crate::worker::{run_task, TaskReport, TaskRun, WorkerError};

/// A task: a payload type, a handler and its configuration. `#[pulsar_io_task]` and
/// `#[pulsar_db_task]` implement it on a hidden type beside the handler fn; you rarely write it
/// yourself.
pub trait Task: Send + Sync + 'static {
    /// What the handler takes, decoded from JSON.
    type Payload: DeserializeOwned + Send + 'static;
    /// What the handler returns on success, encoded as JSON when a reply is asked for.
    type Output: Serialize + Send + 'static;
    /// The task's name, the handler fn's name.
    const NAME: &'static str;

    /// The configuration the attribute declared, defaults filled in.
    fn config() -> TaskConfig;

    /// The topic of [`Task::config`], which every [`Enqueue::send`](crate::Enqueue::send)
    /// publishes to. The attribute makes it once and lends it, instead of building the whole
    /// configuration for each message sent; this default builds it each time.
    fn topic() -> Cow<'static, Topic> {
        Cow::Owned(Self::config().topic)
    }

    /// Runs the handler once.
    fn handle(
        payload: Self::Payload,
        ctx: TaskContext,
    ) -> impl Future<Output = Result<Self::Output, TaskError>> + Send;
}

/// A task ready to be run by a worker: its effective configuration and its type-erased handler.
#[derive(Clone)]
pub struct TaskDefinition {
    config: TaskConfig,
    runner: Arc<dyn ErasedTask>,
}

impl TaskDefinition {
    /// The definition of task `T` with the configuration its attribute declared.
    pub fn of<T: Task>() -> Self {
        TaskDefinition {
            config: T::config(),
            runner: Arc::new(Runner::<T>(PhantomData)),
        }
    }

    /// The task's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The effective configuration.
    pub fn config(&self) -> &TaskConfig {
        &self.config
    }

    /// The configuration, to override values before the worker starts.
    pub fn config_mut(&mut self) -> &mut TaskConfig {
        &mut self.config
    }

    /// Replaces the configuration (builder style).
    pub fn with_config(mut self, config: TaskConfig) -> Self {
        self.config = config;
        self
    }

    pub(crate) fn run(
        &self,
        run: TaskRun,
    ) -> crate::BoxFuture<'static, Result<TaskReport, WorkerError>> {
        self.runner.run(run)
    }
}

impl fmt::Debug for TaskDefinition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskDefinition")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Runs one task's consumer loop without naming its type.
trait ErasedTask: Send + Sync {
    fn run(&self, run: TaskRun) -> crate::BoxFuture<'static, Result<TaskReport, WorkerError>>;
}

struct Runner<T>(PhantomData<fn() -> T>);

impl<T: Task> ErasedTask for Runner<T> {
    fn run(&self, run: TaskRun) -> crate::BoxFuture<'static, Result<TaskReport, WorkerError>> {
        Box::pin(run_task::<T>(run))
    }
}

/// An entry in the registry of tasks linked into the binary. The attributes submit one per task.
#[doc(hidden)]
pub struct Registration {
    definition: fn() -> TaskDefinition,
}

impl Registration {
    #[doc(hidden)]
    pub const fn new(definition: fn() -> TaskDefinition) -> Self {
        Registration { definition }
    }
}

inventory::collect!(Registration);

/// Every task declared with an attribute in any crate linked into this binary, sorted by name.
pub fn registered_tasks() -> Vec<TaskDefinition> {
    let mut tasks: Vec<TaskDefinition> = inventory::iter::<Registration>
        .into_iter()
        .map(|registration| (registration.definition)())
        .collect();
    tasks.sort_by(|a, b| a.name().cmp(b.name()));
    tasks
}
