use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};

use super::*;
use crate::auth::Secret;
use crate::cli::test_tasks::tasks;

mod backend;

/// `Cli`'s command with every environment fallback renamed to a name unique to this call, and
/// those set to `env`: tests see their own variables only, never each other's or the caller's.
fn command_with_env(env: &[(&str, &str)]) -> clap::Command {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let suffix = format!("__TEST_{}", CALLS.fetch_add(1, Ordering::Relaxed));
    let mut command = Cli::command();
    let with_env: Vec<(String, String)> = command
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_str()?.to_owned();
            Some((arg.get_id().to_string(), env))
        })
        .collect();
    // Set first: `Arg::env` reads the variable when it is called.
    for (name, value) in env {
        std::env::set_var(format!("{name}{suffix}"), value);
    }
    for (id, name) in with_env {
        let unique: &'static str = Box::leak(format!("{name}{suffix}").into_boxed_str());
        command = command.mut_arg(id, |arg| arg.env(unique));
    }
    command
}

fn parse_env(args: &[&str], env: &[(&str, &str)]) -> Result<Cli, clap::Error> {
    let mut command = command_with_env(env);
    let matches = command.try_get_matches_from_mut(args)?;
    Cli::from_arg_matches(&matches)
}

fn parse(args: &[&str]) -> Cli {
    parse_env(args, &[]).expect("valid command line")
}

#[test]
fn defaults() {
    let cli = parse(&["worker"]);
    assert_eq!(cli.backend.backend, BackendKind::Memory);
    assert_eq!(cli.consumer_name, None);
    assert!(cli.tasks.is_empty());
    assert_eq!(
        cli.metrics_addr,
        MetricsAddr::On("0.0.0.0:9090".parse().unwrap())
    );
    assert_eq!(cli.config, None);
    assert_eq!(cli.log_format, LogFormat::Pretty);
    assert!(cli.jwt_secret.is_none() && cli.jwt_secret_file.is_none());
    assert_eq!(cli.shutdown_grace, Duration::from_secs(30));
    assert!(cli.command.is_none());
}

#[test]
fn flags() {
    let cli = parse(&[
        "worker",
        "--backend",
        "pulsar",
        "--consumer-name",
        "w-7",
        "--tasks",
        "a,b",
        "--metrics-addr",
        "127.0.0.1:0",
        "--config",
        "over.toml",
        "--log-format",
        "json",
        "--jwt-secret-file",
        "/run/key",
        "--shutdown-grace",
        "2m",
    ]);
    assert_eq!(cli.backend.backend, BackendKind::Pulsar);
    assert_eq!(cli.consumer_name(), "w-7");
    assert_eq!(cli.tasks, ["a", "b"]);
    assert_eq!(
        cli.metrics_addr,
        MetricsAddr::On("127.0.0.1:0".parse().unwrap())
    );
    assert_eq!(cli.config.as_deref(), Some(Path::new("over.toml")));
    assert_eq!(cli.log_format, LogFormat::Json);
    assert_eq!(cli.jwt_secret_file.as_deref(), Some(Path::new("/run/key")));
    assert_eq!(cli.shutdown_grace, Duration::from_secs(120));
}

#[test]
fn environment_fallbacks_and_flags_win_over_them() {
    let env = [
        ("PUBSUB_BACKEND", "valkey"),
        ("WORKER_CONSUMER_NAME", "from-env"),
        ("WORKER_TASKS", "x,y"),
        ("WORKER_METRICS_ADDR", "off"),
        ("WORKER_CONFIG", "env.toml"),
        ("WORKER_LOG_FORMAT", "json"),
        ("WORKER_JWT_SECRET", "k"),
        ("WORKER_SHUTDOWN_GRACE", "45"),
    ];
    let cli = parse_env(&["worker"], &env).expect("valid");
    assert_eq!(cli.backend.backend, BackendKind::Valkey);
    assert_eq!(cli.consumer_name(), "from-env");
    assert_eq!(cli.tasks, ["x", "y"]);
    assert_eq!(cli.metrics_addr, MetricsAddr::Off);
    assert_eq!(cli.config.as_deref(), Some(Path::new("env.toml")));
    assert_eq!(cli.log_format, LogFormat::Json);
    assert_eq!(cli.jwt_secret.as_ref().map(Secret::expose), Some(&b"k"[..]));
    assert_eq!(cli.shutdown_grace, Duration::from_secs(45));

    let cli =
        parse_env(&["worker", "--consumer-name", "flag", "--tasks", "z"], &env).expect("valid");
    assert_eq!(cli.consumer_name(), "flag");
    assert_eq!(cli.tasks, ["z"]);
}

#[test]
fn every_flag_has_its_documented_variable() {
    let command = Cli::command();
    let mut pairs: Vec<(String, String)> = command
        .get_arguments()
        .filter_map(|arg| {
            Some((
                arg.get_long()?.to_owned(),
                arg.get_env()?.to_str()?.to_owned(),
            ))
        })
        .collect();
    pairs.sort();
    let expected = [
        ("backend", "PUBSUB_BACKEND"),
        ("backlog-interval", "WORKER_BACKLOG_INTERVAL"),
        ("config", "WORKER_CONFIG"),
        ("consumer-name", "WORKER_CONSUMER_NAME"),
        ("credits-url", "WORKER_CREDITS_URL"),
        ("idempotency-url", "WORKER_IDEMPOTENCY_URL"),
        ("jwt-secret", "WORKER_JWT_SECRET"),
        ("jwt-secret-file", "WORKER_JWT_SECRET_FILE"),
        ("log-format", "WORKER_LOG_FORMAT"),
        ("metrics-addr", "WORKER_METRICS_ADDR"),
        ("mqtt-client-id-prefix", "MQTT_CLIENT_ID_PREFIX"),
        ("mqtt-host", "MQTT_HOST"),
        ("mqtt-password", "MQTT_PASSWORD"),
        ("mqtt-port", "MQTT_PORT"),
        ("mqtt-username", "MQTT_USERNAME"),
        ("pulsar-ack-group-time", "PULSAR_ACK_GROUP_TIME"),
        ("pulsar-admin-url", "PULSAR_ADMIN_URL"),
        ("pulsar-api-key", "PULSAR_API_KEY"),
        ("pulsar-batch-delay", "PULSAR_BATCH_DELAY"),
        ("pulsar-batch-size", "PULSAR_BATCH_SIZE"),
        ("pulsar-batching", "PULSAR_BATCHING"),
        ("pulsar-compression", "PULSAR_COMPRESSION"),
        ("pulsar-connection-timeout", "PULSAR_CONNECTION_TIMEOUT"),
        ("pulsar-host", "PULSAR_HOST"),
        ("pulsar-listener", "PULSAR_LISTENER"),
        ("pulsar-operation-timeout", "PULSAR_OPERATION_TIMEOUT"),
        ("pulsar-tls-ca-file", "PULSAR_TLS_CA_FILE"),
        ("rate-limit-url", "WORKER_RATE_LIMIT_URL"),
        ("shutdown-grace", "WORKER_SHUTDOWN_GRACE"),
        ("tasks", "WORKER_TASKS"),
        ("valkey-tls-ca-file", "VALKEY_TLS_CA_FILE"),
        ("valkey-url", "VALKEY_URL"),
        ("valkey-visibility-timeout", "VALKEY_VISIBILITY_TIMEOUT"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    assert_eq!(pairs, expected);
    command.debug_assert();
}

#[test]
fn the_tasks_subcommand_takes_the_global_flags() {
    let cli = parse(&["worker", "tasks", "--config", "o.toml", "--tasks", "ingest"]);
    assert!(matches!(cli.command, Some(Command::Tasks)));
    assert_eq!(cli.config.as_deref(), Some(Path::new("o.toml")));
    assert_eq!(cli.tasks, ["ingest"]);
}

#[test]
fn consumer_name_defaults_to_the_stable_default() {
    let name = default_consumer_name();
    assert_eq!(parse(&["worker"]).consumer_name(), name);
    // An empty variable, as deployment templates often leave it, means the default.
    let cli = parse_env(&["worker"], &[("WORKER_CONSUMER_NAME", " ")]).expect("valid");
    assert_eq!(cli.consumer_name(), name);
}

#[test]
fn metrics_addr_accepts_off_and_socket_addresses_only() {
    assert_eq!("off".parse(), Ok(MetricsAddr::Off));
    assert_eq!("OFF".parse(), Ok(MetricsAddr::Off));
    assert_eq!(
        "[::1]:9100".parse(),
        Ok(MetricsAddr::On("[::1]:9100".parse().unwrap()))
    );
    let error = parse_env(&["worker", "--metrics-addr", "localhost"], &[])
        .expect_err("no port")
        .to_string();
    assert!(error.contains("or `off`"), "{error}");
}

#[test]
fn bad_values_are_refused_with_the_flag_named() {
    let error = parse_env(&["worker", "--backend", "kafka"], &[])
        .expect_err("unknown backend")
        .to_string();
    assert!(error.contains("--backend"), "{error}");
    assert!(error.contains("memory, pulsar, valkey, mqtt"), "{error}");
    let error = parse_env(&["worker"], &[("WORKER_SHUTDOWN_GRACE", "soon")])
        .expect_err("bad duration")
        .to_string();
    assert!(error.contains("--shutdown-grace"), "{error}");
}

#[test]
fn the_secret_never_shows() {
    let secret = "s3cr3t-value";
    let cli = parse(&["worker", "--jwt-secret", secret]);
    assert!(!format!("{cli:?}").contains(secret));

    let error = parse_env(
        &["worker", "--jwt-secret", secret, "--jwt-secret-file", "/k"],
        &[],
    )
    .expect_err("both forms")
    .render()
    .to_string();
    assert!(error.contains("cannot be used with"), "{error}");
    assert!(!error.contains(secret), "{error}");

    let error = parse_env(&["worker", "--jwt-secret"], &[])
        .expect_err("no value")
        .render()
        .to_string();
    assert!(error.contains("a value is required"), "{error}");
    let hyphenated = "-s3cr3t";
    let cli = parse(&["worker", "--jwt-secret", hyphenated]);
    let given = cli.jwt_secret.as_ref().map(Secret::expose);
    assert_eq!(
        given,
        Some(hyphenated.as_bytes()),
        "taken as the value, not echoed as a flag"
    );

    let mut command = command_with_env(&[("WORKER_JWT_SECRET", secret)]);
    let help = command.render_long_help().to_string();
    assert!(help.contains("WORKER_JWT_SECRET"), "{help}");
    assert!(!help.contains(secret), "{help}");
}

#[test]
fn secret_files_lose_one_trailing_newline() {
    let dir = std::env::temp_dir().join(format!("worker-cli-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("key");
    std::fs::write(&path, b"abc\r\n").expect("write");
    let cli = parse(&["worker", "--jwt-secret-file", path.to_str().expect("utf-8")]);
    let secret = load_secret(&cli).expect("readable").expect("given");
    assert_eq!(secret.expose(), b"abc");

    std::fs::write(&path, b"\n").expect("write");
    let error = load_secret(&cli).expect_err("empty");
    assert!(matches!(error, CliError::EmptySecret(_)));

    let missing = dir.join("missing");
    let cli = parse(&[
        "worker",
        "--jwt-secret-file",
        missing.to_str().expect("utf-8"),
    ]);
    let error = load_secret(&cli).expect_err("missing").to_string();
    assert!(
        error.starts_with("cannot read the JWT secret file `"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_tasks_filter_keeps_the_named_tasks_and_refuses_unknown_ones() {
    let cli = parse(&["worker", "--tasks", "write_records"]);
    let kept = prepare_tasks(&cli, tasks()).expect("known");
    let names: Vec<&str> = kept.iter().map(|t| t.name()).collect();
    assert_eq!(names, ["write_records"]);

    let cli = parse(&["worker", "--tasks", "ingest, nope,other"]);
    let error = prepare_tasks(&cli, tasks()).expect_err("unknown");
    assert_eq!(
        error.to_string(),
        "--tasks names tasks this binary does not have: nope, other; \
         known tasks: ingest, write_records"
    );
}

#[test]
fn the_config_file_is_applied_and_its_errors_name_the_file() {
    let dir = std::env::temp_dir().join(format!("worker-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("over.toml");
    std::fs::write(&path, "[tasks.ingest]\nconcurrency = 3\n").expect("write");
    let path_text = path.to_str().expect("utf-8");
    let cli = parse(&["worker", "--config", path_text]);
    let tasks_after = prepare_tasks(&cli, tasks()).expect("valid file");
    assert_eq!(tasks_after[0].config().concurrency, 3);

    std::fs::write(&path, "[tasks.ingest]\nconcurrency = \"3\"\n").expect("write");
    let error = prepare_tasks(&cli, tasks())
        .expect_err("bad type")
        .to_string();
    assert_eq!(
        error,
        format!(
            "{path_text}:2: task `ingest`: `concurrency` must be a positive integer, got string"
        )
    );

    let cli = parse(&["worker", "--config", "/nonexistent/over.toml"]);
    let error = prepare_tasks(&cli, tasks())
        .expect_err("missing")
        .to_string();
    assert_eq!(
        error,
        "cannot read the configuration file `/nonexistent/over.toml`"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn invalid_compiled_configuration_fails_at_start_naming_the_key() {
    let mut bad = tasks();
    bad[0].config_mut().concurrency = 0;
    let error = prepare_tasks(&parse(&["worker"]), bad).expect_err("invalid");
    assert_eq!(
        error.to_string(),
        "invalid task configuration: task `ingest`: `concurrency` must be at least 1"
    );
}

#[test]
fn db_tasks_that_check_tokens_need_a_verifier() {
    let error = check_verifier(&tasks(), false).expect_err("no key");
    assert!(error
        .to_string()
        .starts_with("task `write_records` verifies senders' tokens but no verification key"));
    assert!(check_verifier(&tasks(), true).is_ok());
    assert!(check_verifier(&tasks()[..1], false).is_ok());
}

#[tokio::test]
async fn run_with_reports_start_up_errors() {
    let cli = parse(&["worker", "--metrics-addr", "off", "--tasks", "nope"]);
    let error = run_with(
        cli,
        RunExtras::new().tasks(tasks()).without_signal_handlers(),
    )
    .await
    .expect_err("unknown task");
    assert!(error.to_string().starts_with("--tasks names a task"));

    let cli = parse(&["worker", "--metrics-addr", "off"]);
    let error = run_with(
        cli,
        RunExtras::new().tasks(Vec::new()).without_signal_handlers(),
    )
    .await
    .expect_err("no tasks");
    assert!(error.to_string().starts_with("no tasks to run"));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let cli = parse(&["worker", "--metrics-addr", &addr, "--tasks", "ingest"]);
    let error = run_with(
        cli,
        RunExtras::new().tasks(tasks()).without_signal_handlers(),
    )
    .await
    .expect_err("address in use");
    assert_eq!(
        error.to_string(),
        format!("cannot serve metrics on {addr} (use --metrics-addr to pick another, or `off`)")
    );
}

#[tokio::test]
async fn the_tasks_subcommand_lists_without_starting() {
    let cli = parse(&["worker", "tasks", "--tasks", "ingest"]);
    run_with(
        cli,
        RunExtras::new().tasks(tasks()).without_signal_handlers(),
    )
    .await
    .expect("listing");
}

#[tokio::test(start_paused = true)]
async fn replaying_to_a_db_task_needs_a_token_its_roles_accept() {
    use crate::auth::{Hs256Signer, Hs256Verifier};
    use crate::broker::MemoryBroker;
    use worker_core::{props, Broker, Message, Topic};

    let key = b"cli-replay-test-key-of-32-bytes!!".to_vec();
    let broker = Arc::new(MemoryBroker::new());
    let dlq = Topic::parse("q1/prod/db/writes-dlq").expect("topic");
    let writes = Topic::parse("q1/prod/db/writes").expect("topic");
    let reader = broker
        .subscribe(worker_core::SubscribeOptions {
            topic: writes.clone(),
            subscription: "check".into(),
            consumer_name: "check".into(),
            consumer_type: worker_core::ConsumerType::Shared,
            initial_position: worker_core::InitialPosition::Earliest,
            receiver_queue_size: 10,
        })
        .await
        .expect("subscribe");
    let copy = Message::new("[1]")
        .with_property(props::MESSAGE_ID, "m-1")
        .with_property(props::DLQ_REASON, "retries_exhausted")
        .with_property(props::DLQ_ORIGINAL_TOPIC, writes.to_string());
    broker.publish(&dlq, copy).await.expect("publish");
    let run = |args: &[&str]| {
        let cli = parse(args);
        let extras = RunExtras::new()
            .tasks(tasks())
            .broker(broker.clone())
            .verifier(Arc::new(Hs256Verifier::new(Secret::new(key.clone()))))
            .without_signal_handlers();
        run_with(cli, extras)
    };
    let signer = Hs256Signer::new(Secret::new(key.clone()));
    let reader_token = signer
        .sign("bob", &["reader"], Duration::from_secs(600))
        .expect("sign");
    let writer_token = signer
        .sign("alice", &["db_writer"], Duration::from_secs(600))
        .expect("sign");

    // (The subcommand's variable, WORKER_REPLAY_TOKEN, feeds the same argument as --token.)
    let replay = |token: Option<&str>| {
        let mut args = vec!["worker", "dlq", "write_records", "--replay"];
        args.extend(token.map(|t| ["--token", t]).into_iter().flatten());
        run(&args)
    };
    let error = replay(None).await.expect_err("no token");
    assert!(error.to_string().contains("WORKER_REPLAY_TOKEN"), "{error}");
    let error = replay(Some(&reader_token))
        .await
        .expect_err("a token without the role");
    assert_eq!(
        error.to_string(),
        "the replay token would not be accepted by task `write_records`"
    );
    assert!(!format!("{error:?}").contains(&reader_token));

    replay(Some(&writer_token)).await.expect("replayed");
    let replayed = reader.receive(10).await.expect("receive");
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].property(props::MESSAGE_ID), Some("m-1"));
    assert_eq!(
        replayed[0].property(props::AUTH_TOKEN),
        Some(writer_token.as_str())
    );
}
