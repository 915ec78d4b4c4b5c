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
    PRIMARY KEY (task, principal, message_id)
);
CREATE INDEX wr_credit_charges_by_time ON wr_credit_charges (charged_at);
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
    // 3: a charge and a refund each in one statement, so one round trip and one commit.
    r#"
CREATE FUNCTION wr_credit_charge(
    p_task text, p_message_id text, p_principal text, p_credit_type text, p_amount bigint,
    OUT outcome text, OUT available bigint
) LANGUAGE plpgsql AS $$
DECLARE
    inserted boolean;
    refunded boolean;
BEGIN
    -- The unique key decides: a charge already there (or being made by another worker, which
    -- this insert then waits for) is not made again.
    INSERT INTO wr_credit_charges (task, message_id, principal, credit_type, amount, charged_at)
    VALUES (p_task, p_message_id, p_principal, p_credit_type, p_amount, now())
    ON CONFLICT (task, principal, message_id) DO NOTHING;
    inserted := FOUND;
    IF NOT inserted THEN
        SELECT refunded_at IS NOT NULL INTO refunded FROM wr_credit_charges
        WHERE task = p_task AND principal = p_principal AND message_id = p_message_id
        FOR UPDATE;
        IF NOT FOUND THEN
            -- Deleted between the insert and this read: the caller tries again.
            RAISE EXCEPTION 'the charge record of % vanished while charging', p_message_id;
        END IF;
        IF NOT refunded THEN
            outcome := 'already_charged';
            RETURN;
        END IF;
    END IF;
    UPDATE wr_credit_balances SET balance = balance - p_amount
    WHERE principal = p_principal AND credit_type = p_credit_type AND balance >= p_amount;
    IF NOT FOUND THEN
        IF inserted THEN
            DELETE FROM wr_credit_charges
            WHERE task = p_task AND principal = p_principal AND message_id = p_message_id;
        END IF;
        SELECT balance INTO available FROM wr_credit_balances
        WHERE principal = p_principal AND credit_type = p_credit_type;
        outcome := 'insufficient';
        available := coalesce(available, 0);
        RETURN;
    END IF;
    IF NOT inserted THEN
        -- Refunded (dead-lettered), now replayed: charged again.
        UPDATE wr_credit_charges
        SET credit_type = p_credit_type, amount = p_amount, charged_at = now(), refunded_at = NULL
        WHERE task = p_task AND principal = p_principal AND message_id = p_message_id;
    END IF;
    INSERT INTO wr_credit_events (principal, credit_type, kind, amount, task, message_id)
    VALUES (p_principal, p_credit_type, 'charge', p_amount, p_task, p_message_id);
    outcome := 'charged';
END;
$$;

CREATE FUNCTION wr_credit_refund(p_task text, p_principal text, p_message_id text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_principal text;
    v_credit_type text;
    v_amount bigint;
BEGIN
    UPDATE wr_credit_charges SET refunded_at = now()
    WHERE task = p_task AND principal = p_principal AND message_id = p_message_id
      AND refunded_at IS NULL
    RETURNING principal, credit_type, amount INTO v_principal, v_credit_type, v_amount;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    INSERT INTO wr_credit_balances (principal, credit_type, balance)
    VALUES (v_principal, v_credit_type, v_amount)
    ON CONFLICT (principal, credit_type)
    DO UPDATE SET balance = wr_credit_balances.balance + v_amount;
    INSERT INTO wr_credit_events (principal, credit_type, kind, amount, task, message_id)
    VALUES (v_principal, v_credit_type, 'refund', v_amount, p_task, p_message_id);
    RETURN v_amount;
END;
$$;
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
            .map_err(|e| format!("connect: {}", explain(&e)))?;
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
                Err(format!("{what}: {}", explain(&error)))
            }
            Err(_) => Err(format!("{what}: timed out")),
        }
    }
}

/// Applies the migrations `client`'s database lacks, in one transaction, under the lock.
async fn migrate(client: &mut Client) -> Result<(), String> {
    let failed = |e: tokio_postgres::Error| format!("migrate: {}", explain(&e));
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
            .map_err(|e| format!("migration {version}: {}", explain(&e)))?;
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

/// The error with what the server said, if it said anything: tokio-postgres shows a server's
/// error as a bare "db error", and keeps the message (which never holds the password) in its
/// source.
pub(crate) fn explain(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

impl std::fmt::Debug for Pool {
    // The URL may hold a password: it is not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}
