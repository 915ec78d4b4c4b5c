use std::sync::Arc;

use super::*;

const DB: &str = "db_credits";

fn key(who: &str, message_id: &str) -> ChargeKey {
    ChargeKey {
        task: "write_records".into(),
        principal: who.into(),
        message_id: message_id.into(),
    }
}

async fn charge(ledger: &MemoryCreditLedger, who: &str, amount: u64, id: &str) -> ChargeOutcome {
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
    assert!(ledger.shards.iter().all(|shard| shard.0.lock().is_empty()));
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
    assert_eq!(ledger.charge_records(), 0);
    for shard in ledger.shards.iter() {
        let left = shard.0.lock().order_len();
        assert!(left <= 64, "{left} entries left");
    }
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

#[tokio::test]
async fn a_large_bound_is_kept_across_shards_and_the_newest_stay() {
    let bound = LEAST_SHARDED_BOUND;
    let ledger = MemoryCreditLedger::new()
        .with_balance("alice", DB, u64::MAX)
        .with_max_records(bound);
    assert_eq!(ledger.shards.len(), SHARDS);
    let total = 2 * bound;
    for n in 0..total {
        charge(&ledger, "alice", 1, &format!("m{n}")).await;
    }
    assert_eq!(
        ledger.charge_records(),
        bound,
        "every shard full, none beyond"
    );
    for n in total - 1000..total {
        assert_eq!(
            charge(&ledger, "alice", 1, &format!("m{n}")).await,
            ChargeOutcome::AlreadyCharged,
            "m{n} is among the newest"
        );
    }
    assert_eq!(refund(&ledger, "m0").await, RefundOutcome::NothingToRefund);
}

#[tokio::test]
async fn records_charged_before_the_bound_was_set_move_to_the_new_shards() {
    let ledger = MemoryCreditLedger::new().with_balance("alice", DB, 10);
    for id in ["m1", "m2", "m3"] {
        charge(&ledger, "alice", 1, id).await;
    }
    let ledger = ledger.with_max_records(2);
    assert_eq!(ledger.shards.len(), 1);
    assert_eq!(ledger.charge_records(), 2);
    assert_eq!(refund(&ledger, "m1").await, RefundOutcome::NothingToRefund);
    assert_eq!(refund(&ledger, "m3").await, RefundOutcome::Refunded(1));
    assert_eq!(balance(&ledger, "alice").await, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_balance_charged_from_every_shard_at_once_covers_exactly_what_it_holds() {
    const TASKS: u64 = 8;
    const PER_TASK: u64 = 500;
    const HELD: u64 = 1_000;
    let ledger = Arc::new(MemoryCreditLedger::new().with_balance("alice", DB, HELD));
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let ledger = ledger.clone();
        handles.push(tokio::spawn(async move {
            let mut charged = 0u64;
            for i in 0..PER_TASK {
                match charge(&ledger, "alice", 1, &format!("{t}-{i}")).await {
                    ChargeOutcome::Charged => charged += 1,
                    ChargeOutcome::Insufficient { available } => assert_eq!(available, 0),
                    ChargeOutcome::AlreadyCharged => panic!("every key is new"),
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
    assert_eq!(
        charged, HELD,
        "no more charges than the balance covers, none fewer"
    );
    assert_eq!(balance(&ledger, "alice").await, 0);
    assert_eq!(ledger.charge_records() as u64, HELD);
}
