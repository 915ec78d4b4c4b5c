//! `dlq TASK [--replay [--token T]] [--limit N]`: a task's dead-letter queue from the command line.

use std::sync::Arc;

use worker_core::Broker;

use super::args::DlqArgs;
use super::error::CliError;
use crate::auth::TokenVerifier;
use crate::dead_letters::{inspect, replay};
use crate::middleware::auth::authorize;
use crate::TaskDefinition;

/// Lists (or replays) the dead letters of the task `args` names, on `broker`. A replay to a task
/// that verifies senders needs `args.token`, which `verifier` (when the command line has the key)
/// checks against the task's roles first, so that a wrong token does not send every replayed
/// message back to the DLQ.
pub(super) async fn run(
    args: &DlqArgs,
    tasks: &[TaskDefinition],
    broker: Arc<dyn Broker>,
    verifier: Option<&dyn TokenVerifier>,
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
        let token = args
            .token
            .as_ref()
            .map(|secret| String::from_utf8_lossy(secret.expose()).into_owned());
        if config.needs_sender() {
            let Some(token) = token.as_deref() else {
                return Err(CliError::ReplayNeedsToken(config.name.clone()).into());
            };
            if let Some(verifier) = verifier {
                authorize(verifier, Some(token), &config.permission_roles).map_err(|source| {
                    CliError::ReplayTokenRefused {
                        task: config.name.clone(),
                        source,
                    }
                })?;
            }
        }
        let count = replay(
            &*broker,
            &config.dlq_topic,
            &config.topic,
            args.limit,
            token.as_deref(),
        )
        .await?;
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
