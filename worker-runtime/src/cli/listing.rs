//! The `tasks` subcommand's listing: every task's effective configuration, written as an override
//! file that `--config` reads back unchanged.

use std::fmt::Write as _;

use toml::Value;
use worker_core::{format_duration, TaskConfig, TaskKind};

use crate::TaskDefinition;

/// Every key of every task in `tasks`, in the override file's format. Values a task does not have
/// (no rate limit, no credits) are written as comments.
pub fn describe_tasks(tasks: &[TaskDefinition]) -> String {
    let mut out = String::new();
    let count = tasks.len();
    let _ = writeln!(
        out,
        "# {count} task{}; this listing is valid --config input.",
        if count == 1 { "" } else { "s" }
    );
    for task in tasks {
        out.push('\n');
        describe(&mut out, task.config());
    }
    out
}

fn describe(out: &mut String, c: &TaskConfig) {
    let kind = match c.kind {
        TaskKind::Io => "io task, #[pulsar_io_task]",
        TaskKind::Db => "db task, #[pulsar_db_task]",
    };
    let _ = writeln!(out, "[tasks.{}]  # {kind}", key(&c.name));
    let mut line = |name: &str, value: Value| {
        let _ = writeln!(out, "{name} = {value}");
    };
    line("topic", text(c.topic.to_string()));
    line("dlq_topic", text(c.dlq_topic.to_string()));
    line("subscription", text(&c.subscription));
    if let Some(limit) = c.rate_limit {
        line("rate_limit", Value::Integer(limit.messages.into()));
        line("rate_window", text(format_duration(limit.window)));
        line("rate_limit_scope", text(c.rate_limit_scope.as_str()));
    }
    if let Some(window) = c.idempotency_window {
        line("idempotency_window", text(format_duration(window)));
    }
    line("max_retries", Value::Integer(c.retry.max_retries.into()));
    line("backoff", Value::Float(c.retry.backoff));
    line("retry_delay", text(format_duration(c.retry.retry_delay)));
    line("max_delay", text(format_duration(c.retry.max_delay)));
    line("jitter", Value::Float(c.retry.jitter));
    line("timeout", text(format_duration(c.timeout)));
    line("concurrency", integer(c.concurrency));
    line("receiver_queue_size", integer(c.receiver_queue_size));
    line("consumer_type", text(c.consumer_type.as_str()));
    line("initial_position", text(c.initial_position.as_str()));
    line(
        "permission_roles",
        Value::Array(c.permission_roles.iter().map(text).collect()),
    );
    if let Some(cost) = &c.credits {
        line("credit_type", text(&cost.credit_type));
        line("credit_amount", integer(cost.amount));
    }
    line("max_payload_bytes", integer(c.max_payload_bytes));
    if let Some(circuit) = &c.circuit {
        if let Some(failures) = circuit.consecutive_failures {
            line("circuit_failures", integer(failures));
        }
        if let Some(rate) = circuit.failure_rate {
            line("circuit_failure_rate", Value::Float(rate));
            line("circuit_min_calls", integer(circuit.min_calls));
            line("circuit_window", text(format_duration(circuit.window)));
        }
        line("circuit_cooldown", text(format_duration(circuit.cooldown)));
        line("circuit_probes", integer(circuit.probes));
    }
    if c.rate_limit.is_none() {
        out.push_str("# rate_limit: none (no limit)\n");
    }
    if c.credits.is_none() {
        out.push_str("# credit_type: none (no credits charged)\n");
    }
    if c.circuit.is_none() {
        out.push_str("# circuit_failures: none (no circuit breaker)\n");
    }
}

fn text(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

/// An integer as TOML writes it; a value beyond `i64` (never a real configuration) as a string,
/// which `--config` then refuses with a clear message instead of a silently different number.
fn integer(n: impl TryInto<i64> + ToString + Copy) -> Value {
    n.try_into()
        .map(Value::Integer)
        .unwrap_or_else(|_| text(n.to_string()))
}

/// A table key, quoted when it is not a bare key.
fn key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        name.to_owned()
    } else {
        text(name).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::config_file::apply_overrides;
    use crate::cli::test_tasks::tasks;

    #[test]
    fn lists_every_key_of_every_task() {
        let listing = describe_tasks(&tasks());
        assert!(listing.starts_with("# 2 tasks;"));
        assert!(listing.contains("[tasks.ingest]  # io task, #[pulsar_io_task]\n"));
        assert!(listing.contains("topic = \"persistent://prod/ingest/raw\"\n"));
        assert!(listing.contains("rate_limit = 500\nrate_window = \"1m\"\n"));
        assert!(listing.contains("backoff = 2.0\n"));
        assert!(listing.contains("credit_type = \"db_credits\"\ncredit_amount = 2\n"));
        assert!(listing.contains("permission_roles = [\"db_writer\"]\n"));
        assert!(listing.contains("# credit_type: none (no credits charged)\n"));
        for key in crate::cli::config_file::KEYS {
            if *key != "task_timeout" {
                assert!(listing.contains(&format!("\n{key} = ")), "{key} missing");
            }
        }
    }

    #[test]
    fn the_listing_reads_back_as_the_same_configuration() {
        let original = tasks();
        let mut changed = tasks();
        changed[0].config_mut().retry.jitter = 0.3;
        changed[1].config_mut().timeout = std::time::Duration::from_millis(1500);
        let listing = describe_tasks(&changed);

        let mut reread = original;
        apply_overrides(&mut reread, &listing, "listing").expect("the listing is valid input");
        for (a, b) in reread.iter().zip(&changed) {
            assert_eq!(a.config(), b.config());
        }
    }

    #[test]
    fn odd_task_names_are_quoted() {
        assert_eq!(key("ingest_data"), "ingest_data");
        assert_eq!(key("a.b"), "\"a.b\"");
    }
}
