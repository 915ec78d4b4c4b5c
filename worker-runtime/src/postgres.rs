//! PostgreSQL for the stores every worker of a deployment shares (the credit ledger, idempotency
//! records): a small connection pool and the schema, shipped as [`MIGRATIONS`] and applied in
//! order when a store connects, under an advisory lock and recorded in `wr_schema_migrations`, so
//! any number of workers may start at once. Connections are plain TCP (an `sslmode` other than
//! `disable` is refused).

use std::time::Duration;

use tokio::sync::{Mutex, Semaphore};
use tokio_postgres::{Client, NoTls};
use worker_core::BoxFuture;

/// The schema, one migration per entry, applied in order; a migration once shipped never changes.
pub const MIGRATIONS: &[&str] = &[
    // 1: credit balances, charges and their history.
    r#"
CREATE TABLE wr_credit_balances (
    principal   text   NOT NULL,
    credit_type text   NOT NULL,
    balance     bigint NOT NULL CHECK (balance >= 0),
    PRIMARY KEY (principal, credit_type)
);
CREATE TABLE wr_credit_charges (
    task        text        NOT NULL,
    message_id  text        NOT NULL,
    principal   text        NOT NULL,
    credit_type text        NOT NULL,
    amount      bigint      NOT NULL CHECK (amount > 0),
    charged_at  timestamptz NOT NULL,
    refunded_at timestamptz,
    PRIMARY KEY (task, message_id)
);
CREATE TABLE wr_credit_events (
    id          bigserial   PRIMARY KEY,
    principal   text        NOT NULL,
    credit_type text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('charge', 'refund', 'grant')),
    amount      bigint      NOT NULL,
    task        text,
    message_id  text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX wr_credit_events_by_principal ON wr_credit_events (principal, id DESC);
"#,
    // 2: messages handled, for effectively-once tasks.
    r#"
CREATE TABLE wr_handled (
    task       text        NOT NULL,
    message_id text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (task, message_id)
);
CREATE INDEX wr_handled_by_expiry ON wr_handled (expires_at);
"#,
];

/// The advisory lock that serialises migrations between workers starting at once.
const MIGRATION_LOCK: i64 = 0x7772_5f73_6368_656d; // "wr_schem"

/// At most this many connections per pool.
const MAX_CONNECTIONS: usize = 8;

/// A few connections to one database, opened as needed, a broken one dropped.
pub(crate) struct Pool {
    url: String,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
    timeout: Duration,
}

impl Pool {
    /// Connects to `url` and applies the migrations the database lacks.
    pub async fn connect(url: &str) -> Result<Self, String> {
        if url.contains("sslmode=") && !url.contains("sslmode=disable") {
            return Err("only plain connections are supported (sslmode=disable)".into());
        }
        let pool = Pool {
            url: url.to_owned(),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(MAX_CONNECTIONS),
            timeout: Duration::from_secs(10),
        };
        let mut client = pool.open().await?;
        migrate(&mut client).await?;
        pool.idle.lock().await.push(client);
        Ok(pool)
    }

    async fn open(&self) -> Result<Client, String> {
        let connecting = tokio_postgres::connect(&self.url, NoTls);
        let (client, connection) = tokio::time::timeout(self.timeout, connecting)
            .await
            .map_err(|_| "connect: timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "postgres connection ended");
            }
        });
        Ok(client)
    }

    /// Runs `work` on a pooled connection (opened when none is idle) within the timeout. A
    /// connection that broke is not pooled again.
    pub async fn with_client<T>(
        &self,
        what: &str,
        work: impl for<'c> FnOnce(&'c mut Client) -> BoxFuture<'c, Result<T, tokio_postgres::Error>>,
    ) -> Result<T, String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let pooled = self.idle.lock().await.pop();
        let mut client = match pooled {
            Some(client) if !client.is_closed() => client,
            _ => self.open().await?,
        };
        match tokio::time::timeout(self.timeout, work(&mut client)).await {
            Ok(Ok(value)) => {
                self.idle.lock().await.push(client);
                Ok(value)
            }
            Ok(Err(error)) => {
                if !client.is_closed() {
                    self.idle.lock().await.push(client);
                }
                Err(format!("{what}: {error}"))
            }
            Err(_) => Err(format!("{what}: timed out")),
        }
    }
}

/// Applies the migrations `client`'s database lacks, in one transaction, under the lock.
async fn migrate(client: &mut Client) -> Result<(), String> {
    let failed = |e: tokio_postgres::Error| format!("migrate: {e}");
    let transaction = client.transaction().await.map_err(failed)?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(failed)?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS wr_schema_migrations (
                version    integer     PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(failed)?;
    let applied: i32 = transaction
        .query_one(
            "SELECT coalesce(max(version), 0) FROM wr_schema_migrations",
            &[],
        )
        .await
        .map_err(failed)?
        .get(0);
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if applied > known {
        return Err(format!(
            "the database's schema is at version {applied}, newer than this worker's {known}: upgrade the worker"
        ));
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(applied).unwrap_or(0))
    {
        transaction
            .batch_execute(sql)
            .await
            .map_err(|e| format!("migration {version}: {e}"))?;
        transaction
            .execute(
                "INSERT INTO wr_schema_migrations (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(failed)?;
        tracing::info!(version, "postgres schema migrated");
    }
    transaction.commit().await.map_err(failed)
}

impl std::fmt::Debug for Pool {
    // The URL may hold a password: it is not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}
