//! A db task taking a `TaskContext`, with roles and credits.
#![deny(warnings)]

use worker_runtime::prelude::*;
use worker_runtime::TaskKind;

#[derive(Serialize, Deserialize)]
struct Record {
    key: String,
    value: i64,
}

#[pulsar_db_task(
    topic = "q1/prod/db/writes",
    permission_roles = ["db_writer", "admin"],
    credit_type = "db_credits",
    credit_amount = 2,
    task_timeout = 10,
)]
async fn write_records(records: Vec<Record>, ctx: TaskContext) -> Result<u64, TaskError> {
    let total: i64 = records.iter().map(|record| record.value).sum();
    if total < 0 || ctx.message_id().is_empty() {
        return Err(TaskError::permanent(format!("bad batch from {}", records[0].key)));
    }
    Ok(records.len() as u64)
}

fn main() {
    let config = write_records::config();
    assert_eq!(write_records::task().name(), "write_records");
    assert_eq!(config.kind, TaskKind::Db);
    assert_eq!(config.dlq_topic.to_string(), "q1/prod/db/writes-dlq");
    assert_eq!(config.subscription, "write_records");
    assert_eq!(config.permission_roles, ["db_writer", "admin"]);
    let credits = config.credits.expect("a credit cost");
    assert_eq!((credits.credit_type.as_str(), credits.amount), ("db_credits", 2));
    assert_eq!(config.timeout, std::time::Duration::from_secs(10));
}
