//! The `[bridge]` section of the worker's TOML file: the brokers routes use and the routes.
//!
//! ```toml
//! [bridge.brokers.cache]            # any name; routes refer to it
//! backend = "valkey"                # valkey | pulsar | mqtt | memory | fanout
//! url = "redis://127.0.0.1:6379"    # or url_env = "VAR" when the URL holds a password
//!
//! [bridge.brokers.events]
//! backend = "pulsar"
//! url = "pulsar://127.0.0.1:6650"
//! token_env = "PULSAR_TOKEN"        # optional
//!
//! [bridge.routes.orders]            # a JSON list that Python services LPUSH to → a Pulsar topic
//! source = { broker = "cache", list = "orders" }
//! target = { broker = "events", topic = "persistent://shop/orders/created" }
//!
//! [bridge.routes.celery_in]         # Celery task calls → the topics of Rust tasks
//! source = { broker = "cache", celery_queue = "celery", tasks = { "shop.tasks.add" = "q1/shop/math/add" } }
//! target = { broker = "events" }
//!
//! [bridge.routes.to_celery]         # a topic → calls of a Celery task
//! source = { broker = "events", topic = "persistent://shop/orders/created" }
//! target = { broker = "cache", celery_queue = "celery", task = "shop.tasks.on_order" }
//! max_in_flight = 512
//! dlq = "q1/bridge/dlq/to_celery"
//! ```
//!
//! [`BridgeConfig::parse`] reports every problem at once, each with its line and key.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use toml::Value;
use worker_core::{ConsumerType, InitialPosition, Topic};

use crate::cli::config_file::values;
use crate::cli::config_file::{dotted_key_lines, ConfigFileError, ConfigProblem};

/// The default bound on a route's items read and not yet done.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// Keys of a `[bridge.brokers.<name>]` table.
const BROKER_KEYS: &[&str] = &[
    "backend",
    "url",
    "url_env",
    "admin_url",
    "token_env",
    "tls_ca_file",
    "username",
    "password_env",
    "brokers",
    "policy",
];
/// Keys of a `[bridge.routes.<name>]` table.
const ROUTE_KEYS: &[&str] = &["source", "target", "dlq", "dlq_broker", "max_in_flight"];
/// Keys of a route's `source`.
const SOURCE_KEYS: &[&str] = &[
    "broker",
    "topic",
    "subscription",
    "consumer_type",
    "initial_position",
    "list",
    "celery_queue",
    "tasks",
];
/// Keys of a route's `target`.
const TARGET_KEYS: &[&str] = &["broker", "topic", "list", "celery_queue", "task"];

/// The whole `[bridge]` section.
#[derive(Clone, Debug, Default)]
pub struct BridgeConfig {
    /// Brokers by name.
    pub brokers: BTreeMap<String, BrokerSpec>,
    /// Routes, by name order.
    pub routes: Vec<RouteSpec>,
}

/// How to reach one broker.
#[derive(Clone, Debug)]
pub enum BrokerSpec {
    /// An embedded broker of this process (for tests and demos).
    Memory,
    /// Valkey or Redis.
    Valkey {
        /// `redis://…` or `rediss://…` (may hold a password: never printed).
        url: crate::auth::Secret,
        /// A CA to trust for `rediss://`.
        tls_ca_file: Option<PathBuf>,
    },
    /// Apache Pulsar.
    Pulsar {
        /// `pulsar://…` or `pulsar+ssl://…`.
        url: String,
        /// A token for token authentication.
        token: Option<crate::auth::Secret>,
        /// A CA to trust for `pulsar+ssl://`.
        tls_ca_file: Option<PathBuf>,
        /// The admin REST API, for the sources' backlog.
        admin_url: Option<String>,
    },
    /// An MQTT 5 broker.
    Mqtt {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
        /// User name.
        username: Option<String>,
        /// Password.
        password: Option<crate::auth::Secret>,
    },
    /// One publish fanned out to several of the other brokers (see
    /// [`FanoutBroker`](crate::broker::fanout::FanoutBroker)); reads go to the first.
    Fanout {
        /// The member brokers' names, the first one primary.
        members: Vec<String>,
        /// When a publish counts as confirmed.
        policy: crate::broker::fanout::FanoutPolicy,
    },
}

/// One route.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteSpec {
    /// Its name.
    pub name: String,
    /// Where it reads.
    pub source: SourceSpec,
    /// Where it writes.
    pub target: TargetSpec,
    /// Where refused messages go (`None`: the default, see [`RouteSpec::dead_letter_topic`]).
    pub dlq: Option<Topic>,
    /// The broker of the dead-letter topic (`None`: the target's).
    pub dlq_broker: Option<String>,
    /// The most items read and not yet done.
    pub max_in_flight: usize,
}

impl RouteSpec {
    /// The dead-letter topic: `dlq` if given, else `{target topic}-dlq` for a fixed target topic,
    /// else `q1/bridge/dlq/{route}`.
    pub fn dead_letter_topic(&self) -> Topic {
        if let Some(topic) = &self.dlq {
            return topic.clone();
        }
        match &self.target {
            TargetSpec::Topic {
                topic: Some(topic), ..
            } => topic.default_dlq(),
            _ => Topic::parse(&format!("q1/bridge/dlq/{}", self.name))
                .unwrap_or_else(|_| Topic::parse("q1/bridge/dlq/routes").expect("a valid literal")),
        }
    }

    /// The broker of the dead-letter topic.
    pub fn dead_letter_broker(&self) -> &str {
        self.dlq_broker
            .as_deref()
            .unwrap_or_else(|| self.target.broker())
    }
}

/// Where a route reads.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    /// A subscription of a topic.
    Topic {
        /// The broker.
        broker: String,
        /// The topic.
        topic: Topic,
        /// The subscription (default `bridge-{route}`).
        subscription: String,
        /// How the bridge's copies share it (default shared).
        consumer_type: ConsumerType,
        /// Where a new subscription starts (default earliest).
        initial_position: InitialPosition,
    },
    /// A plain list of JSON messages.
    List {
        /// The broker (a Valkey one).
        broker: String,
        /// The list's key.
        key: String,
    },
    /// A Celery queue.
    Celery {
        /// The broker (a Valkey one).
        broker: String,
        /// The queue (list) name.
        queue: String,
        /// Celery task name → topic.
        tasks: HashMap<String, Topic>,
    },
}

impl SourceSpec {
    /// The broker it reads from.
    pub fn broker(&self) -> &str {
        match self {
            SourceSpec::Topic { broker, .. }
            | SourceSpec::List { broker, .. }
            | SourceSpec::Celery { broker, .. } => broker,
        }
    }
}

/// Where a route writes.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetSpec {
    /// A topic; `None` for the topic each message's source names (Celery-source routes).
    Topic {
        /// The broker.
        broker: String,
        /// The topic.
        topic: Option<Topic>,
    },
    /// A plain list (payloads only).
    List {
        /// The broker (a Valkey one).
        broker: String,
        /// The list's key.
        key: String,
    },
    /// Calls of a Celery task.
    Celery {
        /// The broker (a Valkey one).
        broker: String,
        /// The queue (list) name.
        queue: String,
        /// The Celery task's registered name.
        task: String,
    },
}

impl TargetSpec {
    /// The broker it writes to.
    pub fn broker(&self) -> &str {
        match self {
            TargetSpec::Topic { broker, .. }
            | TargetSpec::List { broker, .. }
            | TargetSpec::Celery { broker, .. } => broker,
        }
    }
}

/// Collects problems, each located at the line of its key.
struct Problems<'a> {
    lines: HashMap<String, usize>,
    problems: Vec<ConfigProblem>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Problems<'_> {
    /// A problem with the key at dotted `path`, shown as `key` (its last part) in `section`.
    fn push(&mut self, section: &str, path: &str, message: impl Into<String>) {
        let key = path.rsplit('.').next().unwrap_or(path);
        // A path that is a whole table (the route itself) names no key of it.
        let is_table = path.matches('.').count() <= 2;
        self.problems.push(ConfigProblem {
            line: self.lines.get(path).copied(),
            task: None,
            section: Some(section.to_owned()),
            key: (!is_table).then(|| key.to_owned()),
            message: message.into(),
        });
    }
}

impl BridgeConfig {
    /// Reads the `[bridge]` section of a worker's TOML file (`source_name` names it in messages);
    /// an empty config when the file has none. Variables named by `*_env` keys are read now.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, ConfigFileError> {
        Self::parse_with_env(text, source_name, &|name| std::env::var(name).ok())
    }

    /// [`Self::parse`] with the environment given (for tests).
    pub fn parse_with_env(
        text: &str,
        source_name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigFileError> {
        let document: toml::Table =
            text.parse()
                .map_err(|error: toml::de::Error| ConfigFileError::Syntax {
                    source_name: source_name.to_owned(),
                    line: error.span().map(|span| {
                        text.get(..span.start)
                            .unwrap_or(text)
                            .bytes()
                            .filter(|&b| b == b'\n')
                            .count()
                            + 1
                    }),
                    message: error.message().to_owned(),
                })?;
        let mut problems = Problems {
            lines: dotted_key_lines(text),
            problems: Vec::new(),
            env,
        };
        let mut config = BridgeConfig::default();
        if let Some(bridge) = document.get("bridge") {
            config.read(bridge, &mut problems);
        }
        if problems.problems.is_empty() {
            Ok(config)
        } else {
            let mut problems = problems.problems;
            problems.sort_by_key(|p| (p.line.is_none(), p.line));
            Err(ConfigFileError::Invalid {
                source_name: source_name.to_owned(),
                problems,
            })
        }
    }

    fn read(&mut self, bridge: &Value, problems: &mut Problems<'_>) {
        let Some(bridge) = bridge.as_table() else {
            problems.push("bridge", "bridge", "must be a table");
            return;
        };
        for (key, value) in bridge {
            let path = format!("bridge.{key}");
            let Some(tables) = value.as_table() else {
                problems.push("[bridge]", &path, "must hold tables");
                continue;
            };
            match key.as_str() {
                "brokers" => {
                    for (name, table) in tables {
                        let path = format!("bridge.brokers.{name}");
                        if let Some(spec) = read_broker(name, table, &path, problems) {
                            self.brokers.insert(name.clone(), spec);
                        }
                    }
                }
                "routes" => {
                    for (name, table) in tables {
                        let path = format!("bridge.routes.{name}");
                        if let Some(route) = read_route(name, table, &path, problems) {
                            self.routes.push(route);
                        }
                    }
                }
                _ => problems.push(
                    "[bridge]",
                    &path,
                    "is not a bridge key; valid keys: brokers, routes",
                ),
            }
        }
        self.check_references(problems);
    }

    /// Every broker a route or a fanout names exists, and lists and Celery queues are on Valkey.
    fn check_references(&self, problems: &mut Problems<'_>) {
        let known = || {
            let names: Vec<&str> = self.brokers.keys().map(String::as_str).collect();
            if names.is_empty() {
                "none: add [bridge.brokers.<name>] tables".to_owned()
            } else {
                names.join(", ")
            }
        };
        for (name, spec) in &self.brokers {
            if let BrokerSpec::Fanout { members, .. } = spec {
                for member in members {
                    let path = format!("bridge.brokers.{name}.brokers");
                    match self.brokers.get(member) {
                        None => problems.push(
                            &format!("broker `{name}`"),
                            &path,
                            format!(
                                "names broker `{member}`, which is not defined; defined: {}",
                                known()
                            ),
                        ),
                        Some(BrokerSpec::Fanout { .. }) => problems.push(
                            &format!("broker `{name}`"),
                            &path,
                            format!("names `{member}`, another fanout; members must be brokers"),
                        ),
                        Some(_) => {}
                    }
                }
            }
        }
        for route in &self.routes {
            let section = format!("route `{}`", route.name);
            let base = format!("bridge.routes.{}", route.name);
            let needs_valkey = |what: &str| format!("{what} live on a valkey broker");
            let checks = [
                (
                    "source",
                    route.source.broker(),
                    matches!(route.source, SourceSpec::Topic { .. }),
                ),
                (
                    "target",
                    route.target.broker(),
                    matches!(route.target, TargetSpec::Topic { .. }),
                ),
            ];
            for (end, broker, any_backend) in checks {
                let path = format!("{base}.{end}.broker");
                match self.brokers.get(broker) {
                    None => problems.push(
                        &section,
                        &path,
                        format!(
                            "names broker `{broker}`, which is not defined; defined: {}",
                            known()
                        ),
                    ),
                    Some(BrokerSpec::Valkey { .. }) => {}
                    Some(_) if !any_backend => {
                        problems.push(&section, &path, needs_valkey("lists and celery queues"))
                    }
                    Some(_) => {}
                }
            }
            if let Some(broker) = &route.dlq_broker {
                if !self.brokers.contains_key(broker) {
                    problems.push(
                        &section,
                        &format!("{base}.dlq_broker"),
                        format!(
                            "names broker `{broker}`, which is not defined; defined: {}",
                            known()
                        ),
                    );
                }
            }
            let mapped_topics = matches!(route.source, SourceSpec::Celery { .. });
            if let TargetSpec::Topic { topic: None, .. } = route.target {
                if !mapped_topics {
                    problems.push(
                        &section,
                        &format!("{base}.target"),
                        "needs `topic`: only a celery_queue source names each message's topic",
                    );
                }
            }
        }
    }
}

/// A table's keys, checked against `valid`.
fn check_keys(
    table: &toml::Table,
    valid: &[&str],
    section: &str,
    path: &str,
    problems: &mut Problems<'_>,
) {
    for key in table.keys() {
        if !valid.contains(&key.as_str()) {
            problems.push(
                section,
                &format!("{path}.{key}"),
                format!("is not a valid key here; valid keys: {}", valid.join(", ")),
            );
        }
    }
}

fn read_broker(
    name: &str,
    value: &Value,
    path: &str,
    problems: &mut Problems<'_>,
) -> Option<BrokerSpec> {
    let section = format!("broker `{name}`");
    let Some(table) = value.as_table() else {
        problems.push(
            &section,
            path,
            format!("must be a table, got {}", value.type_str()),
        );
        return None;
    };
    check_keys(table, BROKER_KEYS, &section, path, problems);
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

fn read_route(
    name: &str,
    value: &Value,
    path: &str,
    problems: &mut Problems<'_>,
) -> Option<RouteSpec> {
    let section = format!("route `{name}`");
    let Some(table) = value.as_table() else {
        problems.push(
            &section,
            path,
            format!("must be a table, got {}", value.type_str()),
        );
        return None;
    };
    check_keys(table, ROUTE_KEYS, &section, path, problems);
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
    let Some(table) = value.as_table() else {
        problems.push(
            &section,
            path,
            format!("must be a table, got {}", value.type_str()),
        );
        return None;
    };
    check_keys(table, SOURCE_KEYS, &section, path, problems);
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
    let Some(table) = value.as_table() else {
        problems.push(
            section,
            path,
            format!("must be a table, got {}", value.type_str()),
        );
        return None;
    };
    check_keys(table, TARGET_KEYS, section, path, problems);
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

#[cfg(test)]
mod tests;
