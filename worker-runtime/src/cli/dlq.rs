//! `dlq TASK [--replay] [--limit N]`: a task's dead-letter queue from the command line.

use std::sync::Arc;

use worker_core::Broker;

use super::args::DlqArgs;
use super::error::CliError;
use crate::dead_letters::{inspect, replay};
use crate::TaskDefinition;

/// Lists (or replays) the dead letters of the task `args` names, on `broker`.
pub(super) async fn run(
    args: &DlqArgs,
    tasks: &[TaskDefinition],
    broker: Arc<dyn Broker>,
) -> anyhow::Result<()> {
    let Some(task) = tasks.iter().find(|t| t.name() == args.task) else {
        return Err(CliError::UnknownTasks {
            unknown: vec![args.task.clone()],
            known: tasks.iter().map(|t| t.name().to_owned()).collect(),
        }
        .into());
    };
    let config = task.config();
    if args.replay {
        let count = replay(&*broker, &config.dlq_topic, &config.topic, args.limit).await?;
        println!(
            "replayed {count} dead letter(s) from {} to their original topic",
            config.dlq_topic
        );
        return Ok(());
    }
    let records = inspect(&*broker, &config.dlq_topic, args.limit).await?;
    println!("{} dead letter(s) in {}", records.len(), config.dlq_topic);
    for record in &records {
        println!(
            "- {} | {} after {} attempt(s) | {} | {}",
            record.message_id.as_deref().unwrap_or("-"),
            record.reason.map_or("-", |r| r.as_str()),
            record
                .attempts
                .map_or_else(|| "?".to_owned(), |a| a.to_string()),
            record.time.as_deref().unwrap_or("-"),
            record.error
        );
    }
    Ok(())
}
