//! A 1 MiB payload travels intact; a payload over the declared limit is refused.

use anyhow::{bail, ensure, Context as _};
use worker_runtime::{BrokerError, ConsumerType, Message};

use crate::conformance::support::{ack_all, numbered, receive_up_to, report, subscribe_options};
use crate::conformance::{CaseResult, Harness};

const SIZE: usize = 1024 * 1024;

/// Over-limit payloads up to this size are tried (bigger ones would only cost memory and time).
const LARGEST_OVER_LIMIT_TRY: usize = 16 * 1024 * 1024;

/// Where `max_payload_bytes` admits 1 MiB, a 1 MiB payload (with a key and a property) arrives byte
/// for byte; where it does not, publishing it is refused with `Rejected`. Where the declared limit
/// is at most 16 MiB, a payload of exactly the limit is accepted and delivered, one byte over it
/// is refused with `Rejected`, and the client still works afterwards.
pub async fn large_payload<H: Harness>(harness: &mut H) -> CaseResult {
    const CASE: &str = "large_payload";
    let broker = harness.broker().await.context("connect")?;
    let limit = broker.capabilities().max_payload_bytes;
    let topic = harness.topic(CASE).context("topic name")?;
    let subscription = broker
        .subscribe(subscribe_options(
            &topic,
            "workers",
            "c1",
            ConsumerType::Shared,
        ))
        .await
        .context("subscribe")?;
    let payload: Vec<u8> = (0..SIZE)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    let message = Message {
        payload: payload.clone().into(),
        ..numbered(0).with_key("big")
    };
    let mut lines = Vec::new();
    if limit.is_some_and(|limit| limit < SIZE) {
        let result = broker.publish(&topic, message).await;
        lines.push(format!(
            "1 MiB over the declared limit {limit:?}: {}",
            result
                .as_ref()
                .map_or_else(ToString::to_string, |_| "accepted".to_owned())
        ));
        if !matches!(result, Err(BrokerError::Rejected { .. })) {
            report(harness.backend(), CASE, lines.join("; "));
            bail!("a 1 MiB payload is over the declared limit and must be rejected");
        }
    } else {
        broker
            .publish(&topic, message)
            .await
            .context("publish 1 MiB")?;
        let got = receive_up_to(&*subscription, 1, harness.arrival_limit()).await?;
        ack_all(&*subscription, &got).await.context("ack")?;
        let intact = got.first().is_some_and(|d| {
            d.payload().as_ref() == payload.as_slice() && d.message.key.as_deref() == Some("big")
        });
        lines.push(format!(
            "1 MiB delivered {} time(s), intact {intact}",
            got.len()
        ));
        if got.len() != 1 || !intact {
            report(harness.backend(), CASE, lines.join("; "));
            bail!("the 1 MiB message did not arrive intact, once");
        }
    }
    match limit {
        Some(limit) if limit <= LARGEST_OVER_LIMIT_TRY => {
            let at_limit = broker
                .publish(&topic, Message::new(vec![7_u8; limit]))
                .await;
            lines.push(format!(
                "{limit} bytes (the limit): {}",
                at_limit
                    .as_ref()
                    .map_or_else(ToString::to_string, |_| "accepted".to_owned())
            ));
            if at_limit.is_err() {
                report(harness.backend(), CASE, lines.join("; "));
                bail!("a payload of exactly the declared limit of {limit} bytes must be accepted");
            }
            let got = receive_up_to(&*subscription, 1, harness.arrival_limit()).await?;
            ack_all(&*subscription, &got).await.context("ack")?;
            ensure!(
                got.first().is_some_and(|d| d.payload().len() == limit),
                "the payload of exactly the limit did not arrive"
            );
            let too_big = Message::new(vec![7_u8; limit + 1]);
            let result = broker.publish(&topic, too_big).await;
            lines.push(format!(
                "{} bytes (limit + 1): {}",
                limit + 1,
                result
                    .as_ref()
                    .map_or_else(ToString::to_string, |_| "accepted".to_owned())
            ));
            report(harness.backend(), CASE, lines.join("; "));
            ensure!(
                matches!(result, Err(BrokerError::Rejected { .. })),
                "a payload over the declared limit of {limit} bytes must be rejected"
            );
            broker
                .publish(&topic, numbered(1))
                .await
                .context("publish after a refusal")?;
            let got = receive_up_to(&*subscription, 1, harness.arrival_limit()).await?;
            ack_all(&*subscription, &got).await.context("ack")?;
            ensure!(got.len() == 1, "the client stopped working after a refusal");
        }
        _ => {
            lines.push(format!(
                "declared limit {limit:?}: over-limit publish not tried"
            ));
            report(harness.backend(), CASE, lines.join("; "));
        }
    }
    subscription.close().await.context("close")?;
    Ok(())
}
