//! One conformance suite for every broker backend.
//!
//! Each backend's test file implements [`Harness`] (how to get a client, how to stop and start
//! the broker, which timeouts it configured) and expands [`conformance_cases!`](crate::conformance_cases)
//! with its harness's constructor, which makes one `#[tokio::test]` per case, so that failures
//! are reported per case and per backend.
//!
//! Every case asks the backend for its [`Capabilities`](worker_runtime::Capabilities) and checks
//! what the backend declares, no less: a backend that declares `history` must show an `Earliest`
//! subscription what was published before it existed, one that does not is only held to what was
//! published after; a declared consumer type must be honoured, an undeclared one refused at
//! subscribe; and so on. Each case prints one summary line, `conformance[backend] case: …`, with
//! its ledger figures where it keeps one (see [`Ledger`]), and says when it adapted to a missing
//! capability or does not apply.

mod collector;
mod harness;
mod ledger;
pub mod support;

pub use collector::{wait_for_total, Arrival, Collector, Trouble};
pub use harness::{unique_name, Harness, NotApplicable};
pub use ledger::Ledger;

/// What a case returns: `Err` with the reason when the backend did not conform.
pub type CaseResult = anyhow::Result<()>;
