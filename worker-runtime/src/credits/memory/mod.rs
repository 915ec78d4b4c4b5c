//! The in-memory [`CreditLedger`]: balances and charge records in one process, for the embedded
//! broker, demos and tests. Nothing survives a restart.

mod shard;
#[cfg(test)]
mod tests;

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;
use worker_core::BoxFuture;

use self::shard::{balance_entry, balance_in, credit, Balances, Charge, Ledger, Shard};
use super::{ChargeKey, ChargeOutcome, CreditError, CreditLedger, RefundOutcome};

/// The default bound on remembered charges.
pub const DEFAULT_MAX_CHARGE_RECORDS: usize = 1_000_000;

/// How many shards the charge records are kept in when the count bound is large enough.
const SHARDS: usize = 16;

/// The least count bound kept in [`SHARDS`] shards; a smaller one is kept in one.
const LEAST_SHARDED_BOUND: usize = SHARDS * 4096;

/// Balances and charge records in memory.
///
/// A charge is remembered by its [`ChargeKey`] so that charging the same key again takes nothing
/// ([`ChargeOutcome::AlreadyCharged`], whatever amount the repeat names) and a refund returns
/// exactly what was charged, to the principal of the key. A charge the balance cannot cover
/// takes nothing and is not remembered. A refund
/// forgets the charge: the same key can be charged again afterwards, which is what a message
/// replayed from the dead-letter queue should cost.
///
/// Charge records are bounded so that memory does not grow with every message ever seen: at most
/// [`Self::with_max_records`] (default [`DEFAULT_MAX_CHARGE_RECORDS`]) are kept, and optionally none
/// older than [`Self::with_max_record_age`]; the oldest go first. The trade-off: a key whose record
/// was dropped is unknown again, so a redelivery after that point is charged a second time and a
/// refund after it returns nothing. Keep the bounds well above how many messages can be in flight
/// (retries included) and how long a message can take from first charge to dead letter.
///
/// So that charges on several threads do not queue for one lock, a count bound of at least
/// 65,536 keeps the records in 16 shards by the hash of their key, each with a sixteenth of the
/// bound: a record is then dropped once about (not exactly) that many newer ones came. Balances
/// are debited and credited with atomic updates outside any ledger-wide lock.
pub struct MemoryCreditLedger {
    /// The charge records, by the hash of their key.
    shards: Box<[Padded<Mutex<Shard>>]>,
    /// Every balance, shared with the shards that charged it.
    balances: RwLock<Balances>,
    /// Hashes charge keys, before any lock is taken. Foldhash, seeded per process, resists
    /// chosen collisions less than SipHash: a verified sender picks its message ids, so a sender
    /// set on slowing this ledger could try; the in-memory ledger serves one process, demos and
    /// tests, and SipHash cost more than the rest of a charge.
    hasher: FastHash,
    max_records: usize,
    max_record_age: Option<Duration>,
}

/// A shard alone on its cache lines (two, as adjacent-line prefetchers pair them).
#[repr(align(128))]
struct Padded<T>(T);

type FastHash = foldhash::fast::RandomState;

impl MemoryCreditLedger {
    /// An empty ledger: every balance is 0.
    pub fn new() -> Self {
        MemoryCreditLedger {
            shards: shards_for(DEFAULT_MAX_CHARGE_RECORDS),
            balances: RwLock::new(Balances::default()),
            hasher: FastHash::default(),
            max_records: DEFAULT_MAX_CHARGE_RECORDS,
            max_record_age: None,
        }
    }

    /// Sets a balance, returning the ledger (builder style).
    pub fn with_balance(
        self,
        principal: impl Into<String>,
        credit_type: impl Into<String>,
        amount: u64,
    ) -> Self {
        self.set_balance(principal, credit_type, amount);
        self
    }

    /// Keeps at most `max` charge records (at least 1), dropping the oldest first.
    pub fn with_max_records(mut self, max: usize) -> Self {
        self.max_records = max.max(1);
        let mut records: Vec<_> = self
            .shards
            .iter_mut()
            .flat_map(|shard| shard.0.get_mut().drain())
            .collect();
        self.shards = shards_for(self.max_records);
        // Records charged before (unusual for a builder) move over, oldest first.
        records.sort_by_key(|record| record.charged_at);
        let ledger = self.ledger();
        for record in records {
            let hash = self.hasher.hash_one(&record.key);
            self.shard_of(hash).lock().keep(&ledger, hash, record);
        }
        self
    }

    /// Drops charge records older than `age`, measured on tokio's clock.
    pub fn with_max_record_age(mut self, age: Duration) -> Self {
        self.max_record_age = Some(age);
        self
    }

    /// Sets the balance of `credit_type` for `principal`.
    pub fn set_balance(
        &self,
        principal: impl Into<String>,
        credit_type: impl Into<String>,
        amount: u64,
    ) {
        let mut balances = self.balances.write();
        balance_entry(&mut balances, &principal.into(), &credit_type.into())
            .store(amount, Ordering::Release);
    }

    /// Adds `amount` to the balance of `credit_type` for `principal` (saturating at `u64::MAX`)
    /// and returns the new balance.
    pub fn deposit(
        &self,
        principal: impl Into<String>,
        credit_type: impl Into<String>,
        amount: u64,
    ) -> u64 {
        let mut balances = self.balances.write();
        credit(
            balance_entry(&mut balances, &principal.into(), &credit_type.into()),
            amount,
        )
    }

    /// The current balance of `credit_type` for `principal`, without going through a future.
    pub fn current_balance(&self, principal: &str, credit_type: &str) -> u64 {
        balance_in(&self.balances.read(), principal, credit_type)
            .map_or(0, |balance| balance.load(Ordering::Acquire))
    }

    /// How many charges are remembered now (unrefunded and not yet dropped by the bounds).
    pub fn charge_records(&self) -> usize {
        let (ledger, now) = (self.ledger(), Instant::now());
        self.shards
            .iter()
            .map(|shard| shard.0.lock().records(&ledger, now))
            .sum()
    }

    fn ledger(&self) -> Ledger<'_> {
        Ledger {
            hasher: &self.hasher,
            balances: &self.balances,
            max_records: self.max_records / self.shards.len(),
            max_record_age: self.max_record_age,
        }
    }

    fn shard_of(&self, hash: u64) -> &Mutex<Shard> {
        // Bits from the middle: the table inside a shard finds a bucket by the low bits and tells
        // keys apart within it by the top seven, which must still differ between its keys.
        &self.shards[(hash >> 32) as usize % self.shards.len()].0
    }

    fn charge_now(&self, key: &ChargeKey, credit_type: &str, amount: u64) -> ChargeOutcome {
        // Hashed and copied before the lock: the copy touches the reference counts every
        // delivery shares (the task's name, the sender), which the other threads keep moving.
        // Declared before the guard, an unused copy is dropped after the lock is released.
        let hash = self.hasher.hash_one(key);
        let mut stored = Some(key.clone());
        let charge = Charge {
            hash,
            key,
            credit_type,
            amount,
            now: Instant::now(),
        };
        let ledger = self.ledger();
        self.shard_of(hash)
            .lock()
            .charge(&ledger, charge, &mut stored)
    }

    fn refund_now(&self, key: &ChargeKey) -> RefundOutcome {
        let hash = self.hasher.hash_one(key);
        let ledger = self.ledger();
        self.shard_of(hash)
            .lock()
            .refund(&ledger, hash, key, Instant::now())
    }
}

/// The shards for a count bound of `max_records`.
fn shards_for(max_records: usize) -> Box<[Padded<Mutex<Shard>>]> {
    let count = if max_records >= LEAST_SHARDED_BOUND {
        SHARDS
    } else {
        1
    };
    (0..count)
        .map(|_| Padded(Mutex::new(Shard::default())))
        .collect()
}

impl Default for MemoryCreditLedger {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryCreditLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCreditLedger")
            .field("max_records", &self.max_records)
            .field("max_record_age", &self.max_record_age)
            .finish_non_exhaustive()
    }
}

impl CreditLedger for MemoryCreditLedger {
    fn charge<'a>(
        &'a self,
        key: &'a ChargeKey,
        credit_type: &'a str,
        amount: u64,
    ) -> BoxFuture<'a, Result<ChargeOutcome, CreditError>> {
        // The work happens when the future is polled, not when it is created.
        Box::pin(async move { Ok(self.charge_now(key, credit_type, amount)) })
    }

    fn refund<'a>(
        &'a self,
        key: &'a ChargeKey,
    ) -> BoxFuture<'a, Result<RefundOutcome, CreditError>> {
        Box::pin(async move { Ok(self.refund_now(key)) })
    }

    fn balance<'a>(
        &'a self,
        principal: &'a str,
        credit_type: &'a str,
    ) -> BoxFuture<'a, Result<u64, CreditError>> {
        Box::pin(async move { Ok(self.current_balance(principal, credit_type)) })
    }

    fn grant<'a>(
        &'a self,
        principal: &'a str,
        credit_type: &'a str,
        amount: u64,
    ) -> BoxFuture<'a, Result<u64, CreditError>> {
        Box::pin(async move { Ok(self.deposit(principal, credit_type, amount)) })
    }
}
