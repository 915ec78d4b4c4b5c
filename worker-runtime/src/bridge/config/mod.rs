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

use crate::cli::config_file::{dotted_key_lines, ConfigFileError, ConfigProblem};

mod read;

use read::{read_broker, read_route};

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

#[cfg(test)]
mod tests;
