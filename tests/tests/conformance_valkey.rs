//! The conformance suite against the Valkey backend, on a `redis-server` of each case's own
//! (append-only file, fsync always), on a free loopback port.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::brokers::RedisServer;
use integration_tests::conformance::{Harness, NotApplicable};
use worker_runtime::broker::valkey::{ValkeyBroker, ValkeyOptions};
use worker_runtime::{Broker, BrokerError};

/// Short, so that a dead consumer's deliveries are reclaimed within the case.
const VISIBILITY: Duration = Duration::from_secs(1);

struct ValkeyHarness {
    server: RedisServer,
}

impl ValkeyHarness {
    fn start() -> Option<Self> {
        Some(ValkeyHarness {
            server: RedisServer::start_fsync_always()?,
        })
    }
}

impl Harness for ValkeyHarness {
    fn backend(&self) -> &'static str {
        "valkey"
    }

    async fn broker(&self) -> Result<Arc<dyn Broker>, BrokerError> {
        let options = ValkeyOptions {
            visibility_timeout: VISIBILITY,
            block_timeout: Duration::from_millis(200),
            operation_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            delayed_poll_interval: Duration::from_millis(50),
            ..ValkeyOptions::new(self.server.url())
        };
        Ok(Arc::new(ValkeyBroker::connect(options).await?))
    }

    /// Idle past the visibility timeout, then found by the next claim sweep (every quarter of it).
    fn abandoned_redelivery_limit(&self) -> Duration {
        VISIBILITY * 3 + Duration::from_secs(2)
    }

    /// Past the visibility timeout: an unacknowledged delivery would have been reclaimed.
    fn quiet_period(&self) -> Duration {
        VISIBILITY * 2
    }

    fn restartable(&self) -> Result<(), NotApplicable> {
        Ok(())
    }

    /// SIGKILL: with fsync always, every acknowledged write is on disk anyway.
    fn stop_broker(&mut self) -> Result<(), NotApplicable> {
        self.server.kill();
        Ok(())
    }

    fn start_broker(&mut self) -> Result<(), NotApplicable> {
        self.server.restart();
        Ok(())
    }
}

integration_tests::conformance_cases!(ValkeyHarness::start);
