//! GET requests to a producer, politely: the outbound pieces ([`crate::outbound`]) put
//! together for callers that read rather than push (poll sources, record hydration).
//!
//! Each request waits for the endpoint's rate limiter, concurrency cap and any pause a
//! `Retry-After` set; sends `Accept-Encoding: gzip` (answers are decompressed by reqwest and
//! capped after decompression, so a small compressed bomb still costs at most the cap); after a
//! 401 fetches a new OAuth2 token and tries once more; and classifies the answer with the same
//! rules the webhook sink uses ([`crate::outbound::answer`]). Redirects are not followed: a
//! bearer token must not travel to another host.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::StatusCode;

use crate::metrics::Metrics;
use crate::outbound::answer::{classify, Verdict};
use crate::outbound::auth::Auth;
use crate::outbound::capped::read_capped;
use crate::outbound::limit::Endpoint;
use crate::outbound::{AuthConfig, LimitsConfig};

/// Why a GET gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// The producer asked for a pause (429/503 + `Retry-After`); the endpoint is paused.
    #[error("producer answered HTTP {status} and asked for a pause of {pause:?}")]
    Throttled {
        /// The status.
        status: u16,
        /// The pause set (already capped).
        pause: Duration,
    },
    /// A failure worth retrying after a backoff: 5xx, 408, 429 without `Retry-After`, a
    /// refused fresh token, a timeout or a connection error.
    #[error("{0}")]
    Retry(String),
    /// 404 or 410: what was asked for does not exist (any more).
    #[error("producer answered HTTP {0}: not found")]
    Gone(u16),
    /// Any other 4xx (or 3xx, 501): asking again will not help. The start of the answer's
    /// body (at most [`REFUSAL_BODY_BYTES`]) says why, e.g. a RESO 400 "no longer available".
    #[error("producer answered HTTP {status}")]
    Refused {
        /// The status.
        status: u16,
        /// The start of the body.
        body: Bytes,
    },
    /// The answer was larger than allowed.
    #[error("the answer exceeds {0} bytes")]
    TooLarge(usize),
}

/// Most bytes of a refusal's body kept (to recognise a "no longer available" answer).
pub const REFUSAL_BODY_BYTES: usize = 4096;

/// A successful answer's body. Its request is counted once in
/// `entity_bridge_producer_requests_total`: under its status when the answer is dropped, or
/// under what the caller found wrong with the body ([`Answer::unusable`]).
pub struct Answer {
    /// The body, decompressed.
    pub body: Bytes,
    outcome: Outcome,
}

impl Answer {
    /// Counts the request as `outcome` (e.g. `invalid_page`: a 200 that is not a page)
    /// instead of its status.
    pub fn unusable(&mut self, outcome: &'static str) {
        self.outcome.label = outcome.into();
    }
}

/// The one count of a request whose body was read, made when its answer is dropped.
struct Outcome {
    metrics: Metrics,
    connector: String,
    role: &'static str,
    label: String,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        (self.metrics).outbound_get(&self.connector, self.role, &self.label);
    }
}

/// What a [`GetClient`] is built from.
pub struct GetClientConfig<'a> {
    /// The connector (logs, metrics).
    pub connector: &'a str,
    /// `poll` or `hydrate`: the `role` label of the request metrics.
    pub role: &'static str,
    /// Authentication, if any.
    pub auth: Option<&'a AuthConfig>,
    /// Rate (and concurrency) limits.
    pub limits: LimitsConfig,
    /// Longest `Retry-After` honoured.
    pub max_retry_after: Duration,
    /// Time for one request, body included.
    pub timeout: Duration,
    /// Largest body accepted (after decompression).
    pub max_body_bytes: usize,
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GetClientBuildError {
    /// The auth settings are unusable.
    #[error(transparent)]
    Auth(#[from] crate::outbound::auth::AuthBuildError),
    /// The HTTP client could not be set up (TLS roots).
    #[error("http client: {0}")]
    Client(String),
}

/// A producer-facing GET client.
pub struct GetClient {
    connector: String,
    role: &'static str,
    http: reqwest::Client,
    auth: Option<Auth>,
    endpoint: Endpoint,
    max_retry_after: Duration,
    max_body_bytes: usize,
    metrics: Metrics,
}

impl GetClient {
    /// Builds the client (no network yet).
    pub fn build(
        c: GetClientConfig<'_>,
        metrics: Metrics,
    ) -> Result<GetClient, GetClientBuildError> {
        let http = reqwest::Client::builder()
            .gzip(true)
            .timeout(c.timeout)
            .connect_timeout(c.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(crate::outbound::USER_AGENT)
            .build()
            .map_err(|e| GetClientBuildError::Client(e.to_string()))?;
        let auth = c.auth.map(|a| Auth::build(a, c.connector)).transpose()?;
        Ok(GetClient {
            connector: c.connector.to_owned(),
            role: c.role,
            http,
            auth,
            endpoint: Endpoint::new(&c.limits, 1),
            max_retry_after: c.max_retry_after,
            max_body_bytes: c.max_body_bytes,
            metrics,
        })
    }

    /// When a pause a producer asked for ends, if one is in force.
    pub fn paused_until(&self) -> Option<tokio::time::Instant> {
        self.endpoint.paused_until()
    }

    /// GETs `url` (JSON expected), within the limits; one more try after a refused token.
    pub async fn get(&self, url: &str) -> Result<Answer, GetError> {
        let _permit = self.endpoint.acquire(1).await;
        let mut refreshed = false;
        loop {
            let token = match &self.auth {
                Some(auth) => Some(auth.token().await.map_err(|e| {
                    self.count("token_error");
                    GetError::Retry(e.to_string())
                })?),
                None => None,
            };
            let mut request = self
                .http
                .get(url)
                .header(http::header::ACCEPT, "application/json");
            if let Some(t) = &token {
                request = request.bearer_auth(t.value.expose());
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    let what = if e.is_timeout() { "timeout" } else { "error" };
                    self.count(what);
                    return Err(GetError::Retry(format!("request failed: {}", transport(e))));
                }
            };
            let status = response.status();
            let verdict = classify(
                status,
                response.headers(),
                self.max_retry_after,
                SystemTime::now(),
            );
            // A 200 is counted once its body is read: it may still time out or be too large.
            if !matches!(verdict, Verdict::Delivered) {
                self.count(status.as_str());
            }
            match verdict {
                Verdict::Delivered => return self.body(response, status).await,
                Verdict::Unauthorized => {
                    let fresh = match (&self.auth, &token) {
                        (Some(auth), Some(t)) if !refreshed => auth.invalidate(t),
                        _ => false,
                    };
                    if fresh {
                        refreshed = true;
                        continue;
                    }
                    return Err(GetError::Retry(
                        "producer answered HTTP 401: the credentials are refused".into(),
                    ));
                }
                Verdict::Throttled { pause } => {
                    self.endpoint.pause(pause);
                    tracing::info!(connector = %self.connector, role = self.role, status = status.as_u16(), pause_ms = pause.as_millis() as u64, "producer asked for a pause");
                    return Err(GetError::Throttled {
                        status: status.as_u16(),
                        pause,
                    });
                }
                Verdict::Retry { .. } => {
                    return Err(GetError::Retry(format!(
                        "producer answered HTTP {}",
                        status.as_u16()
                    )))
                }
                Verdict::Poison if matches!(status, StatusCode::NOT_FOUND | StatusCode::GONE) => {
                    return Err(GetError::Gone(status.as_u16()))
                }
                Verdict::Poison => {
                    let body = read_capped(response, REFUSAL_BODY_BYTES)
                        .await
                        .map(|c| c.bytes)
                        .unwrap_or_default();
                    return Err(GetError::Refused {
                        status: status.as_u16(),
                        body,
                    });
                }
            }
        }
    }

    /// Reads a successful answer's body; the request is counted `timeout`, `error` or
    /// `too_large` here, or under `status` (or what the caller finds) with the [`Answer`].
    async fn body(
        &self,
        response: reqwest::Response,
        status: StatusCode,
    ) -> Result<Answer, GetError> {
        let capped = match read_capped(response, self.max_body_bytes).await {
            Ok(capped) => capped,
            Err(e) => {
                self.count(if e.is_timeout() { "timeout" } else { "error" });
                let why = transport(e);
                return Err(GetError::Retry(format!("reading the answer failed: {why}")));
            }
        };
        if capped.truncated {
            self.count("too_large");
            return Err(GetError::TooLarge(self.max_body_bytes));
        }
        Ok(Answer {
            body: capped.bytes,
            outcome: Outcome {
                metrics: self.metrics.clone(),
                connector: self.connector.clone(),
                role: self.role,
                label: status.as_str().to_owned(),
            },
        })
    }

    fn count(&self, status: &str) {
        self.metrics
            .outbound_get(&self.connector, self.role, status);
    }
}

/// A transport error's text without the URL (it may carry query parameters worth keeping out
/// of logs).
fn transport(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
