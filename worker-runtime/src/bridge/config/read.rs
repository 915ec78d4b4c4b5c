//! Reading one broker or one route of the `[bridge]` section into its spec, every problem
//! pushed with its key.

use std::collections::HashMap;
use std::path::PathBuf;

use toml::Value;
use worker_core::{ConsumerType, InitialPosition};

use super::{
    BrokerSpec, Problems, RouteSpec, SourceSpec, TargetSpec, BROKER_KEYS, DEFAULT_MAX_IN_FLIGHT,
    ROUTE_KEYS, SOURCE_KEYS, TARGET_KEYS,
};
use crate::cli::config_file::values;

/// `value` as a table whose keys are all in `valid`: a value that is no table, and each key
/// that is not valid, is a problem.
fn table_with_keys<'v>(
    value: &'v Value,
    valid: &[&str],
    section: &str,
    path: &str,
    problems: &mut Problems<'_>,
) -> Option<&'v toml::Table> {
    let Some(table) = value.as_table() else {
        problems.push(
            section,
            path,
            format!("must be a table, got {}", value.type_str()),
        );
        return None;
    };
    for key in table.keys() {
        if !valid.contains(&key.as_str()) {
            problems.push(
                section,
                &format!("{path}.{key}"),
                format!("is not a valid key here; valid keys: {}", valid.join(", ")),
            );
        }
    }
    Some(table)
}

pub(super) fn read_broker(
    name: &str,
    value: &Value,
    path: &str,
    problems: &mut Problems<'_>,
) -> Option<BrokerSpec> {
    let section = format!("broker `{name}`");
    let table = table_with_keys(value, BROKER_KEYS, &section, path, problems)?;
    let text = |key: &str, problems: &mut Problems<'_>| -> Option<String> {
        let value = table.get(key)?;
        match values::string(value) {
            Ok(text) => Some(text.to_owned()),
            Err(message) => {
                problems.push(&section, &format!("{path}.{key}"), message);
                None
            }
        }
    };
    // A secret from the variable a `*_env` key names.
    let from_env = |key: &str, problems: &mut Problems<'_>| -> Option<String> {
        let variable = text(key, problems)?;
        let found = (problems.env)(&variable).filter(|v| !v.is_empty());
        if found.is_none() {
            problems.push(
                &section,
                &format!("{path}.{key}"),
                format!("names the environment variable `{variable}`, which is not set"),
            );
        }
        found
    };
    let Some(backend) = text("backend", problems) else {
        if !table.contains_key("backend") {
            problems.push(
                &section,
                path,
                "needs `backend`: valkey, pulsar, mqtt, memory or fanout",
            );
        }
        return None;
    };
    let url = |problems: &mut Problems<'_>| -> Option<String> {
        match (table.contains_key("url"), table.contains_key("url_env")) {
            (true, true) => {
                problems.push(
                    &section,
                    &format!("{path}.url_env"),
                    "is given with `url`; keep one",
                );
                None
            }
            (false, true) => from_env("url_env", problems),
            (true, false) => text("url", problems),
            (false, false) => {
                problems.push(
                    &section,
                    path,
                    format!("needs `url` (or `url_env`) for backend {backend}"),
                );
                None
            }
        }
    };
    let tls_ca_file = text("tls_ca_file", problems).map(PathBuf::from);
    let unavailable = |feature: &str, problems: &mut Problems<'_>| {
        problems.push(
            &section,
            &format!("{path}.backend"),
            format!("is {feature}, but this binary was built without the `{feature}` feature of worker-runtime"),
        );
    };
    match backend.as_str() {
        "memory" => Some(BrokerSpec::Memory),
        "valkey" => {
            let url = url(problems)?;
            if !cfg!(feature = "valkey") {
                unavailable("valkey", problems);
            }
            Some(BrokerSpec::Valkey {
                url: crate::auth::Secret::new(url.into_bytes()),
                tls_ca_file,
            })
        }
        "pulsar" => {
            let url = url(problems)?;
            let token = if table.contains_key("token_env") {
                Some(crate::auth::Secret::new(
                    from_env("token_env", problems)?.into_bytes(),
                ))
            } else {
                None
            };
            if !cfg!(feature = "pulsar") {
                unavailable("pulsar", problems);
            }
            Some(BrokerSpec::Pulsar {
                url,
                token,
                tls_ca_file,
                admin_url: text("admin_url", problems),
            })
        }
        "mqtt" => {
            let url = url(problems)?;
            let Some((host, port)) = mqtt_address(&url) else {
                problems.push(
                    &section,
                    &format!("{path}.url"),
                    format!("must look like mqtt://host:port, got {url:?}"),
                );
                return None;
            };
            let password = if table.contains_key("password_env") {
                Some(crate::auth::Secret::new(
                    from_env("password_env", problems)?.into_bytes(),
                ))
            } else {
                None
            };
            if !cfg!(feature = "mqtt") {
                unavailable("mqtt", problems);
            }
            Some(BrokerSpec::Mqtt {
                host,
                port,
                username: text("username", problems),
                password,
            })
        }
        "fanout" => {
            let members = match table.get("brokers").map(values::strings) {
                Some(Ok(members)) if members.len() >= 2 => members,
                Some(Ok(_)) => {
                    problems.push(
                        &section,
                        &format!("{path}.brokers"),
                        "must name at least two brokers",
                    );
                    return None;
                }
                Some(Err(message)) => {
                    problems.push(&section, &format!("{path}.brokers"), message);
                    return None;
                }
                None => {
                    problems.push(
                        &section,
                        path,
                        "needs `brokers`: the brokers to publish to, the first primary",
                    );
                    return None;
                }
            };
            let policy = match table.get("policy") {
                None => crate::broker::fanout::FanoutPolicy::All,
                Some(value) => match values::one_of(
                    value,
                    crate::broker::fanout::FanoutPolicy::parse,
                    &["all", "first"],
                ) {
                    Ok(policy) => policy,
                    Err(message) => {
                        problems.push(&section, &format!("{path}.policy"), message);
                        return None;
                    }
                },
            };
            Some(BrokerSpec::Fanout { members, policy })
        }
        other => {
            problems.push(
                &section,
                &format!("{path}.backend"),
                format!("must be one of valkey, pulsar, mqtt, memory, fanout, got \"{other}\""),
            );
            None
        }
    }
}

/// `mqtt://host:port` (or `host:port`).
fn mqtt_address(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("mqtt://").unwrap_or(url);
    let (host, port) = rest.trim_end_matches('/').rsplit_once(':')?;
    (!host.is_empty()).then(|| Some((host.to_owned(), port.parse().ok()?)))?
}

pub(super) fn read_route(
    name: &str,
    value: &Value,
    path: &str,
    problems: &mut Problems<'_>,
) -> Option<RouteSpec> {
    let section = format!("route `{name}`");
    let table = table_with_keys(value, ROUTE_KEYS, &section, path, problems)?;
    let source = match table.get("source") {
        Some(source) => read_source(name, source, &format!("{path}.source"), problems),
        None => {
            problems.push(&section, path, "needs `source`");
            None
        }
    };
    let target = match table.get("target") {
        Some(target) => read_target(target, &section, &format!("{path}.target"), problems),
        None => {
            problems.push(&section, path, "needs `target`");
            None
        }
    };
    let dlq = optional(table, "dlq", values::topic, &section, path, problems);
    let dlq_broker = optional(
        table,
        "dlq_broker",
        |v| values::string(v).map(str::to_owned),
        &section,
        path,
        problems,
    );
    let max_in_flight = optional(
        table,
        "max_in_flight",
        values::positive,
        &section,
        path,
        problems,
    );
    Some(RouteSpec {
        name: name.to_owned(),
        source: source?,
        target: target?,
        dlq: dlq.ok()?,
        dlq_broker: dlq_broker.ok()?,
        max_in_flight: max_in_flight.ok()?.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
    })
}

/// The value of `key`, read with `read`: `Ok(None)` when absent, `Err(())` once a problem with it
/// is reported.
fn optional<T>(
    table: &toml::Table,
    key: &str,
    read: impl FnOnce(&Value) -> Result<T, String>,
    section: &str,
    path: &str,
    problems: &mut Problems<'_>,
) -> Result<Option<T>, ()> {
    match table.get(key).map(read) {
        None => Ok(None),
        Some(Ok(value)) => Ok(Some(value)),
        Some(Err(message)) => {
            problems.push(section, &format!("{path}.{key}"), message);
            Err(())
        }
    }
}

/// Exactly one of `kinds` is given: its name, or a problem.
fn one_kind<'k>(
    table: &toml::Table,
    kinds: &[&'k str],
    section: &str,
    path: &str,
    problems: &mut Problems<'_>,
) -> Option<&'k str> {
    let given: Vec<&'k str> = kinds
        .iter()
        .copied()
        .filter(|k| table.contains_key(*k))
        .collect();
    match given.as_slice() {
        [one] => Some(one),
        [] => {
            problems.push(section, path, format!("needs one of {}", kinds.join(", ")));
            None
        }
        many => {
            problems.push(
                section,
                path,
                format!("gives {}: keep one", many.join(" and ")),
            );
            None
        }
    }
}

fn read_source(
    route: &str,
    value: &Value,
    path: &str,
    problems: &mut Problems<'_>,
) -> Option<SourceSpec> {
    let section = format!("route `{route}`");
    let table = table_with_keys(value, SOURCE_KEYS, &section, path, problems)?;
    let string = |key: &str, problems: &mut Problems<'_>| -> Option<String> {
        match values::string(table.get(key)?) {
            Ok(text) => Some(text.to_owned()),
            Err(message) => {
                problems.push(&section, &format!("{path}.{key}"), message);
                None
            }
        }
    };
    let broker = string("broker", problems);
    if !table.contains_key("broker") {
        problems.push(&section, path, "needs `broker`");
    }
    let kind = one_kind(
        table,
        &["topic", "list", "celery_queue"],
        &section,
        path,
        problems,
    )?;
    let topic_only = ["subscription", "consumer_type", "initial_position"];
    for key in topic_only {
        if kind != "topic" && table.contains_key(key) {
            problems.push(
                &section,
                &format!("{path}.{key}"),
                "applies to topic sources only",
            );
        }
    }
    if kind != "celery_queue" && table.contains_key("tasks") {
        problems.push(
            &section,
            &format!("{path}.tasks"),
            "applies to celery_queue sources only",
        );
    }
    match kind {
        "topic" => {
            let topic = match values::topic(&table["topic"]) {
                Ok(topic) => Some(topic),
                Err(message) => {
                    problems.push(&section, &format!("{path}.topic"), message);
                    None
                }
            };
            let consumer_type = optional(
                table,
                "consumer_type",
                |v| {
                    values::one_of(
                        v,
                        ConsumerType::parse,
                        &["shared", "key_shared", "failover", "exclusive"],
                    )
                },
                &section,
                path,
                problems,
            );
            let initial_position = optional(
                table,
                "initial_position",
                |v| values::one_of(v, InitialPosition::parse, &["earliest", "latest"]),
                &section,
                path,
                problems,
            );
            let subscription =
                string("subscription", problems).unwrap_or(format!("bridge-{route}"));
            let consumer_type = consumer_type.ok()?.unwrap_or_default();
            let initial_position = initial_position.ok()?.unwrap_or_default();
            Some(SourceSpec::Topic {
                broker: broker?,
                topic: topic?,
                subscription,
                consumer_type,
                initial_position,
            })
        }
        "list" => Some(SourceSpec::List {
            broker: broker?,
            key: string("list", problems)?,
        }),
        _ => {
            let queue = string("celery_queue", problems)?;
            let Some(tasks) = table.get("tasks") else {
                problems.push(
                    &section,
                    path,
                    "needs `tasks`: a table of celery task name = topic of the Rust task that runs it",
                );
                return None;
            };
            let Some(tasks) = tasks.as_table() else {
                problems.push(
                    &section,
                    &format!("{path}.tasks"),
                    "must be a table of task name = topic",
                );
                return None;
            };
            let mut topics = HashMap::new();
            for (task, topic) in tasks {
                match values::topic(topic) {
                    Ok(topic) => {
                        topics.insert(task.clone(), topic);
                    }
                    Err(message) => {
                        problems.push(&section, &format!("{path}.tasks.{task}"), message)
                    }
                }
            }
            Some(SourceSpec::Celery {
                broker: broker?,
                queue,
                tasks: topics,
            })
        }
    }
}

fn read_target(
    value: &Value,
    section: &str,
    path: &str,
    problems: &mut Problems<'_>,
) -> Option<TargetSpec> {
    let table = table_with_keys(value, TARGET_KEYS, section, path, problems)?;
    let string = |key: &str, problems: &mut Problems<'_>| -> Option<String> {
        match values::string(table.get(key)?) {
            Ok(text) => Some(text.to_owned()),
            Err(message) => {
                problems.push(section, &format!("{path}.{key}"), message);
                None
            }
        }
    };
    let broker = string("broker", problems);
    if !table.contains_key("broker") {
        problems.push(section, path, "needs `broker`");
    }
    if table.contains_key("task") && !table.contains_key("celery_queue") {
        problems.push(
            section,
            &format!("{path}.task"),
            "applies to celery_queue targets only",
        );
    }
    let kinds = ["topic", "list", "celery_queue"];
    let given = kinds.iter().filter(|k| table.contains_key(**k)).count();
    if given > 1 {
        one_kind(table, &kinds, section, path, problems);
        return None;
    }
    if table.contains_key("list") {
        return Some(TargetSpec::List {
            broker: broker?,
            key: string("list", problems)?,
        });
    }
    if table.contains_key("celery_queue") {
        let queue = string("celery_queue", problems)?;
        let Some(task) = string("task", problems) else {
            if !table.contains_key("task") {
                problems.push(
                    section,
                    path,
                    "needs `task`: the celery task that runs each message",
                );
            }
            return None;
        };
        return Some(TargetSpec::Celery {
            broker: broker?,
            queue,
            task,
        });
    }
    let topic = optional(table, "topic", values::topic, section, path, problems).ok()?;
    Some(TargetSpec::Topic {
        broker: broker?,
        topic,
    })
}
