//! Handled messages recorded in Valkey: `wr:handled:{len}:{task}:{message_id}` (`{len}` the task
//! name's byte length, so that no name or id holding a `:` makes another's key), set with an
//! expiry of the task's window.

use std::time::Duration;

use redis::aio::ConnectionManager;
use worker_core::BoxFuture;

use super::{IdempotencyError, IdempotencyStore};

/// Records in Valkey, shared by every worker.
#[derive(Clone)]
pub struct ValkeyIdempotencyStore {
    connection: ConnectionManager,
}

const TIMEOUT: Duration = Duration::from_secs(5);

impl ValkeyIdempotencyStore {
    /// Connects to `url` (`redis://…` or `rediss://…`).
    pub async fn connect(url: &str) -> Result<Self, IdempotencyError> {
        if url.starts_with("rediss:") {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let failed = |e: redis::RedisError| IdempotencyError(format!("valkey: {e}"));
        let client = redis::Client::open(url).map_err(failed)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(2);
        let connection = tokio::time::timeout(
            TIMEOUT * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| IdempotencyError("valkey: connect timed out".into()))?
        .map_err(failed)?;
        Ok(ValkeyIdempotencyStore { connection })
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: redis::Cmd,
    ) -> Result<T, IdempotencyError> {
        let mut connection = self.connection.clone();
        tokio::time::timeout(TIMEOUT, cmd.query_async(&mut connection))
            .await
            .map_err(|_| IdempotencyError("valkey: timed out".into()))?
            .map_err(|e| IdempotencyError(format!("valkey: {e}")))
    }
}

fn key(task: &str, message_id: &str) -> String {
    format!("wr:handled:{}:{task}:{message_id}", task.len())
}

impl IdempotencyStore for ValkeyIdempotencyStore {
    fn seen<'a>(
        &'a self,
        task: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, IdempotencyError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("EXISTS");
            cmd.arg(key(task, message_id));
            Ok(self.query::<i64>(cmd).await? > 0)
        })
    }

    fn record<'a>(
        &'a self,
        task: &'a str,
        message_id: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<(), IdempotencyError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key(task, message_id))
                .arg(1)
                .arg("PX")
                .arg(u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1));
            self.query::<()>(cmd).await
        })
    }
}
