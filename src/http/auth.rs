//! Bearer-token check for webhook pushes.
//!
//! Tokens are compared as SHA-256 digests with `subtle`'s constant-time equality, against every
//! configured token without short-circuiting, so neither timing nor length reveals a token.
//! Only the digests are kept in memory after start-up.

use axum::http::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, blanks trimmed);
/// `None` without one.
pub fn bearer(authorization: Option<&HeaderValue>) -> Option<&[u8]> {
    let value = authorization?.as_bytes();
    // `get(..7)` is `Some` only when 7 bytes exist, so `value[7..]` cannot panic.
    value
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
        .map(|_| value[7..].trim_ascii())
        .filter(|token| !token.is_empty())
}

/// The tokens a connector accepts.
#[derive(Clone)]
pub struct TokenSet {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSet({} tokens, masked)", self.digests.len())
    }
}

/// The SHA-256 digest secrets are kept and compared as.
pub(super) fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl TokenSet {
    /// Builds the set from resolved secrets.
    pub fn new(tokens: &[Secret]) -> Self {
        TokenSet {
            digests: tokens
                .iter()
                .map(|t| digest(t.expose().as_bytes()))
                .collect(),
        }
    }

    /// `true` when `authorization` is `Bearer <one of the tokens>` (scheme case-insensitive).
    pub fn verify(&self, authorization: Option<&HeaderValue>) -> bool {
        self.position(authorization).is_some()
    }

    /// Which configured token `authorization` presents (0-based), if any. Every digest is
    /// compared, whatever matched.
    pub fn position(&self, authorization: Option<&HeaderValue>) -> Option<usize> {
        let presented = digest(bearer(authorization)?);
        let mut matched = None;
        for (i, d) in self.digests.iter().enumerate() {
            if bool::from(d.ct_eq(&presented)) {
                matched = Some(i);
            }
        }
        matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> TokenSet {
        TokenSet::new(&[Secret::new("alpha"), Secret::new("beta")])
    }

    #[test]
    fn accepts_each_configured_token() {
        for h in ["Bearer alpha", "bearer beta", "BEARER alpha "] {
            assert!(set().verify(Some(&HeaderValue::from_static(h))), "{h}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for h in [
            "Bearer gamma",
            "Basic alpha",
            "alpha",
            "Bearer ",
            "Bearer alph",
            "",
        ] {
            assert!(!set().verify(Some(&HeaderValue::from_static(h))), "{h}");
        }
        assert!(!set().verify(None));
        assert_eq!(
            set().position(Some(&HeaderValue::from_static("Bearer beta"))),
            Some(1)
        );
        assert_eq!(format!("{:?}", set()), "TokenSet(2 tokens, masked)");
    }
}
