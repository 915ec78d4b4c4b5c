//! What each backend's conformance test provides: fresh clients of one running broker, unique
//! names, the timeouts it configured, and (where it runs the broker itself) control over the
//! broker process.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use worker_runtime::{Broker, BrokerError, Topic, TopicError};

/// Why a harness cannot do something a case asks for (stop its broker, for instance). The case
/// then reports itself as not applicable, with this reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotApplicable(pub &'static str);

impl fmt::Display for NotApplicable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for NotApplicable {}

/// One backend, ready to be tested: the per-backend test files implement it, and every case of
/// [`super::cases`] takes it.
///
/// A harness owns one running broker (or, for Pulsar, knows where one runs). Each call of
/// [`Harness::broker`] is a new client with its own connections, so that a case can simulate a
/// consumer process dying by dropping a whole client without closing anything.
pub trait Harness: Send {
    /// The backend's name, as it appears in the summary lines (`memory`, `valkey`, …).
    fn backend(&self) -> &'static str;

    /// A new client of the broker, with its own connections.
    fn broker(&self) -> impl Future<Output = Result<Arc<dyn Broker>, BrokerError>> + Send;

    /// A topic no other case and no earlier run uses. The default is
    /// `q1/conformance/{backend}/{case}-{unique}`.
    fn topic(&self, case: &str) -> Result<Topic, TopicError> {
        Topic::parse(&format!(
            "q1/conformance/{}/{}",
            self.backend(),
            unique_name(case)
        ))
    }

    /// How long messages a dead consumer held may take to reach another consumer of its
    /// subscription (the visibility timeout the harness configured, plus the backend's sweep
    /// period and some slack). Only asked of backends that declare `redelivers_abandoned`.
    fn abandoned_redelivery_limit(&self) -> Duration;

    /// How long to watch a subscription to be sure nothing more comes: long enough for anything
    /// that would come back (an unacked delivery reclaimed, a redelivery) to have come back.
    fn quiet_period(&self) -> Duration;

    /// How long a message that must arrive may take.
    fn arrival_limit(&self) -> Duration {
        Duration::from_secs(10)
    }

    /// Whether [`Harness::stop_broker`] and [`Harness::start_broker`] work here.
    fn restartable(&self) -> Result<(), NotApplicable> {
        Err(NotApplicable(
            "this harness does not run the broker process itself",
        ))
    }

    /// Stops the broker process; clients stay and must ride out the outage.
    fn stop_broker(&mut self) -> Result<(), NotApplicable> {
        self.restartable()
    }

    /// Starts the broker process again (same port, same data) after [`Harness::stop_broker`].
    fn start_broker(&mut self) -> Result<(), NotApplicable> {
        self.restartable()
    }

    /// Stops and starts the broker process.
    fn restart_broker(&mut self) -> Result<(), NotApplicable> {
        self.stop_broker()?;
        self.start_broker()
    }
}

/// `{what}-{process id}-{time}-{counter}`: a name no other call, process or earlier run makes.
/// Made of letters, digits and `-` around `what`, so valid in topic, subscription and consumer names.
pub fn unique_name(what: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{what}-{}-{millis}-{n}", std::process::id())
}
