//! A cache of verified tokens. Checking an HS256 signature costs microseconds; most messages of a
//! sender carry the same token, so each distinct token is verified once and its principal reused
//! until the token expires. Failures are never cached, and a token without an expiry never is.
//!
//! The cache is striped by thread ([`Striped`]): every delivery of a db task looks its token up,
//! and one shared map would have both runtime threads move its lock's word, and the reference
//! count of the principal they clone, from core to core on every delivery. A token is therefore
//! verified once per thread stripe that sees it, and each stripe keeps its own share of the
//! capacity.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::RwLock;

use super::{AuthError, Principal, TokenVerifier};
use crate::metrics::striped::{Striped, STRIPES};

/// The default number of distinct tokens kept.
pub const DEFAULT_TOKEN_CACHE_SIZE: usize = 10_000;

/// Wraps a [`TokenVerifier`], remembering each verified token's principal until the token expires.
///
/// The worker wraps its verifier in one automatically.
pub struct CachingVerifier {
    inner: Arc<dyn TokenVerifier>,
    /// Hashed with foldhash, seeded per process: only tokens the inner verifier accepted are
    /// stored, so filling it with colliding ones takes that many valid tokens, and SipHash over
    /// a token was a measurable share of a message's cost.
    verified: Striped<RwLock<HashMap<Box<str>, Principal, foldhash::fast::RandomState>>>,
    /// How many tokens one stripe keeps.
    capacity: usize,
}

impl CachingVerifier {
    /// Caches about `capacity` tokens verified by `inner`: each of the cache's thread stripes keeps
    /// up to `capacity` divided by their number (rounded up), so a full cache may hold a few more.
    pub fn new(inner: Arc<dyn TokenVerifier>, capacity: usize) -> Self {
        CachingVerifier {
            inner,
            verified: Striped::default(),
            capacity: capacity.div_ceil(STRIPES),
        }
    }

    /// How many tokens are cached, counting a token once for every stripe that holds it.
    pub fn len(&self) -> usize {
        self.verified.all().map(|stripe| stripe.read().len()).sum()
    }

    /// Whether no token is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TokenVerifier for CachingVerifier {
    fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let now = SystemTime::now();
        let cached = self.verified.local();
        if let Some(principal) = cached.read().get(token) {
            if principal.expires_at().is_some_and(|at| at > now) {
                return Ok(principal.clone());
            }
        }
        let principal = self.inner.verify(token)?;
        if principal.expires_at().is_some_and(|at| at > now) && self.capacity > 0 {
            let mut verified = cached.write();
            if verified.len() >= self.capacity {
                // Expired entries go first; if every entry is live, start over rather than grow.
                verified.retain(|_, p| p.expires_at().is_some_and(|at| at > now));
                if verified.len() >= self.capacity {
                    verified.clear();
                }
            }
            verified.insert(token.into(), principal.clone());
        }
        Ok(principal)
    }
}

impl fmt::Debug for CachingVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachingVerifier")
            .field("cached", &self.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    /// Accepts any token; `"<subject>:<seconds to live>"`, counting calls.
    #[derive(Default)]
    struct Counting(AtomicU32);

    impl TokenVerifier for Counting {
        fn verify(&self, token: &str) -> Result<Principal, AuthError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let (subject, ttl) = token.split_once(':').ok_or(AuthError::Malformed)?;
            let ttl: i64 = ttl.parse().map_err(|_| AuthError::Malformed)?;
            let now = SystemTime::now();
            let expires_at = if ttl >= 0 {
                now + Duration::from_secs(ttl as u64)
            } else {
                now - Duration::from_secs(ttl.unsigned_abs())
            };
            if expires_at <= now {
                return Err(AuthError::Expired);
            }
            Ok(Principal::new(subject, vec!["r".into()], Some(expires_at)))
        }
    }

    fn cache(capacity: usize) -> (Arc<Counting>, Arc<CachingVerifier>) {
        let inner = Arc::new(Counting::default());
        (
            inner.clone(),
            Arc::new(CachingVerifier::new(inner, capacity)),
        )
    }

    #[test]
    fn a_token_is_verified_once_while_it_is_valid() {
        let (inner, cache) = cache(10);
        for _ in 0..5 {
            assert_eq!(
                cache.verify("alice:60").map(|p| p.subject().to_owned()),
                Ok("alice".into())
            );
        }
        assert_eq!(inner.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn failures_are_not_cached() {
        let (inner, cache) = cache(10);
        assert_eq!(cache.verify("garbage"), Err(AuthError::Malformed));
        assert_eq!(cache.verify("garbage"), Err(AuthError::Malformed));
        assert_eq!(cache.verify("bob:-5"), Err(AuthError::Expired));
        assert_eq!(inner.0.load(Ordering::SeqCst), 3);
        assert!(cache.is_empty());
    }

    #[test]
    fn an_entry_past_its_expiry_is_verified_again() {
        let inner = Arc::new(Counting::default());
        let cache = CachingVerifier::new(inner.clone(), 10);
        let stale = Principal::new(
            "eve",
            vec![],
            Some(SystemTime::now() - Duration::from_secs(1)),
        );
        cache
            .verified
            .local()
            .write()
            .insert("eve:60".into(), stale);
        assert!(cache.verify("eve:60").is_ok());
        assert_eq!(
            inner.0.load(Ordering::SeqCst),
            1,
            "the stale entry was not trusted"
        );
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let (_, cache) = cache(3 * STRIPES);
        for n in 0..10 {
            cache.verify(&format!("user{n}:60")).expect("valid");
            assert!(cache.len() <= 3, "one thread fills one stripe of 3");
        }
        let threads: Vec<_> = (0..STRIPES * 2)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    for n in 0..10 {
                        cache.verify(&format!("user{t}-{n}:60")).expect("valid");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("a verifying thread");
        }
        assert!(cache.len() <= 3 * STRIPES, "{} cached", cache.len());
    }

    #[test]
    fn each_thread_stripe_verifies_a_token_once() {
        let (inner, cache) = cache(100);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        cache.verify("alice:60").expect("valid");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("a verifying thread");
        }
        let verified = inner.0.load(Ordering::SeqCst);
        assert!((1..=4).contains(&verified), "verified {verified} times");
    }
}
