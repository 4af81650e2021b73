//! Access tokens of an external identity provider (`[source.jwt]`): a webhook connector can
//! accept JWT bearer tokens an IdP issued (Auth0, Okta, Keycloak, Entra ID…), checked against
//! the IdP's JWKS.
//!
//! - **Keys**: the JWKS is fetched on first use and cached for `jwks_refresh_interval_seconds`;
//!   a token whose `kid` the cache does not know makes one refresh (single-flight, at most one
//!   per `jwks_min_refresh_interval_seconds`, so forged `kid`s cannot make the bridge hammer
//!   the IdP). Keys of an unknown type in the set are skipped. The fetch uses no redirects, a
//!   timeout (`jwks_fetch_timeout_ms`) and a size cap.
//! - **Waiting is bounded** (a hanging IdP once held 40 pushes for 14–80 s): only a token with
//!   an unknown `kid` waits, for the one fetch in flight, at most `jwks_fetch_timeout_ms`, and
//!   at most `jwks_max_waiting_requests` requests wait at once. A push whose key could not be
//!   fetched is answered `503` + `Retry-After` (the token may be good: retry); a `kid` the IdP's
//!   fresh set does not list, `401`. Nothing here is shared with other connectors.
//! - **Staleness is bounded**: while refreshes fail, a key set past its refresh interval is
//!   used (refreshed in the background) for at most `jwks_max_stale_seconds` more; after that
//!   its keys are not trusted (`503`) until the IdP answers again, so a key the IdP withdrew
//!   does not stay valid for the length of an outage.
//! - **Checks**: the header's `alg` must be one of `algorithms` (asymmetric only: `none` and
//!   the HMAC family are refused by configuration, so a public key can never be used as an HMAC
//!   secret) and match the key's type (keys published with `use: enc` are skipped); `iss` and
//!   `aud` must match, `exp` is required and `nbf` checked, with `max_clock_skew_seconds` of
//!   leeway.

use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Semaphore;

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
    /// Time one JWKS fetch may take, and the longest a push with an unknown `kid` waits for it
    /// (then `503` + `Retry-After`).
    #[serde(default = "default_fetch_timeout_ms")]
    pub jwks_fetch_timeout_ms: u64,
    /// Most pushes waiting for a key fetch at once; more get `503` + `Retry-After` at once.
    #[serde(default = "default_max_waiting")]
    pub jwks_max_waiting_requests: usize,
    /// How long past `jwks_refresh_interval_seconds` a key set is still used while it cannot
    /// be refreshed (the IdP is down); beyond it pushes get `503` until the IdP answers.
    #[serde(default = "default_max_stale")]
    pub jwks_max_stale_seconds: u64,
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
fn default_fetch_timeout_ms() -> u64 {
    3_000
}
fn default_max_waiting() -> usize {
    64
}
fn default_max_stale() -> u64 {
    21_600
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
        if !(100..=60_000).contains(&self.jwks_fetch_timeout_ms) {
            return Err((
                "jwks_fetch_timeout_ms".into(),
                "must be between 100 and 60000".into(),
            ));
        }
        if !(1..=10_000).contains(&self.jwks_max_waiting_requests) {
            return Err((
                "jwks_max_waiting_requests".into(),
                "must be between 1 and 10000".into(),
            ));
        }
        if self.jwks_max_stale_seconds > 7 * 86_400 {
            return Err((
                "jwks_max_stale_seconds".into(),
                "must be at most 604800 (a week)".into(),
            ));
        }
        Ok(())
    }
}

/// The cached key set. Its lock is held only to read or replace it (nothing under it can
/// panic, so a poisoned lock still holds a consistent value).
struct Cached {
    keys: JwkSet,
    fetched: Instant,
}

/// A fetch in flight, which every waiter shares: `true` when it brought a key set.
type SharedFetch = Shared<BoxFuture<'static, bool>>;

/// The single-flight fetch state.
#[derive(Default)]
struct Fetching {
    /// When the last fetch started.
    started: Option<Instant>,
    /// The fetch in flight, if any.
    current: Option<SharedFetch>,
    /// Whether the last fetch that ended brought a key set.
    last_ok: bool,
}

/// How usable a cached key is.
enum Freshness {
    /// Within the refresh interval.
    Fresh,
    /// Past it, within `jwks_max_stale_seconds`: used while a refresh runs in the background.
    Stale,
    /// Past both: not trusted until the IdP answers again.
    Expired,
}

/// Why an external token is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not valid: 401.
    Invalid(InvalidToken),
    /// Its key could not be fetched (the IdP is slow, down, or too many pushes wait): 503 with
    /// this `Retry-After`.
    Unverifiable {
        /// Seconds to wait.
        retry_after_seconds: u64,
    },
}

/// Checks tokens of one external issuer.
pub struct ExternalIssuer {
    config: ExternalJwtConfig,
    algorithms: Vec<Algorithm>,
    http: reqwest::Client,
    cache: RwLock<Option<Cached>>,
    fetching: Mutex<Fetching>,
    waiting: Arc<Semaphore>,
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
            .timeout(Duration::from_millis(config.jwks_fetch_timeout_ms))
            .user_agent(crate::outbound::USER_AGENT)
            .build()?;
        Ok(ExternalIssuer {
            algorithms: (config.algorithms.iter())
                .filter_map(|a| Algorithm::from_str(a).ok())
                .collect(),
            config: config.clone(),
            http,
            cache: RwLock::new(None),
            fetching: Mutex::new(Fetching::default()),
            waiting: Arc::new(Semaphore::new(config.jwks_max_waiting_requests)),
        })
    }

    fn key(&self, kid: &str) -> Option<(Jwk, Freshness)> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let c = cache.as_ref()?;
        let age = c.fetched.elapsed();
        let refresh = Duration::from_secs(self.config.jwks_refresh_interval_seconds);
        let freshness = if age < refresh {
            Freshness::Fresh
        } else if age < refresh + Duration::from_secs(self.config.jwks_max_stale_seconds) {
            Freshness::Stale
        } else {
            Freshness::Expired
        };
        c.keys.find(kid).map(|k| (k.clone(), freshness))
    }

    fn fetching(&self) -> std::sync::MutexGuard<'_, Fetching> {
        // Nothing panics under this lock: a poisoned one still holds a consistent value.
        self.fetching.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fetch in flight, or a new one unless one started less than the minimum interval
    /// ago (`None`: no fetch now).
    fn fetch(self: &Arc<Self>) -> Option<SharedFetch> {
        let mut state = self.fetching();
        // A fetch that ended without clearing itself (its task panicked) is not in flight.
        if let Some(current) = state.current.as_ref().filter(|f| f.peek().is_none()) {
            return Some(current.clone());
        }
        let min = Duration::from_secs(self.config.jwks_min_refresh_interval_seconds);
        if state.started.is_some_and(|at| at.elapsed() < min) {
            return None;
        }
        state.started = Some(Instant::now());
        let me = self.clone();
        // Spawned, so the fetch completes (and fills the cache) even when every waiter gave
        // up; its result is shared by whoever waits.
        let task = tokio::spawn(async move {
            let ok = me.fetch_now().await;
            let mut state = me.fetching();
            state.current = None;
            state.last_ok = ok;
            ok
        });
        let shared = async move { task.await.unwrap_or(false) }.boxed().shared();
        state.current = Some(shared.clone());
        Some(shared)
    }

    /// One fetch of the JWKS; whether it brought a key set.
    async fn fetch_now(&self) -> bool {
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
                true
            }
            None => {
                tracing::warn!(issuer = %self.config.issuer, "cannot fetch the JWKS; the keys cached so far stay in use until jwks_max_stale_seconds");
                false
            }
        }
    }

    fn unverifiable(&self) -> Refusal {
        Refusal::Unverifiable {
            retry_after_seconds: self.config.jwks_min_refresh_interval_seconds.clamp(1, 60),
        }
    }

    /// Waits (bounded, capped in number) for a fetch that may bring `kid`'s key.
    async fn wait_for_key(self: &Arc<Self>, kid: &str) -> Result<Jwk, Refusal> {
        let usable = |found: Option<(Jwk, Freshness)>| match found {
            Some((jwk, Freshness::Fresh | Freshness::Stale)) => Some(jwk),
            _ => None,
        };
        let Some(fetch) = self.fetch() else {
            // A fetch ran a moment ago: its answer stands.
            return if self.fetching().last_ok {
                Err(Refusal::Invalid(InvalidToken::Invalid))
            } else {
                Err(self.unverifiable())
            };
        };
        let Ok(_waiting) = self.waiting.clone().try_acquire_owned() else {
            return Err(self.unverifiable());
        };
        let bound = Duration::from_millis(self.config.jwks_fetch_timeout_ms);
        match tokio::time::timeout(bound, fetch).await {
            Ok(true) => usable(self.key(kid)).ok_or(Refusal::Invalid(InvalidToken::Invalid)),
            Ok(false) | Err(_) => Err(self.unverifiable()),
        }
    }

    /// Checks a presented token; its `sub` when valid. A known key from a stale set is used at
    /// once while the set is refreshed in the background (an IdP that is down delays nobody);
    /// only an unknown `kid`, or a set past its staleness bound, waits for a fetch.
    pub async fn verify(self: &Arc<Self>, token: &str) -> Result<String, Refusal> {
        let invalid = Refusal::Invalid(InvalidToken::Invalid);
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(invalid);
        }
        let kid = header.kid.ok_or(invalid)?;
        let jwk = match self.key(&kid) {
            Some((jwk, Freshness::Fresh)) => jwk,
            Some((jwk, Freshness::Stale)) => {
                drop(self.fetch());
                jwk
            }
            Some((_, Freshness::Expired)) | None => self.wait_for_key(&kid).await?,
        };
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| invalid)?;
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
            Err(e) => Err(Refusal::Invalid(InvalidToken::from(&e))),
        }
    }
}

#[cfg(test)]
#[path = "jwks_tests.rs"]
mod tests;
