//! The conformance suite against the MQTT 5 backend, on a `mosquitto` of each case's own (with
//! persistence) on a free loopback port.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::brokers::Mosquitto;
use integration_tests::conformance::{Harness, NotApplicable};
use worker_runtime::broker::mqtt::{MqttBroker, MqttOptions};
use worker_runtime::{Broker, BrokerError};

struct MqttHarness {
    mosquitto: Mosquitto,
}

impl MqttHarness {
    fn start() -> Option<Self> {
        Some(MqttHarness {
            mosquitto: Mosquitto::start()?,
        })
    }
}

impl Harness for MqttHarness {
    fn backend(&self) -> &'static str {
        "mqtt"
    }

    async fn broker(&self) -> Result<Arc<dyn Broker>, BrokerError> {
        let options = MqttOptions {
            connect_timeout: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(5),
            reconnect_delay_max: Duration::from_millis(500),
            ..MqttOptions::new(self.mosquitto.host(), self.mosquitto.port())
        };
        Ok(Arc::new(MqttBroker::connect(options).await?))
    }

    /// Not declared (a dead consumer's messages wait in its session), so only used to watch.
    fn abandoned_redelivery_limit(&self) -> Duration {
        Duration::from_secs(2)
    }

    fn quiet_period(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn restartable(&self) -> Result<(), NotApplicable> {
        Ok(())
    }

    /// SIGTERM: mosquitto saves its database on the way out. (A SIGKILL loses what it acknowledged
    /// since its last autosave, which is why the backend does not declare `durable`.)
    fn stop_broker(&mut self) -> Result<(), NotApplicable> {
        self.mosquitto.stop();
        Ok(())
    }

    fn start_broker(&mut self) -> Result<(), NotApplicable> {
        self.mosquitto.restart();
        Ok(())
    }
}

integration_tests::conformance_cases!(MqttHarness::start);
