//! Handled messages recorded in PostgreSQL: a row of `wr_handled` per task and stable id, with
//! its expiry; expired rows are deleted as new ones come in.

use std::time::Duration;

use tokio_postgres::types::Type;
use worker_core::BoxFuture;

use super::{IdempotencyError, IdempotencyStore};
use crate::postgres::Pool;

/// Records in PostgreSQL, shared by every worker.
pub struct PostgresIdempotencyStore {
    pool: Pool,
}

impl PostgresIdempotencyStore {
    /// Connects to `url` and applies the migrations the database lacks.
    pub async fn connect(url: &str) -> Result<Self, IdempotencyError> {
        let pool = Pool::connect(url)
            .await
            .map_err(|e| IdempotencyError(format!("postgres: {e}")))?;
        Ok(PostgresIdempotencyStore { pool })
    }
}

impl IdempotencyStore for PostgresIdempotencyStore {
    fn seen<'a>(
        &'a self,
        task: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, IdempotencyError>> {
        let (task, message_id) = (task.to_owned(), message_id.to_owned());
        Box::pin(async move {
            self.pool
                .with_client("seen", move |client| {
                    Box::pin(async move {
                        // Typed, so that no prepare round trip comes first.
                        let rows = client
                            .query_typed(
                                "SELECT 1 FROM wr_handled
                                 WHERE task = $1 AND message_id = $2 AND expires_at > now()",
                                &[(&task, Type::TEXT), (&message_id, Type::TEXT)],
                            )
                            .await?;
                        Ok(!rows.is_empty())
                    })
                })
                .await
                .map_err(|e| IdempotencyError(format!("postgres: {e}")))
        })
    }

    fn record<'a>(
        &'a self,
        task: &'a str,
        message_id: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<(), IdempotencyError>> {
        let (task, message_id) = (task.to_owned(), message_id.to_owned());
        Box::pin(async move {
            let millis = window.as_secs_f64() * 1000.0;
            self.pool
                .with_client("record", move |client| {
                    Box::pin(async move {
                        client
                            .query_typed(
                                "INSERT INTO wr_handled (task, message_id, expires_at)
                                 VALUES ($1, $2, now() + $3 * interval '1 millisecond')
                                 ON CONFLICT (task, message_id)
                                 DO UPDATE SET expires_at = EXCLUDED.expires_at",
                                &[
                                    (&task, Type::TEXT),
                                    (&message_id, Type::TEXT),
                                    (&millis, Type::FLOAT8),
                                ],
                            )
                            .await?;
                        // Sweep a few expired rows now and then, bounded so it stays cheap.
                        if fastrand::u8(..) == 0 {
                            client
                                .execute(
                                    "DELETE FROM wr_handled WHERE ctid IN (
                                         SELECT ctid FROM wr_handled WHERE expires_at < now() LIMIT 1000)",
                                    &[],
                                )
                                .await?;
                        }
                        Ok(())
                    })
                })
                .await
                .map_err(|e| IdempotencyError(format!("postgres: {e}")))
        })
    }
}
