//! The start-up checks: tasks after `--config` and `--tasks`, the verification key, and whether
//! the tasks need one.

use std::path::Path;

use worker_core::ConfigError;

use super::args::Cli;
use super::config_file::apply_overrides;
use super::error::CliError;
use crate::auth::Secret;
use crate::TaskDefinition;

/// Applies `--config` (when given) and checks every task, then keeps the `--tasks` selection.
pub fn prepare_tasks(
    cli: &Cli,
    mut tasks: Vec<TaskDefinition>,
) -> Result<Vec<TaskDefinition>, CliError> {
    match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| CliError::ReadConfig {
                path: path.clone(),
                source,
            })?;
            apply_overrides(&mut tasks, &text, &path.display().to_string())?;
        }
        None => {
            let errors: Vec<ConfigError> = tasks
                .iter()
                .filter_map(|t| t.config().validate().err())
                .flatten()
                .collect();
            if !errors.is_empty() {
                return Err(CliError::InvalidTaskConfig(errors));
            }
        }
    }
    select_tasks(tasks, &cli.tasks)
}

/// Keeps the tasks named in `selection` (all when it is empty), in their order.
fn select_tasks(
    tasks: Vec<TaskDefinition>,
    selection: &[String],
) -> Result<Vec<TaskDefinition>, CliError> {
    let wanted: Vec<&str> = selection
        .iter()
        .map(|name| name.trim())
        .filter(|name| !name.is_empty())
        .collect();
    if wanted.is_empty() {
        return Ok(tasks);
    }
    let mut unknown: Vec<String> = wanted
        .iter()
        .filter(|name| !tasks.iter().any(|t| t.name() == **name))
        .map(|name| (*name).to_owned())
        .collect();
    if !unknown.is_empty() {
        unknown.dedup();
        let known = tasks.iter().map(|t| t.name().to_owned()).collect();
        return Err(CliError::UnknownTasks { unknown, known });
    }
    Ok(tasks
        .into_iter()
        .filter(|t| wanted.contains(&t.name()))
        .collect())
}

/// The verification key from `--jwt-secret` or `--jwt-secret-file`, if either is given.
pub(super) fn load_secret(cli: &Cli) -> Result<Option<Secret>, CliError> {
    if let Some(secret) = &cli.jwt_secret {
        if secret.expose().is_empty() {
            return Err(CliError::EmptySecret("--jwt-secret / WORKER_JWT_SECRET"));
        }
        return Ok(Some(secret.clone()));
    }
    let Some(path) = &cli.jwt_secret_file else {
        return Ok(None);
    };
    read_secret_file(path).map(Some)
}

/// Reads a key file, without one trailing `\n` or `\r\n` that editors add.
fn read_secret_file(path: &Path) -> Result<Secret, CliError> {
    let mut bytes = std::fs::read(path).map_err(|source| CliError::ReadSecret {
        path: path.to_owned(),
        source,
    })?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(CliError::EmptySecret(
            "--jwt-secret-file / WORKER_JWT_SECRET_FILE",
        ));
    }
    Ok(Secret::new(bytes))
}

/// Db tasks that check roles or charge credits need a verified sender; refuse to start without a
/// verifier rather than dead-letter every message as forbidden.
pub(super) fn check_verifier(
    tasks: &[TaskDefinition],
    have_verifier: bool,
) -> Result<(), CliError> {
    if have_verifier {
        return Ok(());
    }
    let needing: Vec<String> = tasks
        .iter()
        .map(TaskDefinition::config)
        .filter(|c| c.needs_sender())
        .map(|c| c.name.clone())
        .collect();
    if needing.is_empty() {
        Ok(())
    } else {
        Err(CliError::NoVerifier(needing))
    }
}
