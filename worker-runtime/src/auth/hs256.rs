//! HS256 JWT: the default [`TokenVerifier`], and a signer for demos and tests.
//!
//! A token's claims are `sub` (the principal, required), `roles` (an array of strings, absent meaning
//! none), `exp` (required) and optionally `nbf` and `iat`:
//!
//! ```json
//! {"sub": "ingest-service", "roles": ["db_writer"], "iat": 1700000000, "exp": 1700003600}
//! ```
//!
//! Only HS256 is accepted. A token naming any other algorithm, `none` included, is
//! [`AuthError::Malformed`]: it is not a token of the expected scheme, and its signature is never
//! looked at. `aud` and `iss` are not checked: with a shared secret every holder of the key can mint
//! tokens for any audience, so scope tokens by giving each deployment its own secret.

use std::fmt;
use std::sync::Once;
use std::time::{Duration, SystemTime};

use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{AuthError, Principal, Secret, TokenVerifier};

/// The longest token looked at; longer ones are [`AuthError::Malformed`] without being decoded, so
/// that a hostile property cannot make the worker decode megabytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The claims read from a token. The values of `exp` and `nbf` are checked by jsonwebtoken's
/// validation; only the presence of `exp` is checked here.
#[derive(Deserialize)]
struct VerifiedClaims {
    sub: Option<String>,
    roles: Option<Vec<String>>,
    exp: Option<serde_json::Value>,
}

/// The claims written into a token.
#[derive(Serialize)]
struct SignedClaims<'a> {
    sub: &'a str,
    roles: &'a [&'a str],
    iat: u64,
    exp: u64,
}

/// Verifies HS256 JWTs with a shared secret.
///
/// `exp` is required and checked ([`AuthError::Expired`]), and so is `nbf` when present
/// ([`AuthError::NotYetValid`] while it lies in the future). There is no leeway by default:
/// tokens are checked against this machine's clock to the second. Give [`Self::with_leeway`] a few
/// seconds if the clocks of senders and workers may disagree.
#[derive(Clone)]
pub struct Hs256Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Hs256Verifier {
    /// A verifier for tokens signed with `secret`.
    pub fn new(secret: Secret) -> Self {
        Self::from_bytes(secret.expose())
    }

    /// A verifier for tokens signed with these secret bytes.
    pub fn from_bytes(secret: &[u8]) -> Self {
        ensure_crypto_provider();
        let mut validation = Validation::new(Algorithm::HS256);
        // jsonwebtoken would report an `exp` of the wrong type as missing; `verify` checks presence
        // itself so that a mistyped one is malformed instead.
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.leeway = 0;
        Hs256Verifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Accepts tokens up to `leeway` past their `exp` (and before their `nbf`), in whole seconds, to
    /// allow for clock skew between senders and workers.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.validation.leeway = leeway.as_secs();
        self
    }
}

impl TokenVerifier for Hs256Verifier {
    fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let data = jsonwebtoken::decode::<VerifiedClaims>(token, &self.key, &self.validation)
            .map_err(|error| map_error(error.kind()))?;
        let expires_at = match &data.claims.exp {
            None => return Err(AuthError::MissingClaim("exp")),
            Some(exp) => exp
                .as_u64()
                .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
        };
        let subject = data
            .claims
            .sub
            .filter(|sub| !sub.trim().is_empty())
            .ok_or(AuthError::MissingClaim("sub"))?;
        Ok(Principal::new(
            subject,
            data.claims.roles.unwrap_or_default(),
            expires_at,
        ))
    }
}

impl fmt::Debug for Hs256Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hs256Verifier")
            .field("leeway_secs", &self.validation.leeway)
            .finish_non_exhaustive()
    }
}

/// Maps jsonwebtoken's failure to ours. The token is never part of either.
fn map_error(kind: &JwtErrorKind) -> AuthError {
    match kind {
        JwtErrorKind::InvalidSignature => AuthError::BadSignature,
        JwtErrorKind::ExpiredSignature => AuthError::Expired,
        JwtErrorKind::ImmatureSignature => AuthError::NotYetValid,
        // Wrong number of segments, bad base64, JSON or UTF-8, a claim of the wrong type, an
        // algorithm other than HS256 (`none` does not even parse as one), and anything jsonwebtoken
        // may add later: not a token of our scheme.
        _ => AuthError::Malformed,
    }
}

/// Mints HS256 JWTs, for demos, tests and trusted senders.
#[derive(Clone)]
pub struct Hs256Signer {
    key: EncodingKey,
}

/// Why a token could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign token")]
pub struct SignError(#[source] jsonwebtoken::errors::Error);

impl Hs256Signer {
    /// A signer with `secret`.
    pub fn new(secret: Secret) -> Self {
        Self::from_bytes(secret.expose())
    }

    /// A signer with these secret bytes.
    pub fn from_bytes(secret: &[u8]) -> Self {
        ensure_crypto_provider();
        Hs256Signer {
            key: EncodingKey::from_secret(secret),
        }
    }

    /// A token for `subject` holding `roles`, valid from now for `ttl` (rounded down to whole
    /// seconds).
    pub fn sign<R: AsRef<str>>(
        &self,
        subject: &str,
        roles: &[R],
        ttl: Duration,
    ) -> Result<String, SignError> {
        let now = SystemTime::now();
        self.sign_until(subject, roles, now.checked_add(ttl).unwrap_or(now))
    }

    /// A token for `subject` holding `roles` that expires at `expires_at` (which may be in the past,
    /// to test expiry).
    pub fn sign_until<R: AsRef<str>>(
        &self,
        subject: &str,
        roles: &[R],
        expires_at: SystemTime,
    ) -> Result<String, SignError> {
        let roles: Vec<&str> = roles.iter().map(AsRef::as_ref).collect();
        let claims = SignedClaims {
            sub: subject,
            roles: &roles,
            iat: unix_seconds(SystemTime::now()),
            exp: unix_seconds(expires_at),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key).map_err(SignError)
    }
}

impl fmt::Debug for Hs256Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hs256Signer").finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch; 0 for earlier times.
fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Selects jsonwebtoken's RustCrypto provider for the process, once.
///
/// jsonwebtoken 10 picks its provider from its crate features and panics when it cannot: when both
/// `rust_crypto` and `aws_lc_rs` end up enabled by feature unification in a larger build. Installing
/// ours explicitly makes verification work regardless. If the application installed a provider
/// before, that one stays (installation fails harmlessly and is ignored).
fn ensure_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    });
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const KEY: &[u8] = b"test-secret-of-reasonable-length";

    fn verifier() -> Hs256Verifier {
        Hs256Verifier::new(Secret::new(KEY))
    }

    fn signer() -> Hs256Signer {
        Hs256Signer::from_bytes(KEY)
    }

    fn roles(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn now() -> u64 {
        unix_seconds(SystemTime::now())
    }

    /// A token with arbitrary claims and header, signed with `key`.
    fn token_with(header: Header, claims: serde_json::Value, key: &[u8]) -> String {
        encode(&header, &claims, &EncodingKey::from_secret(key)).unwrap()
    }

    fn b64(json: &str) -> String {
        // base64url without padding, written out so the test needs no base64 crate.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = json.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }

    #[test]
    fn a_signed_token_verifies_to_its_principal() {
        let token = signer()
            .sign(
                "alice",
                &roles(&["db_writer", "reader"]),
                Duration::from_secs(60),
            )
            .unwrap();
        let principal = verifier().verify(&token).unwrap();
        assert_eq!(principal.subject(), "alice");
        assert_eq!(principal.roles(), roles(&["db_writer", "reader"]));
        let expires_in = principal
            .expires_at()
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap();
        assert!(expires_in <= Duration::from_secs(60) && expires_in > Duration::from_secs(55));
    }

    #[test]
    fn a_token_signed_with_another_key_has_a_bad_signature() {
        let token = Hs256Signer::from_bytes(b"another-secret")
            .sign::<&str>("alice", &[], Duration::from_secs(60))
            .unwrap();
        assert_eq!(verifier().verify(&token), Err(AuthError::BadSignature));
    }

    #[test]
    fn a_tampered_payload_has_a_bad_signature() {
        let token = signer()
            .sign("alice", &roles(&["reader"]), Duration::from_secs(60))
            .unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64(&format!(
            r#"{{"sub":"alice","roles":["admin"],"exp":{}}}"#,
            now() + 60
        ));
        parts[1] = &forged;
        assert_eq!(
            verifier().verify(&parts.join(".")),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn expired_and_not_yet_valid_tokens_are_told_apart() {
        let past = SystemTime::now() - Duration::from_secs(10);
        let token = signer().sign_until::<&str>("alice", &[], past).unwrap();
        assert_eq!(verifier().verify(&token), Err(AuthError::Expired));
        // Within the leeway it passes.
        let lenient = verifier().with_leeway(Duration::from_secs(30));
        assert!(lenient.verify(&token).is_ok());

        let future = token_with(
            Header::new(Algorithm::HS256),
            json!({"sub": "alice", "nbf": now() + 600, "exp": now() + 1200}),
            KEY,
        );
        assert_eq!(verifier().verify(&future), Err(AuthError::NotYetValid));
        assert_eq!(AuthError::NotYetValid.to_string(), "token not valid yet");
    }

    /// `header.payload` (given as JSON text) with a valid HS256 signature over it.
    fn signed_raw(header: &str, payload: &str) -> String {
        let message = format!("{}.{}", b64(header), b64(payload));
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(KEY),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{message}.{signature}")
    }

    #[test]
    fn garbage_is_malformed() {
        let v = verifier();
        for garbage in [
            "",
            "not a token",
            "a.b",
            "a.b.c",
            "a.b.c.d",
            "!!!.???.***",
            &format!("{}.{}.", b64("{"), b64("{}")),
            &format!("{}.{}.sig", b64("{}"), b64("{}")),
            // Correctly signed, but the claims are not a JSON object.
            &signed_raw(r#"{"alg":"HS256"}"#, "[1,2"),
            &signed_raw(r#"{"alg":"HS256"}"#, "42"),
        ] {
            assert_eq!(v.verify(garbage), Err(AuthError::Malformed), "{garbage:?}");
        }
        let huge = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(v.verify(&huge), Err(AuthError::Malformed));
    }

    #[test]
    fn alg_none_is_rejected() {
        let claims = format!(
            r#"{{"sub":"mallory","roles":["admin"],"exp":{}}}"#,
            now() + 60
        );
        for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"None"}"#] {
            let unsigned = format!("{}.{}.", b64(header), b64(&claims));
            assert_eq!(verifier().verify(&unsigned), Err(AuthError::Malformed));
        }
    }

    #[test]
    fn other_algorithms_are_rejected_even_with_the_right_key() {
        let claims = json!({"sub": "alice", "exp": now() + 60});
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = token_with(Header::new(alg), claims.clone(), KEY);
            assert_eq!(
                verifier().verify(&token),
                Err(AuthError::Malformed),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn required_claims() {
        let header = || Header::new(Algorithm::HS256);
        let no_sub = token_with(header(), json!({"roles": ["a"], "exp": now() + 60}), KEY);
        assert_eq!(
            verifier().verify(&no_sub),
            Err(AuthError::MissingClaim("sub"))
        );
        let blank_sub = token_with(header(), json!({"sub": "", "exp": now() + 60}), KEY);
        assert_eq!(
            verifier().verify(&blank_sub),
            Err(AuthError::MissingClaim("sub"))
        );
        let no_exp = token_with(header(), json!({"sub": "alice"}), KEY);
        assert_eq!(
            verifier().verify(&no_exp),
            Err(AuthError::MissingClaim("exp"))
        );
        let text_exp = token_with(header(), json!({"sub": "alice", "exp": "soon"}), KEY);
        assert_eq!(verifier().verify(&text_exp), Err(AuthError::Malformed));
        let bad_roles = token_with(
            header(),
            json!({"sub": "a", "roles": "admin", "exp": now() + 60}),
            KEY,
        );
        assert_eq!(verifier().verify(&bad_roles), Err(AuthError::Malformed));
    }

    #[test]
    fn absent_roles_are_no_roles() {
        let token = token_with(
            Header::new(Algorithm::HS256),
            json!({"sub": "alice", "exp": now() + 60}),
            KEY,
        );
        assert_eq!(
            verifier().verify(&token).unwrap().roles().to_vec(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn audience_and_issuer_are_not_checked() {
        let token = token_with(
            Header::new(Algorithm::HS256),
            json!({"sub": "alice", "aud": "elsewhere", "iss": "someone", "exp": now() + 60}),
            KEY,
        );
        assert_eq!(verifier().verify(&token).unwrap().subject(), "alice");
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let v = format!("{:?}", verifier());
        let s = format!("{:?}", signer());
        assert!(!v.contains("test-secret") && !s.contains("test-secret"));
        assert_eq!(v, "Hs256Verifier { leeway_secs: 0, .. }");
    }
}
