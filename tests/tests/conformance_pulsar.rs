//! The conformance suite against Apache Pulsar, where `PULSAR_URL` points at one (for example
//! `pulsar://127.0.0.1:6650` after `docker compose up -d pulsar`). Without it every case skips
//! loudly: no Pulsar broker can run on the machines this project is built on. The broker is not
//! this test's to stop, so the restart case reports itself as not applicable.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::conformance::{unique_name, Harness, NotApplicable};
use worker_runtime::broker::pulsar::{PulsarBroker, PulsarOptions};
use worker_runtime::{Broker, BrokerError, Topic, TopicError};

struct PulsarHarness {
    url: String,
}

impl PulsarHarness {
    fn start() -> Option<Self> {
        match std::env::var("PULSAR_URL") {
            Ok(url) if !url.is_empty() => Some(PulsarHarness { url }),
            _ => {
                eprintln!(
                    "\n!!!!!!!!\n!!! SKIPPED: PULSAR_URL is not set, so this Pulsar conformance case did not run.\n\
                     !!! No Pulsar broker can run on the build machines. To run it:\n\
                     !!!   docker compose up -d pulsar\n\
                     !!!   PULSAR_URL=pulsar://127.0.0.1:6650 cargo test -p integration-tests --test conformance_pulsar\n\
                     !!!!!!!!\n"
                );
                None
            }
        }
    }
}

impl Harness for PulsarHarness {
    fn backend(&self) -> &'static str {
        "pulsar"
    }

    async fn broker(&self) -> Result<Arc<dyn Broker>, BrokerError> {
        let mut options = PulsarOptions::new(self.url.clone());
        options.operation_timeout = Duration::from_secs(10);
        options.connection_timeout = Duration::from_secs(5);
        options.publish_timeout = Duration::from_secs(30);
        options.ack_group_time = Duration::from_millis(50);
        Ok(Arc::new(PulsarBroker::connect(options).await?))
    }

    /// Tenants and namespaces must exist on a real cluster: use the standard `public/default`.
    fn topic(&self, case: &str) -> Result<Topic, TopicError> {
        Topic::parse(&format!(
            "persistent://public/default/conformance-{}",
            unique_name(case)
        ))
    }

    /// The broker redelivers as soon as it sees the dead consumer's connection close.
    fn abandoned_redelivery_limit(&self) -> Duration {
        Duration::from_secs(30)
    }

    /// Grouped acks are flushed within 50 ms; a redelivery after a nack comes at once.
    fn quiet_period(&self) -> Duration {
        Duration::from_secs(2)
    }

    fn restartable(&self) -> Result<(), NotApplicable> {
        Err(NotApplicable(
            "the Pulsar broker at PULSAR_URL is not this test's to stop",
        ))
    }
}

integration_tests::conformance_cases!(PulsarHarness::start);
