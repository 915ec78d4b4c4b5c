//! The conformance suite against the embedded memory broker. It has no process to stop, so its
//! restart case reports itself as not applicable.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::conformance::{Harness, NotApplicable};
use worker_runtime::broker::MemoryBroker;
use worker_runtime::{Broker, BrokerError};

/// One in-process broker; every "client" is a handle to it (what a client can die with, its
/// subscriptions, goes with the handle's subscriptions).
struct MemoryHarness {
    broker: MemoryBroker,
}

impl MemoryHarness {
    fn start() -> Option<Self> {
        Some(MemoryHarness {
            broker: MemoryBroker::new(),
        })
    }
}

impl Harness for MemoryHarness {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn broker(&self) -> Result<Arc<dyn Broker>, BrokerError> {
        Ok(Arc::new(self.broker.clone()))
    }

    /// A dropped consumer's deliveries go back at once.
    fn abandoned_redelivery_limit(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn quiet_period(&self) -> Duration {
        Duration::from_millis(300)
    }

    fn restartable(&self) -> Result<(), NotApplicable> {
        Err(NotApplicable(
            "the embedded memory broker has no process to restart",
        ))
    }
}

integration_tests::conformance_cases!(MemoryHarness::start);
