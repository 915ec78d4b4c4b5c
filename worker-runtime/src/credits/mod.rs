//! Credit accounting for db tasks: the [`CreditLedger`] trait and the in-memory ledger.
//!
//! A charge is keyed by the task and the message's stable id, so a redelivered or retried message is
//! charged once; a refund returns exactly what that key was charged, once.

mod memory;

pub use memory::{MemoryCreditLedger, DEFAULT_MAX_CHARGE_RECORDS};

use worker_core::BoxFuture;

/// Which message a charge belongs to: the task and the stable message id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChargeKey {
    /// The task's name.
    pub task: String,
    /// The stable message id.
    pub message_id: String,
}

/// What one charge request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// The amount was taken now.
    Charged,
    /// This key was charged before; nothing was taken now.
    AlreadyCharged,
    /// The balance is too low; nothing was taken.
    Insufficient {
        /// The balance there was.
        available: u64,
    },
}

/// What one refund request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefundOutcome {
    /// This amount was returned now.
    Refunded(u64),
    /// The key was never charged, or was refunded before.
    NothingToRefund,
}

/// Why the ledger could not answer (its store is unreachable, …). The worker retries later.
#[derive(Debug, thiserror::Error)]
#[error("credit ledger: {0}")]
pub struct CreditError(pub String);

/// Where credit balances live. Implementations must make `charge` and `refund` idempotent per key.
pub trait CreditLedger: Send + Sync + 'static {
    /// Takes `amount` of `credit_type` from `principal`, once per key.
    fn charge<'a>(
        &'a self,
        principal: &'a str,
        credit_type: &'a str,
        amount: u64,
        key: &'a ChargeKey,
    ) -> BoxFuture<'a, Result<ChargeOutcome, CreditError>>;

    /// Returns what `key` was charged, once.
    fn refund<'a>(
        &'a self,
        key: &'a ChargeKey,
    ) -> BoxFuture<'a, Result<RefundOutcome, CreditError>>;

    /// The current balance of `credit_type` for `principal`.
    fn balance<'a>(
        &'a self,
        principal: &'a str,
        credit_type: &'a str,
    ) -> BoxFuture<'a, Result<u64, CreditError>>;
}
