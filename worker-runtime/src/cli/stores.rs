//! Connecting the stores workers share, from the command line's URLs.

use std::sync::Arc;

use super::backend::redact_url;
use super::error::CliError;
use crate::credits::CreditLedger;
use crate::idempotency::IdempotencyStore;
use crate::worker::WorkerBuilder;

/// The ledger `--credits-url` names.
pub(super) async fn credit_ledger(url: &str) -> Result<Arc<dyn CreditLedger>, CliError> {
    tracing::info!(url = %redact_url(url), "connecting the credit ledger");
    crate::credits::connect(url)
        .await
        .map_err(|error| CliError::Store {
            flag: "--credits-url",
            target: redact_url(url),
            reason: error.to_string(),
        })
}

/// The store `--idempotency-url` names.
pub(super) async fn idempotency(url: &str) -> Result<Arc<dyn IdempotencyStore>, CliError> {
    tracing::info!(url = %redact_url(url), "connecting the idempotency store");
    crate::idempotency::connect(url)
        .await
        .map_err(|error| CliError::Store {
            flag: "--idempotency-url",
            target: redact_url(url),
            reason: error.to_string(),
        })
}

/// The global rate limits' store, where the build has one.
#[cfg(feature = "valkey")]
pub(super) type GlobalLimits = crate::middleware::rate_limit::GlobalRateLimits;
/// Without the `valkey` feature there is no store for global rate limits.
#[cfg(not(feature = "valkey"))]
pub(super) type GlobalLimits = std::convert::Infallible;

/// The store `--rate-limit-url` names.
pub(super) async fn global_rate_limits(url: &str) -> Result<GlobalLimits, CliError> {
    let failed = |reason: String| CliError::Store {
        flag: "--rate-limit-url",
        target: redact_url(url),
        reason,
    };
    #[cfg(feature = "valkey")]
    {
        if !url.starts_with("redis://") && !url.starts_with("rediss://") {
            return Err(failed(
                "global rate limits live in Valkey: give a redis:// or rediss:// url".into(),
            ));
        }
        tracing::info!(url = %redact_url(url), "connecting the global rate limits");
        GlobalLimits::connect(url)
            .await
            .map_err(|error| failed(error.to_string()))
    }
    #[cfg(not(feature = "valkey"))]
    {
        Err(failed(
            "global rate limits need the `valkey` feature of worker-runtime".into(),
        ))
    }
}

/// `builder` with the global rate limits' store, if there is one.
pub(super) fn with_global_rate_limits(
    builder: WorkerBuilder,
    limits: Option<GlobalLimits>,
) -> WorkerBuilder {
    match limits {
        #[cfg(feature = "valkey")]
        Some(limits) => builder.global_rate_limits(limits),
        #[cfg(not(feature = "valkey"))]
        Some(never) => match never {},
        None => builder,
    }
}
