//! The backend flags: parsing, environment fallbacks, secrets, and what they connect.

use std::path::Path;
use std::time::Duration;

use super::{command_with_env, parse, parse_env};
use crate::auth::Secret;
use crate::cli::{BackendKind, PulsarCompression};

#[test]
fn backend_defaults() {
    let cli = parse(&["worker"]);
    let pulsar = &cli.backend.pulsar;
    assert_eq!(pulsar.host, "pulsar://localhost:6650");
    assert!(pulsar.api_key.is_none() && pulsar.listener.is_none());
    assert_eq!(pulsar.tls_ca_file, None);
    assert_eq!(pulsar.operation_timeout, Duration::from_secs(30));
    assert_eq!(pulsar.connection_timeout, Duration::from_secs(10));
    assert!(!pulsar.batching);
    assert_eq!(pulsar.batch_size, 100);
    assert_eq!(pulsar.batch_delay, Duration::from_millis(5));
    assert_eq!(pulsar.compression, PulsarCompression::None);

    let valkey = &cli.backend.valkey;
    assert_eq!(valkey.url, "redis://127.0.0.1:6379");
    assert_eq!(valkey.visibility_timeout, Duration::from_secs(30));
    assert_eq!(valkey.tls_ca_file, None);

    let mqtt = &cli.backend.mqtt;
    assert_eq!(mqtt.host, "localhost");
    assert_eq!(mqtt.port, 1883);
    assert!(mqtt.username.is_none() && mqtt.password.is_none());
    assert_eq!(mqtt.client_id_prefix, "wr-");
}

#[test]
fn pulsar_flags() {
    let cli = parse(&[
        "worker",
        "--backend",
        "pulsar",
        "--pulsar-host",
        "pulsar+ssl://broker:6651",
        "--pulsar-api-key",
        "tok",
        "--pulsar-listener",
        "internal",
        "--pulsar-tls-ca-file",
        "/etc/ca.pem",
        "--pulsar-operation-timeout",
        "5s",
        "--pulsar-connection-timeout",
        "500ms",
        "--pulsar-batching",
        "--pulsar-batch-size",
        "50",
        "--pulsar-batch-delay",
        "20ms",
        "--pulsar-compression",
        "zstd",
    ]);
    assert_eq!(cli.backend.backend, BackendKind::Pulsar);
    let pulsar = &cli.backend.pulsar;
    assert_eq!(pulsar.host, "pulsar+ssl://broker:6651");
    assert_eq!(
        pulsar.api_key.as_ref().map(Secret::expose),
        Some(&b"tok"[..])
    );
    assert_eq!(pulsar.listener.as_deref(), Some("internal"));
    assert_eq!(
        pulsar.tls_ca_file.as_deref(),
        Some(Path::new("/etc/ca.pem"))
    );
    assert_eq!(pulsar.operation_timeout, Duration::from_secs(5));
    assert_eq!(pulsar.connection_timeout, Duration::from_millis(500));
    assert!(pulsar.batching);
    assert_eq!(pulsar.batch_size, 50);
    assert_eq!(pulsar.batch_delay, Duration::from_millis(20));
    assert_eq!(pulsar.compression, PulsarCompression::Zstd);
}

#[test]
fn pulsar_environment_fallbacks() {
    let env = [
        ("PULSAR_HOST", "pulsar://env-broker:6650"),
        ("PULSAR_API_KEY", "env-token"),
        ("PULSAR_LISTENER", "external"),
        ("PULSAR_TLS_CA_FILE", "/env/ca.pem"),
        ("PULSAR_OPERATION_TIMEOUT", "7"),
        ("PULSAR_CONNECTION_TIMEOUT", "2s"),
        ("PULSAR_BATCHING", "true"),
        ("PULSAR_BATCH_SIZE", "10"),
        ("PULSAR_BATCH_DELAY", "1ms"),
        ("PULSAR_COMPRESSION", "lz4"),
    ];
    let cli = parse_env(&["worker"], &env).expect("valid");
    let pulsar = &cli.backend.pulsar;
    assert_eq!(pulsar.host, "pulsar://env-broker:6650");
    assert_eq!(
        pulsar.api_key.as_ref().map(Secret::expose),
        Some(&b"env-token"[..])
    );
    assert_eq!(pulsar.listener.as_deref(), Some("external"));
    assert_eq!(
        pulsar.tls_ca_file.as_deref(),
        Some(Path::new("/env/ca.pem"))
    );
    assert_eq!(pulsar.operation_timeout, Duration::from_secs(7));
    assert_eq!(pulsar.connection_timeout, Duration::from_secs(2));
    assert!(pulsar.batching);
    assert_eq!(pulsar.batch_size, 10);
    assert_eq!(pulsar.batch_delay, Duration::from_millis(1));
    assert_eq!(pulsar.compression, PulsarCompression::Lz4);

    let cli = parse_env(&["worker", "--pulsar-host", "pulsar://flag:6650"], &env).expect("valid");
    assert_eq!(cli.backend.pulsar.host, "pulsar://flag:6650");
    let cli = parse_env(&["worker"], &[("PULSAR_BATCHING", "false")]).expect("valid");
    assert!(!cli.backend.pulsar.batching);
}

#[test]
fn valkey_flags_and_environment_fallbacks() {
    let cli = parse(&[
        "worker",
        "--backend",
        "valkey",
        "--valkey-url",
        "rediss://:pw@cache:6380/2",
        "--valkey-visibility-timeout",
        "90s",
        "--valkey-tls-ca-file",
        "/etc/valkey-ca.pem",
    ]);
    assert_eq!(cli.backend.backend, BackendKind::Valkey);
    let valkey = &cli.backend.valkey;
    assert_eq!(valkey.url, "rediss://:pw@cache:6380/2");
    assert_eq!(valkey.visibility_timeout, Duration::from_secs(90));
    assert_eq!(
        valkey.tls_ca_file.as_deref(),
        Some(Path::new("/etc/valkey-ca.pem"))
    );

    let env = [
        ("VALKEY_URL", "redis://env-cache:6379"),
        ("VALKEY_VISIBILITY_TIMEOUT", "1m"),
        ("VALKEY_TLS_CA_FILE", "/env/ca.pem"),
    ];
    let cli = parse_env(&["worker"], &env).expect("valid");
    let valkey = &cli.backend.valkey;
    assert_eq!(valkey.url, "redis://env-cache:6379");
    assert_eq!(valkey.visibility_timeout, Duration::from_secs(60));
    assert_eq!(
        valkey.tls_ca_file.as_deref(),
        Some(Path::new("/env/ca.pem"))
    );
    let cli = parse_env(&["worker", "--valkey-url", "redis://flag:1"], &env).expect("valid");
    assert_eq!(cli.backend.valkey.url, "redis://flag:1");
}

#[test]
fn mqtt_flags_and_environment_fallbacks() {
    let cli = parse(&[
        "worker",
        "--backend",
        "mqtt",
        "--mqtt-host",
        "mq.internal",
        "--mqtt-port",
        "8883",
        "--mqtt-username",
        "worker",
        "--mqtt-password",
        "-pw",
        "--mqtt-client-id-prefix",
        "ingest-",
    ]);
    assert_eq!(cli.backend.backend, BackendKind::Mqtt);
    let mqtt = &cli.backend.mqtt;
    assert_eq!(mqtt.host, "mq.internal");
    assert_eq!(mqtt.port, 8883);
    assert_eq!(mqtt.username.as_deref(), Some("worker"));
    assert_eq!(
        mqtt.password.as_ref().map(Secret::expose),
        Some(&b"-pw"[..])
    );
    assert_eq!(mqtt.client_id_prefix, "ingest-");

    let env = [
        ("MQTT_HOST", "env-mq"),
        ("MQTT_PORT", "1884"),
        ("MQTT_USERNAME", "env-user"),
        ("MQTT_PASSWORD", "env-pw"),
        ("MQTT_CLIENT_ID_PREFIX", "env-"),
    ];
    let cli = parse_env(&["worker"], &env).expect("valid");
    let mqtt = &cli.backend.mqtt;
    assert_eq!(mqtt.host, "env-mq");
    assert_eq!(mqtt.port, 1884);
    assert_eq!(mqtt.username.as_deref(), Some("env-user"));
    assert_eq!(
        mqtt.password.as_ref().map(Secret::expose),
        Some(&b"env-pw"[..])
    );
    assert_eq!(mqtt.client_id_prefix, "env-");
    let cli = parse_env(&["worker", "--mqtt-port", "1"], &env).expect("valid");
    assert_eq!(cli.backend.mqtt.port, 1);
}

#[test]
fn bad_backend_values_are_refused_with_the_flag_named() {
    let cases: [(&[&str], &str); 7] = [
        (&["--pulsar-compression", "gzip"], "--pulsar-compression"),
        (
            &["--pulsar-operation-timeout", "0"],
            "--pulsar-operation-timeout",
        ),
        (
            &["--pulsar-batching", "--pulsar-batch-size", "1"],
            "--pulsar-batch-size",
        ),
        (&["--pulsar-batch-size", "10"], "--pulsar-batching"),
        (
            &["--valkey-visibility-timeout", "0s"],
            "--valkey-visibility-timeout",
        ),
        (&["--mqtt-port", "70000"], "--mqtt-port"),
        (&["--mqtt-password", "pw"], "--mqtt-username"),
    ];
    for (flags, named) in cases {
        let args: Vec<&str> = std::iter::once("worker")
            .chain(flags.iter().copied())
            .collect();
        let error = parse_env(&args, &[])
            .expect_err("refused")
            .render()
            .to_string();
        assert!(error.contains(named), "{flags:?}: {error}");
        assert!(
            !error.contains("pw\n") && !error.contains("'pw'"),
            "{error}"
        );
    }
    // A password from the environment needs a user name too.
    let error = parse_env(&["worker"], &[("MQTT_PASSWORD", "env-pw")])
        .expect_err("no user name")
        .render()
        .to_string();
    assert!(error.contains("--mqtt-username"), "{error}");
    assert!(!error.contains("env-pw"), "{error}");
}

#[test]
fn backend_secrets_never_show() {
    let (token, password, url_password) = ("tok-s3cr3t", "mq-s3cr3t", "vk-s3cr3t");
    let url = format!("redis://user:{url_password}@cache:6379/0");
    let cli = parse(&[
        "worker",
        "--pulsar-api-key",
        token,
        "--valkey-url",
        &url,
        "--mqtt-username",
        "u",
        "--mqtt-password",
        password,
    ]);
    let printed = format!("{cli:?}");
    for secret in [token, password, url_password] {
        assert!(!printed.contains(secret), "{secret} in {printed}");
    }
    assert!(printed.contains("redis://***@cache:6379/0"), "{printed}");

    let env = [
        ("PULSAR_API_KEY", token),
        ("VALKEY_URL", url.as_str()),
        ("MQTT_USERNAME", "u"),
        ("MQTT_PASSWORD", password),
    ];
    let cli = parse_env(&["worker"], &env).expect("valid");
    let printed = format!("{cli:?}");
    let help = command_with_env(&env).render_long_help().to_string();
    for secret in [token, password, url_password] {
        assert!(!printed.contains(secret), "{secret} in {printed}");
        assert!(!help.contains(secret), "{secret} in {help}");
    }
    assert!(help.contains("PULSAR_API_KEY") && help.contains("VALKEY_URL"));
}

#[cfg(feature = "pulsar")]
#[test]
fn pulsar_flags_become_backend_options() {
    use crate::broker::pulsar::{Batching, Compression};

    let cli = parse(&[
        "worker",
        "--pulsar-host",
        "pulsar://broker:6650",
        "--pulsar-api-key",
        "tok",
        "--pulsar-batching",
        "--pulsar-batch-size",
        "20",
        "--pulsar-compression",
        "lz4",
    ]);
    let options = cli.backend.pulsar.options();
    assert_eq!(options.url, "pulsar://broker:6650");
    assert!(options.token.is_some());
    assert_eq!(options.listener, None);
    assert_eq!(
        options.batching,
        Some(Batching {
            max_messages: 20,
            max_delay: Duration::from_millis(5),
        })
    );
    assert_eq!(options.compression, Compression::Lz4);
    assert_eq!(options.validate(), Ok(()));

    // Variables left empty by a deployment template count as not set.
    let env = [("PULSAR_API_KEY", ""), ("PULSAR_LISTENER", "")];
    let options = parse_env(&["worker"], &env)
        .expect("valid")
        .backend
        .pulsar
        .options();
    assert!(options.token.is_none() && options.listener.is_none());
    assert!(options.batching.is_none());
}

#[cfg(feature = "pulsar")]
#[tokio::test]
async fn a_pulsar_listener_is_a_clear_start_up_error() {
    let cli = parse(&[
        "worker",
        "--backend",
        "pulsar",
        "--pulsar-listener",
        "internal",
    ]);
    let error = crate::cli::connect_backend(&cli.backend)
        .await
        .err()
        .expect("refused");
    let message = error.to_string();
    assert!(
        message.starts_with("--pulsar-listener (PULSAR_LISTENER) is `internal`, but"),
        "{message}"
    );
    assert!(message.contains("--pulsar-host"), "{message}");
    let caps = cli.backend.log_caps();
    assert_eq!(caps.len(), 1);
    assert_eq!(
        caps[0].target,
        crate::broker::pulsar::LOG_TARGET_WITH_TOKENS
    );
    assert_eq!(caps[0].max, tracing::Level::DEBUG);
}

#[cfg(feature = "valkey")]
#[test]
fn valkey_flags_become_backend_options() {
    let cli = parse(&[
        "worker",
        "--valkey-url",
        "redis://:pw@cache:6379",
        "--valkey-visibility-timeout",
        "5s",
    ]);
    let options = cli.backend.valkey.options();
    assert_eq!(options.url, "redis://:pw@cache:6379");
    assert_eq!(options.visibility_timeout, Duration::from_secs(5));
    assert_eq!(options.tls_ca_file, None);
    assert!(cli.backend.log_caps().is_empty());
}

#[cfg(feature = "valkey")]
#[tokio::test]
async fn an_unreachable_valkey_is_named_without_its_password() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let url = format!("redis://:hunter2@127.0.0.1:{port}");
    let cli = parse(&["worker", "--backend", "valkey", "--valkey-url", &url]);
    let error = crate::cli::connect_backend(&cli.backend)
        .await
        .err()
        .expect("nothing listens");
    assert_eq!(
        error.to_string(),
        format!("cannot connect the `valkey` backend to redis://***@127.0.0.1:{port}")
    );
    let chain = format!("{:?}", anyhow::Error::from(error));
    assert!(!chain.contains("hunter2"), "{chain}");
}

#[cfg(feature = "mqtt")]
#[test]
fn mqtt_flags_become_backend_options() {
    let cli = parse(&[
        "worker",
        "--mqtt-host",
        "mq",
        "--mqtt-port",
        "1884",
        "--mqtt-username",
        "u",
        "--mqtt-password",
        "pw",
        "--mqtt-client-id-prefix",
        "x-",
    ]);
    let options = cli.backend.mqtt.options();
    assert_eq!((options.host.as_str(), options.port), ("mq", 1884));
    assert_eq!(options.username.as_deref(), Some("u"));
    assert_eq!(options.password.as_ref().map(|p| p.expose()), Some("pw"));
    assert_eq!(options.client_id_prefix, "x-");
}

#[cfg(not(feature = "valkey"))]
#[tokio::test]
async fn a_backend_not_compiled_in_names_its_feature() {
    let cli = parse(&["worker", "--backend", "valkey"]);
    let error = crate::cli::connect_backend(&cli.backend)
        .await
        .err()
        .expect("not compiled in");
    assert_eq!(
        error.to_string(),
        "backend `valkey` is not compiled in (enable feature `valkey`)"
    );
}
