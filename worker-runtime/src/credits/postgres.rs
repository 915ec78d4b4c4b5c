//! A [`CreditLedger`] in PostgreSQL: a charge is a row of `wr_credit_charges`, unique per task,
//! principal and stable message id, inserted in the same transaction that takes the amount from
//! `wr_credit_balances` (whose `CHECK (balance >= 0)` no transaction can break). A charge and a
//! refund are each one call of a function of the schema (`wr_credit_charge`, `wr_credit_refund`):
//! one round trip and one commit per message. Two workers charging one message at once meet at
//! the unique key: the second waits for the first and takes nothing. Charge records older than
//! [`PostgresCreditLedger::with_record_ttl`] (30 days) are deleted a few at a time as charges
//! come in, as the Valkey ledger expires its own. `wr_credit_events` keeps every charge, refund
//! and grant, for an operator's listing; it is an audit trail and is never pruned by the worker.
//! The schema is applied at [`PostgresCreditLedger::connect`] (see [`crate::postgres`]).

use std::time::Duration;

use tokio_postgres::types::Type;
use worker_core::BoxFuture;

use super::{
    ChargeKey, ChargeOutcome, CreditError, CreditEvent, CreditLedger, RefundOutcome,
    DEFAULT_RECORD_TTL,
};
use crate::postgres::Pool;

/// Balances and charges in PostgreSQL (tables `wr_credit_balances`, `wr_credit_charges`,
/// `wr_credit_events`): a charge is a row unique per task, principal and stable message id,
/// written in the transaction that takes the amount from a balance that cannot go below zero; a
/// charge and a refund are one call each of a function of the schema
/// ([`crate::postgres::MIGRATIONS`]).
pub struct PostgresCreditLedger {
    pool: Pool,
    record_ttl: Duration,
}

impl PostgresCreditLedger {
    /// Connects to `url` (`postgres://user:password@host:port/db`) and applies the migrations
    /// the database lacks.
    pub async fn connect(url: &str) -> Result<Self, CreditError> {
        let pool = Pool::connect(url)
            .await
            .map_err(|e| CreditError(format!("postgres: {e}")))?;
        Ok(PostgresCreditLedger {
            pool,
            record_ttl: DEFAULT_RECORD_TTL,
        })
    }

    /// Keeps charge records this long (at least a minute): a message charged, dead-lettered and
    /// replayed within this time is refunded and charged again exactly once each; one redelivered
    /// after it is charged again.
    pub fn with_record_ttl(mut self, ttl: Duration) -> Self {
        self.record_ttl = ttl.max(Duration::from_secs(60));
        self
    }

    async fn with_client<T>(
        &self,
        what: &str,
        work: impl for<'c> FnOnce(
            &'c mut tokio_postgres::Client,
        ) -> BoxFuture<'c, Result<T, tokio_postgres::Error>>,
    ) -> Result<T, CreditError> {
        self.pool
            .with_client(what, work)
            .await
            .map_err(|e| CreditError(format!("postgres: {e}")))
    }
}

fn signed(amount: u64) -> i64 {
    i64::try_from(amount).unwrap_or(i64::MAX)
}

impl CreditLedger for PostgresCreditLedger {
    fn charge<'a>(
        &'a self,
        key: &'a ChargeKey,
        credit_type: &'a str,
        amount: u64,
    ) -> BoxFuture<'a, Result<ChargeOutcome, CreditError>> {
        let (credit_type, key) = (credit_type.to_owned(), key.clone());
        let ttl_ms = self.record_ttl.as_secs_f64() * 1000.0;
        Box::pin(async move {
            let (outcome, available) = self
                .with_client("charge", move |client| {
                    Box::pin(async move {
                        let (task, message_id, principal): (&str, &str, &str) =
                            (&key.task, &key.message_id, &key.principal);
                        // One statement (migration 3), typed so that no prepare round trip
                        // comes first.
                        let rows = client
                            .query_typed(
                                "SELECT outcome, available FROM wr_credit_charge($1, $2, $3, $4, $5)",
                                &[
                                    (&task, Type::TEXT),
                                    (&message_id, Type::TEXT),
                                    (&principal, Type::TEXT),
                                    (&credit_type, Type::TEXT),
                                    (&signed(amount), Type::INT8),
                                ],
                            )
                            .await?;
                        // Now and then, delete a bounded batch of records past their time.
                        if fastrand::u8(..) == 0 {
                            client
                                .query_typed(
                                    "DELETE FROM wr_credit_charges WHERE ctid IN (
                                         SELECT ctid FROM wr_credit_charges
                                         WHERE charged_at < now() - $1 * interval '1 millisecond'
                                         LIMIT 1000)",
                                    &[(&ttl_ms, Type::FLOAT8)],
                                )
                                .await?;
                        }
                        Ok(rows.first().map(|row| {
                            (row.get::<_, Option<String>>(0), row.get::<_, Option<i64>>(1))
                        }))
                    })
                })
                .await?
                .unwrap_or_default();
            match outcome.as_deref() {
                Some("charged") => Ok(ChargeOutcome::Charged),
                Some("already_charged") => Ok(ChargeOutcome::AlreadyCharged),
                Some("insufficient") => Ok(ChargeOutcome::Insufficient {
                    available: available.map_or(0, |b| u64::try_from(b).unwrap_or(0)),
                }),
                other => Err(CreditError(format!(
                    "postgres: charge: wr_credit_charge answered {other:?}"
                ))),
            }
        })
    }

    fn refund<'a>(
        &'a self,
        key: &'a ChargeKey,
    ) -> BoxFuture<'a, Result<RefundOutcome, CreditError>> {
        let key = key.clone();
        Box::pin(self.with_client("refund", move |client| {
            Box::pin(async move {
                let (task, principal, message_id): (&str, &str, &str) =
                    (&key.task, &key.principal, &key.message_id);
                let rows = client
                    .query_typed(
                        "SELECT wr_credit_refund($1, $2, $3)",
                        &[
                            (&task, Type::TEXT),
                            (&principal, Type::TEXT),
                            (&message_id, Type::TEXT),
                        ],
                    )
                    .await?;
                let amount: i64 = rows.first().map_or(0, |row| row.get(0));
                Ok(match u64::try_from(amount) {
                    Ok(0) | Err(_) => RefundOutcome::NothingToRefund,
                    Ok(amount) => RefundOutcome::Refunded(amount),
                })
            })
        }))
    }

    fn balance<'a>(
        &'a self,
        principal: &'a str,
        credit_type: &'a str,
    ) -> BoxFuture<'a, Result<u64, CreditError>> {
        let (principal, credit_type) = (principal.to_owned(), credit_type.to_owned());
        Box::pin(self.with_client("balance", move |client| {
            Box::pin(async move {
                let balance: Option<i64> = client
                    .query_opt(
                        "SELECT balance FROM wr_credit_balances
                         WHERE principal = $1 AND credit_type = $2",
                        &[&principal, &credit_type],
                    )
                    .await?
                    .map(|row| row.get(0));
                Ok(balance.map_or(0, |b| u64::try_from(b).unwrap_or(0)))
            })
        }))
    }

    fn grant<'a>(
        &'a self,
        principal: &'a str,
        credit_type: &'a str,
        amount: u64,
    ) -> BoxFuture<'a, Result<u64, CreditError>> {
        let (principal, credit_type) = (principal.to_owned(), credit_type.to_owned());
        Box::pin(self.with_client("grant", move |client| {
            Box::pin(async move {
                let amount = signed(amount);
                let tx = client.transaction().await?;
                let balance: i64 = tx
                    .query_one(
                        "INSERT INTO wr_credit_balances (principal, credit_type, balance)
                         VALUES ($1, $2, $3)
                         ON CONFLICT (principal, credit_type)
                         DO UPDATE SET balance = wr_credit_balances.balance + $3
                         RETURNING balance",
                        &[&principal, &credit_type, &amount],
                    )
                    .await?
                    .get(0);
                tx.execute(
                    "INSERT INTO wr_credit_events (principal, credit_type, kind, amount)
                     VALUES ($1, $2, 'grant', $3)",
                    &[&principal, &credit_type, &amount],
                )
                .await?;
                tx.commit().await?;
                Ok(u64::try_from(balance).unwrap_or(0))
            })
        }))
    }

    fn history<'a>(
        &'a self,
        principal: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<CreditEvent>, CreditError>> {
        let principal = principal.to_owned();
        Box::pin(self.with_client("history", move |client| {
            Box::pin(async move {
                let limit = i64::try_from(limit.clamp(1, super::HISTORY_LIMIT)).unwrap_or(1);
                let rows = client
                    .query(
                        "SELECT kind, credit_type, amount, task, message_id,
                                (extract(epoch FROM at) * 1000)::bigint
                         FROM wr_credit_events WHERE principal = $1
                         ORDER BY id DESC LIMIT $2",
                        &[&principal, &limit],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|row| CreditEvent {
                        kind: row.get(0),
                        credit_type: row.get(1),
                        amount: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
                        task: row.get(3),
                        message_id: row.get(4),
                        at_ms: u64::try_from(row.get::<_, i64>(5)).unwrap_or(0),
                    })
                    .collect())
            })
        }))
    }
}

impl std::fmt::Debug for PostgresCreditLedger {
    // The URL may hold a password: it is not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCreditLedger")
            .finish_non_exhaustive()
    }
}
