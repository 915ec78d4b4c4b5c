//! Role checks and credit accounting of db tasks, end to end on the embedded broker: forged,
//! expired, wrongly signed and role-less tokens never reach the handler and cost nothing; credits are
//! charged once per message across retries and redeliveries, and refunded when it is dead-lettered.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::worker_support::{read_topic, RunningWorker};
use serde::{Deserialize, Serialize};
use worker_runtime::auth::{Hs256Signer, Hs256Verifier, Secret};
use worker_runtime::broker::MemoryBroker;
use worker_runtime::credits::{CreditLedger, MemoryCreditLedger};
use worker_runtime::prelude::*;
use worker_runtime::worker::Worker;
use worker_runtime::{props, Broker, Message, Topic};

const KEY: &[u8] = b"test-signing-key-of-32-bytes-min!";

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    id: u32,
    #[serde(default)]
    fail_first: bool,
    #[serde(default)]
    always_fail: bool,
}

fn signer() -> Hs256Signer {
    Hs256Signer::new(Secret::new(KEY.to_vec()))
}

fn token(subject: &str, roles: &[&str]) -> String {
    signer()
        .sign(subject, roles, Duration::from_secs(3600))
        .expect("sign a token")
}

fn worker_for(
    broker: &Arc<MemoryBroker>,
    ledger: &Arc<MemoryCreditLedger>,
    task: TaskDefinition,
) -> RunningWorker {
    RunningWorker::start(
        Worker::builder()
            .broker(broker.clone())
            .task(task)
            .verifier(Arc::new(Hs256Verifier::new(Secret::new(KEY.to_vec()))))
            .credit_ledger(ledger.clone()),
    )
}

static HANDLED: AtomicU32 = AtomicU32::new(0);

#[pulsar_db_task(
    topic = "q1/test/auth/writes",
    permission_roles = ["db_writer", "db_admin"],
    credit_type = "db_credits",
    credit_amount = 2
)]
async fn guarded(_r: Record, ctx: TaskContext) -> Result<(), TaskError> {
    assert!(ctx.principal().is_some());
    HANDLED.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn only_verified_holders_of_a_permitted_role_reach_the_handler() {
    let broker = Arc::new(MemoryBroker::new());
    let ledger = Arc::new(MemoryCreditLedger::new());
    for who in ["alice", "mallory", "eve", "bob", "trent", "nobody"] {
        ledger.set_balance(who, "db_credits", 100);
    }
    let forged = {
        // A token signed with another key.
        let other = Hs256Signer::new(Secret::new(b"another-key-another-key-another!".to_vec()));
        other
            .sign("mallory", &["db_writer"], Duration::from_secs(3600))
            .expect("sign")
    };
    let expired = signer()
        .sign_until(
            "eve",
            &["db_writer"],
            std::time::SystemTime::now() - Duration::from_secs(60),
        )
        .expect("sign an expired token");
    let tampered = {
        let good = token("trent", &["reader"]);
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        // Swap in a payload claiming an admin role; the signature no longer matches.
        let claims = token("trent", &["db_admin"]);
        parts[1] = claims.split('.').nth(1).unwrap_or_default().to_owned();
        parts.join(".")
    };
    let cases: Vec<(u32, Option<String>)> = vec![
        (1, Some(token("alice", &["db_writer"]))),
        (2, Some(forged)),
        (3, Some(expired)),
        (4, Some(token("bob", &["reader"]))),
        (5, Some(tampered)),
        (6, Some("not.a.token".to_owned())),
        (7, None),
        (8, Some(token("alice", &["db_admin", "other"]))),
    ];
    for (id, token) in &cases {
        let mut message = guarded::message(&Record {
            id: *id,
            fail_first: false,
            always_fail: false,
        });
        if let Some(token) = token {
            message = message.auth_token(token.clone());
        }
        message.send(&*broker).await.expect("enqueue");
    }
    let worker = worker_for(&broker, &ledger, guarded::task());
    let dead = read_topic(
        &*broker,
        "q1/test/auth/writes-dlq",
        6,
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.stop().await;

    assert_eq!(
        HANDLED.load(Ordering::SeqCst),
        2,
        "only messages 1 and 8 pass"
    );
    assert_eq!(dead.len(), 6);
    for d in &dead {
        assert_eq!(d.property(props::DLQ_REASON), Some("forbidden"));
        let error = d.property(props::DLQ_ERROR).unwrap_or_default();
        for (_, token) in &cases {
            if let Some(token) = token {
                assert!(
                    !error.contains(token.as_str()),
                    "the DLQ error never quotes the token"
                );
            }
        }
    }
    let balance = |who: &'static str| {
        let ledger = ledger.clone();
        async move { ledger.balance(who, "db_credits").await.expect("balance") }
    };
    assert_eq!(
        balance("alice").await,
        96,
        "two messages of alice charged 2 each"
    );
    for who in ["mallory", "eve", "bob", "trent"] {
        assert_eq!(balance(who).await, 100, "{who} was not charged");
    }
}

static CALLS: AtomicU32 = AtomicU32::new(0);

#[pulsar_db_task(
    topic = "q1/test/credits/writes",
    permission_roles = ["db_writer"],
    credit_type = "db_credits",
    credit_amount = 5,
    max_retries = 2,
    retry_delay = "1s"
)]
async fn charged(r: Record, ctx: TaskContext) -> Result<u32, TaskError> {
    CALLS.fetch_add(1, Ordering::SeqCst);
    if r.always_fail || (r.fail_first && ctx.attempt() == 1) {
        return Err(TaskError::retryable("database busy"));
    }
    Ok(r.id)
}

#[tokio::test(start_paused = true)]
async fn credits_are_charged_once_across_retries_and_refunded_from_the_dlq() {
    let broker = Arc::new(MemoryBroker::new());
    let ledger = Arc::new(MemoryCreditLedger::new());
    ledger.set_balance("alice", "db_credits", 100);
    ledger.set_balance("poor", "db_credits", 4);
    let alice = token("alice", &["db_writer"]);
    let send = |record: Record, token: String| {
        let broker = broker.clone();
        async move {
            charged::message(&record)
                .auth_token(token)
                .send(&*broker)
                .await
                .expect("enqueue")
        }
    };
    send(
        Record {
            id: 1,
            fail_first: true,
            always_fail: false,
        },
        alice.clone(),
    )
    .await;
    send(
        Record {
            id: 2,
            fail_first: false,
            always_fail: true,
        },
        alice.clone(),
    )
    .await;
    send(
        Record {
            id: 3,
            fail_first: false,
            always_fail: false,
        },
        token("poor", &["db_writer"]),
    )
    .await;

    let worker = worker_for(&broker, &ledger, charged::task());
    let dead = read_topic(
        &*broker,
        "q1/test/credits/writes-dlq",
        2,
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = worker.stop().await;

    let mut reasons: Vec<&str> = dead
        .iter()
        .filter_map(|d| d.property(props::DLQ_REASON))
        .collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["insufficient_credits", "retries_exhausted"]);
    assert_eq!(
        CALLS.load(Ordering::SeqCst),
        2 + 3,
        "message 1 twice, message 2 three times, message 3 never"
    );
    assert_eq!(
        ledger
            .balance("alice", "db_credits")
            .await
            .expect("balance"),
        95,
        "message 1 charged once across its retry; message 2 refunded from the DLQ"
    );
    assert_eq!(
        ledger.balance("poor", "db_credits").await.expect("balance"),
        4
    );
    let task = report.task("charged").expect("report");
    assert_eq!((task.succeeded, task.dead_lettered), (1, 2));
}

static CRASH_CALLS: AtomicU32 = AtomicU32::new(0);

#[pulsar_db_task(
    topic = "q1/test/credits/crash",
    permission_roles = ["db_writer"],
    credit_type = "db_credits",
    credit_amount = 3,
    timeout = "1m"
)]
async fn crash_charged(_r: Record) -> Result<(), TaskError> {
    CRASH_CALLS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn credits_are_charged_once_when_a_worker_dies_and_the_message_is_redelivered() {
    let broker = Arc::new(MemoryBroker::new());
    let ledger = Arc::new(MemoryCreditLedger::new());
    ledger.set_balance("alice", "db_credits", 30);
    crash_charged::message(&Record {
        id: 1,
        fail_first: false,
        always_fail: false,
    })
    .auth_token(token("alice", &["db_writer"]))
    .send(&*broker)
    .await
    .expect("enqueue");
    for _ in 0..3 {
        let worker = worker_for(&broker, &ledger, crash_charged::task());
        tokio::time::sleep(Duration::from_secs(2)).await;
        worker.kill();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let worker = worker_for(&broker, &ledger, crash_charged::task());
    tokio::time::sleep(Duration::from_secs(15)).await;
    let report = worker.stop().await;
    assert_eq!(
        CRASH_CALLS.load(Ordering::SeqCst),
        4,
        "started by each of the four workers"
    );
    assert_eq!(report.task("crash_charged").map(|t| t.succeeded), Some(1));
    assert_eq!(
        ledger
            .balance("alice", "db_credits")
            .await
            .expect("balance"),
        27,
        "charged once"
    );
}

static FORGED_CALLS: AtomicU32 = AtomicU32::new(0);

#[pulsar_db_task(
    topic = "q1/test/credits/forged",
    permission_roles = ["db_writer"],
    credit_type = "db_credits",
    credit_amount = 5,
    max_retries = 0
)]
async fn forged_target(r: Record) -> Result<(), TaskError> {
    FORGED_CALLS.fetch_add(1, Ordering::SeqCst);
    if r.always_fail {
        return Err(TaskError::permanent("refused"));
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn copies_reusing_a_charged_id_neither_ride_on_nor_refund_its_charge() {
    let broker = Arc::new(MemoryBroker::new());
    let ledger = Arc::new(MemoryCreditLedger::new());
    ledger.set_balance("alice", "db_credits", 100);
    ledger.set_balance("mallory", "db_credits", 100);
    let topic = Topic::parse("q1/test/credits/forged").expect("topic");
    let publish = |payload: &str, token: Option<String>| {
        let broker = broker.clone();
        let topic = topic.clone();
        let mut message =
            Message::new(payload.to_owned()).with_property(props::MESSAGE_ID, "order-10");
        if let Some(token) = token {
            message = message.with_property(props::AUTH_TOKEN, token);
        }
        async move { broker.publish(&topic, message).await.expect("publish") }
    };
    let worker = worker_for(&broker, &ledger, forged_target::task());
    // Alice's message runs and is charged.
    publish(r#"{"id": 10}"#, Some(token("alice", &["db_writer"]))).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(FORGED_CALLS.load(Ordering::SeqCst), 1);
    // Copies under the same stable id: undecodable, without a token, and from another sender
    // whose copy fails for good. Each is dead-lettered.
    publish("not json", Some(token("alice", &["db_writer"]))).await;
    publish(r#"{"id": 10}"#, None).await;
    publish(
        r#"{"id": 10, "always_fail": true}"#,
        Some(token("mallory", &["db_writer"])),
    )
    .await;
    let dead = read_topic(
        &*broker,
        "q1/test/credits/forged-dlq",
        3,
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = worker.stop().await;

    let mut reasons: Vec<&str> = dead
        .iter()
        .filter_map(|d| d.property(props::DLQ_REASON))
        .collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["decode_error", "forbidden", "permanent_error"]);
    assert_eq!(
        FORGED_CALLS.load(Ordering::SeqCst),
        2,
        "alice's message, and mallory's copy, which paid for its own run"
    );
    assert_eq!(
        ledger.current_balance("alice", "db_credits"),
        95,
        "alice's charge stands: no dead-lettered copy refunded it"
    );
    assert_eq!(
        ledger.current_balance("mallory", "db_credits"),
        100,
        "mallory was charged for her copy and refunded when it was dead-lettered"
    );
    let task = report.task("forged_target").expect("report");
    assert_eq!((task.succeeded, task.dead_lettered), (1, 3));
}
