//! A webhook connector's OAuth2 token endpoint (RFC 6749 §4.4, client credentials):
//! `POST <path>/token` with a form-encoded body, the client authenticated by HTTP Basic
//! (§2.3.1) or by `client_id` / `client_secret` form fields, answered with a §5.1 token
//! response or a §5.2 error, always `Cache-Control: no-store`.
//!
//! Client secrets are kept as SHA-256 digests and compared in constant time, an unknown client
//! costing the same comparison as a known one. The endpoint is rate limited (all clients
//! together). Nothing presented — secret, token — is logged; refusals are counted by outcome.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use governor::DefaultDirectRateLimiter;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::jwt::Issuer;
use super::token_config::TokenEndpointConfig;
use crate::metrics::Metrics;
use crate::secret::SecretError;

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
    limiter: DefaultDirectRateLimiter,
    metrics: Metrics,
}

/// An RFC 6749 §5.2 error.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
    /// `WWW-Authenticate` for a client that authenticated with HTTP Basic.
    basic_challenge: bool,
    retry_after: Option<u64>,
}

impl OAuthError {
    fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status,
            code,
            description: description.into(),
            basic_challenge: false,
            retry_after: None,
        }
    }
}

fn no_store(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.code, "error_description": self.description});
        let mut response = (self.status, axum::Json(body)).into_response();
        no_store(&mut response);
        if self.basic_challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"entity-bridge\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Client credentials as presented: (id, secret, by HTTP Basic).
type Presented = (String, String, bool);

/// `Authorization: Basic` credentials, each part form-decoded (RFC 6749 §2.3.1).
fn basic(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        let mut e = OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "the Authorization header is not valid HTTP Basic client authentication",
        );
        e.basic_challenge = true;
        e
    };
    let value = value.to_str().map_err(|_| bad())?;
    let Some(encoded) = value
        .get(..6)
        .filter(|s| s.eq_ignore_ascii_case("basic "))
        .map(|_| value[6..].trim())
    else {
        return Err(bad());
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = text.split_once(':').ok_or_else(bad)?;
    let decode = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((decode(id), decode(secret))))
}

impl TokenEndpoint {
    /// Resolves the client secrets.
    pub fn build(
        connector: &str,
        config: &TokenEndpointConfig,
        issuer: Arc<Issuer>,
        metrics: Metrics,
    ) -> Result<TokenEndpoint, SecretError> {
        let clients = (config.clients.iter())
            .map(|c| {
                Ok(Client {
                    id: c.client_id.clone(),
                    digest: digest(c.client_secret.resolve()?.expose().as_bytes()),
                    scopes: c.scopes.clone(),
                })
            })
            .collect::<Result<Vec<_>, SecretError>>()?;
        Ok(TokenEndpoint {
            connector: connector.to_owned(),
            issuer,
            clients,
            limiter: super::quota::limiter(config.requests_per_second).0,
            metrics,
        })
    }

    fn refuse(&self, e: OAuthError) -> Response {
        self.metrics.token_request(&self.connector, e.code);
        e.into_response()
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

    /// The client these credentials belong to, compared in constant time.
    fn authenticate(&self, id: &str, secret: &str) -> Option<&Client> {
        let presented = digest(secret.as_bytes());
        let mut found = None;
        for c in &self.clients {
            let same_id = c.id.as_bytes().ct_eq(id.as_bytes());
            let same_secret = c.digest.ct_eq(&presented);
            if bool::from(same_id & same_secret) {
                found = Some(c);
            }
        }
        if self.clients.is_empty() {
            // Keep the cost of a refusal the same as that of a check.
            let _ = presented.ct_eq(&[0u8; 32]);
        }
        found
    }

    fn answer(&self, headers: &HeaderMap, body: &[u8]) -> Result<Response, OAuthError> {
        if let Err(not_until) = self.limiter.check() {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            let mut e = OAuthError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                "too many token requests; retry later",
            );
            e.retry_after = Some(wait.as_secs().max(1));
            return Err(e);
        }
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
            return Err(e);
        }
        if form_type != Some(true) {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request must be application/x-www-form-urlencoded",
            ));
        }
        let form: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        let mut names: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "a parameter appears more than once",
            ));
        }
        let (id, secret, _by_basic) = self.presented(headers, &form)?;
        let grant = form
            .iter()
            .find(|(k, _)| k == "grant_type")
            .map(|(_, v)| v.as_str());
        let Some(client) = self.authenticate(&id, &secret) else {
            let mut e = OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "unknown client or wrong secret",
            );
            // RFC 7235: every 401 carries a challenge, whichever way the client authenticated.
            e.basic_challenge = true;
            return Err(e);
        };
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
}

/// The issuer (for the connector's token check) and the endpoint of `config`.
pub fn build_endpoint(
    connector: &str,
    config: &TokenEndpointConfig,
    metrics: Metrics,
) -> Result<(Arc<Issuer>, Arc<TokenEndpoint>), TokenBuildError> {
    let signing = config.signing_key.resolve()?;
    let previous = (config.previous_signing_keys.iter())
        .map(|k| k.resolve())
        .collect::<Result<Vec<_>, _>>()?;
    let issuer = Arc::new(Issuer::new(
        connector,
        &signing,
        &previous,
        Duration::from_secs(config.token_lifetime_seconds),
        Duration::from_secs(config.max_clock_skew_seconds),
    )?);
    let endpoint = TokenEndpoint::build(connector, config, issuer.clone(), metrics)?;
    Ok((issuer, Arc::new(endpoint)))
}

/// `POST <path>/token`.
pub async fn handle(
    State(endpoint): State<Arc<TokenEndpoint>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match endpoint.answer(&headers, &body) {
        Ok(response) => response,
        Err(e) => endpoint.refuse(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_basic(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        // RFC 6749 §2.3.1: id and secret are form-encoded before the Basic encoding.
        let encoded = base64::engine::general_purpose::STANDARD.encode("a%3Ab:p%40ss+word");
        let got = basic(&with_basic(&format!("Basic {encoded}"))).unwrap();
        assert_eq!(got, Some(("a:b".to_owned(), "p@ss word".to_owned())));
        assert_eq!(basic(&HeaderMap::new()).unwrap(), None);
        for bad in ["Bearer x", "Basic !!!", "Basic bm9jb2xvbg=="] {
            let e = basic(&with_basic(bad)).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::UNAUTHORIZED, "invalid_client"),
                "{bad}"
            );
        }
    }
}
