//! Real local HTTP peers for egress tests: a RESO consumer endpoint that records every request
//! and answers from a script, and an OAuth2 token endpoint (client credentials).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;

/// One request as the consumer saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Arrival (monotonic).
    pub at: Instant,
    /// Arrival (wall clock).
    pub wall: SystemTime,
    /// When the answer was handed back (monotonic).
    pub answered_at: Instant,
    /// The status answered.
    pub status: u16,
    /// Request headers.
    pub headers: HeaderMap,
    /// Raw body.
    pub body: Bytes,
}

impl Received {
    /// A request header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `value` array of the RESO payload.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).expect("JSON body");
        v["value"].as_array().cloned().unwrap_or_default()
    }

    /// `(ResourceRecordKey, EntityEventSequence)` of every event.
    pub fn keys(&self) -> Vec<(String, i64)> {
        self.events()
            .iter()
            .map(|e| {
                (
                    e["ResourceRecordKey"].as_str().unwrap().to_owned(),
                    e["EntityEventSequence"].as_i64().unwrap(),
                )
            })
            .collect()
    }
}

/// What to answer: status, extra headers.
pub type Reply = (u16, Vec<(&'static str, String)>);

/// Decides the answer of request number `n` (0-based) given its headers and body.
pub type Script = Box<dyn Fn(usize, &HeaderMap, &Bytes) -> Reply + Send + Sync>;

struct ReceiverState {
    script: Script,
    log: Mutex<Vec<Received>>,
}

/// A consumer endpoint on 127.0.0.1.
pub struct Receiver {
    /// Its URL.
    pub url: String,
    state: Arc<ReceiverState>,
    task: tokio::task::JoinHandle<()>,
}

async fn handle(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let wall = SystemTime::now();
    let mut log = state.log.lock().unwrap();
    let (status, extra) = (state.script)(log.len(), &headers, &body);
    let answered_at = Instant::now();
    log.push(Received {
        at,
        wall,
        answered_at,
        status,
        headers,
        body,
    });
    let mut response = StatusCode::from_u16(status).unwrap().into_response();
    for (k, v) in extra {
        response.headers_mut().insert(k, v.parse().unwrap());
    }
    response
}

impl Receiver {
    /// Starts a receiver answering with `script`.
    pub async fn start(script: Script) -> Receiver {
        let state = Arc::new(ReceiverState {
            script,
            log: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/events", post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { url, state, task }
    }

    /// A receiver that accepts everything.
    pub async fn accepting() -> Receiver {
        Self::start(Box::new(|_, _, _| (200, vec![]))).await
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Received> {
        self.state.log.lock().unwrap().clone()
    }

    /// Distinct `(key, sequence)` pairs answered 2xx so far.
    pub fn delivered(&self) -> std::collections::BTreeSet<(String, i64)> {
        self.requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .flat_map(|r| r.keys())
            .collect()
    }

    /// Polls until `n` distinct events were accepted; panics after `timeout`.
    pub async fn wait_delivered(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.delivered().len();
            if got >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {got} of {n} events delivered within {timeout:?}; {} requests",
                self.requests().len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An OAuth2 token endpoint (client credentials) and the consumer that checks its tokens.
pub struct OAuthPeer {
    /// Tokens issued: `(token, issued at, lifetime)`.
    pub issued: Mutex<Vec<(String, Instant, Duration)>>,
    /// Tokens the consumer refuses from now on.
    pub revoked: Mutex<Vec<String>>,
    /// Lifetime of the next tokens, by issue number (0-based); the last entry repeats.
    pub lifetimes: Vec<Duration>,
    /// The expected `Authorization: Basic` credentials (base64 of `id:secret`).
    pub client_basic: String,
}

impl OAuthPeer {
    /// Whether the consumer accepts `token` now.
    pub fn accepts(&self, token: &str) -> bool {
        if self.revoked.lock().unwrap().iter().any(|t| t == token) {
            return false;
        }
        self.issued
            .lock()
            .unwrap()
            .iter()
            .any(|(t, at, life)| t == token && at.elapsed() < *life)
    }

    /// Starts the token endpoint; returns its URL.
    pub async fn start_token_endpoint(self: &Arc<Self>) -> (String, tokio::task::JoinHandle<()>) {
        async fn token(
            State(peer): State<Arc<OAuthPeer>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            let basic = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Basic "));
            let form = String::from_utf8_lossy(&body);
            if basic != Some(peer.client_basic.as_str())
                || !form.contains("grant_type=client_credentials")
            {
                return (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(serde_json::json!({"error": "invalid_client"})),
                )
                    .into_response();
            }
            let mut issued = peer.issued.lock().unwrap();
            let n = issued.len();
            let lifetime = peer.lifetimes[n.min(peer.lifetimes.len() - 1)];
            let value = format!("tok-{n}-{}", crate::common::unique("t"));
            issued.push((value.clone(), Instant::now(), lifetime));
            axum::Json(serde_json::json!({
                "access_token": value,
                "token_type": "bearer",
                "expires_in": lifetime.as_secs(),
            }))
            .into_response()
        }
        let app = Router::new()
            .route("/token", post(token))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (url, task)
    }
}
