//! The ledger of one case: what was published and confirmed, what was delivered, and from that
//! what was delivered more than once and what was lost (see TESTING.md, "Ledger method").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Counts per message number. Every test message carries a unique number (see
/// [`super::support::numbered`]); the ledger is kept in those numbers.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    published: u64,
    failed: u64,
    confirmed: BTreeSet<u64>,
    deliveries: BTreeMap<u64, u32>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a publish whose call returned `Ok`: the broker said it has the message.
    pub fn confirmed(&mut self, n: u64) {
        self.published += 1;
        self.confirmed.insert(n);
    }

    /// Records a publish whose call failed: the message may or may not be stored.
    pub fn failed(&mut self) {
        self.published += 1;
        self.failed += 1;
    }

    /// Records one delivery of message `n`.
    pub fn delivered(&mut self, n: u64) {
        *self.deliveries.entry(n).or_default() += 1;
    }

    /// Records a delivery of each number.
    pub fn delivered_all(&mut self, numbers: impl IntoIterator<Item = u64>) {
        for n in numbers {
            self.delivered(n);
        }
    }

    /// Publish calls made.
    pub fn published_count(&self) -> u64 {
        self.published
    }

    /// Publish calls that failed.
    pub fn failed_count(&self) -> u64 {
        self.failed
    }

    /// Publishes the broker confirmed.
    pub fn confirmed_count(&self) -> usize {
        self.confirmed.len()
    }

    /// Deliveries, counting every repeat.
    pub fn delivered_count(&self) -> u64 {
        self.deliveries.values().map(|c| u64::from(*c)).sum()
    }

    /// Distinct messages delivered.
    pub fn unique_count(&self) -> usize {
        self.deliveries.len()
    }

    /// Deliveries beyond the first of each message.
    pub fn duplicates(&self) -> u64 {
        self.deliveries.values().map(|c| u64::from(c - 1)).sum()
    }

    /// Whether message `n` was delivered at least once.
    pub fn was_delivered(&self, n: u64) -> bool {
        self.deliveries.contains_key(&n)
    }

    /// Confirmed messages never delivered: lost = confirmed − delivered.
    pub fn lost(&self) -> Vec<u64> {
        self.confirmed
            .iter()
            .filter(|n| !self.deliveries.contains_key(n))
            .copied()
            .collect()
    }

    /// Delivered messages whose publish was not confirmed (a failed publish the broker stored
    /// anyway): allowed, but counted.
    pub fn delivered_unconfirmed(&self) -> usize {
        self.deliveries
            .keys()
            .filter(|n| !self.confirmed.contains(n))
            .count()
    }

    /// Whether every confirmed message was delivered.
    pub fn complete(&self) -> bool {
        self.confirmed
            .iter()
            .all(|n| self.deliveries.contains_key(n))
    }
}

/// `published P confirmed C delivered D unique U duplicates X lost L` (and the failed publishes
/// and unconfirmed deliveries when there are any).
impl fmt::Display for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "published {} confirmed {} delivered {} unique {} duplicates {} lost {}",
            self.published,
            self.confirmed.len(),
            self.delivered_count(),
            self.unique_count(),
            self.duplicates(),
            self.lost().len()
        )?;
        if self.failed > 0 {
            write!(f, " (failed publishes {}", self.failed)?;
            let unconfirmed = self.delivered_unconfirmed();
            if unconfirmed > 0 {
                write!(f, ", of which delivered anyway {unconfirmed}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_duplicates_and_losses() {
        let mut ledger = Ledger::new();
        for n in 0..4 {
            ledger.confirmed(n);
        }
        ledger.failed();
        ledger.delivered_all([0, 1, 1, 3, 9]);
        assert_eq!(ledger.published_count(), 5);
        assert_eq!(ledger.delivered_count(), 5);
        assert_eq!(ledger.unique_count(), 4);
        assert_eq!(ledger.duplicates(), 1);
        assert_eq!(ledger.lost(), vec![2]);
        assert_eq!(ledger.delivered_unconfirmed(), 1);
        assert!(!ledger.complete());
        assert_eq!(
            ledger.to_string(),
            "published 5 confirmed 4 delivered 5 unique 4 duplicates 1 lost 1 \
             (failed publishes 1, of which delivered anyway 1)"
        );
    }
}
