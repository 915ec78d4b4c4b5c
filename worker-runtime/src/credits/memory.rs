//! The in-memory [`CreditLedger`]: balances and charge records in one process, for the embedded
//! broker, demos and tests. Nothing survives a restart.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use hashbrown::hash_table::{Entry, HashTable};
use parking_lot::Mutex;
use tokio::time::Instant;
use worker_core::BoxFuture;

use super::{ChargeKey, ChargeOutcome, CreditError, CreditLedger, RefundOutcome};

/// The default bound on remembered charges.
pub const DEFAULT_MAX_CHARGE_RECORDS: usize = 1_000_000;

/// Balances and charge records in memory, behind one lock taken once per call.
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
pub struct MemoryCreditLedger {
    state: Mutex<State>,
    /// Hashes charge keys, before the lock is taken. Foldhash, seeded per process, resists
    /// chosen collisions less than SipHash: a verified sender picks its message ids, so a sender
    /// set on slowing this ledger could try; the in-memory ledger serves one process, demos and
    /// tests, and SipHash cost more than the rest of a charge.
    hasher: FastHash,
    max_records: usize,
    max_record_age: Option<Duration>,
}

#[derive(Default)]
struct State {
    /// principal → credit type → balance, hashed with foldhash too (every charge looks one up
    /// under the lock).
    balances: HashMap<String, HashMap<String, u64, FastHash>, FastHash>,
    /// Unrefunded charges, found by the hash of their key.
    charges: HashTable<ChargeRecord>,
    /// Every charge not yet evicted, oldest first, as its sequence number (never reused) and the
    /// hash of its key, which find its record without a copy of the key. A refunded record leaves
    /// its entry behind until eviction or compaction drops it.
    order: VecDeque<(u64, u64)>,
    next_sequence: u64,
    /// Every credit type charged, shared by the records that name it.
    credit_types: HashSet<Arc<str>>,
}

type FastHash = foldhash::fast::RandomState;

struct ChargeRecord {
    key: ChargeKey,
    credit_type: Arc<str>,
    amount: u64,
    sequence: u64,
    charged_at: Instant,
}

impl MemoryCreditLedger {
    /// An empty ledger: every balance is 0.
    pub fn new() -> Self {
        MemoryCreditLedger {
            state: Mutex::new(State::default()),
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
        let mut state = self.state.lock();
        *state.balance_mut(principal.into(), credit_type.into()) = amount;
    }

    /// Adds `amount` to the balance of `credit_type` for `principal` (saturating at `u64::MAX`)
    /// and returns the new balance.
    pub fn deposit(
        &self,
        principal: impl Into<String>,
        credit_type: impl Into<String>,
        amount: u64,
    ) -> u64 {
        let mut state = self.state.lock();
        let balance = state.balance_mut(principal.into(), credit_type.into());
        *balance = balance.saturating_add(amount);
        *balance
    }

    /// The current balance of `credit_type` for `principal`, without going through a future.
    pub fn current_balance(&self, principal: &str, credit_type: &str) -> u64 {
        self.state.lock().balance(principal, credit_type)
    }

    /// How many charges are remembered now (unrefunded and not yet dropped by the bounds).
    pub fn charge_records(&self) -> usize {
        let mut state = self.state.lock();
        self.evict(&mut state, Instant::now());
        state.charges.len()
    }

    fn charge_now(&self, key: &ChargeKey, credit_type: &str, amount: u64) -> ChargeOutcome {
        // Hashed and copied before the lock: the copy touches the reference counts every
        // delivery shares (the task's name, the sender), which the other threads keep moving.
        // Declared before the guard, an unused copy is dropped after the lock is released.
        let hash = self.hasher.hash_one(key);
        let stored = key.clone();
        let now = Instant::now();
        let mut state = self.state.lock();
        self.evict(&mut state, now);
        let State {
            balances,
            charges,
            order,
            next_sequence,
            credit_types,
        } = &mut *state;
        // One lookup, whether the key is new or not.
        let rehash = |record: &ChargeRecord| self.hasher.hash_one(&record.key);
        let Entry::Vacant(vacant) = charges.entry(hash, |record| record.key == *key, rehash) else {
            return ChargeOutcome::AlreadyCharged;
        };
        // A balance that is missing is 0: it covers only a charge of 0.
        match balances
            .get_mut(&*key.principal)
            .and_then(|types| types.get_mut(credit_type))
        {
            Some(balance) if *balance >= amount => *balance -= amount,
            Some(balance) => {
                return ChargeOutcome::Insufficient {
                    available: *balance,
                }
            }
            None if amount == 0 => {}
            None => return ChargeOutcome::Insufficient { available: 0 },
        }
        let sequence = *next_sequence;
        *next_sequence += 1;
        vacant.insert(ChargeRecord {
            key: stored,
            credit_type: intern(credit_types, credit_type),
            amount,
            sequence,
            charged_at: now,
        });
        order.push_back((sequence, hash));
        // The record just added may push the count over the bound.
        self.evict(&mut state, now);
        ChargeOutcome::Charged
    }

    fn refund_now(&self, key: &ChargeKey) -> RefundOutcome {
        let hash = self.hasher.hash_one(key);
        let mut state = self.state.lock();
        self.evict(&mut state, Instant::now());
        let Ok(found) = state.charges.find_entry(hash, |record| record.key == *key) else {
            return RefundOutcome::NothingToRefund;
        };
        let (record, _) = found.remove();
        state.compact_order();
        let existing = state
            .balances
            .get_mut(&*key.principal)
            .and_then(|types| types.get_mut(&*record.credit_type));
        let balance = match existing {
            Some(balance) => balance,
            // Set to 0 since the charge: created again, which costs two owned strings.
            None => state.balance_mut(key.principal.to_string(), record.credit_type.to_string()),
        };
        *balance = balance.saturating_add(record.amount);
        RefundOutcome::Refunded(record.amount)
    }

    /// Drops the oldest records beyond the count bound, then those older than the age bound.
    fn evict(&self, state: &mut State, now: Instant) {
        while state.charges.len() > self.max_records {
            state.drop_oldest();
        }
        if let Some(max_age) = self.max_record_age {
            while let Some(&(sequence, hash)) = state.order.front() {
                let expired = state.record(sequence, hash).is_none_or(|record| {
                    now.saturating_duration_since(record.charged_at) > max_age
                });
                if !expired {
                    break;
                }
                state.drop_oldest();
            }
        }
    }
}

impl State {
    fn balance(&self, principal: &str, credit_type: &str) -> u64 {
        self.balances
            .get(principal)
            .and_then(|types| types.get(credit_type))
            .copied()
            .unwrap_or(0)
    }

    fn balance_mut(&mut self, principal: String, credit_type: String) -> &mut u64 {
        self.balances
            .entry(principal)
            .or_default()
            .entry(credit_type)
            .or_insert(0)
    }

    /// The record of the charge numbered `sequence`, whose key hashed to `hash`, if it is still
    /// kept (not refunded, not dropped).
    fn record(&self, sequence: u64, hash: u64) -> Option<&ChargeRecord> {
        self.charges
            .find(hash, |record| record.sequence == sequence)
    }

    /// Drops the oldest entry of `order`, and its record if that charge is still kept (a key
    /// refunded and charged again has a newer record, with a newer sequence number).
    fn drop_oldest(&mut self) {
        if let Some((sequence, hash)) = self.order.pop_front() {
            if let Ok(record) = self
                .charges
                .find_entry(hash, |record| record.sequence == sequence)
            {
                record.remove();
            }
        }
    }

    /// Drops the entries refunds left in `order` once they outnumber the live ones, so that it
    /// stays within twice the records (plus a little) at an amortized constant cost per refund.
    fn compact_order(&mut self) {
        if self.order.len() > 2 * self.charges.len() + 64 {
            let charges = &self.charges;
            self.order.retain(|&(sequence, hash)| {
                charges
                    .find(hash, |record| record.sequence == sequence)
                    .is_some()
            });
        }
    }
}

/// `name`, shared with every record of that credit type.
fn intern(credit_types: &mut HashSet<Arc<str>>, name: &str) -> Arc<str> {
    if let Some(shared) = credit_types.get(name) {
        return shared.clone();
    }
    let shared: Arc<str> = Arc::from(name);
    credit_types.insert(shared.clone());
    shared
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

#[cfg(test)]
mod tests {
    use super::*;

    const DB: &str = "db_credits";

    fn key(who: &str, message_id: &str) -> ChargeKey {
        ChargeKey {
            task: "write_records".into(),
            principal: who.into(),
            message_id: message_id.into(),
        }
    }

    async fn charge(
        ledger: &MemoryCreditLedger,
        who: &str,
        amount: u64,
        id: &str,
    ) -> ChargeOutcome {
        ledger.charge(&key(who, id), DB, amount).await.unwrap()
    }

    /// Refunds alice's charge of `id`.
    async fn refund(ledger: &MemoryCreditLedger, id: &str) -> RefundOutcome {
        ledger.refund(&key("alice", id)).await.unwrap()
    }

    async fn balance(ledger: &MemoryCreditLedger, who: &str) -> u64 {
        ledger.balance(who, DB).await.unwrap()
    }

    #[tokio::test]
    async fn a_key_is_charged_once_however_often_it_is_asked() {
        let ledger = MemoryCreditLedger::new().with_balance("alice", DB, 10);
        assert_eq!(
            charge(&ledger, "alice", 2, "m1").await,
            ChargeOutcome::Charged
        );
        for _ in 0..5 {
            assert_eq!(
                charge(&ledger, "alice", 2, "m1").await,
                ChargeOutcome::AlreadyCharged
            );
        }
        assert_eq!(balance(&ledger, "alice").await, 8);
        // Another message, and the same message id for another task, are other keys.
        assert_eq!(
            charge(&ledger, "alice", 2, "m2").await,
            ChargeOutcome::Charged
        );
        let other_task = ChargeKey {
            task: "other".into(),
            ..key("alice", "m1")
        };
        assert_eq!(
            ledger.charge(&other_task, DB, 2).await.unwrap(),
            ChargeOutcome::Charged
        );
        assert_eq!(balance(&ledger, "alice").await, 4);
    }

    #[tokio::test]
    async fn another_sender_reusing_an_id_pays_its_own_charge_and_refunds_only_it() {
        let ledger = MemoryCreditLedger::new()
            .with_balance("alice", DB, 10)
            .with_balance("mallory", DB, 10);
        assert_eq!(
            charge(&ledger, "alice", 3, "m1").await,
            ChargeOutcome::Charged
        );
        assert_eq!(
            charge(&ledger, "mallory", 3, "m1").await,
            ChargeOutcome::Charged,
            "no riding on alice's charge"
        );
        assert_eq!(
            ledger.refund(&key("mallory", "m1")).await.unwrap(),
            RefundOutcome::Refunded(3)
        );
        assert_eq!(balance(&ledger, "alice").await, 7, "alice's charge stands");
        assert_eq!(balance(&ledger, "mallory").await, 10);
    }

    #[tokio::test]
    async fn an_insufficient_balance_takes_nothing_and_remembers_nothing() {
        let ledger = MemoryCreditLedger::new().with_balance("bob", DB, 3);
        assert_eq!(
            charge(&ledger, "bob", 5, "m1").await,
            ChargeOutcome::Insufficient { available: 3 }
        );
        assert_eq!(balance(&ledger, "bob").await, 3);
        assert_eq!(ledger.charge_records(), 0);
        // Topped up, the same message can be charged.
        ledger.deposit("bob", DB, 2);
        assert_eq!(
            charge(&ledger, "bob", 5, "m1").await,
            ChargeOutcome::Charged
        );
        assert_eq!(balance(&ledger, "bob").await, 0);
        // Unknown principals and credit types have nothing.
        assert_eq!(
            charge(&ledger, "nobody", 1, "m2").await,
            ChargeOutcome::Insufficient { available: 0 }
        );
        assert_eq!(
            ledger.charge(&key("bob", "m3"), "other", 1).await.unwrap(),
            ChargeOutcome::Insufficient { available: 0 }
        );
    }

    #[tokio::test]
    async fn a_refund_returns_the_charge_once() {
        let ledger = MemoryCreditLedger::new().with_balance("alice", DB, 10);
        charge(&ledger, "alice", 3, "m1").await;
        assert_eq!(refund(&ledger, "m1").await, RefundOutcome::Refunded(3));
        assert_eq!(balance(&ledger, "alice").await, 10);
        assert_eq!(refund(&ledger, "m1").await, RefundOutcome::NothingToRefund);
        assert_eq!(balance(&ledger, "alice").await, 10);
    }

    #[tokio::test]
    async fn a_refund_goes_to_whoever_was_charged() {
        let ledger = MemoryCreditLedger::new()
            .with_balance("alice", DB, 10)
            .with_balance("alice", "cpu", 10);
        ledger.charge(&key("alice", "m1"), "cpu", 4).await.unwrap();
        assert_eq!(refund(&ledger, "m1").await, RefundOutcome::Refunded(4));
        assert_eq!(ledger.current_balance("alice", "cpu"), 10);
        assert_eq!(ledger.current_balance("alice", DB), 10);
    }

    #[tokio::test]
    async fn refunding_an_unknown_key_returns_nothing() {
        let ledger = MemoryCreditLedger::new().with_balance("alice", DB, 10);
        assert_eq!(
            refund(&ledger, "never").await,
            RefundOutcome::NothingToRefund
        );
        assert_eq!(balance(&ledger, "alice").await, 10);
    }

    #[tokio::test]
    async fn a_refunded_message_is_charged_again_when_replayed() {
        let ledger = MemoryCreditLedger::new().with_balance("alice", DB, 10);
        charge(&ledger, "alice", 3, "m1").await;
        refund(&ledger, "m1").await;
        assert_eq!(
            charge(&ledger, "alice", 3, "m1").await,
            ChargeOutcome::Charged
        );
        assert_eq!(balance(&ledger, "alice").await, 7);
        assert_eq!(
            charge(&ledger, "alice", 3, "m1").await,
            ChargeOutcome::AlreadyCharged
        );
    }

    #[tokio::test]
    async fn the_oldest_records_are_dropped_beyond_the_count_bound() {
        let ledger = MemoryCreditLedger::new()
            .with_balance("alice", DB, 100)
            .with_max_records(2);
        for id in ["m1", "m2", "m3"] {
            charge(&ledger, "alice", 1, id).await;
        }
        assert_eq!(ledger.charge_records(), 2);
        // m1 was forgotten: charged again (the documented trade-off); m3 still is remembered.
        assert_eq!(
            charge(&ledger, "alice", 1, "m3").await,
            ChargeOutcome::AlreadyCharged
        );
        assert_eq!(refund(&ledger, "m1").await, RefundOutcome::NothingToRefund);
        assert_eq!(
            charge(&ledger, "alice", 1, "m1").await,
            ChargeOutcome::Charged
        );
        assert_eq!(balance(&ledger, "alice").await, 96);
        // A refund frees its slot without disturbing the others.
        assert_eq!(refund(&ledger, "m3").await, RefundOutcome::Refunded(1));
        assert_eq!(ledger.charge_records(), 1);
    }

    #[tokio::test]
    async fn a_key_charged_again_after_its_refund_keeps_its_place_by_its_new_charge() {
        let ledger = MemoryCreditLedger::new()
            .with_balance("alice", DB, 100)
            .with_max_records(2);
        charge(&ledger, "alice", 1, "m1").await;
        charge(&ledger, "alice", 1, "m2").await;
        assert_eq!(refund(&ledger, "m1").await, RefundOutcome::Refunded(1));
        // Charged again, m1 is now the newest: its first charge's place in the eviction order
        // must not count for it, so the bound drops m2.
        charge(&ledger, "alice", 1, "m1").await;
        charge(&ledger, "alice", 1, "m3").await;
        assert_eq!(ledger.charge_records(), 2);
        assert_eq!(refund(&ledger, "m2").await, RefundOutcome::NothingToRefund);
        assert_eq!(refund(&ledger, "m1").await, RefundOutcome::Refunded(1));
        assert_eq!(refund(&ledger, "m3").await, RefundOutcome::Refunded(1));
        assert_eq!(balance(&ledger, "alice").await, 99);
    }

    #[tokio::test(start_paused = true)]
    async fn the_age_bound_skips_the_place_a_recharged_key_left_and_keeps_its_new_charge() {
        let ledger = MemoryCreditLedger::new()
            .with_balance("alice", DB, 100)
            .with_max_record_age(Duration::from_secs(60));
        charge(&ledger, "alice", 1, "m1").await;
        assert_eq!(refund(&ledger, "m1").await, RefundOutcome::Refunded(1));
        tokio::time::advance(Duration::from_secs(50)).await;
        charge(&ledger, "alice", 1, "m1").await;
        // The first charge's place is 70 s old, the charge standing now 20 s.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(ledger.charge_records(), 1);
        assert_eq!(
            charge(&ledger, "alice", 1, "m1").await,
            ChargeOutcome::AlreadyCharged
        );
        tokio::time::advance(Duration::from_secs(41)).await;
        assert_eq!(ledger.charge_records(), 0);
    }

    #[tokio::test]
    async fn a_charge_the_balance_cannot_cover_leaves_no_place_in_the_order() {
        let ledger = MemoryCreditLedger::new().with_balance("alice", DB, 1);
        assert_eq!(
            charge(&ledger, "alice", 2, "m1").await,
            ChargeOutcome::Insufficient { available: 1 }
        );
        assert_eq!(
            charge(&ledger, "bob", 1, "m1").await,
            ChargeOutcome::Insufficient { available: 0 }
        );
        let state = ledger.state.lock();
        assert!(state.charges.is_empty() && state.order.is_empty());
    }

    #[tokio::test]
    async fn a_charge_of_zero_needs_no_balance() {
        let ledger = MemoryCreditLedger::new();
        assert_eq!(
            charge(&ledger, "bob", 0, "m1").await,
            ChargeOutcome::Charged
        );
        assert_eq!(refund(&ledger, "m1").await, RefundOutcome::NothingToRefund);
        assert_eq!(
            ledger.refund(&key("bob", "m1")).await.unwrap(),
            RefundOutcome::Refunded(0)
        );
    }

    #[tokio::test]
    async fn refunds_do_not_grow_the_eviction_order_without_bound() {
        let ledger = MemoryCreditLedger::new().with_balance("alice", DB, 1);
        for n in 0..10_000 {
            let id = format!("m{n}");
            assert_eq!(
                charge(&ledger, "alice", 1, &id).await,
                ChargeOutcome::Charged
            );
            assert_eq!(refund(&ledger, &id).await, RefundOutcome::Refunded(1));
        }
        let state = ledger.state.lock();
        assert!(state.charges.is_empty());
        assert!(
            state.order.len() <= 64,
            "{} entries left",
            state.order.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn records_older_than_the_age_bound_are_dropped() {
        let ledger = MemoryCreditLedger::new()
            .with_balance("alice", DB, 100)
            .with_max_record_age(Duration::from_secs(60));
        charge(&ledger, "alice", 1, "m1").await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        charge(&ledger, "alice", 1, "m2").await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        // m1 is exactly 60 s old: still kept.
        assert_eq!(ledger.charge_records(), 2);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(ledger.charge_records(), 1);
        assert_eq!(refund(&ledger, "m1").await, RefundOutcome::NothingToRefund);
        assert_eq!(refund(&ledger, "m2").await, RefundOutcome::Refunded(1));
    }

    #[tokio::test]
    async fn a_future_that_is_never_polled_charges_nothing() {
        let ledger = MemoryCreditLedger::new().with_balance("alice", DB, 10);
        let k = key("alice", "m1");
        drop(ledger.charge(&k, DB, 5));
        assert_eq!(balance(&ledger, "alice").await, 10);
    }

    #[test]
    fn deposits_saturate() {
        let ledger = MemoryCreditLedger::new().with_balance("alice", DB, u64::MAX - 1);
        assert_eq!(ledger.deposit("alice", DB, 5), u64::MAX);
        ledger.set_balance("alice", DB, 7);
        assert_eq!(ledger.current_balance("alice", DB), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_charges_sum_exactly_and_each_key_is_charged_once() {
        const TASKS: u64 = 32;
        const PER_TASK: u64 = 200;
        let ledger = Arc::new(MemoryCreditLedger::new().with_balance("alice", DB, 1_000_000));
        let mut handles = Vec::new();
        for t in 0..TASKS {
            let ledger = ledger.clone();
            handles.push(tokio::spawn(async move {
                let mut charged = 0u64;
                for i in 0..PER_TASK {
                    // Pairs of tasks share their keys: each key is asked for twice, concurrently.
                    let id = format!("{}-{i}", t / 2);
                    if charge(&ledger, "alice", 3, &id).await == ChargeOutcome::Charged {
                        charged += 1;
                    }
                    tokio::task::yield_now().await;
                }
                charged
            }));
        }
        let mut charged = 0;
        for handle in handles {
            charged += handle.await.unwrap();
        }
        let distinct_keys = TASKS / 2 * PER_TASK;
        assert_eq!(charged, distinct_keys);
        assert_eq!(
            balance(&ledger, "alice").await,
            1_000_000 - 3 * distinct_keys
        );
        assert_eq!(ledger.charge_records() as u64, distinct_keys);
    }
}
