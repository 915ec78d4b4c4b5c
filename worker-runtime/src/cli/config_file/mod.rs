//! The configuration override file (`--config worker.toml`): change any key of any task at start-up,
//! without recompiling.
//!
//! ```toml
//! [tasks.ingest_data]
//! rate_limit = 1000        # messages per rate_window
//! rate_window = "30s"      # durations: whole seconds (30) or "500ms", "30s", "2m", "1h", "1d"
//! max_retries = 5
//! timeout = 10             # alias: task_timeout
//! topic = "persistent://staging/ingest/raw-data"
//!
//! [tasks.write_records]
//! permission_roles = ["db_writer", "admin"]
//! credit_amount = 3
//! ```
//!
//! The keys and value forms are the attribute's: see [`KEYS`]. A key left out keeps the value the
//! attribute gave. Overriding `topic` moves the dead-letter topic along when it was the default
//! `{topic}-dlq`; `rate_window` alone changes the window of an existing limit; `credit_type` alone
//! on a task without credits charges 1 per message.
//!
//! [`apply_overrides`] reports every problem of the file at once (unknown tasks, unknown keys,
//! values of the wrong type or out of range, and combinations [`TaskConfig::validate`] refuses),
//! each with its line, task and key, and changes nothing unless the whole file is acceptable.

pub(crate) mod values;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use worker_core::{
    CircuitPolicy, ConsumerType, CreditCost, InitialPosition, RateLimit, RateLimitScope,
    TaskConfig, DEFAULT_RATE_WINDOW,
};

use crate::TaskDefinition;

/// Every key a `[tasks.<name>]` table may hold.
pub const KEYS: &[&str] = &[
    "topic",
    "dlq_topic",
    "subscription",
    "rate_limit",
    "rate_window",
    "max_retries",
    "backoff",
    "retry_delay",
    "max_delay",
    "jitter",
    "timeout",
    "task_timeout",
    "concurrency",
    "receiver_queue_size",
    "consumer_type",
    "initial_position",
    "permission_roles",
    "credit_type",
    "credit_amount",
    "max_payload_bytes",
    "circuit_failures",
    "circuit_failure_rate",
    "circuit_min_calls",
    "circuit_window",
    "circuit_cooldown",
    "circuit_probes",
    "rate_limit_scope",
    "idempotency_window",
];

/// One thing wrong in an override file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The 1-based line it is on, when it is on one.
    pub line: Option<usize>,
    /// The task it concerns, if any.
    pub task: Option<String>,
    /// The part of the file it concerns when it is no task (`` route `orders` ``,
    /// `` broker `cache` ``), if any.
    pub section: Option<String>,
    /// The key it concerns, if any.
    pub key: Option<String>,
    /// What is wrong, as a phrase that follows the key (`must be a positive integer, got string`).
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(task) = &self.task {
            write!(f, "task `{task}`: ")?;
        } else if let Some(section) = &self.section {
            write!(f, "{section}: ")?;
        }
        match &self.key {
            Some(key) => write!(f, "`{key}` {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Why an override file was not applied.
#[derive(Debug)]
pub enum ConfigFileError {
    /// The file is not valid TOML.
    Syntax {
        /// The file's name, as given to [`apply_overrides`].
        source_name: String,
        /// The 1-based line of the error, when known.
        line: Option<usize>,
        /// The parser's message.
        message: String,
    },
    /// The file is TOML but some of it is not acceptable.
    Invalid {
        /// The file's name, as given to [`apply_overrides`].
        source_name: String,
        /// Every problem, by line.
        problems: Vec<ConfigProblem>,
    },
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let located = |f: &mut fmt::Formatter<'_>, source: &str, line: Option<usize>| match line {
            Some(line) => write!(f, "{source}:{line}: "),
            None => write!(f, "{source}: "),
        };
        match self {
            ConfigFileError::Syntax {
                source_name,
                line,
                message,
            } => {
                located(f, source_name, *line)?;
                write!(f, "not valid TOML: {}", message.trim_end())
            }
            ConfigFileError::Invalid {
                source_name,
                problems,
            } => match problems.as_slice() {
                [one] => {
                    located(f, source_name, one.line)?;
                    write!(f, "{one}")
                }
                many => {
                    write!(f, "{source_name}: {} problems:", many.len())?;
                    for problem in many {
                        f.write_str("\n  ")?;
                        located(f, source_name, problem.line)?;
                        write!(f, "{problem}")?;
                    }
                    Ok(())
                }
            },
        }
    }
}

impl std::error::Error for ConfigFileError {}

/// Applies the `[tasks.<name>]` tables of `file_text` to `tasks`, then validates every task.
///
/// `source_name` (the file's path) prefixes every message. On any problem nothing is changed and
/// every problem is returned together.
pub fn apply_overrides(
    tasks: &mut [TaskDefinition],
    file_text: &str,
    source_name: &str,
) -> Result<(), ConfigFileError> {
    let document: toml::Table =
        file_text
            .parse()
            .map_err(|error: toml::de::Error| ConfigFileError::Syntax {
                source_name: source_name.to_owned(),
                line: error.span().map(|span| line_of(file_text, span.start)),
                message: error.message().to_owned(),
            })?;
    let lines = KeyLines::find(file_text);
    let mut configs: Vec<TaskConfig> = tasks.iter().map(|t| t.config().clone()).collect();
    let mut problems = Vec::new();

    for (top_key, value) in &document {
        if top_key == "bridge" {
            // The bridge's routes: read by `bridge::BridgeConfig` when the bridge runs.
            continue;
        }
        let Some(task_tables) = value.as_table().filter(|_| top_key == "tasks") else {
            let message = if top_key == "tasks" {
                format!("must hold [tasks.<name>] tables, got {}", value.type_str())
            } else {
                "is not a known top-level key: the file holds [tasks.<name>] tables and a [bridge] section".into()
            };
            problems.push(ConfigProblem {
                line: lines.top.get(top_key.as_str()).copied(),
                task: None,
                section: None,
                key: Some(top_key.clone()),
                message,
            });
            continue;
        };
        for (name, table) in task_tables {
            let line = lines.tasks.get(name.as_str()).copied();
            let Some(config) = configs.iter_mut().find(|c| c.name == *name) else {
                let known: Vec<&str> = tasks.iter().map(|t| t.name()).collect();
                let known = if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                };
                problems.push(ConfigProblem {
                    line,
                    task: Some(name.clone()),
                    section: None,
                    key: None,
                    message: format!("no such task in this binary; known tasks: {known}"),
                });
                continue;
            };
            let Some(table) = table.as_table() else {
                problems.push(ConfigProblem {
                    line,
                    task: Some(name.clone()),
                    section: None,
                    key: None,
                    message: format!(
                        "[tasks.{name}] must be a table of keys, got {}",
                        table.type_str()
                    ),
                });
                continue;
            };
            apply_task(config, table, |key, message| {
                problems.push(ConfigProblem {
                    line: lines.key(name, key),
                    task: Some(name.clone()),
                    section: None,
                    key: Some(key.to_owned()),
                    message,
                })
            });
        }
    }

    for config in &configs {
        for error in config.validate().err().unwrap_or_default() {
            let already_reported = problems.iter().any(|p| {
                p.task.as_deref() == Some(error.task.as_str())
                    && p.key.as_deref() == Some(error.key)
            });
            if already_reported {
                continue;
            }
            let line = lines.key(&error.task, error.key).or_else(|| {
                (error.key == "timeout")
                    .then(|| lines.key(&error.task, "task_timeout"))
                    .flatten()
            });
            problems.push(ConfigProblem {
                line,
                task: Some(error.task),
                section: None,
                key: Some(error.key.to_owned()),
                message: error.message,
            });
        }
    }

    if !problems.is_empty() {
        // By line; problems with no line (from the attribute's own values) last.
        problems.sort_by_key(|p| (p.line.is_none(), p.line));
        return Err(ConfigFileError::Invalid {
            source_name: source_name.to_owned(),
            problems,
        });
    }
    for (task, config) in tasks.iter_mut().zip(configs) {
        *task.config_mut() = config;
    }
    Ok(())
}

/// Applies one task's table to `config`, calling `fail(key, message)` for each bad key.
fn apply_task(config: &mut TaskConfig, table: &toml::Table, mut fail: impl FnMut(&str, String)) {
    if table.contains_key("timeout") && table.contains_key("task_timeout") {
        fail(
            "task_timeout",
            "is an alias of `timeout`, which is given too; keep one".into(),
        );
    }
    let old_topic = config.topic.clone();
    let mut rate_limit: Option<u32> = None;
    let mut rate_window: Option<Duration> = None;
    let mut credit_type: Option<String> = None;
    let mut credit_amount: Option<u64> = None;
    // The circuit breaker's keys refine the breaker the task has, or make one.
    let mut circuit = config
        .circuit
        .unwrap_or_else(|| CircuitPolicy::new(None, None));
    for (key, value) in table {
        let retry = &mut config.retry;
        let result = match key.as_str() {
            "topic" => values::topic(value).map(|t| config.topic = t),
            "dlq_topic" => values::topic(value).map(|t| config.dlq_topic = t),
            "subscription" => values::string(value).map(|s| config.subscription = s.to_owned()),
            "rate_limit" => values::positive(value).map(|n| rate_limit = Some(n)),
            "rate_window" => values::duration(value).map(|d| rate_window = Some(d)),
            "max_retries" => values::non_negative(value).map(|n| retry.max_retries = n),
            "backoff" => values::number(value).map(|x| retry.backoff = x),
            "retry_delay" => values::duration(value).map(|d| retry.retry_delay = d),
            "max_delay" => values::duration(value).map(|d| retry.max_delay = d),
            "jitter" => values::number(value).map(|x| retry.jitter = x),
            "timeout" | "task_timeout" => values::duration(value).map(|d| config.timeout = d),
            "concurrency" => values::positive(value).map(|n| config.concurrency = n),
            "receiver_queue_size" => {
                values::positive(value).map(|n| config.receiver_queue_size = n)
            }
            "consumer_type" => values::one_of(
                value,
                ConsumerType::parse,
                &["shared", "key_shared", "failover", "exclusive"],
            )
            .map(|t| config.consumer_type = t),
            "initial_position" => {
                values::one_of(value, InitialPosition::parse, &["earliest", "latest"])
                    .map(|p| config.initial_position = p)
            }
            "permission_roles" => values::strings(value).map(|r| config.permission_roles = r),
            "credit_type" => values::string(value).map(|s| credit_type = Some(s.to_owned())),
            "credit_amount" => values::positive(value).map(|n| credit_amount = Some(n)),
            "max_payload_bytes" => values::positive(value).map(|n| config.max_payload_bytes = n),
            "circuit_failures" => {
                values::positive(value).map(|n| circuit.consecutive_failures = Some(n))
            }
            "circuit_failure_rate" => values::number(value).map(|x| circuit.failure_rate = Some(x)),
            "circuit_min_calls" => values::positive(value).map(|n| circuit.min_calls = n),
            "circuit_window" => values::duration(value).map(|d| circuit.window = d),
            "circuit_cooldown" => values::duration(value).map(|d| circuit.cooldown = d),
            "circuit_probes" => values::positive(value).map(|n| circuit.probes = n),
            "rate_limit_scope" => {
                values::one_of(value, RateLimitScope::parse, &["worker", "global"])
                    .map(|scope| config.rate_limit_scope = scope)
            }
            "idempotency_window" => {
                values::duration(value).map(|d| config.idempotency_window = Some(d))
            }
            _ => Err(format!(
                "is not a task key; valid keys: {}",
                KEYS.join(", ")
            )),
        };
        if let Err(message) = result {
            fail(key, message);
        }
    }

    if table.keys().any(|key| key.starts_with("circuit_")) || config.circuit.is_some() {
        // An incomplete breaker (no trigger) is reported by `TaskConfig::validate`.
        config.circuit = Some(circuit);
    }

    if !table.contains_key("dlq_topic")
        && config.topic != old_topic
        && config.dlq_topic == old_topic.default_dlq()
    {
        config.dlq_topic = config.topic.default_dlq();
    }

    match (rate_limit, rate_window, config.rate_limit) {
        (Some(messages), window, existing) => {
            let window = window
                .or(existing.map(|l| l.window))
                .unwrap_or(DEFAULT_RATE_WINDOW);
            config.rate_limit = Some(RateLimit { messages, window });
        }
        (None, Some(window), Some(existing)) => {
            config.rate_limit = Some(RateLimit { window, ..existing });
        }
        (None, Some(_), None) if !table.contains_key("rate_limit") => fail(
            "rate_window",
            "needs `rate_limit`: the task has no rate limit to apply a window to".into(),
        ),
        _ => {}
    }

    match (credit_type, credit_amount, config.credits.take()) {
        (Some(credit_type), amount, existing) => {
            let amount = amount.or(existing.map(|c| c.amount)).unwrap_or(1);
            config.credits = Some(CreditCost {
                credit_type,
                amount,
            });
        }
        (None, Some(amount), Some(existing)) => {
            config.credits = Some(CreditCost { amount, ..existing });
        }
        (None, Some(_), None) if !table.contains_key("credit_type") => fail(
            "credit_amount",
            "needs `credit_type`: the task charges no credits yet".into(),
        ),
        (_, _, existing) => config.credits = existing,
    }
}

/// The lines of the keys of a file, to point each problem at its line.
#[derive(Default)]
struct KeyLines {
    top: HashMap<String, usize>,
    tasks: HashMap<String, usize>,
    keys: HashMap<(String, String), usize>,
}

impl KeyLines {
    /// Locates every key of `text`, which must already have parsed as TOML.
    fn find(text: &str) -> Self {
        use toml::de::{DeTable, DeValue};
        let mut lines = KeyLines::default();
        let Ok(document) = DeTable::parse(text) else {
            return lines;
        };
        let line = |span: std::ops::Range<usize>| line_of(text, span.start);
        for (top_key, top_value) in document.get_ref() {
            lines
                .top
                .insert(top_key.get_ref().to_string(), line(top_key.span()));
            let DeValue::Table(task_tables) = top_value.get_ref() else {
                continue;
            };
            for (task, table) in task_tables {
                let task_name = task.get_ref().to_string();
                lines.tasks.insert(task_name.clone(), line(task.span()));
                let DeValue::Table(table) = table.get_ref() else {
                    continue;
                };
                for key in table.keys() {
                    let entry = (task_name.clone(), key.get_ref().to_string());
                    lines.keys.insert(entry, line(key.span()));
                }
            }
        }
        lines
    }

    fn key(&self, task: &str, key: &str) -> Option<usize> {
        self.keys.get(&(task.to_owned(), key.to_owned())).copied()
    }
}

/// The line of every key of `text` (which must already have parsed as TOML) by its dotted path
/// (`bridge.routes.orders.source.broker`), tables and inline tables alike.
pub(crate) fn dotted_key_lines(text: &str) -> HashMap<String, usize> {
    use toml::de::{DeTable, DeValue};
    fn walk(text: &str, prefix: &str, table: &DeTable<'_>, out: &mut HashMap<String, usize>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            out.insert(path.clone(), line_of(text, key.span().start));
            if let DeValue::Table(inner) = value.get_ref() {
                walk(text, &path, inner, out);
            }
        }
    }
    let mut lines = HashMap::new();
    if let Ok(document) = DeTable::parse(text) {
        walk(text, "", document.get_ref(), &mut lines);
    }
    lines
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let before = text.get(..offset).unwrap_or(text);
    before.bytes().filter(|&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests;
