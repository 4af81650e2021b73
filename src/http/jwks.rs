//! Access tokens of an external identity provider (`[source.jwt]`): a webhook connector can
//! accept JWT bearer tokens an IdP issued (Auth0, Okta, Keycloak, Entra ID…), checked against
//! the IdP's JWKS.
//!
//! - **Keys**: the JWKS is fetched on first use and cached for `jwks_refresh_interval_seconds`;
//!   a token whose `kid` the cache does not know makes one refresh (single-flight, at most one
//!   per `jwks_min_refresh_interval_seconds`, so forged `kid`s cannot make the bridge hammer
//!   the IdP). Keys of an unknown type in the set are skipped. The fetch uses no redirects, a
//!   timeout and a size cap.
//! - **Checks**: the header's `alg` must be one of `algorithms` (asymmetric only: `none` and
//!   the HMAC family are refused by configuration, so a public key can never be used as an HMAC
//!   secret) and match the key's type (keys published with `use: enc` are skipped); `iss` and
//!   `aud` must match, `exp` is required and `nbf` checked, with `max_clock_skew_seconds` of
//!   leeway.

use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::jwt::InvalidToken;

/// `[source.jwt]`: tokens of an external issuer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalJwtConfig {
    /// The issuer (`iss`) the tokens must carry, exactly.
    pub issuer: String,
    /// The audience (`aud`) the tokens must carry: this connector's identifier at the IdP.
    pub audience: String,
    /// The IdP's JSON Web Key Set (`https://…/.well-known/jwks.json`).
    pub jwks_url: String,
    /// Algorithms accepted: `RS256`, `RS384`, `RS512`, `PS256`, `PS384`, `PS512`, `ES256`,
    /// `ES384`, `EdDSA`. HMAC algorithms and `none` are refused.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock difference tolerated on `exp` and `nbf`.
    #[serde(default = "default_skew")]
    pub max_clock_skew_seconds: u64,
    /// How long the fetched JWKS is used before it is fetched again.
    #[serde(default = "default_refresh")]
    pub jwks_refresh_interval_seconds: u64,
    /// Least time between two fetches (a token with an unknown `kid` asks for one).
    #[serde(default = "default_min_refresh")]
    pub jwks_min_refresh_interval_seconds: u64,
    /// Allow a plain `http://` JWKS URL to a host other than loopback.
    #[serde(default)]
    pub allow_insecure_http: bool,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_skew() -> u64 {
    60
}
fn default_refresh() -> u64 {
    3600
}
fn default_min_refresh() -> u64 {
    30
}

/// The asymmetric algorithms an external token may use.
const ASYMMETRIC: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 256 * 1024;

impl ExternalJwtConfig {
    /// Semantic checks; `Err((key, detail))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        crate::outbound::config::check_url("jwks_url", &self.jwks_url, self.allow_insecure_http)?;
        if self.issuer.is_empty() || self.audience.is_empty() {
            return Err((
                "issuer".into(),
                "issuer and audience must not be empty".into(),
            ));
        }
        if self.algorithms.is_empty() {
            return Err((
                "algorithms".into(),
                "must name at least one algorithm".into(),
            ));
        }
        for a in &self.algorithms {
            match Algorithm::from_str(a) {
                Ok(alg) if ASYMMETRIC.contains(&alg) => {}
                _ => {
                    return Err((
                        "algorithms".into(),
                        format!(
                        "`{a}` is not accepted: RS256/384/512, PS256/384/512, ES256/384 or EdDSA"
                    ),
                    ))
                }
            }
        }
        if self.max_clock_skew_seconds > 600 {
            return Err((
                "max_clock_skew_seconds".into(),
                "must be at most 600".into(),
            ));
        }
        if !(60..=86_400).contains(&self.jwks_refresh_interval_seconds) {
            return Err((
                "jwks_refresh_interval_seconds".into(),
                "must be between 60 and 86400".into(),
            ));
        }
        if !(1..=3600).contains(&self.jwks_min_refresh_interval_seconds) {
            return Err((
                "jwks_min_refresh_interval_seconds".into(),
                "must be between 1 and 3600".into(),
            ));
        }
        Ok(())
    }
}

/// The cached key set. Its lock is held only to read or replace it (nothing under it can
/// panic, so it is never poisoned: the `expect`s on it are invariants).
struct Cached {
    keys: JwkSet,
    fetched: Instant,
}

/// Checks tokens of one external issuer.
pub struct ExternalIssuer {
    config: ExternalJwtConfig,
    algorithms: Vec<Algorithm>,
    http: reqwest::Client,
    cache: RwLock<Option<Cached>>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for ExternalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExternalIssuer({})", self.config.issuer)
    }
}

/// Parses a JWKS, skipping keys it cannot use.
fn parse_jwks(body: &[u8]) -> Option<JwkSet> {
    #[derive(Deserialize)]
    struct Raw {
        keys: Vec<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(body).ok()?;
    let keys = raw
        .keys
        .into_iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
        // Keys published for encryption are not signature keys.
        .filter(|k| {
            !matches!(
                k.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            )
        })
        .collect();
    Some(JwkSet { keys })
}

impl ExternalIssuer {
    /// Prepares the checker (no network yet).
    pub fn new(config: &ExternalJwtConfig) -> Result<ExternalIssuer, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .user_agent(crate::outbound::USER_AGENT)
            .build()?;
        Ok(ExternalIssuer {
            algorithms: (config.algorithms.iter())
                .filter_map(|a| Algorithm::from_str(a).ok())
                .collect(),
            config: config.clone(),
            http,
            cache: RwLock::new(None),
            last_fetch: tokio::sync::Mutex::new(None),
        })
    }

    fn key(&self, kid: &str) -> Option<(Jwk, bool)> {
        // The cache is replaced whole under the lock (no panic inside), so a poisoned lock
        // still holds a consistent value.
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let c = cache.as_ref()?;
        let fresh =
            c.fetched.elapsed() < Duration::from_secs(self.config.jwks_refresh_interval_seconds);
        c.keys.find(kid).map(|k| (k.clone(), fresh))
    }

    /// Fetches the JWKS unless one was fetched less than the minimum interval ago.
    async fn refresh(&self) {
        let mut last = self.last_fetch.lock().await;
        let min = Duration::from_secs(self.config.jwks_min_refresh_interval_seconds);
        if last.is_some_and(|at| at.elapsed() < min) {
            return;
        }
        *last = Some(Instant::now());
        let fetched = async {
            let response = self.http.get(&self.config.jwks_url).send().await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let body = crate::outbound::capped::read_capped(response, MAX_JWKS_BYTES)
                .await
                .ok()?;
            if body.truncated {
                return None;
            }
            parse_jwks(&body.bytes)
        }
        .await;
        match fetched {
            Some(keys) => {
                tracing::info!(issuer = %self.config.issuer, keys = keys.keys.len(), "JWKS fetched");
                *self.cache.write().unwrap_or_else(|p| p.into_inner()) = Some(Cached {
                    keys,
                    fetched: Instant::now(),
                });
            }
            None => {
                tracing::warn!(issuer = %self.config.issuer, "cannot fetch the JWKS; the keys cached so far stay in use")
            }
        }
    }

    /// Checks a presented token; its `sub` when valid. A known key from a stale set is used at
    /// once while the set is refreshed in the background (an IdP that is down delays nobody);
    /// only an unknown `kid` waits for a fetch.
    pub async fn verify(self: &Arc<Self>, token: &str) -> Result<String, InvalidToken> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| InvalidToken::Invalid)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(InvalidToken::Invalid);
        }
        let kid = header.kid.ok_or(InvalidToken::Invalid)?;
        let jwk = match self.key(&kid) {
            Some((jwk, true)) => jwk,
            Some((jwk, false)) => {
                let me = self.clone();
                tokio::spawn(async move { me.refresh().await });
                jwk
            }
            None => {
                self.refresh().await;
                self.key(&kid)
                    .map(|(j, _)| j)
                    .ok_or(InvalidToken::Invalid)?
            }
        };
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| InvalidToken::Invalid)?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&self.config.audience]);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.leeway = self.config.max_clock_skew_seconds;
        validation.validate_nbf = true;
        #[derive(Deserialize)]
        struct Subject {
            #[serde(default)]
            sub: Option<String>,
        }
        match jsonwebtoken::decode::<Subject>(token, &key, &validation) {
            Ok(data) => Ok(data.claims.sub.unwrap_or_default()),
            Err(e) => Err(InvalidToken::from(&e)),
        }
    }
}
