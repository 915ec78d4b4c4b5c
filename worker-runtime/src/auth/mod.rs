//! Who sent a message, from a verified signature: the [`TokenVerifier`] trait, the verified
//! [`Principal`], and the default HS256 JWT verifier.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

mod cache;
mod hs256;

pub use cache::{CachingVerifier, DEFAULT_TOKEN_CACHE_SIZE};
pub use hs256::{Hs256Signer, Hs256Verifier, SignError, MAX_TOKEN_LEN};

/// The verified sender of a message. Cheap to clone (shared inside).
#[derive(Clone, PartialEq, Eq)]
pub struct Principal(Arc<PrincipalInner>);

#[derive(PartialEq, Eq)]
struct PrincipalInner {
    subject: Arc<str>,
    roles: Vec<String>,
    expires_at: Option<SystemTime>,
}

impl Principal {
    /// A principal: who, what roles they hold, and when the proof of it expires.
    pub fn new(
        subject: impl Into<String>,
        roles: Vec<String>,
        expires_at: Option<SystemTime>,
    ) -> Self {
        Principal(Arc::new(PrincipalInner {
            subject: Arc::from(subject.into()),
            roles,
            expires_at,
        }))
    }

    /// Who: the token's subject (`sub`).
    pub fn subject(&self) -> &str {
        &self.0.subject
    }

    /// The subject, shared: a clone costs no allocation.
    pub fn shared_subject(&self) -> Arc<str> {
        self.0.subject.clone()
    }

    /// What they may do: the token's roles.
    pub fn roles(&self) -> &[String] {
        &self.0.roles
    }

    /// When the token that proved this principal expires, if the scheme says.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.0.expires_at
    }

    /// Whether the principal holds at least one of `roles`.
    pub fn has_any_role(&self, roles: &[String]) -> bool {
        self.0.roles.iter().any(|held| roles.contains(held))
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("subject", &self.0.subject)
            .field("roles", &self.0.roles)
            .field("expires_at", &self.0.expires_at)
            .finish()
    }
}

/// Why a token was not accepted. Messages never include the token itself.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The message carries no token.
    #[error("no token")]
    Missing,
    /// The token is not a well-formed token of the expected scheme.
    #[error("malformed token")]
    Malformed,
    /// The signature does not verify with the configured key.
    #[error("invalid signature")]
    BadSignature,
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// The token's `nbf` (not before) lies in the future.
    #[error("token not valid yet")]
    NotYetValid,
    /// The token is valid but lacks a required claim.
    #[error("token lacks the `{0}` claim")]
    MissingClaim(&'static str),
    /// The principal holds none of the roles the task permits.
    #[error("principal `{subject}` holds none of the roles {required:?}")]
    NoMatchingRole {
        /// The principal.
        subject: String,
        /// The roles the task permits.
        required: Vec<String>,
    },
}

/// Verifies a token and returns the principal it names. HS256 JWT is the default
/// ([`Hs256Verifier`]); implement this trait for RS256, EdDSA or another scheme.
pub trait TokenVerifier: Send + Sync + 'static {
    /// Checks the signature and validity of `token` and returns its principal.
    fn verify(&self, token: &str) -> Result<Principal, AuthError>;
}

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}
