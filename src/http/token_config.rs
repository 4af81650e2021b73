//! `[source.token_endpoint]`: the OAuth2 client credentials endpoint of a webhook connector, for
//! producers that insist on dynamic tokens (the consumer guide's ClientId, ClientSecret,
//! AccessTokenURL and GrantType).

use serde::{Deserialize, Serialize};

use crate::secret::SecretRef;

/// A connector's token endpoint (`POST <path>/token`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEndpointConfig {
    /// The key that signs new access tokens (HS256), by reference; at least 32 bytes.
    pub signing_key: SecretRef,
    /// Keys of earlier rotations, by reference: tokens they signed stay valid until they
    /// expire. Drop a key once `token_lifetime_seconds` has passed since it was replaced.
    #[serde(default)]
    pub previous_signing_keys: Vec<SecretRef>,
    /// Lifetime of an access token (`expires_in`).
    #[serde(default = "default_token_lifetime_seconds")]
    pub token_lifetime_seconds: u64,
    /// Clock difference tolerated when checking `exp` of a presented token.
    #[serde(default = "default_max_clock_skew_seconds")]
    pub max_clock_skew_seconds: u64,
    /// Most tokens one client may get per second (each client on its own); more get 429 with
    /// `Retry-After`. Failed attempts never spend it.
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: f64,
    /// Failed attempts (unknown client, wrong secret, malformed request) one peer address may
    /// make per minute; beyond it its failures get 429 with `Retry-After`. A client that
    /// authenticates from that address is still served.
    #[serde(default = "default_failed_attempts_per_minute")]
    pub failed_attempts_per_peer_per_minute: u32,
    /// Failed attempts per minute naming one client id (all ids that are not configured share
    /// one budget), from any address; beyond it they get 429 with `Retry-After`. The client
    /// itself, presenting its secret, is still served.
    #[serde(default = "default_failed_attempts_per_minute")]
    pub failed_attempts_per_client_per_minute: u32,
    /// The producers that may ask for tokens.
    pub clients: Vec<TokenClientConfig>,
}

/// One OAuth2 client (a producer).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenClientConfig {
    /// The ClientId handed to the producer.
    pub client_id: String,
    /// The ClientSecret, by reference (compared in constant time).
    pub client_secret: SecretRef,
    /// Scopes the client may ask for (`scope`); a request for another is refused with
    /// `invalid_scope`. Empty: no scope may be asked for (tokens carry none).
    #[serde(default)]
    pub scopes: Vec<String>,
}

fn default_token_lifetime_seconds() -> u64 {
    3600
}
fn default_max_clock_skew_seconds() -> u64 {
    30
}
fn default_requests_per_second() -> f64 {
    10.0
}
fn default_failed_attempts_per_minute() -> u32 {
    30
}

impl TokenEndpointConfig {
    /// Semantic checks; `Err((key, detail))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, d: &str| Err((k.to_owned(), d.to_owned()));
        if !(5..=86_400).contains(&self.token_lifetime_seconds) {
            return err("token_lifetime_seconds", "must be between 5 and 86400");
        }
        if self.max_clock_skew_seconds > 300 {
            return err("max_clock_skew_seconds", "must be at most 300");
        }
        let rps = self.requests_per_second;
        if !(rps.is_finite() && (0.01..=10_000.0).contains(&rps)) {
            return err("requests_per_second", "must be between 0.01 and 10000");
        }
        for (key, n) in [
            (
                "failed_attempts_per_peer_per_minute",
                self.failed_attempts_per_peer_per_minute,
            ),
            (
                "failed_attempts_per_client_per_minute",
                self.failed_attempts_per_client_per_minute,
            ),
        ] {
            if !(1..=100_000).contains(&n) {
                return err(key, "must be between 1 and 100000");
            }
        }
        if self.clients.is_empty() {
            return err("clients", "must name at least one client");
        }
        let mut seen = std::collections::HashSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            let ok = !c.client_id.is_empty()
                && c.client_id.len() <= 255
                && c.client_id
                    .chars()
                    .all(|ch| ch.is_ascii_graphic() && ch != ':');
            if !ok {
                return Err((
                    format!("clients[{i}].client_id"),
                    "must be 1 to 255 printable ASCII characters without `:`".into(),
                ));
            }
            let reserved = c.client_id == "*"
                || c.client_id == super::quota::EXTERNAL_PRODUCER
                || c.client_id
                    .strip_prefix("token-")
                    .is_some_and(|n| n.chars().all(|d| d.is_ascii_digit()));
            if reserved {
                return Err((
                    format!("clients[{i}].client_id"),
                    "is a reserved producer name (`*`, `jwt`, `token-N` name quotas)".into(),
                ));
            }
            if !seen.insert(c.client_id.as_str()) {
                return Err((format!("clients[{i}].client_id"), "is used twice".into()));
            }
            if let Some(s) = c
                .scopes
                .iter()
                .find(|s| s.is_empty() || s.contains(char::is_whitespace))
            {
                return Err((
                    format!("clients[{i}].scopes"),
                    format!("`{s}` is not a scope token (no spaces, not empty)"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_cannot_take_reserved_producer_names() {
        for (id, ok) in [
            ("listhub", true),
            ("token-1", false),
            ("jwt", false),
            ("*", false),
            ("token-x", true),
        ] {
            let config: TokenEndpointConfig = toml::from_str(&format!(
                "signing_key = {{ env = \"K\" }}\n[[clients]]\nclient_id = \"{id}\"\nclient_secret = {{ env = \"S\" }}\n"
            ))
            .unwrap();
            assert_eq!(config.validate().is_ok(), ok, "{id}");
        }
    }
}
