//! The MQTT flags, and connecting with them.

use std::sync::Arc;

use clap::Args;
use worker_core::Broker;

use super::super::args::secret_value;
use crate::auth::Secret;
use crate::cli::CliError;

/// How to reach an MQTT 5 broker.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "MQTT (--backend mqtt)")]
pub struct MqttArgs {
    /// The broker's host name or address.
    #[arg(
        id = "mqtt_host",
        long = "mqtt-host",
        env = "MQTT_HOST",
        default_value = "localhost",
        value_name = "HOST"
    )]
    pub host: String,

    /// The broker's TCP port (plain MQTT).
    #[arg(
        id = "mqtt_port",
        long = "mqtt-port",
        env = "MQTT_PORT",
        default_value_t = 1883,
        value_name = "PORT"
    )]
    pub port: u16,

    /// The user name, if the broker requires one.
    #[arg(
        id = "mqtt_username",
        long = "mqtt-username",
        env = "MQTT_USERNAME",
        value_name = "NAME"
    )]
    pub username: Option<String>,

    /// The password (with --mqtt-username); never printed. Prefer the variable to the flag: a
    /// flag's value is visible to other users of the machine.
    #[arg(
        id = "mqtt_password",
        long = "mqtt-password",
        env = "MQTT_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD",
        value_parser = secret_value,
        allow_hyphen_values = true,
        requires = "mqtt_username"
    )]
    pub password: Option<Secret>,

    /// The prefix of every MQTT client id the worker uses; consumers' ids add the subscription
    /// and the consumer name.
    #[arg(
        id = "mqtt_client_id_prefix",
        long = "mqtt-client-id-prefix",
        env = "MQTT_CLIENT_ID_PREFIX",
        default_value = "wr-",
        value_name = "PREFIX"
    )]
    pub client_id_prefix: String,
}

#[cfg(feature = "mqtt")]
impl MqttArgs {
    /// The backend options these flags describe. An empty user name (a variable set to "")
    /// counts as not given.
    pub fn options(&self) -> crate::broker::mqtt::MqttOptions {
        use crate::broker::mqtt::{MqttOptions, Secret as MqttSecret};

        MqttOptions {
            username: self.username.clone().filter(|name| !name.is_empty()),
            password: self
                .password
                .as_ref()
                .map(|secret| MqttSecret::new(super::secret_text(secret))),
            client_id_prefix: self.client_id_prefix.clone(),
            ..MqttOptions::new(self.host.trim(), self.port)
        }
    }
}

/// Connects to the broker the flags name.
#[cfg(feature = "mqtt")]
pub(super) async fn connect(args: &MqttArgs) -> Result<Arc<dyn Broker>, CliError> {
    let options = args.options();
    let target = format!("{}:{}", options.host, options.port);
    tracing::info!(broker = %target, "connecting to mqtt");
    match crate::broker::MqttBroker::connect(options).await {
        Ok(broker) => Ok(Arc::new(broker)),
        Err(source) => Err(super::connect_error(
            super::BackendKind::Mqtt,
            &target,
            source,
        )),
    }
}

/// Without the `mqtt` feature there is nothing to connect.
#[cfg(not(feature = "mqtt"))]
pub(super) async fn connect(_: &MqttArgs) -> Result<Arc<dyn Broker>, CliError> {
    Err(CliError::BackendNotCompiled("mqtt"))
}
