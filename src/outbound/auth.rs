//! The bearer token of a webhook sink: a fixed token, or OAuth2 client credentials.
//!
//! OAuth2 uses the `oauth2` crate (client credentials grant over the sink's reqwest client). The
//! token is cached until shortly before it expires (half its lifetime, at most one minute early)
//! and only one refresh is in flight at a time: concurrent partitions wait for that refresh
//! instead of stampeding the token endpoint. After a 401 the caller [`Auth::invalidate`]s the
//! token it used, so several 401s with the same token cause one refresh, not one each.
//! Tokens and secrets are [`Secret`]s: they never reach a log line.

use std::sync::RwLock;
use std::time::Duration;

use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, Scope, TokenResponse, TokenUrl,
};
use tokio::time::Instant;

use super::config::{AuthConfig, ClientAuth};
use crate::secret::{Secret, SecretError};

/// Why the sink's auth could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthBuildError {
    /// The token or client secret reference could not be read.
    #[error("auth: {0}")]
    Secret(#[from] SecretError),
    /// The token URL is not a URL.
    #[error("auth.token_url: {0}")]
    TokenUrl(String),
}

/// Why no token could be had right now (retried like a connection error).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token endpoint failed or refused the client.
    #[error("OAuth2 token request failed: {0}")]
    TokenEndpoint(String),
}

/// A token handed out for one request; give it back to [`Auth::invalidate`] after a 401.
#[derive(Debug, Clone)]
pub struct Token {
    /// The bearer token.
    pub value: Secret,
    generation: u64,
}

type OAuthClient =
    BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

struct Cached {
    token: Secret,
    generation: u64,
    /// When to fetch a new one; `None` = until the consumer refuses it.
    refresh_at: Option<Instant>,
}

struct OAuth2 {
    client: OAuthClient,
    http: reqwest::Client,
    scopes: Vec<Scope>,
    audience: Option<String>,
    cached: RwLock<Option<Cached>>,
    refresh: tokio::sync::Mutex<()>,
    generation: std::sync::atomic::AtomicU64,
}

/// How the sink obtains its bearer token.
pub struct Auth {
    connector: String,
    kind: Kind,
}

enum Kind {
    Fixed(Secret),
    OAuth2(Box<OAuth2>),
}

/// How early before expiry a token is refreshed: half its lifetime, at most a minute.
fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 2).min(Duration::from_secs(60))
}

/// Longest a token is used before a new one is fetched, whatever `expires_in` says (an endpoint
/// answering `expires_in: 18446744073709551615` once made the refresh time overflow and panic).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// When to refresh a token of `lifetime` fetched at `started`; never overflows.
fn refresh_at(started: Instant, lifetime: Duration) -> Instant {
    let lifetime = lifetime.min(MAX_TOKEN_LIFETIME);
    started + (lifetime - refresh_margin(lifetime))
}

/// Why the token request itself failed (below the OAuth2 layer).
#[derive(Debug, thiserror::Error)]
enum TokenHttpError {
    /// Connecting, sending or reading failed.
    #[error("token request failed: {0}")]
    Request(#[from] reqwest::Error),
    /// The answer was longer than a token response can be.
    #[error("token endpoint answer exceeds {0} bytes")]
    TooLarge(usize),
    /// The answer could not be turned into a response (never for a valid HTTP answer).
    #[error("token endpoint answer is not a valid HTTP response")]
    Invalid,
}

/// The OAuth2 client's transport: the sink's token `http` client, with the answer read up to
/// [`super::capped::MAX_TOKEN_RESPONSE_BYTES`].
async fn token_http(
    http: reqwest::Client,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, TokenHttpError> {
    let request = reqwest::Request::try_from(request)?;
    let response = http.execute(request).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let cap = super::capped::MAX_TOKEN_RESPONSE_BYTES;
    let body = super::capped::read_capped(response, cap).await?;
    if body.truncated {
        return Err(TokenHttpError::TooLarge(cap));
    }
    let mut answer = http::Response::builder().status(status);
    if let Some(h) = answer.headers_mut() {
        *h = headers;
    }
    answer
        .body(body.bytes.to_vec())
        .map_err(|_| TokenHttpError::Invalid)
}

impl Auth {
    /// Resolves secrets and prepares the token source (no network yet).
    pub fn build(config: &AuthConfig, connector: &str) -> Result<Auth, AuthBuildError> {
        let kind = match config {
            AuthConfig::Token { token } => Kind::Fixed(token.resolve()?),
            AuthConfig::Oauth2 {
                token_url,
                client_id,
                client_secret,
                scope,
                audience,
                client_auth,
                grant_type: _,
            } => {
                let secret = client_secret.resolve()?;
                let token_url = TokenUrl::new(token_url.clone())
                    .map_err(|e| AuthBuildError::TokenUrl(e.to_string()))?;
                let client = BasicClient::new(ClientId::new(client_id.clone()))
                    .set_client_secret(ClientSecret::new(secret.expose().to_owned()))
                    .set_auth_type(match client_auth {
                        ClientAuth::Basic => AuthType::BasicAuth,
                        ClientAuth::RequestBody => AuthType::RequestBody,
                    })
                    .set_token_uri(token_url);
                // No redirects: a token endpoint that redirects must not receive the secret twice.
                let http = reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(Duration::from_secs(30))
                    .user_agent(super::USER_AGENT)
                    .build()
                    .map_err(|e| AuthBuildError::TokenUrl(e.to_string()))?;
                let scopes = scope
                    .iter()
                    .flat_map(|s| s.split_whitespace())
                    .map(|s| Scope::new(s.to_owned()))
                    .collect();
                Kind::OAuth2(Box::new(OAuth2 {
                    client,
                    http,
                    scopes,
                    audience: audience.clone(),
                    cached: RwLock::new(None),
                    refresh: tokio::sync::Mutex::new(()),
                    generation: std::sync::atomic::AtomicU64::new(0),
                }))
            }
        };
        Ok(Auth {
            connector: connector.to_owned(),
            kind,
        })
    }

    /// The token to send now, fetching one first when none is cached or it is about to expire.
    pub async fn token(&self) -> Result<Token, AuthError> {
        match &self.kind {
            Kind::Fixed(secret) => Ok(Token {
                value: secret.clone(),
                generation: 0,
            }),
            Kind::OAuth2(o) => {
                if let Some(token) = o.fresh() {
                    return Ok(token);
                }
                let _single_flight = o.refresh.lock().await;
                // Someone else may have refreshed while we waited.
                if let Some(token) = o.fresh() {
                    return Ok(token);
                }
                o.fetch(&self.connector).await
            }
        }
    }

    /// Forgets `used` after the consumer refused it; the next [`Auth::token`] fetches anew.
    /// Returns `false` for a fixed token (nothing to refresh).
    pub fn invalidate(&self, used: &Token) -> bool {
        match &self.kind {
            Kind::Fixed(_) => false,
            Kind::OAuth2(o) => {
                let mut cached = o.cached.write().expect("token cache lock");
                if cached
                    .as_ref()
                    .is_some_and(|c| c.generation == used.generation)
                {
                    *cached = None;
                }
                true
            }
        }
    }
}

impl OAuth2 {
    fn fresh(&self) -> Option<Token> {
        let cached = self.cached.read().expect("token cache lock");
        let c = cached.as_ref()?;
        if c.refresh_at.is_some_and(|at| Instant::now() >= at) {
            return None;
        }
        Some(Token {
            value: c.token.clone(),
            generation: c.generation,
        })
    }

    async fn fetch(&self, connector: &str) -> Result<Token, AuthError> {
        let started = Instant::now();
        let mut request = self
            .client
            .exchange_client_credentials()
            .add_scopes(self.scopes.iter().cloned());
        if let Some(audience) = &self.audience {
            request = request.add_extra_param("audience", audience.clone());
        }
        let http = self.http.clone();
        let transport = move |request| token_http(http.clone(), request);
        let response = request.request_async(&transport).await.map_err(|e| {
            let reason = match &e {
                oauth2::RequestTokenError::ServerResponse(r) => {
                    format!("token endpoint refused: {}", r.error())
                }
                oauth2::RequestTokenError::Request(TokenHttpError::TooLarge(cap)) => {
                    format!("token endpoint answer exceeds {cap} bytes")
                }
                oauth2::RequestTokenError::Request(_) => "token endpoint unreachable".to_owned(),
                oauth2::RequestTokenError::Parse(_, _) => {
                    "token endpoint answer is not a token response".to_owned()
                }
                oauth2::RequestTokenError::Other(_) => "token request failed".to_owned(),
            };
            tracing::warn!(%connector, %reason, "cannot fetch an OAuth2 token");
            AuthError::TokenEndpoint(reason)
        })?;
        let lifetime = response.expires_in();
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let token = Secret::new(response.access_token().secret().clone());
        *self.cached.write().expect("token cache lock") = Some(Cached {
            token: token.clone(),
            generation,
            refresh_at: lifetime.map(|l| refresh_at(started, l)),
        });
        tracing::info!(
            %connector,
            expires_in_seconds = lifetime.map(|l| l.as_secs()),
            "fetched an OAuth2 access token"
        );
        Ok(Token {
            value: token,
            generation,
        })
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
