//! Two tasks for the command-line tests, declared by hand as the attributes would.

use worker_core::{CircuitPolicy, CreditCost, RateLimit, TaskConfig, TaskError, TaskKind, Topic};

use crate::{Task, TaskContext, TaskDefinition};

/// An io task with a rate limit.
pub(crate) struct Ingest;

impl Task for Ingest {
    type Payload = String;
    type Output = ();
    const NAME: &'static str = "ingest";

    fn config() -> TaskConfig {
        let topic = Topic::parse("persistent://prod/ingest/raw").expect("valid topic");
        let mut config = TaskConfig::new(Self::NAME, TaskKind::Io, topic);
        config.rate_limit = Some(RateLimit {
            messages: 500,
            window: std::time::Duration::from_secs(60),
        });
        config
    }

    async fn handle(_payload: String, _ctx: TaskContext) -> Result<(), TaskError> {
        Ok(())
    }
}

/// A db task with roles and credits.
pub(crate) struct WriteRecords;

impl Task for WriteRecords {
    type Payload = Vec<u64>;
    type Output = u64;
    const NAME: &'static str = "write_records";

    fn config() -> TaskConfig {
        let topic = Topic::parse("q1/prod/db/writes").expect("valid topic");
        let mut config = TaskConfig::new(Self::NAME, TaskKind::Db, topic);
        config.permission_roles = vec!["db_writer".into()];
        config.credits = Some(CreditCost {
            credit_type: "db_credits".into(),
            amount: 2,
        });
        config.circuit = Some(CircuitPolicy::new(Some(5), Some(0.5)));
        config.idempotency_window = Some(std::time::Duration::from_secs(3600));
        config
    }

    async fn handle(payload: Vec<u64>, _ctx: TaskContext) -> Result<u64, TaskError> {
        Ok(payload.len() as u64)
    }
}

/// Both tasks, sorted by name as [`crate::registered_tasks`] returns them.
pub(crate) fn tasks() -> Vec<TaskDefinition> {
    vec![
        TaskDefinition::of::<Ingest>(),
        TaskDefinition::of::<WriteRecords>(),
    ]
}
