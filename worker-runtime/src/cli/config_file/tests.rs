use std::time::Duration;

use worker_core::{ConsumerType, InitialPosition, RateLimit, Topic};

use super::*;
use crate::cli::test_tasks::tasks;

fn apply(text: &str) -> Result<Vec<TaskDefinition>, ConfigFileError> {
    let mut tasks = tasks();
    apply_overrides(&mut tasks, text, "worker.toml").map(|()| tasks)
}

fn problems(text: &str) -> Vec<ConfigProblem> {
    match apply(text) {
        Err(ConfigFileError::Invalid { problems, .. }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

fn message(text: &str) -> String {
    match apply(text) {
        Err(error) => error.to_string(),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn every_key_can_be_overridden() {
    let tasks = apply(
        r#"
        [tasks.ingest]
        topic = "q2/staging/ingest/raw"
        subscription = "ingest-staging"
        rate_limit = 1000
        rate_window = "30s"
        max_retries = 0
        backoff = 3
        retry_delay = "500ms"
        max_delay = "2m"
        jitter = 0.25
        task_timeout = 10
        concurrency = 8
        receiver_queue_size = 50
        consumer_type = "key_shared"
        initial_position = "latest"
        max_payload_bytes = 1024

        [tasks.write_records]
        dlq_topic = "q1/prod/db/dead"
        permission_roles = ["db_writer", "admin"]
        credit_type = "api_credits"
        credit_amount = 7
        timeout = "1m"
        "#,
    )
    .expect("valid overrides");
    let ingest = tasks[0].config();
    assert_eq!(ingest.topic.to_string(), "q2/staging/ingest/raw");
    assert_eq!(
        ingest.dlq_topic.to_string(),
        "q2/staging/ingest/raw-dlq",
        "a default DLQ follows the topic"
    );
    assert_eq!(ingest.subscription, "ingest-staging");
    assert_eq!(
        ingest.rate_limit,
        Some(RateLimit {
            messages: 1000,
            window: Duration::from_secs(30)
        })
    );
    assert_eq!(ingest.retry.max_retries, 0);
    assert_eq!(ingest.retry.backoff, 3.0);
    assert_eq!(ingest.retry.retry_delay, Duration::from_millis(500));
    assert_eq!(ingest.retry.max_delay, Duration::from_secs(120));
    assert_eq!(ingest.retry.jitter, 0.25);
    assert_eq!(ingest.timeout, Duration::from_secs(10));
    assert_eq!(ingest.concurrency, 8);
    assert_eq!(ingest.receiver_queue_size, 50);
    assert_eq!(ingest.consumer_type, ConsumerType::KeyShared);
    assert_eq!(ingest.initial_position, InitialPosition::Latest);
    assert_eq!(ingest.max_payload_bytes, 1024);

    let write = tasks[1].config();
    assert_eq!(write.dlq_topic, Topic::parse("q1/prod/db/dead").unwrap());
    assert_eq!(write.permission_roles, ["db_writer", "admin"]);
    let credits = write.credits.as_ref().expect("credits");
    assert_eq!(
        (credits.credit_type.as_str(), credits.amount),
        ("api_credits", 7)
    );
    assert_eq!(write.timeout, Duration::from_secs(60));
}

#[test]
fn keys_left_out_keep_the_attribute_values() {
    let tasks = apply("[tasks.ingest]\nrate_window = 10\n").expect("valid");
    let ingest = tasks[0].config();
    assert_eq!(
        ingest.rate_limit,
        Some(RateLimit {
            messages: 500,
            window: Duration::from_secs(10)
        })
    );
    assert_eq!(ingest.topic.to_string(), "persistent://prod/ingest/raw");
    assert_eq!(
        tasks[1].config(),
        crate::cli::test_tasks::tasks()[1].config()
    );

    let tasks = apply("[tasks.write_records]\ncredit_amount = 9\n").expect("valid");
    let credits = tasks[1].config().credits.clone().expect("credits");
    assert_eq!(
        (credits.credit_type.as_str(), credits.amount),
        ("db_credits", 9)
    );
    assert!(apply("").is_ok());
}

#[test]
fn an_unknown_task_lists_the_known_ones() {
    assert_eq!(
        message("[tasks.ingset]\nrate_limit = 5\n"),
        "worker.toml:1: task `ingset`: no such task in this binary; \
         known tasks: ingest, write_records"
    );
}

#[test]
fn an_unknown_key_lists_the_valid_ones() {
    let text = message("[tasks.ingest]\n\nrate_limt = 5\n");
    assert!(
        text.starts_with("worker.toml:3: task `ingest`: `rate_limt` is not a task key; valid keys: topic, dlq_topic,"),
        "{text}"
    );
    assert!(
        text.ends_with("rate_limit_scope, idempotency_window"),
        "{text}"
    );
}

#[test]
fn circuit_breaker_keys_make_or_refine_a_breaker_and_are_checked() {
    let mut all = tasks();
    let text = "[tasks.ingest]\ncircuit_failures = 4\ncircuit_cooldown = \"10s\"\n";
    apply_overrides(&mut all, text, "worker.toml").expect("valid");
    let circuit = all[0].config().circuit.expect("a breaker");
    assert_eq!(circuit.consecutive_failures, Some(4));
    assert_eq!(circuit.cooldown, Duration::from_secs(10));
    assert_eq!(circuit.probes, worker_core::DEFAULT_CIRCUIT_PROBES);

    assert_eq!(
        message("[tasks.ingest]\n\ncircuit_probes = 2\n"),
        "worker.toml:3: task `ingest`: `circuit_failures` or `circuit_failure_rate` must be given for the circuit breaker to open"
            .replace("worker.toml:3", "worker.toml")
    );
    assert_eq!(
        message("[tasks.ingest]\ncircuit_failure_rate = 1.5\n"),
        "worker.toml:2: task `ingest`: `circuit_failure_rate` must be in (0, 1], not 1.5"
    );
}

#[test]
fn a_wrong_type_names_the_expected_and_the_given_type() {
    assert_eq!(
        message("[tasks.ingest]\nrate_limit = \"500\"\n"),
        "worker.toml:2: task `ingest`: `rate_limit` must be a positive integer, got string"
    );
    assert_eq!(
        message("[tasks.ingest]\ntimeout = true\n"),
        "worker.toml:2: task `ingest`: `timeout` must be whole seconds (an integer) or a \
         duration string such as \"500ms\" or \"2m\", got boolean"
    );
    assert_eq!(
        message("[tasks.write_records]\npermission_roles = \"admin\"\n"),
        "worker.toml:2: task `write_records`: `permission_roles` must be an array of strings, got string"
    );
}

#[test]
fn an_invalid_value_says_why() {
    assert_eq!(
        message("[tasks.ingest]\nretry_delay = \"5 parsecs\"\n"),
        "worker.toml:2: task `ingest`: `retry_delay` invalid duration `5 parsecs`: write whole \
         seconds or a whole number with a unit: ms, s, m, h or d (e.g. \"500ms\", \"2m\")"
    );
    assert!(message("[tasks.ingest]\ntopic = \"kafka://x\"\n")
        .starts_with("worker.toml:2: task `ingest`: `topic` topic `kafka://x` must look like"));
    assert_eq!(
        message("[tasks.ingest]\nconsumer_type = \"round_robin\"\n"),
        "worker.toml:2: task `ingest`: `consumer_type` must be one of shared, key_shared, \
         failover, exclusive, got \"round_robin\""
    );
    assert_eq!(
        message("[tasks.ingest]\nconcurrency = 0\n"),
        "worker.toml:2: task `ingest`: `concurrency` must be a positive integer, got 0"
    );
}

#[test]
fn an_invalid_combination_is_reported_at_its_key() {
    assert_eq!(
        message("[tasks.ingest]\nretry_delay = \"2m\"\nmax_delay = \"1m\"\n"),
        "worker.toml:3: task `ingest`: `max_delay` 1m is shorter than retry_delay 2m"
    );
    assert_eq!(
        message("[tasks.ingest]\npermission_roles = [\"x\"]\n"),
        "worker.toml:2: task `ingest`: `permission_roles` roles and credits apply only to db \
         tasks (#[pulsar_db_task])"
    );
    assert_eq!(
        message("[tasks.ingest]\ndlq_topic = \"persistent://prod/ingest/raw\"\n"),
        "worker.toml:2: task `ingest`: `dlq_topic` must differ from topic \
         `persistent://prod/ingest/raw`"
    );
}

#[test]
fn keys_that_need_another_key_say_so() {
    let mut tasks = tasks();
    tasks[0].config_mut().rate_limit = None;
    let error = apply_overrides(&mut tasks, "[tasks.ingest]\nrate_window = 5\n", "w.toml")
        .expect_err("a window without a limit");
    assert_eq!(
        error.to_string(),
        "w.toml:2: task `ingest`: `rate_window` needs `rate_limit`: the task has no rate limit \
         to apply a window to"
    );
    let mut tasks = crate::cli::test_tasks::tasks();
    tasks[1].config_mut().credits = None;
    let error = apply_overrides(
        &mut tasks,
        "[tasks.write_records]\ncredit_amount = 5\n",
        "w.toml",
    )
    .expect_err("an amount without a type");
    assert!(error
        .to_string()
        .contains("`credit_amount` needs `credit_type`"));
    assert!(message("[tasks.ingest]\ntimeout = 1\ntask_timeout = 2\n")
        .contains("`task_timeout` is an alias of `timeout`, which is given too"));
}

#[test]
fn every_problem_is_reported_together_by_line_and_nothing_is_applied() {
    let text =
        "[tasks.ingest]\nrate_limit = -1\nconcurrency = \"many\"\n\n[tasks.nope]\n\n[other]\n";
    let found = problems(text);
    let summary: Vec<(Option<usize>, Option<&str>, Option<&str>)> = found
        .iter()
        .map(|p| (p.line, p.task.as_deref(), p.key.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            (Some(2), Some("ingest"), Some("rate_limit")),
            (Some(3), Some("ingest"), Some("concurrency")),
            (Some(5), Some("nope"), None),
            (Some(7), None, Some("other")),
        ]
    );
    let rendered = message(text);
    assert!(rendered.starts_with("worker.toml: 4 problems:\n  worker.toml:2: task `ingest`"));

    let mut tasks = tasks();
    let before: Vec<TaskConfig> = tasks.iter().map(|t| t.config().clone()).collect();
    let result = apply_overrides(
        &mut tasks,
        "[tasks.ingest]\nconcurrency = 9\n[tasks.write_records]\nbackoff = 0.5\n",
        "w.toml",
    );
    assert!(result.is_err());
    let after: Vec<TaskConfig> = tasks.iter().map(|t| t.config().clone()).collect();
    assert_eq!(before, after, "a rejected file changes nothing");
}

#[test]
fn syntax_errors_name_the_file_and_line() {
    let text = message("[tasks.ingest]\nrate_limit = = 5\n");
    assert!(
        text.starts_with("worker.toml:2: not valid TOML: "),
        "{text}"
    );
    assert!(message("tasks = 5\n").contains("`tasks` must hold [tasks.<name>] tables, got integer"));
    assert!(message("[tasks]\ningest = 5\n")
        .contains("task `ingest`: [tasks.ingest] must be a table of keys, got integer"));
}
