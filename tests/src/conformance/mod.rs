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

pub mod cases;
mod collector;
mod harness;
mod ledger;
pub mod support;

pub use collector::{wait_for_total, Arrival, Collector, Trouble};
pub use harness::{unique_name, Harness, NotApplicable};
pub use ledger::Ledger;

/// What a case returns: `Err` with the reason when the backend did not conform.
pub type CaseResult = anyhow::Result<()>;

/// Expands to one `#[tokio::test]` per conformance case, each starting its own harness with
/// `$start` (a function returning `Option<impl Harness>`; `None` means skip, after the harness
/// said why) and running the case of the same name in [`cases`]. A second constructor,
/// `restart = $restart`, makes the harness of the broker restart case alone: for a backend whose
/// cases share one broker, the case that kills it needs one of its own.
///
/// ```ignore
/// integration_tests::conformance_cases!(ValkeyHarness::start);
/// integration_tests::conformance_cases!(PulsarHarness::shared, restart = PulsarHarness::own);
/// ```
#[macro_export]
macro_rules! conformance_cases {
    ($start:path) => {
        $crate::conformance_cases!($start, restart = $start);
    };
    ($start:path, restart = $restart:path) => {
        $crate::conformance_cases!(@each $start;
            publish_and_consume,
            ack_is_final,
            nack_redelivers,
            abandoned_redelivery,
            shared_split,
            fan_out,
            earliest_position,
            consumer_types,
            key_order,
            delayed_delivery,
            large_payload,
            receive_cancel_safety,
        );
        $crate::conformance_cases!(@each $restart; broker_restart);
    };
    (@each $start:path; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() -> $crate::conformance::CaseResult {
                let Some(mut harness) = $start() else {
                    return Ok(());
                };
                $crate::conformance::cases::$case(&mut harness).await
            }
        )+
    };
}
