//! One shard of the in-memory ledger's charge records: the records whose keys hash to it, their
//! eviction order, and the balances its charges used.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hashbrown::hash_table::{Entry, HashTable};
use parking_lot::RwLock;
use tokio::time::Instant;

use super::{ChargeKey, ChargeOutcome, FastHash, RefundOutcome};

/// A balance, shared by the ledger's table and every shard that charged it: debited and credited
/// with atomic updates, so that a charge takes no ledger-wide lock.
pub(super) type Balance = Arc<AtomicU64>;

/// principal → credit type → balance.
pub(super) type Balances = HashMap<String, HashMap<String, Balance, FastHash>, FastHash>;

/// Charge records and their eviction order. See [`super::MemoryCreditLedger`].
#[derive(Default)]
pub(super) struct Shard {
    /// Unrefunded charges, found by the hash of their key.
    charges: HashTable<ChargeRecord>,
    /// Every charge not yet evicted, oldest first, as its sequence number (never reused within
    /// the shard) and the hash of its key, which find its record without a copy of the key. A
    /// refunded record leaves its entry behind until eviction or compaction drops it.
    order: VecDeque<(u64, u64)>,
    next_sequence: u64,
    /// Every credit type charged here, shared by the records that name it.
    credit_types: HashSet<Arc<str>, FastHash>,
    /// The balances this shard's charges found, the same as the ledger's: found again here
    /// without the ledger-wide table's lock.
    balances: Balances,
}

pub(super) struct ChargeRecord {
    pub(super) key: ChargeKey,
    credit_type: Arc<str>,
    amount: u64,
    sequence: u64,
    pub(super) charged_at: Instant,
}

/// One charge asked for: `amount` of `credit_type` for `key`, whose hash is `hash`, at `now`.
pub(super) struct Charge<'a> {
    pub(super) hash: u64,
    pub(super) key: &'a ChargeKey,
    pub(super) credit_type: &'a str,
    pub(super) amount: u64,
    pub(super) now: Instant,
}

/// What a shard needs of its ledger: the key hasher, the shared balances and the bounds.
pub(super) struct Ledger<'a> {
    pub(super) hasher: &'a FastHash,
    pub(super) balances: &'a RwLock<Balances>,
    pub(super) max_records: usize,
    pub(super) max_record_age: Option<Duration>,
}

impl Shard {
    /// Makes `charge`. The record keeps the copy of the key in `stored`, taken only if the charge
    /// is made: an unused copy is dropped by the caller, after the shard's lock.
    pub(super) fn charge(
        &mut self,
        ledger: &Ledger<'_>,
        charge: Charge<'_>,
        stored: &mut Option<ChargeKey>,
    ) -> ChargeOutcome {
        let Charge {
            hash,
            key,
            credit_type,
            amount,
            now,
        } = charge;
        self.evict(ledger, now);
        let Shard {
            charges,
            order,
            next_sequence,
            credit_types,
            balances,
        } = self;
        // One lookup, whether the key is new or not.
        let rehash = |record: &ChargeRecord| ledger.hasher.hash_one(&record.key);
        let Entry::Vacant(vacant) = charges.entry(hash, |record| record.key == *key, rehash) else {
            return ChargeOutcome::AlreadyCharged;
        };
        // A balance that is missing is 0: it covers only a charge of 0.
        let shared = || balance_in(&ledger.balances.read(), &key.principal, credit_type).cloned();
        match local_balance(balances, &key.principal, credit_type, shared) {
            Some(balance) => {
                let debited = balance.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                    b.checked_sub(amount)
                });
                if let Err(available) = debited {
                    return ChargeOutcome::Insufficient { available };
                }
            }
            None if amount == 0 => {}
            None => return ChargeOutcome::Insufficient { available: 0 },
        }
        let stored = stored.take().unwrap_or_else(|| key.clone());
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
        self.evict(ledger, now);
        ChargeOutcome::Charged
    }

    /// Refunds the charge of `key` (whose hash is `hash`), at `now`.
    pub(super) fn refund(
        &mut self,
        ledger: &Ledger<'_>,
        hash: u64,
        key: &ChargeKey,
        now: Instant,
    ) -> RefundOutcome {
        self.evict(ledger, now);
        let Ok(found) = self.charges.find_entry(hash, |record| record.key == *key) else {
            return RefundOutcome::NothingToRefund;
        };
        let (record, _) = found.remove();
        self.compact_order();
        // Made at 0 in the ledger's table if it has none (a charge of 0 needs no balance), so
        // that the refund always finds one.
        let (principal, credit_type) = (&*key.principal, &*record.credit_type);
        let made =
            || Some(balance_entry(&mut ledger.balances.write(), principal, credit_type).clone());
        if let Some(balance) = local_balance(&mut self.balances, principal, credit_type, made) {
            credit(balance, record.amount);
        }
        RefundOutcome::Refunded(record.amount)
    }

    /// How many charges this shard remembers, after dropping what the bounds say to.
    pub(super) fn records(&mut self, ledger: &Ledger<'_>, now: Instant) -> usize {
        self.evict(ledger, now);
        self.charges.len()
    }

    /// Takes every record out, oldest first.
    pub(super) fn drain(&mut self) -> Vec<ChargeRecord> {
        let mut records = Vec::with_capacity(self.charges.len());
        while !self.order.is_empty() {
            records.extend(self.pop_oldest());
        }
        records
    }

    /// Keeps `record`, whose key hashed to `hash`, as this shard's newest.
    pub(super) fn keep(&mut self, ledger: &Ledger<'_>, hash: u64, mut record: ChargeRecord) {
        record.sequence = self.next_sequence;
        self.next_sequence += 1;
        self.order.push_back((record.sequence, hash));
        let rehash = |record: &ChargeRecord| ledger.hasher.hash_one(&record.key);
        self.charges.insert_unique(hash, record, rehash);
        self.drop_beyond_count(ledger);
    }

    /// Drops the oldest records beyond the count bound, then those older than the age bound.
    fn evict(&mut self, ledger: &Ledger<'_>, now: Instant) {
        self.drop_beyond_count(ledger);
        if let Some(max_age) = ledger.max_record_age {
            while let Some(&(sequence, hash)) = self.order.front() {
                let expired = self.record(sequence, hash).is_none_or(|record| {
                    now.saturating_duration_since(record.charged_at) > max_age
                });
                if !expired {
                    break;
                }
                self.pop_oldest();
            }
        }
    }

    /// Drops the oldest records beyond the count bound.
    fn drop_beyond_count(&mut self, ledger: &Ledger<'_>) {
        while self.charges.len() > ledger.max_records {
            self.pop_oldest();
        }
    }

    /// The record of the charge numbered `sequence`, whose key hashed to `hash`, if it is still
    /// kept (not refunded, not dropped).
    fn record(&self, sequence: u64, hash: u64) -> Option<&ChargeRecord> {
        self.charges
            .find(hash, |record| record.sequence == sequence)
    }

    /// Takes the oldest entry out of `order`, and its record, returned, if that charge is still
    /// kept (a key refunded and charged again has a newer record, with a newer sequence number).
    fn pop_oldest(&mut self) -> Option<ChargeRecord> {
        let (sequence, hash) = self.order.pop_front()?;
        let record = self
            .charges
            .find_entry(hash, |record| record.sequence == sequence)
            .ok()?;
        Some(record.remove().0)
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

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.charges.is_empty() && self.order.is_empty()
    }

    #[cfg(test)]
    pub(super) fn order_len(&self) -> usize {
        self.order.len()
    }
}

/// The balance of `credit_type` for `principal` in `balances`, if there is one.
pub(super) fn balance_in<'a>(
    balances: &'a Balances,
    principal: &str,
    credit_type: &str,
) -> Option<&'a Balance> {
    balances
        .get(principal)
        .and_then(|types| types.get(credit_type))
}

/// The balance of `credit_type` for `principal`: from the shard's own map, or else the one
/// `fetch` finds in the ledger's table (then kept in the shard's map too, where it is found again
/// without the table's lock). `None` if `fetch` finds none.
fn local_balance<'a>(
    local: &'a mut Balances,
    principal: &str,
    credit_type: &str,
    fetch: impl FnOnce() -> Option<Balance>,
) -> Option<&'a Balance> {
    if balance_in(local, principal, credit_type).is_none() {
        let balance = fetch()?;
        local
            .entry(principal.to_owned())
            .or_default()
            .insert(credit_type.to_owned(), balance);
    }
    balance_in(local, principal, credit_type)
}

/// The balance of `credit_type` for `principal` in `balances`, made at 0 if missing.
pub(super) fn balance_entry<'a>(
    balances: &'a mut Balances,
    principal: &str,
    credit_type: &str,
) -> &'a Balance {
    balances
        .entry(principal.to_owned())
        .or_default()
        .entry(credit_type.to_owned())
        .or_default()
}

/// Adds `amount` to `balance`, saturating at `u64::MAX`; returns the new balance.
pub(super) fn credit(balance: &AtomicU64, amount: u64) -> u64 {
    let before = balance
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
            Some(b.saturating_add(amount))
        })
        .unwrap_or_else(|b| b);
    before.saturating_add(amount)
}

/// `name`, shared with every record of that credit type.
fn intern(credit_types: &mut HashSet<Arc<str>, FastHash>, name: &str) -> Arc<str> {
    if let Some(shared) = credit_types.get(name) {
        return shared.clone();
    }
    let shared: Arc<str> = Arc::from(name);
    credit_types.insert(shared.clone());
    shared
}
