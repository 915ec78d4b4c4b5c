//! Credit accounting for db tasks: the [`CreditLedger`] trait, the in-memory ledger, and the
//! durable ones every worker of a deployment shares: [`ValkeyCreditLedger`] (feature `valkey`) and
//! [`PostgresCreditLedger`] (feature `postgres`). [`connect`] picks one by URL.
//!
//! A charge is keyed by the task, the principal and the message's stable id, so a redelivered or
//! retried message is charged once; a refund returns exactly what that key was charged, once. The
//! principal is part of the key because stable ids come from producers: another sender reusing an
//! id gets a charge of its own, and can neither ride on nor refund someone else's.

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "valkey")]
mod valkey;

pub use memory::{MemoryCreditLedger, DEFAULT_MAX_CHARGE_RECORDS};
#[cfg(feature = "postgres")]
pub use postgres::PostgresCreditLedger;
#[cfg(feature = "valkey")]
pub use valkey::ValkeyCreditLedger;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use worker_core::BoxFuture;

/// Which charge: the task, the principal charged, and the message's stable id. Shared strings, so
/// that making and cloning a key on every delivery allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChargeKey {
    /// The task's name.
    pub task: Arc<str>,
    /// Who pays: the verified sender (a token's `sub`).
    pub principal: Arc<str>,
    /// The stable message id.
    pub message_id: Arc<str>,
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

/// How long the durable ledgers keep a charge record by default: a message charged,
/// dead-lettered and replayed within this time is refunded and charged again exactly once each; a
/// message redelivered after it is charged again.
pub const DEFAULT_RECORD_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// How many entries of a principal's history the durable ledgers keep (Valkey) or list at most.
pub const HISTORY_LIMIT: usize = 1000;

/// One entry of a principal's history: a charge, a refund or a grant.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CreditEvent {
    /// `charge`, `refund` or `grant`.
    pub kind: String,
    /// The credit type.
    pub credit_type: String,
    /// The amount.
    pub amount: u64,
    /// The task of a charge or refund.
    #[serde(default)]
    pub task: Option<String>,
    /// The stable message id of a charge or refund.
    #[serde(default)]
    pub message_id: Option<String>,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl CreditEvent {
    /// Reads one entry as the Valkey ledger stores it.
    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    /// When it happened.
    pub fn at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.at_ms)
    }
}

/// Where credit balances live. Implementations must make `charge` and `refund` idempotent per key.
pub trait CreditLedger: Send + Sync + 'static {
    /// Takes `amount` of `credit_type` from `key.principal`, once per key.
    fn charge<'a>(
        &'a self,
        key: &'a ChargeKey,
        credit_type: &'a str,
        amount: u64,
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

    /// Adds `amount` of `credit_type` to `principal`'s balance (an operator's grant) and returns
    /// the new balance.
    fn grant<'a>(
        &'a self,
        principal: &'a str,
        credit_type: &'a str,
        amount: u64,
    ) -> BoxFuture<'a, Result<u64, CreditError>> {
        let _ = (principal, credit_type, amount);
        Box::pin(async { Err(CreditError("this ledger takes no grants".into())) })
    }

    /// `principal`'s latest charges, refunds and grants, newest first, at most `limit`.
    fn history<'a>(
        &'a self,
        principal: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<CreditEvent>, CreditError>> {
        let _ = (principal, limit);
        Box::pin(async { Err(CreditError("this ledger keeps no history".into())) })
    }
}

/// The durable ledger `url` names: `redis://…` or `rediss://…` ([`ValkeyCreditLedger`]),
/// `postgres://…` or `postgresql://…` ([`PostgresCreditLedger`], which applies its schema
/// migrations first).
pub async fn connect(url: &str) -> Result<Arc<dyn CreditLedger>, CreditError> {
    let scheme = url_scheme(url);
    match scheme {
        #[cfg(feature = "valkey")]
        "redis" | "rediss" => Ok(Arc::new(ValkeyCreditLedger::connect(url).await?)),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(PostgresCreditLedger::connect(url).await?)),
        #[cfg(not(feature = "valkey"))]
        "redis" | "rediss" => Err(CreditError(
            "a valkey ledger needs the `valkey` feature of worker-runtime".into(),
        )),
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => Err(CreditError(
            "a postgres ledger needs the `postgres` feature of worker-runtime".into(),
        )),
        _ => Err(CreditError(format!(
            "credits url must start with redis://, rediss://, postgres:// or postgresql://, got {}",
            describe_scheme(scheme)
        ))),
    }
}

/// The scheme of `url` (before `://`), or `""` when it has none: never more of the text, which
/// may hold a password.
pub(crate) fn url_scheme(url: &str) -> &str {
    match url.split_once("://") {
        Some((scheme, _))
            if !scheme.is_empty()
                && scheme.len() <= 16
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            scheme
        }
        _ => "",
    }
}

/// How an error names the scheme it did not accept.
pub(crate) fn describe_scheme(scheme: &str) -> String {
    if scheme.is_empty() {
        "no `scheme://` at the start".to_owned()
    } else {
        format!("`{scheme}://…`")
    }
}
