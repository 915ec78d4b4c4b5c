//! HS256 JWT verification (placeholder until the verifier lands).
/// Verifies HS256 tokens.
pub struct Hs256Verifier;
/// Signs HS256 tokens.
pub struct Hs256Signer;
