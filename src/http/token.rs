//! A webhook connector's OAuth2 token endpoint (RFC 6749 §4.4, client credentials):
//! `POST <path>/token` with a form-encoded body, the client authenticated by HTTP Basic
//! (§2.3.1) or by `client_id` / `client_secret` form fields, answered with a §5.1 token
//! response or a §5.2 error, always `Cache-Control: no-store`.
//!
//! Client secrets are kept as SHA-256 digests and compared in constant time, an unknown client
//! costing the same comparison as a known one. Failed attempts are limited per peer address
//! and per client id, issued tokens per client ([`super::token_guard`]): a client that
//! authenticates is never refused because of someone else's failures. A refused attempt is
//! logged with the client id (configured ids only), the peer and the reason, never what was
//! presented (secret, token), and counted by outcome.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use subtle::ConstantTimeEq;

use super::auth::digest;
use super::jwt::Issuer;
use super::token_config::TokenEndpointConfig;
use super::token_guard::Guard;
use super::token_request::{basic, no_store, OAuthError, Presented};
use crate::metrics::Metrics;
use crate::secret::SecretError;

/// A form-encoded request's fields, in order.
type Form = Vec<(String, String)>;

/// Largest token request body accepted.
pub const MAX_TOKEN_REQUEST_BYTES: usize = 16 * 1024;

struct Client {
    id: String,
    digest: [u8; 32],
    scopes: Vec<String>,
}

/// One connector's token endpoint.
pub struct TokenEndpoint {
    connector: String,
    issuer: Arc<Issuer>,
    clients: Vec<Client>,
    guard: Guard,
    metrics: Metrics,
}

impl TokenEndpoint {
    /// Resolves the client secrets.
    pub fn build(
        connector: &str,
        config: &TokenEndpointConfig,
        issuer: Arc<Issuer>,
        metrics: Metrics,
    ) -> Result<TokenEndpoint, TokenBuildError> {
        let clients = clients(config)?;
        Ok(TokenEndpoint {
            connector: connector.to_owned(),
            issuer,
            guard: Guard::new(
                config.failed_attempts_per_peer_per_minute,
                config.failed_attempts_per_client_per_minute,
                config.requests_per_second,
                clients.len(),
            ),
            clients,
            metrics,
        })
    }

    fn refuse(&self, e: OAuthError) -> Response {
        self.metrics.token_request(&self.connector, e.code);
        e.into_response()
    }

    /// A refusal before the client authenticated: a failed attempt of `peer` (and of the
    /// configured client it named), logged; `429` once over a budget.
    fn failed(&self, e: OAuthError, peer: IpAddr, client: Option<usize>) -> Response {
        let client_id = client.map_or("<unknown>", |i| self.clients[i].id.as_str());
        match self.guard.failed(peer, client) {
            Ok(()) => {
                tracing::info!(connector = %self.connector, client_id, %peer, reason = e.code, detail = %e.description, "token request refused");
                self.refuse(e)
            }
            Err(over) => {
                if over.first {
                    tracing::warn!(connector = %self.connector, client_id, %peer, retry_after_seconds = over.retry_after_seconds, "failed token requests over budget; further failures answered 429 (token_endpoint.failed_attempts_per_*_per_minute)");
                }
                let mut e = OAuthError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "temporarily_unavailable",
                    "too many failed token requests; retry later",
                );
                e.retry_after = Some(over.retry_after_seconds);
                self.metrics.token_request(&self.connector, "throttled");
                e.into_response()
            }
        }
    }

    /// The client's credentials from the header or the form (one way only).
    fn presented(
        &self,
        headers: &HeaderMap,
        form: &[(String, String)],
    ) -> Result<Presented, OAuthError> {
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let (form_id, form_secret) = (field("client_id"), field("client_secret"));
        match (basic(headers)?, form_secret) {
            (Some(_), Some(_)) => Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "use one client authentication method: HTTP Basic or the form fields",
            )),
            (Some((id, secret)), None) => Ok((id, secret, true)),
            (None, Some(secret)) => match form_id {
                Some(id) => Ok((id, secret, false)),
                None => Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "client_id is required with client_secret",
                )),
            },
            (None, None) => {
                let mut e = OAuthError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "client authentication is required (HTTP Basic, or client_id and client_secret)",
                );
                e.basic_challenge = true;
                Err(e)
            }
        }
    }

    /// The client these credentials belong to (its index), compared in constant time.
    fn authenticate(&self, id: &str, secret: &str) -> Option<usize> {
        let presented = digest(secret.as_bytes());
        let mut found = None;
        for (i, c) in self.clients.iter().enumerate() {
            let same_id = c.id.as_bytes().ct_eq(id.as_bytes());
            let same_secret = c.digest.ct_eq(&presented);
            if bool::from(same_id & same_secret) {
                found = Some(i);
            }
        }
        if self.clients.is_empty() {
            // Keep the cost of a refusal the same as that of a check.
            let _ = presented.ct_eq(&[0u8; 32]);
        }
        found
    }

    /// The client the request authenticates, with the form; else the refusal and the
    /// configured client it named, if any.
    fn authenticated(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(usize, Form), (OAuthError, Option<usize>)> {
        let form_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if form_type != Some(true) && !headers.contains_key(header::AUTHORIZATION) {
            // Neither a Basic header nor form fields can authenticate the client: say that first,
            // as the webhook does (authentication before content checks).
            let mut e = OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication is required (HTTP Basic, or client_id and client_secret in a form-encoded body)",
            );
            e.basic_challenge = true;
            return Err((e, None));
        }
        if form_type != Some(true) {
            return Err((
                OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the request must be application/x-www-form-urlencoded",
                ),
                None,
            ));
        }
        let form: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        let mut names: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err((
                OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "a parameter appears more than once",
                ),
                None,
            ));
        }
        let (id, secret, _by_basic) = self.presented(headers, &form).map_err(|e| (e, None))?;
        let Some(client) = self.authenticate(&id, &secret) else {
            let mut e = OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "unknown client or wrong secret",
            );
            // RFC 7235: every 401 carries a challenge, whichever way the client authenticated.
            e.basic_challenge = true;
            let named = self.clients.iter().position(|c| c.id == id);
            return Err((e, named));
        };
        Ok((client, form))
    }

    fn answer(&self, headers: &HeaderMap, peer: IpAddr, body: &[u8]) -> Response {
        let (index, form) = match self.authenticated(headers, body) {
            Ok(found) => found,
            Err((e, named)) => return self.failed(e, peer, named),
        };
        match self.grant(index, &form) {
            Ok(response) => response,
            Err(e) => self.refuse(e),
        }
    }

    /// The token for the authenticated client `index`, or why not.
    fn grant(&self, index: usize, form: &[(String, String)]) -> Result<Response, OAuthError> {
        let client = &self.clients[index];
        let grant = form
            .iter()
            .find(|(k, _)| k == "grant_type")
            .map(|(_, v)| v.as_str());
        match grant {
            Some("client_credentials") => {}
            Some(_) => {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "only grant_type=client_credentials is supported",
                ))
            }
            None => {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "grant_type is required",
                ))
            }
        }
        let requested: Vec<&str> = form
            .iter()
            .find(|(k, _)| k == "scope")
            .map(|(_, v)| v.split(' ').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        if let Some(s) = requested
            .iter()
            .find(|s| !client.scopes.iter().any(|a| a == *s))
        {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                format!("scope `{s}` is not granted to this client"),
            ));
        }
        let scope = (!requested.is_empty()).then(|| requested.join(" "));
        if let Err(wait) = self.guard.issue(index) {
            let mut e = OAuthError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                "this client asks for tokens too often (token_endpoint.requests_per_second); retry later",
            );
            e.retry_after = Some(wait.as_secs().max(1));
            return Err(e);
        }
        let (token, expires_in) = self.issuer.issue(&client.id, scope.clone());
        self.metrics.token_request(&self.connector, "issued");
        tracing::info!(connector = %self.connector, client_id = %client.id, expires_in, "access token issued");
        let mut body = serde_json::json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": expires_in,
        });
        if let Some(scope) = scope {
            body["scope"] = serde_json::Value::String(scope);
        }
        let mut response = (StatusCode::OK, axum::Json(body)).into_response();
        no_store(&mut response);
        Ok(response)
    }
}

/// Why a token endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TokenBuildError {
    /// A key or client secret reference could not be read.
    #[error("token_endpoint: {0}")]
    Secret(#[from] SecretError),
    /// A signing key is unusable.
    #[error("token_endpoint.{0}")]
    Key(#[from] super::jwt::KeyError),
    /// A client secret is too short to resist guessing.
    #[error(
        "token_endpoint.clients: the client_secret of `{client_id}` must be at least {} bytes",
        super::token_guard::MIN_CLIENT_SECRET_BYTES
    )]
    ShortSecret {
        /// The client.
        client_id: String,
    },
}

/// The clients of `config`, secrets resolved and long enough.
fn clients(config: &TokenEndpointConfig) -> Result<Vec<Client>, TokenBuildError> {
    (config.clients.iter())
        .map(|c| {
            let secret = c.client_secret.resolve()?;
            if secret.expose().len() < super::token_guard::MIN_CLIENT_SECRET_BYTES {
                return Err(TokenBuildError::ShortSecret {
                    client_id: c.client_id.clone(),
                });
            }
            Ok(Client {
                id: c.client_id.clone(),
                digest: digest(secret.expose().as_bytes()),
                scopes: c.scopes.clone(),
            })
        })
        .collect()
}

/// The issuer of `config`, its keys resolved and long enough.
fn issuer(connector: &str, config: &TokenEndpointConfig) -> Result<Issuer, TokenBuildError> {
    let signing = config.signing_key.resolve()?;
    let previous = (config.previous_signing_keys.iter())
        .map(|k| k.resolve())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Issuer::new(
        connector,
        &signing,
        &previous,
        Duration::from_secs(config.token_lifetime_seconds),
        Duration::from_secs(config.max_clock_skew_seconds),
    )?)
}

/// What [`build_endpoint`] refuses, without building anything (`entity-bridge check`).
pub fn check_endpoint(
    connector: &str,
    config: &TokenEndpointConfig,
) -> Result<(), TokenBuildError> {
    issuer(connector, config)?;
    clients(config).map(|_| ())
}

/// The issuer (for the connector's token check) and the endpoint of `config`.
pub fn build_endpoint(
    connector: &str,
    config: &TokenEndpointConfig,
    metrics: Metrics,
) -> Result<(Arc<Issuer>, Arc<TokenEndpoint>), TokenBuildError> {
    let issuer = Arc::new(issuer(connector, config)?);
    let endpoint = TokenEndpoint::build(connector, config, issuer.clone(), metrics)?;
    Ok((issuer, Arc::new(endpoint)))
}

/// `POST <path>/token`.
pub async fn handle(
    State(endpoint): State<Arc<TokenEndpoint>>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The listener puts every request's peer there (`serve`); nothing else calls this.
    let peer = peer.map_or(
        IpAddr::from([0, 0, 0, 0]),
        |axum::Extension(ConnectInfo(p))| p.ip(),
    );
    endpoint.answer(&headers, peer, &body)
}
