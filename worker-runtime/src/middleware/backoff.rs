//! Backoff arithmetic: how long to wait before retry n. No decisions live here (see
//! [`super::retry`]), only the formula
//!
//! ```text
//! delay(n) = min(max_delay, retry_delay × backoff^(n−1)) × (1 + jitter × (2·sample − 1)),
//!            clamped to at most max_delay
//! ```
//!
//! computed so that no input, however large, overflows or panics: anything that does not fit saturates
//! at `max_delay`.

use std::time::Duration;

use worker_core::RetryPolicy;

const NANOS_PER_SEC: f64 = 1e9;

/// The delay before retry number `retry` (1 for the first retry), spread by `jitter_sample`.
///
/// `jitter_sample` is a uniform sample in `[0, 1)`: 0.5 gives the exact, unjittered delay, 0 the
/// shortest (`1 − jitter` times it) and values near 1 the longest (`1 + jitter` times it, but never
/// more than `max_delay`). The sample is a parameter so that tests and callers with their own source of
/// randomness stay deterministic; [`jittered`] draws it.
///
/// Out-of-range inputs are handled rather than trusted (the configuration is validated elsewhere):
/// `retry` 0 counts as 1, a `jitter` outside `[0, 1]` or a sample outside `[0, 1)` is clamped, a NaN
/// jitter or sample means no spread, a delay that is not finite saturates at `max_delay` and a negative
/// one (from a negative `backoff`) is zero.
pub fn retry_delay(policy: &RetryPolicy, retry: u32, jitter_sample: f64) -> Duration {
    let max_nanos = policy.max_delay.as_nanos() as f64;
    let exponent = f64::from(retry.max(1) - 1);
    // f64 arithmetic: `powf` of a huge exponent is +inf rather than an overflow, and an inf or NaN
    // product is caught by the `min` below (NaN compares false, so it is tested explicitly).
    let base = policy.retry_delay.as_nanos() as f64 * policy.backoff.powf(exponent);
    let capped = if base.is_nan() || base >= max_nanos {
        max_nanos
    } else {
        base
    };

    let jitter = if policy.jitter.is_nan() {
        0.0
    } else {
        policy.jitter.clamp(0.0, 1.0)
    };
    let sample = if jitter_sample.is_nan() {
        0.5
    } else {
        jitter_sample.clamp(0.0, 1.0)
    };
    let spread = capped * (1.0 + jitter * (2.0 * sample - 1.0));

    if spread >= max_nanos {
        return policy.max_delay;
    }
    if spread <= 0.0 {
        // Only a negative `backoff` (rejected by validation) or a full jitter gets here.
        return Duration::ZERO;
    }
    // NaN (−inf × 0) is the one value left that does not convert.
    nanos_to_duration(spread).unwrap_or(policy.max_delay)
}

/// [`retry_delay`] with a fresh random jitter sample.
pub fn jittered(policy: &RetryPolicy, retry: u32) -> Duration {
    retry_delay(policy, retry, fastrand::f64())
}

/// Converts a non-negative, finite number of nanoseconds, rounded to the nearest nanosecond.
/// `Duration::from_secs_f64` would panic on inf, NaN or negative input; this returns `None` instead.
fn nanos_to_duration(nanos: f64) -> Option<Duration> {
    if !nanos.is_finite() || nanos < 0.0 {
        return None;
    }
    let secs = (nanos / NANOS_PER_SEC).floor();
    if secs >= u64::MAX as f64 {
        return None;
    }
    // Rounding the remainder can give exactly 1e9; `checked_add` carries it into the seconds.
    let subsec = (nanos - secs * NANOS_PER_SEC)
        .round()
        .clamp(0.0, NANOS_PER_SEC);
    Duration::from_secs(secs as u64).checked_add(Duration::from_nanos(subsec as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 10,
            backoff: 2.0,
            retry_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(600),
            jitter: 0.1,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn doubles_from_the_base_delay_with_a_centred_sample() {
        let p = policy();
        let delays: Vec<Duration> = (1..=6).map(|n| retry_delay(&p, n, 0.5)).collect();
        assert_eq!(
            delays,
            [secs(1), secs(2), secs(4), secs(8), secs(16), secs(32)]
        );
    }

    #[test]
    fn fractional_delays_are_exact_to_the_nanosecond() {
        let p = RetryPolicy {
            retry_delay: Duration::from_millis(100),
            backoff: 3.0,
            ..policy()
        };
        assert_eq!(retry_delay(&p, 1, 0.5), Duration::from_millis(100));
        assert_eq!(retry_delay(&p, 2, 0.5), Duration::from_millis(300));
        assert_eq!(retry_delay(&p, 3, 0.5), Duration::from_millis(900));
    }

    #[test]
    fn the_cap_is_respected_with_and_without_jitter() {
        let p = RetryPolicy {
            max_delay: secs(10),
            ..policy()
        };
        assert_eq!(retry_delay(&p, 4, 0.5), secs(8));
        assert_eq!(retry_delay(&p, 5, 0.5), secs(10));
        assert_eq!(retry_delay(&p, 9, 0.5), secs(10));
        // Jitter spreads a capped delay downwards only.
        assert_eq!(retry_delay(&p, 9, 0.999_999), secs(10));
        assert_eq!(retry_delay(&p, 9, 0.0), secs(9));
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_uses_them() {
        let p = RetryPolicy {
            jitter: 0.2,
            ..policy()
        };
        let exact = secs(4);
        let (low, high) = (exact.mul_f64(0.8), exact.mul_f64(1.2));
        let mut rng = fastrand::Rng::with_seed(7);
        let delays: Vec<Duration> = (0..10_000).map(|_| retry_delay(&p, 3, rng.f64())).collect();
        let min = delays.iter().min().copied().unwrap_or_default();
        let max = delays.iter().max().copied().unwrap_or_default();
        assert!(min >= low && max <= high, "{min:?}..{max:?}");
        // Ten thousand uniform samples come within 1 % of both ends.
        assert!(min < exact.mul_f64(0.81), "{min:?}");
        assert!(max > exact.mul_f64(1.19), "{max:?}");
        // The ends themselves.
        assert_eq!(retry_delay(&p, 3, 0.0), low);
        assert!(retry_delay(&p, 3, 1.0) <= high);
    }

    #[test]
    fn jittered_draws_within_the_bounds() {
        let p = policy();
        for _ in 0..1000 {
            let d = jittered(&p, 2);
            assert!(
                d >= secs(2).mul_f64(0.9) && d <= secs(2).mul_f64(1.1),
                "{d:?}"
            );
        }
    }

    #[test]
    fn backoff_of_one_is_constant() {
        let p = RetryPolicy {
            backoff: 1.0,
            ..policy()
        };
        for n in [1, 2, 3, 50, u32::MAX] {
            assert_eq!(retry_delay(&p, n, 0.5), secs(1));
        }
    }

    #[test]
    fn huge_retry_numbers_and_backoffs_saturate_at_the_cap() {
        let p = policy();
        assert_eq!(retry_delay(&p, 64, 0.5), secs(600));
        assert_eq!(retry_delay(&p, u32::MAX, 0.5), secs(600));
        let huge = RetryPolicy {
            backoff: f64::MAX,
            ..policy()
        };
        assert_eq!(retry_delay(&huge, 2, 0.5), secs(600));
        assert_eq!(retry_delay(&huge, u32::MAX, 0.0), secs(540));
        let endless = RetryPolicy {
            max_delay: Duration::MAX,
            ..policy()
        };
        assert_eq!(retry_delay(&endless, u32::MAX, 0.5), Duration::MAX);
        assert_eq!(retry_delay(&endless, 2, 0.5), secs(2));
    }

    #[test]
    fn nonsense_inputs_do_not_panic() {
        let nan = RetryPolicy {
            backoff: f64::NAN,
            jitter: f64::NAN,
            ..policy()
        };
        assert_eq!(retry_delay(&nan, 3, f64::NAN), secs(600));
        let negative = RetryPolicy {
            backoff: -3.0,
            jitter: 5.0,
            ..policy()
        };
        // (−3)^1 s is negative and floors at zero; (−3)^2 s = 9 s with the jitter clamped to 1 and
        // the sample to 1 doubles to 18 s.
        assert_eq!(retry_delay(&negative, 2, -1.0), Duration::ZERO);
        assert_eq!(retry_delay(&negative, 3, f64::INFINITY), secs(18));
        let minus_infinite = RetryPolicy {
            backoff: f64::MIN,
            jitter: 1.0,
            ..policy()
        };
        // −inf × 0 is NaN, which saturates.
        assert_eq!(retry_delay(&minus_infinite, u32::MAX - 1, 0.0), secs(600));
        assert_eq!(retry_delay(&policy(), 0, 0.5), secs(1));
        let zero = RetryPolicy {
            retry_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
            ..policy()
        };
        assert_eq!(retry_delay(&zero, 5, 0.5), Duration::ZERO);
    }
}
