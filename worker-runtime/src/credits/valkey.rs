//! A [`CreditLedger`] in Valkey (or Redis): balances, charge records and each principal's recent
//! history, changed only by Lua scripts, so a charge is checked and taken atomically whichever
//! worker runs it.
//!
//! | key | holds |
//! |---|---|
//! | `wr:credits:balance:{len}:{principal}:{credit_type}` | the balance, an integer |
//! | `wr:credits:charge:{len}:{task}:{len}:{principal}:{message_id}` | the charge of one message: a hash of `principal`, `credit_type`, `amount`, `state` (`charged` or `refunded`), `at` and the keys of the balance and history it touched; kept for [`ValkeyCreditLedger::with_record_ttl`] (30 days) |
//! | `wr:credits:history:{principal}` | the principal's latest 1,000 charges, refunds and grants, newest first, JSON |
//!
//! `{len}` is the byte length of the field after it, so that no task, principal or id holding a
//! `:` can make the key of another.
//!
//! A charge of a key that is `charged` takes nothing; one of a key that was `refunded` (its
//! message went to the DLQ and was replayed) takes the amount again. The scripts touch keys of
//! several principals' slots, so the ledger needs a single Valkey server (or primary), not a
//! cluster.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redis::Script;
use worker_core::BoxFuture;

use super::{
    ChargeKey, ChargeOutcome, CreditError, CreditEvent, CreditLedger, RefundOutcome,
    DEFAULT_RECORD_TTL, HISTORY_LIMIT,
};

/// KEYS: charge record, balance, history. ARGV: principal, credit type, amount, now (ms), record
/// TTL (ms), task, message id, history length. Returns `{outcome, balance}`.
static CHARGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'state') == 'charged' then
  return {'already', tonumber(redis.call('GET', KEYS[2]) or '0')}
end
local amount = tonumber(ARGV[3])
local balance = tonumber(redis.call('GET', KEYS[2]) or '0')
if balance < amount then
  return {'insufficient', balance}
end
balance = redis.call('DECRBY', KEYS[2], amount)
redis.call('HSET', KEYS[1], 'principal', ARGV[1], 'credit_type', ARGV[2], 'amount', amount,
  'state', 'charged', 'at', ARGV[4], 'balance_key', KEYS[2], 'history_key', KEYS[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('LPUSH', KEYS[3], cjson.encode({kind = 'charge', credit_type = ARGV[2],
  amount = amount, task = ARGV[6], message_id = ARGV[7], at_ms = tonumber(ARGV[4])}))
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[8]) - 1)
return {'charged', balance}
"#,
    )
});

/// KEYS: charge record. ARGV: now (ms), task, message id, history length. Returns the amount
/// refunded (0 if none). The balance and history are the ones the charge touched, as it recorded
/// them.
static REFUND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local record = redis.call('HMGET', KEYS[1], 'state', 'credit_type', 'amount', 'balance_key',
  'history_key')
if record[1] ~= 'charged' then
  return 0
end
local credit_type, amount = record[2], tonumber(record[3])
redis.call('INCRBY', record[4], amount)
redis.call('HSET', KEYS[1], 'state', 'refunded')
redis.call('LPUSH', record[5], cjson.encode({kind = 'refund', credit_type = credit_type,
  amount = amount, task = ARGV[2], message_id = ARGV[3], at_ms = tonumber(ARGV[1])}))
redis.call('LTRIM', record[5], 0, tonumber(ARGV[4]) - 1)
return amount
"#,
    )
});

/// KEYS: balance, history. ARGV: credit type, amount, now (ms), history length. Returns the new
/// balance.
static GRANT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local balance = redis.call('INCRBY', KEYS[1], tonumber(ARGV[2]))
redis.call('LPUSH', KEYS[2], cjson.encode({kind = 'grant', credit_type = ARGV[1],
  amount = tonumber(ARGV[2]), at_ms = tonumber(ARGV[3])}))
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)
return balance
"#,
    )
});

const BALANCE_PREFIX: &str = "wr:credits:balance:";
const HISTORY_PREFIX: &str = "wr:credits:history:";

/// Balances and charges in Valkey (or Redis), changed only by Lua scripts: a charge is checked and
/// taken atomically whichever worker runs it. Keys: `wr:credits:balance:{principal}:{credit_type}`,
/// `wr:credits:charge:{task}:{message_id}` (kept [`Self::with_record_ttl`], 30 days) and
/// `wr:credits:history:{principal}` (the latest 1,000 events). Needs a single server or primary,
/// not a cluster.
#[derive(Clone)]
pub struct ValkeyCreditLedger {
    connection: ConnectionManager,
    record_ttl: Duration,
    timeout: Duration,
}

impl ValkeyCreditLedger {
    /// Connects to `url` (`redis://…` or `rediss://…`).
    pub async fn connect(url: &str) -> Result<Self, CreditError> {
        if url.starts_with("rediss:") {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = redis::Client::open(url)
            .map_err(|e| CreditError(format!("invalid valkey url: {e}")))?;
        let timeout = Duration::from_secs(5);
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2);
        let connection = tokio::time::timeout(
            timeout * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| CreditError("valkey: connect timed out".into()))?
        .map_err(|e| CreditError(format!("valkey: connect: {e}")))?;
        Ok(ValkeyCreditLedger {
            connection,
            record_ttl: DEFAULT_RECORD_TTL,
            timeout,
        })
    }

    /// Keeps charge records this long (at least a minute).
    pub fn with_record_ttl(mut self, ttl: Duration) -> Self {
        self.record_ttl = ttl.max(Duration::from_secs(60));
        self
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        what: &str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, CreditError> {
        let mut connection = self.connection.clone();
        match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(CreditError(format!("valkey: {what}: {error}"))),
            Err(_) => Err(CreditError(format!("valkey: {what}: timed out"))),
        }
    }
}

fn charge_key(key: &ChargeKey) -> String {
    let ChargeKey {
        task,
        principal,
        message_id,
    } = key;
    format!(
        "wr:credits:charge:{}:{task}:{}:{principal}:{message_id}",
        task.len(),
        principal.len()
    )
}

fn balance_key(principal: &str, credit_type: &str) -> String {
    format!(
        "{BALANCE_PREFIX}{}:{principal}:{credit_type}",
        principal.len()
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl CreditLedger for ValkeyCreditLedger {
    fn charge<'a>(
        &'a self,
        key: &'a ChargeKey,
        credit_type: &'a str,
        amount: u64,
    ) -> BoxFuture<'a, Result<ChargeOutcome, CreditError>> {
        Box::pin(async move {
            let principal = &key.principal;
            let mut invocation = CHARGE.prepare_invoke();
            invocation
                .key(charge_key(key))
                .key(balance_key(principal, credit_type))
                .key(format!("{HISTORY_PREFIX}{principal}"))
                .arg(&**principal)
                .arg(credit_type)
                .arg(amount)
                .arg(now_ms())
                .arg(u64::try_from(self.record_ttl.as_millis()).unwrap_or(u64::MAX))
                .arg(&*key.task)
                .arg(&*key.message_id)
                .arg(HISTORY_LIMIT);
            let (outcome, balance): (String, i64) = self.run("charge", &invocation).await?;
            match outcome.as_str() {
                "charged" => Ok(ChargeOutcome::Charged),
                "already" => Ok(ChargeOutcome::AlreadyCharged),
                "insufficient" => Ok(ChargeOutcome::Insufficient {
                    available: u64::try_from(balance).unwrap_or(0),
                }),
                other => Err(CreditError(format!(
                    "valkey: charge: the script answered {other:?}"
                ))),
            }
        })
    }

    fn refund<'a>(
        &'a self,
        key: &'a ChargeKey,
    ) -> BoxFuture<'a, Result<RefundOutcome, CreditError>> {
        Box::pin(async move {
            let mut invocation = REFUND.prepare_invoke();
            invocation
                .key(charge_key(key))
                .arg(now_ms())
                .arg(&*key.task)
                .arg(&*key.message_id)
                .arg(HISTORY_LIMIT);
            let amount: u64 = self.run("refund", &invocation).await?;
            Ok(if amount == 0 {
                RefundOutcome::NothingToRefund
            } else {
                RefundOutcome::Refunded(amount)
            })
        })
    }

    fn balance<'a>(
        &'a self,
        principal: &'a str,
        credit_type: &'a str,
    ) -> BoxFuture<'a, Result<u64, CreditError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let mut cmd = redis::cmd("GET");
            cmd.arg(balance_key(principal, credit_type));
            let balance: Option<i64> =
                tokio::time::timeout(self.timeout, cmd.query_async(&mut connection))
                    .await
                    .map_err(|_| CreditError("valkey: balance: timed out".into()))?
                    .map_err(|e| CreditError(format!("valkey: balance: {e}")))?;
            Ok(balance.map_or(0, |b| u64::try_from(b).unwrap_or(0)))
        })
    }

    fn grant<'a>(
        &'a self,
        principal: &'a str,
        credit_type: &'a str,
        amount: u64,
    ) -> BoxFuture<'a, Result<u64, CreditError>> {
        Box::pin(async move {
            let mut invocation = GRANT.prepare_invoke();
            invocation
                .key(balance_key(principal, credit_type))
                .key(format!("{HISTORY_PREFIX}{principal}"))
                .arg(credit_type)
                .arg(amount)
                .arg(now_ms())
                .arg(HISTORY_LIMIT);
            let balance: i64 = self.run("grant", &invocation).await?;
            Ok(u64::try_from(balance).unwrap_or(0))
        })
    }

    fn history<'a>(
        &'a self,
        principal: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<CreditEvent>, CreditError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let mut cmd = redis::cmd("LRANGE");
            cmd.arg(format!("{HISTORY_PREFIX}{principal}"))
                .arg(0)
                .arg(limit.max(1).saturating_sub(1));
            let entries: Vec<String> =
                tokio::time::timeout(self.timeout, cmd.query_async(&mut connection))
                    .await
                    .map_err(|_| CreditError("valkey: history: timed out".into()))?
                    .map_err(|e| CreditError(format!("valkey: history: {e}")))?;
            Ok(entries
                .iter()
                .filter_map(|entry| CreditEvent::from_json(entry))
                .collect())
        })
    }
}

impl std::fmt::Debug for ValkeyCreditLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValkeyCreditLedger")
            .field("record_ttl", &self.record_ttl)
            .finish_non_exhaustive()
    }
}
