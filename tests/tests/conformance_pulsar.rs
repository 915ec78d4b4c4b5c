//! The conformance suite against Apache Pulsar: a standalone broker (a JVM of this test binary's
//! own, see [`PulsarStandalone`]) shared by every case, and one more of its own for the broker
//! restart case, which SIGKILLs it in the middle of a stream and starts it again on the same data.
//! `PULSAR_URL` points the shared cases at an external Pulsar instead.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::brokers::PulsarStandalone;
use integration_tests::conformance::{unique_name, Harness, NotApplicable};
use worker_runtime::broker::pulsar::{PulsarBroker, PulsarOptions};
use worker_runtime::{Broker, BrokerError, Topic, TopicError};

enum Standalone {
    Shared(&'static PulsarStandalone),
    Own(PulsarStandalone),
}

struct PulsarHarness {
    standalone: Standalone,
}

impl PulsarHarness {
    fn shared() -> Option<Self> {
        Some(PulsarHarness {
            standalone: Standalone::Shared(PulsarStandalone::shared()?),
        })
    }

    fn own() -> Option<Self> {
        Some(PulsarHarness {
            standalone: Standalone::Own(PulsarStandalone::start()?),
        })
    }

    fn standalone(&self) -> &PulsarStandalone {
        match &self.standalone {
            Standalone::Shared(standalone) => standalone,
            Standalone::Own(standalone) => standalone,
        }
    }

    fn own_standalone(&self) -> Result<&PulsarStandalone, NotApplicable> {
        match &self.standalone {
            Standalone::Own(standalone) => Ok(standalone),
            Standalone::Shared(_) => Err(NotApplicable(
                "the shared broker of this test binary is not one case's to stop",
            )),
        }
    }
}

impl Harness for PulsarHarness {
    fn backend(&self) -> &'static str {
        "pulsar"
    }

    async fn broker(&self) -> Result<Arc<dyn Broker>, BrokerError> {
        let mut options = PulsarOptions::new(self.standalone().url());
        options.operation_timeout = Duration::from_secs(10);
        options.connection_timeout = Duration::from_secs(5);
        // Under the restart case's 20 s limit for one publish: a publish that meets the outage
        // keeps trying this long, then fails (transiently) and the next one is tried.
        options.publish_timeout = Duration::from_secs(15);
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
        self.own_standalone().map(|_| ())
    }

    /// SIGKILL, as a crash. What the bookie acknowledged is in its journal (written, though not
    /// fsynced with the test configuration's `journalSyncData=false`, which only a machine crash
    /// would make lose).
    fn stop_broker(&mut self) -> Result<(), NotApplicable> {
        self.own_standalone()?.kill();
        Ok(())
    }

    fn start_broker(&mut self) -> Result<(), NotApplicable> {
        self.own_standalone()?.restart();
        Ok(())
    }
}

integration_tests::conformance_cases!(PulsarHarness::shared, restart = PulsarHarness::own);
