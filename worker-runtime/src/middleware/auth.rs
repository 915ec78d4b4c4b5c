//! The role check of db tasks: who sent the message, from a verified token, and whether they may.

use crate::auth::{AuthError, Principal, TokenVerifier};

/// Verifies the message's token and checks that its principal holds one of `permitted_roles`.
///
/// - No token (or an empty one) → [`AuthError::Missing`].
/// - The verifier's error (malformed, bad signature, expired, missing claim) is returned as it is.
/// - Empty `permitted_roles` means no role check: any valid token passes.
/// - Otherwise a principal holding none of them → [`AuthError::NoMatchingRole`].
///
/// Every failure is permanent for the message: the worker dead-letters it as `forbidden`.
pub fn authorize(
    verifier: &dyn TokenVerifier,
    token: Option<&str>,
    permitted_roles: &[String],
) -> Result<Principal, AuthError> {
    let token = token
        .filter(|token| !token.trim().is_empty())
        .ok_or(AuthError::Missing)?;
    let principal = verifier.verify(token)?;
    if permitted_roles.is_empty() || principal.has_any_role(permitted_roles) {
        Ok(principal)
    } else {
        Err(AuthError::NoMatchingRole {
            subject: principal.subject().to_owned(),
            required: permitted_roles.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts `"<subject>:<role>,<role>"`; `"expired"` is expired and anything else malformed.
    struct FakeVerifier;

    impl TokenVerifier for FakeVerifier {
        fn verify(&self, token: &str) -> Result<Principal, AuthError> {
            if token == "expired" {
                return Err(AuthError::Expired);
            }
            let (subject, roles) = token.split_once(':').ok_or(AuthError::Malformed)?;
            let roles = roles
                .split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect();
            Ok(Principal::new(subject, roles, None))
        }
    }

    fn roles(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn a_missing_or_empty_token_is_missing() {
        assert_eq!(authorize(&FakeVerifier, None, &[]), Err(AuthError::Missing));
        assert_eq!(
            authorize(&FakeVerifier, Some(" "), &[]),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn verifier_errors_pass_through() {
        assert_eq!(
            authorize(&FakeVerifier, Some("expired"), &[]),
            Err(AuthError::Expired)
        );
        assert_eq!(
            authorize(&FakeVerifier, Some("garbage"), &roles(&["a"])),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn no_permitted_roles_means_any_valid_token() {
        let principal = authorize(&FakeVerifier, Some("alice:"), &[]).unwrap();
        assert_eq!(principal.subject(), "alice");
        assert!(principal.roles().is_empty());
    }

    #[test]
    fn one_matching_role_is_enough() {
        let principal = authorize(
            &FakeVerifier,
            Some("alice:reader,db_writer"),
            &roles(&["admin", "db_writer"]),
        )
        .unwrap();
        assert_eq!(principal.roles(), roles(&["reader", "db_writer"]));
    }

    #[test]
    fn holding_none_of_the_roles_is_refused_with_names() {
        let error =
            authorize(&FakeVerifier, Some("bob:reader"), &roles(&["db_writer"])).unwrap_err();
        assert_eq!(
            error,
            AuthError::NoMatchingRole {
                subject: "bob".into(),
                required: roles(&["db_writer"]),
            }
        );
        assert_eq!(
            error.to_string(),
            "principal `bob` holds none of the roles [\"db_writer\"]"
        );
    }
}
