//! The access tokens a webhook connector's token endpoint issues, and their check on every push.
//!
//! A token is a JWT signed with HMAC-SHA256 (`HS256`, the `jsonwebtoken` crate): the bridge is
//! both issuer and verifier, so one shared secret per connector is all it needs, by reference.
//! Claims: `iss` (`entity-bridge`), `aud` (the connector: a token of another connector is
//! refused), `sub` (the client id), `iat`, `exp`, `jti` (random) and `scope` when granted. The
//! header's `kid` names the key (a digest prefix, never the key), so keys rotate: new tokens are
//! signed with `signing_key`, tokens signed with any of `previous_signing_keys` stay valid until
//! they expire. Only `HS256` is accepted — `alg: none` or any other algorithm is refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// The `iss` of every token the bridge issues.
pub const ISSUER: &str = "entity-bridge";
/// Shortest signing key accepted, in bytes (HS256 wants at least the hash size).
pub const MIN_KEY_BYTES: usize = 32;

/// The claims of an issued token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Issuer: [`ISSUER`].
    pub iss: String,
    /// Audience: the connector.
    pub aud: String,
    /// Subject: the client id.
    pub sub: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// Unique token id.
    pub jti: String,
    /// Granted scopes, space-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// Why a presented token is refused (the `error_description` of the 401; no token data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidToken {
    /// Past its `exp` (beyond the allowed clock skew).
    #[error("the access token expired")]
    Expired,
    /// Issued for another connector.
    #[error("the access token is for another connector")]
    WrongAudience,
    /// Not a token of this bridge: bad signature, unknown key, other algorithm, malformed.
    #[error("the access token is not valid")]
    Invalid,
}

impl From<&jsonwebtoken::errors::Error> for InvalidToken {
    /// What a failed check tells the client: expired, another audience, or nothing more.
    fn from(e: &jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => InvalidToken::Expired,
            jsonwebtoken::errors::ErrorKind::InvalidAudience => InvalidToken::WrongAudience,
            _ => InvalidToken::Invalid,
        }
    }
}

/// Why the keys could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key is too short to sign with.
    #[error("{key}: must be at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -base64 48`)")]
    TooShort {
        /// Which key (`signing_key`, `previous_signing_keys[1]`).
        key: String,
    },
}

struct Key {
    kid: String,
    decoding: DecodingKey,
}

/// Issues and checks one connector's tokens.
pub struct Issuer {
    audience: String,
    signing: (String, EncodingKey),
    keys: Vec<Key>,
    lifetime: Duration,
    leeway: Duration,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Issuer({}, {} keys, masked)",
            self.audience,
            self.keys.len()
        )
    }
}

/// A key's id: the first 16 hex digits of its SHA-256 (identifies, never reveals it).
fn kid(key: &[u8]) -> String {
    Sha256::digest(key)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Issuer {
    /// An issuer for `audience` (the connector) signing with `signing` and also accepting
    /// tokens signed with `previous`.
    pub fn new(
        audience: &str,
        signing: &Secret,
        previous: &[Secret],
        lifetime: Duration,
        leeway: Duration,
    ) -> Result<Issuer, KeyError> {
        let bytes = |s: &Secret, key: String| {
            let b = s.expose().as_bytes().to_vec();
            if b.len() < MIN_KEY_BYTES {
                return Err(KeyError::TooShort { key });
            }
            Ok(b)
        };
        let signing_bytes = bytes(signing, "signing_key".into())?;
        let mut keys = vec![Key {
            kid: kid(&signing_bytes),
            decoding: DecodingKey::from_secret(&signing_bytes),
        }];
        for (i, p) in previous.iter().enumerate() {
            let b = bytes(p, format!("previous_signing_keys[{i}]"))?;
            keys.push(Key {
                kid: kid(&b),
                decoding: DecodingKey::from_secret(&b),
            });
        }
        Ok(Issuer {
            audience: audience.to_owned(),
            signing: (
                kid(&signing_bytes),
                EncodingKey::from_secret(&signing_bytes),
            ),
            keys,
            lifetime,
            leeway,
        })
    }

    /// A new token for `client_id` with `scope`; returns it and its lifetime in seconds.
    pub fn issue(&self, client_id: &str, scope: Option<String>) -> (String, u64) {
        let iat = now();
        let mut jti = [0u8; 16];
        // Invariant: the OS random source does not fail on Linux once the system has booted
        // (the same source generates webhook tokens, `embedded::token`).
        getrandom::fill(&mut jti).expect("the OS random source works");
        let claims = Claims {
            iss: ISSUER.to_owned(),
            aud: self.audience.clone(),
            sub: client_id.to_owned(),
            iat,
            exp: iat + self.lifetime.as_secs(),
            jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
            scope,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.signing.0.clone());
        // Invariant: HMAC signing of claims made of strings and integers cannot fail.
        let token = jsonwebtoken::encode(&header, &claims, &self.signing.1)
            .expect("HS256 signing of serializable claims cannot fail");
        (token, self.lifetime.as_secs())
    }

    /// Checks a presented token: signature by a known key, `HS256` only, this audience and
    /// issuer, not expired (with the allowed skew).
    pub fn verify(&self, token: &str) -> Result<Claims, InvalidToken> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| InvalidToken::Invalid)?;
        if header.alg != Algorithm::HS256 {
            return Err(InvalidToken::Invalid);
        }
        let key = match &header.kid {
            Some(kid) => self.keys.iter().find(|k| &k.kid == kid),
            None => None,
        }
        .ok_or(InvalidToken::Invalid)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = self.leeway.as_secs();
        match jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => Err(InvalidToken::from(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "k1-0123456789abcdef0123456789abcdef";
    const OLD: &str = "k0-0123456789abcdef0123456789abcdef";

    fn issuer(aud: &str, key: &str, previous: &[&str], lifetime_s: u64) -> Issuer {
        let previous: Vec<Secret> = previous.iter().map(|p| Secret::new(*p)).collect();
        Issuer::new(
            aud,
            &Secret::new(key),
            &previous,
            Duration::from_secs(lifetime_s),
            Duration::ZERO,
        )
        .unwrap()
    }

    #[test]
    fn issued_tokens_verify_with_their_claims() {
        let i = issuer("mls", KEY, &[], 600);
        let (token, lifetime) = i.issue("vendor", Some("events:write".into()));
        assert_eq!(lifetime, 600);
        let claims = i.verify(&token).unwrap();
        assert_eq!(
            (claims.aud.as_str(), claims.sub.as_str()),
            ("mls", "vendor")
        );
        assert_eq!(claims.exp - claims.iat, 600);
        assert_eq!(claims.scope.as_deref(), Some("events:write"));
        let (other, _) = i.issue("vendor", None);
        assert_ne!(token, other, "every token is unique (jti)");
        assert!(!token.contains(KEY));
    }

    #[test]
    fn wrong_audience_expired_and_foreign_tokens_are_refused() {
        let mls = issuer("mls", KEY, &[], 600);
        let other = issuer("other", KEY, &[], 600);
        let (token, _) = other.issue("vendor", None);
        assert_eq!(mls.verify(&token), Err(InvalidToken::WrongAudience));
        let expired = issuer("mls", KEY, &[], 0);
        let (token, _) = expired.issue("vendor", None);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(mls.verify(&token), Err(InvalidToken::Expired));
        let stranger = issuer("mls", "another-key-0123456789abcdef012345", &[], 600);
        let (token, _) = stranger.issue("vendor", None);
        assert_eq!(mls.verify(&token), Err(InvalidToken::Invalid));
        for garbage in ["", "a.b.c", "not a token"] {
            assert_eq!(mls.verify(garbage), Err(InvalidToken::Invalid));
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let mls = issuer("mls", KEY, &[], 600);
        let (token, _) = mls.issue("vendor", None);
        let payload = token.split('.').nth(1).unwrap();
        // {"alg":"none","typ":"JWT","kid":<the real kid>}, no signature.
        let header = format!(
            r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#,
            kid(KEY.as_bytes())
        );
        use base64::Engine;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header);
        assert_eq!(
            mls.verify(&format!("{header}.{payload}.")),
            Err(InvalidToken::Invalid)
        );
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_until_they_expire() {
        let before = issuer("mls", OLD, &[], 600);
        let (old_token, _) = before.issue("vendor", None);
        let after = issuer("mls", KEY, &[OLD], 600);
        assert!(after.verify(&old_token).is_ok());
        let (new_token, _) = after.issue("vendor", None);
        assert!(after.verify(&new_token).is_ok());
        assert_eq!(before.verify(&new_token), Err(InvalidToken::Invalid));
        assert!(Issuer::new(
            "mls",
            &Secret::new("short"),
            &[],
            Duration::from_secs(1),
            Duration::ZERO
        )
        .is_err());
    }
}
