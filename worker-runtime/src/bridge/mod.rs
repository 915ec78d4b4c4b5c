//! The bridge: routes that forward messages from one broker to another, for moving work between
//! Celery on Valkey and workers on Pulsar a piece at a time.
//!
//! A route reads a [`Source`] and writes a [`Target`]:
//! - sources: a topic's subscription on any backend, a plain list of JSON messages on Valkey
//!   (`LPUSH`/`BRPOP` queues, read with the reliable-queue pattern), or a Celery queue on Valkey;
//! - targets: a topic on any backend (a [`FanoutBroker`]
//!   among them, for hybrid publish), a plain list, or calls of a Celery task.
//!
//! Guarantees (see [`route`]): at least once, pipelined publishes, back-pressure instead of loss
//! when the target is down, refused messages to the route's dead-letter topic, each key's order
//! kept where the source keeps it.
//!
//! A worker binary runs its bridge with `my-worker bridge --config worker.toml` (the `[bridge]`
//! section, see [`config`]); a program builds one with [`Bridge::from_config`] or from its own
//! [`Route`]s.

pub mod config;
#[cfg(feature = "valkey")]
pub mod lists;
pub mod replay;
pub mod route;
pub mod source;
pub mod target;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;
use worker_core::{Broker, BrokerError, SubscribeOptions};

use crate::broker::fanout::FanoutBroker;
use crate::broker::MemoryBroker;
use crate::metrics::Metrics;

pub use config::{BridgeConfig, BrokerSpec, RouteSpec, SourceSpec, TargetSpec};
pub use replay::{replay_route, ReplayFrom, ReplayOptions, ReplayReport};
pub use route::{DeadLetterTopic, Route, RouteReport};
pub use source::{Item, Receipt, Source, TopicSource};
pub use target::{Target, TopicTarget};

/// Why a bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The configuration names no route (or `--route` selected none).
    #[error(
        "no bridge routes to run: add [bridge.routes.<name>] tables to the configuration file"
    )]
    NoRoutes,
    /// `--route` names a route the configuration does not have.
    #[error("no bridge route `{0}`; configured routes: {1}")]
    UnknownRoute(String, String),
    /// A broker could not be reached.
    #[error("bridge broker `{name}` ({backend}): {source}")]
    Connect {
        /// The broker's name in the configuration.
        name: String,
        /// Its backend.
        backend: &'static str,
        /// Why.
        #[source]
        source: BrokerError,
    },
    /// A route's source could not be opened.
    #[error("route `{route}`: cannot open its source: {source}")]
    Source {
        /// The route.
        route: String,
        /// Why.
        #[source]
        source: BrokerError,
    },
    /// The configuration asks for something this binary was built without.
    #[error("{0}")]
    Unsupported(String),
}

/// Routes ready to run.
pub struct Bridge {
    routes: Vec<Route>,
}

impl Bridge {
    /// A bridge of these routes.
    pub fn new(routes: Vec<Route>) -> Self {
        Bridge { routes }
    }

    /// Connects the brokers of `config` and opens the routes it names (all when `only` is empty),
    /// as consumer `consumer`, with their series in `metrics`.
    pub async fn from_config(
        config: &BridgeConfig,
        only: &[String],
        consumer: &str,
        metrics: &Metrics,
    ) -> Result<Self, BridgeError> {
        let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        for wanted in only {
            if !names.contains(&wanted.as_str()) {
                return Err(BridgeError::UnknownRoute(wanted.clone(), names.join(", ")));
            }
        }
        let specs: Vec<&RouteSpec> = config
            .routes
            .iter()
            .filter(|r| only.is_empty() || only.contains(&r.name))
            .collect();
        if specs.is_empty() {
            return Err(BridgeError::NoRoutes);
        }
        let brokers = Brokers::connect(config, metrics).await?;
        let consumer: Arc<str> = Arc::from(consumer);
        let mut routes = Vec::with_capacity(specs.len());
        for spec in specs {
            routes.push(brokers.route(spec, &consumer, metrics).await?);
        }
        Ok(Bridge { routes })
    }

    /// The routes' names.
    pub fn route_names(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.name.as_str()).collect()
    }

    /// Runs every route until `stop`; each then finishes what it has in flight within `grace`.
    pub async fn run(self, stop: CancellationToken, grace: Duration) -> Vec<RouteReport> {
        join_all(
            self.routes
                .into_iter()
                .map(|route| route.run(stop.clone(), grace)),
        )
        .await
    }
}

/// The configured brokers, connected.
pub(super) struct Brokers {
    by_name: BTreeMap<String, Connected>,
}

#[derive(Clone)]
pub(super) struct Connected {
    pub(super) broker: Arc<dyn Broker>,
    /// The same broker as Valkey, for lists and Celery queues.
    #[cfg(feature = "valkey")]
    valkey: Option<Arc<crate::broker::valkey::ValkeyBroker>>,
}

impl Brokers {
    pub(super) async fn connect(
        config: &BridgeConfig,
        metrics: &Metrics,
    ) -> Result<Self, BridgeError> {
        let mut by_name = BTreeMap::new();
        // Plain brokers first, fanouts over them after.
        for (name, spec) in &config.brokers {
            if !matches!(spec, BrokerSpec::Fanout { .. }) {
                by_name.insert(name.clone(), connect(name, spec).await?);
            }
        }
        for (name, spec) in &config.brokers {
            if let BrokerSpec::Fanout { members, policy } = spec {
                let members = members
                    .iter()
                    .filter_map(|m| Some((m.clone(), by_name.get(m)?.broker.clone())))
                    .collect();
                let fanout = FanoutBroker::new(members, *policy, Some(metrics));
                by_name.insert(
                    name.clone(),
                    Connected {
                        broker: Arc::new(fanout),
                        #[cfg(feature = "valkey")]
                        valkey: None,
                    },
                );
            }
        }
        Ok(Brokers { by_name })
    }

    pub(super) fn get(&self, name: &str) -> Result<&Connected, BridgeError> {
        self.by_name.get(name).ok_or_else(|| {
            BridgeError::Unsupported(format!("bridge broker `{name}` is not defined"))
        })
    }

    #[cfg(feature = "valkey")]
    fn valkey(&self, name: &str) -> Result<&crate::broker::valkey::ValkeyBroker, BridgeError> {
        self.get(name)?.valkey.as_deref().ok_or_else(|| {
            BridgeError::Unsupported(format!(
                "bridge broker `{name}` is not a valkey broker: lists and celery queues live on valkey"
            ))
        })
    }

    async fn route(
        &self,
        spec: &RouteSpec,
        consumer: &Arc<str>,
        metrics: &Metrics,
    ) -> Result<Route, BridgeError> {
        let source = self.source(spec, consumer).await?;
        let target = self.target(spec, consumer)?;
        let dead_letters = DeadLetterTopic {
            broker: self.get(spec.dead_letter_broker())?.broker.clone(),
            topic: spec.dead_letter_topic(),
        };
        Ok(Route {
            name: spec.name.clone(),
            source,
            target,
            dead_letters,
            max_in_flight: spec.max_in_flight,
            consumer: consumer.clone(),
            metrics: metrics.route(&spec.name),
        })
    }

    async fn source(
        &self,
        spec: &RouteSpec,
        consumer: &Arc<str>,
    ) -> Result<Box<dyn Source>, BridgeError> {
        let opened = |source| BridgeError::Source {
            route: spec.name.clone(),
            source,
        };
        match &spec.source {
            SourceSpec::Topic {
                broker,
                topic,
                subscription,
                consumer_type,
                initial_position,
            } => {
                let subscription = self
                    .get(broker)?
                    .broker
                    .subscribe(SubscribeOptions {
                        topic: topic.clone(),
                        subscription: subscription.clone(),
                        consumer_name: consumer.to_string(),
                        consumer_type: *consumer_type,
                        initial_position: *initial_position,
                        receiver_queue_size: spec.max_in_flight.max(1),
                    })
                    .await
                    .map_err(opened)?;
                Ok(Box::new(TopicSource::new(
                    Arc::from(subscription),
                    topic.clone(),
                    consumer_type.preserves_order(),
                )))
            }
            #[cfg(feature = "valkey")]
            SourceSpec::List { broker, key } => {
                let source = lists::ListSource::new(
                    self.valkey(broker)?.list_queue(key, consumer),
                    lists::ListFormat::Plain,
                );
                recover(spec, source).await
            }
            #[cfg(feature = "valkey")]
            SourceSpec::Celery {
                broker,
                queue,
                tasks,
            } => {
                let source = lists::ListSource::new(
                    self.valkey(broker)?.list_queue(queue, consumer),
                    lists::ListFormat::Celery {
                        topics: tasks.clone(),
                    },
                );
                recover(spec, source).await
            }
            #[cfg(not(feature = "valkey"))]
            SourceSpec::List { .. } | SourceSpec::Celery { .. } => Err(without_valkey(spec)),
        }
    }

    fn target(
        &self,
        spec: &RouteSpec,
        consumer: &Arc<str>,
    ) -> Result<Arc<dyn Target>, BridgeError> {
        match &spec.target {
            TargetSpec::Topic { broker, topic } => Ok(Arc::new(TopicTarget::new(
                self.get(broker)?.broker.clone(),
                topic.clone(),
            ))),
            #[cfg(feature = "valkey")]
            TargetSpec::List { broker, key } => Ok(Arc::new(lists::ListTarget::new(
                self.valkey(broker)?.list_queue(key, consumer),
            ))),
            #[cfg(feature = "valkey")]
            TargetSpec::Celery {
                broker,
                queue,
                task,
            } => Ok(Arc::new(lists::CeleryTarget::new(
                self.valkey(broker)?.list_queue(queue, consumer),
                task.clone(),
                format!("bridge@{consumer}"),
            ))),
            #[cfg(not(feature = "valkey"))]
            TargetSpec::List { .. } | TargetSpec::Celery { .. } => {
                let _ = consumer;
                Err(without_valkey(spec))
            }
        }
    }
}

/// Moves back what the route's reader held when it last stopped, then hands the source over.
#[cfg(feature = "valkey")]
async fn recover(
    spec: &RouteSpec,
    source: lists::ListSource,
) -> Result<Box<dyn Source>, BridgeError> {
    let recovered = source
        .recover()
        .await
        .map_err(|source| BridgeError::Source {
            route: spec.name.clone(),
            source,
        })?;
    if recovered > 0 {
        tracing::info!(route = %spec.name, recovered, "items an earlier run held are back in the queue");
    }
    Ok(Box::new(source))
}

#[cfg(not(feature = "valkey"))]
fn without_valkey(spec: &RouteSpec) -> BridgeError {
    BridgeError::Unsupported(format!(
        "route `{}` uses a valkey list or celery queue, but this binary was built without the `valkey` feature",
        spec.name
    ))
}

/// Connects one plain broker.
async fn connect(name: &str, spec: &BrokerSpec) -> Result<Connected, BridgeError> {
    #[cfg(any(feature = "valkey", feature = "pulsar", feature = "mqtt"))]
    let failed = |backend: &'static str| {
        let name = name.to_owned();
        move |source| BridgeError::Connect {
            name,
            backend,
            source,
        }
    };
    let plain = |broker: Arc<dyn Broker>| Connected {
        broker,
        #[cfg(feature = "valkey")]
        valkey: None,
    };
    match spec {
        BrokerSpec::Memory => Ok(plain(Arc::new(MemoryBroker::new()))),
        #[cfg(feature = "valkey")]
        BrokerSpec::Valkey { url, tls_ca_file } => {
            use crate::broker::valkey::{ValkeyBroker, ValkeyOptions};
            let mut options = ValkeyOptions::new(String::from_utf8_lossy(url.expose()));
            options.tls_ca_file = tls_ca_file.clone();
            let broker = Arc::new(
                ValkeyBroker::connect(options)
                    .await
                    .map_err(failed("valkey"))?,
            );
            Ok(Connected {
                broker: broker.clone(),
                valkey: Some(broker),
            })
        }
        #[cfg(feature = "pulsar")]
        BrokerSpec::Pulsar {
            url,
            token,
            tls_ca_file,
            admin_url,
        } => {
            use crate::broker::pulsar::{PulsarBroker, PulsarOptions, Token};
            let mut options = PulsarOptions::new(url.clone());
            options.token = token
                .as_ref()
                .map(|t| Token::new(String::from_utf8_lossy(t.expose())));
            options.tls_ca_file = tls_ca_file.clone();
            options.admin_url = admin_url.clone();
            let broker = PulsarBroker::connect(options)
                .await
                .map_err(failed("pulsar"))?;
            Ok(plain(Arc::new(broker)))
        }
        #[cfg(feature = "mqtt")]
        BrokerSpec::Mqtt {
            host,
            port,
            username,
            password,
        } => {
            use crate::broker::mqtt::{MqttBroker, MqttOptions, Secret};
            let mut options = MqttOptions::new(host.clone(), *port);
            options.username = username.clone();
            options.password = password
                .as_ref()
                .map(|p| Secret::new(String::from_utf8_lossy(p.expose())));
            let broker = MqttBroker::connect(options).await.map_err(failed("mqtt"))?;
            Ok(plain(Arc::new(broker)))
        }
        BrokerSpec::Fanout { .. } => Err(BridgeError::Unsupported(format!(
            "bridge broker `{name}`: a fanout is built over the other brokers"
        ))),
        #[allow(unreachable_patterns)]
        other => Err(BridgeError::Unsupported(format!(
            "bridge broker `{name}`: {other:?} needs a cargo feature this binary was built without"
        ))),
    }
}
