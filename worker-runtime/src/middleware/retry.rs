//! The retry decision: after a failed attempt, try again (and when) or dead-letter. The delay
//! arithmetic lives in [`super::backoff`]; this module only decides.

use std::time::Duration;

use worker_core::{DeadLetterReason, ErrorKind, RetryPolicy};

use super::backoff::retry_delay;

/// What to do with a message whose attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Run it again as attempt `next_attempt`, no earlier than `delay` from now.
    Retry {
        /// The attempt number the retry will be (1-based, so at least 2).
        next_attempt: u32,
        /// How long to wait before it.
        delay: Duration,
    },
    /// Give up: publish it to the dead-letter topic for this reason.
    DeadLetter(DeadLetterReason),
}

/// Decides what follows the failure of attempt `attempt` (1-based: 1 is the first run).
///
/// A [`ErrorKind::Permanent`] failure dead-letters at once as
/// [`DeadLetterReason::PermanentError`]. A retryable one (which includes timeouts and panics) is
/// retried while `attempt <= policy.max_retries`, so `max_retries = 3` runs attempts 1 to 4 and the
/// fourth failure dead-letters as [`DeadLetterReason::RetriesExhausted`]. The delay before attempt
/// n + 1 is [`retry_delay`]`(policy, n, jitter_sample)`.
///
/// `attempt` 0 is treated as 1; attempt `u32::MAX` cannot be followed and dead-letters.
pub fn decide(
    policy: &RetryPolicy,
    attempt: u32,
    kind: ErrorKind,
    jitter_sample: f64,
) -> RetryDecision {
    let attempt = attempt.max(1);
    match kind {
        ErrorKind::Permanent => RetryDecision::DeadLetter(DeadLetterReason::PermanentError),
        ErrorKind::Retryable if attempt <= policy.max_retries => match attempt.checked_add(1) {
            Some(next_attempt) => RetryDecision::Retry {
                next_attempt,
                delay: retry_delay(policy, attempt, jitter_sample),
            },
            None => RetryDecision::DeadLetter(DeadLetterReason::RetriesExhausted),
        },
        ErrorKind::Retryable => RetryDecision::DeadLetter(DeadLetterReason::RetriesExhausted),
    }
}

/// [`decide`] with a fresh random jitter sample.
pub fn decide_jittered(policy: &RetryPolicy, attempt: u32, kind: ErrorKind) -> RetryDecision {
    decide(policy, attempt, kind, fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            ..RetryPolicy::default()
        }
    }

    fn retry(next_attempt: u32, secs: u64) -> RetryDecision {
        RetryDecision::Retry {
            next_attempt,
            delay: Duration::from_secs(secs),
        }
    }

    const EXHAUSTED: RetryDecision = RetryDecision::DeadLetter(DeadLetterReason::RetriesExhausted);
    const PERMANENT: RetryDecision = RetryDecision::DeadLetter(DeadLetterReason::PermanentError);

    #[test]
    fn three_retries_run_four_attempts_with_growing_delays() {
        let p = policy(3);
        let decisions: Vec<RetryDecision> = (1..=4)
            .map(|attempt| decide(&p, attempt, ErrorKind::Retryable, 0.5))
            .collect();
        assert_eq!(
            decisions,
            [retry(2, 1), retry(3, 2), retry(4, 4), EXHAUSTED]
        );
    }

    #[test]
    fn zero_retries_dead_letter_the_first_failure() {
        assert_eq!(decide(&policy(0), 1, ErrorKind::Retryable, 0.5), EXHAUSTED);
    }

    #[test]
    fn permanent_failures_dead_letter_at_once() {
        assert_eq!(decide(&policy(3), 1, ErrorKind::Permanent, 0.5), PERMANENT);
        assert_eq!(decide(&policy(0), 1, ErrorKind::Permanent, 0.5), PERMANENT);
    }

    #[test]
    fn the_jitter_sample_reaches_the_delay() {
        let p = policy(3);
        let RetryDecision::Retry { delay, .. } = decide(&p, 2, ErrorKind::Retryable, 0.0) else {
            panic!("expected a retry");
        };
        assert_eq!(delay, Duration::from_millis(1800));
        match decide_jittered(&p, 1, ErrorKind::Retryable) {
            RetryDecision::Retry {
                next_attempt: 2,
                delay,
            } => {
                assert!(delay >= Duration::from_millis(900) && delay <= Duration::from_millis(1100))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn edge_attempt_numbers() {
        // Attempt 0 is read as the first.
        assert_eq!(
            decide(&policy(3), 0, ErrorKind::Retryable, 0.5),
            retry(2, 1)
        );
        // No attempt follows u32::MAX, even when the policy would allow it.
        assert_eq!(
            decide(&policy(u32::MAX), u32::MAX, ErrorKind::Retryable, 0.5),
            EXHAUSTED
        );
        assert_eq!(
            decide(&policy(u32::MAX), u32::MAX - 1, ErrorKind::Retryable, 0.5),
            retry(u32::MAX, 600)
        );
    }
}
