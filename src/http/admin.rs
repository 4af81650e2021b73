//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/feeds`, on its own port.
//!
//! Separate from the webhook listener so Prometheus and orchestrator probes never compete with
//! producers, and so the admin port can stay off the public network. It listens on loopback by
//! default; elsewhere it needs admin bearer tokens (`admin.tokens`), which every request must
//! carry except the orchestrator probes and, where the operator opts in, `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::connector::{Sink, SinkError};
use crate::layers::feeds::FeedMonitor;
use crate::metrics::Metrics;
use crate::runtime::{Health, Part, Readiness};

/// What `/readyz` looks at for one connector.
#[derive(Clone)]
pub struct ConnectorReadiness {
    /// The connector's name.
    pub name: String,
    /// Its sink, probed with [`Sink::ready`].
    pub sink: Arc<dyn Sink>,
    /// What its supervisor, source and sink last reported.
    pub health: Health,
}

/// One connector's feeds, for `/feeds`.
#[derive(Clone)]
pub struct FeedsOf {
    /// The connector's name.
    pub name: String,
    /// Its feeds.
    pub monitor: Arc<FeedMonitor>,
    /// Whether it suppresses duplicates.
    pub dedupe: bool,
}

/// What the admin endpoints need.
#[derive(Clone)]
pub struct AdminState {
    /// The process metrics.
    pub metrics: Metrics,
    /// Every connector, in configuration order.
    pub connectors: Vec<ConnectorReadiness>,
    /// Every connector's feeds, in configuration order.
    pub feeds: Vec<FeedsOf>,
    /// Timeout of each readiness probe.
    pub ready_timeout: Duration,
    /// Cancelled when shutdown begins; `/readyz` then answers 503 so traffic drains away.
    pub shutdown: CancellationToken,
    /// The admin tokens (`admin.tokens`, resolved); `None`: no token is asked for (loopback).
    pub tokens: Option<super::TokenSet>,
    /// `/metrics` is served without a token (`admin.metrics_without_token`).
    pub metrics_without_token: bool,
    /// The logs of connectors whose dead letters are embedded (`/dead-letters/{connector}`).
    pub dead_letters: Arc<super::admin_dead_letters::DeadLetterPages>,
}

/// Prometheus text exposition.
pub const METRICS_PATH: &str = "/metrics";
/// Liveness probe.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Readiness probe.
pub const READYZ_PATH: &str = "/readyz";
/// Each connector's feeds: sequence high-water marks, last event times, duplicates.
pub const FEEDS_PATH: &str = "/feeds";
/// A connector's dead letters kept in an embedded log (`{connector}` is its name).
pub const DEAD_LETTERS_PATH: &str = "/dead-letters/{connector}";
/// Every path the admin router serves (all `GET`).
pub const PATHS: [&str; 5] = [
    METRICS_PATH,
    HEALTHZ_PATH,
    READYZ_PATH,
    FEEDS_PATH,
    DEAD_LETTERS_PATH,
];

/// The orchestrator probes: served without a token, so a kubelet or compose health check
/// needs no secret.
pub const OPEN_PATHS: [&str; 2] = [HEALTHZ_PATH, READYZ_PATH];

/// The admin router.
pub fn router(state: AdminState) -> Router {
    let state = Arc::new(state);
    Router::new()
        .route(METRICS_PATH, get(metrics))
        .route(HEALTHZ_PATH, get(healthz))
        .route(READYZ_PATH, get(readyz))
        .route(FEEDS_PATH, get(feeds))
        .route(
            DEAD_LETTERS_PATH,
            get(super::admin_dead_letters::handle).with_state(state.dead_letters.clone()),
        )
        .fallback(super::admin_not_found)
        .method_not_allowed_fallback(super::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .with_state(state)
}

/// With admin tokens, every request but the open paths carries one; 401 otherwise.
async fn require_token(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(tokens) = &state.tokens else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    let open = OPEN_PATHS.contains(&path) || (path == METRICS_PATH && state.metrics_without_token);
    if open || tokens.verify(request.headers().get(header::AUTHORIZATION)) {
        return next.run(request).await;
    }
    let label = if path.starts_with("/dead-letters/") {
        "/dead-letters"
    } else {
        PATHS
            .iter()
            .find(|p| **p == path)
            .copied()
            .unwrap_or("other")
    };
    state.metrics.admin_unauthorized(label);
    let mut response = super::problem::Problem::new(
        StatusCode::UNAUTHORIZED,
        "the admin listener needs a bearer token (one of admin.tokens)",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"entity-bridge-admin\""),
    );
    response
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// Each connector's feeds: `{"connectors": {"<name>": {"dedupe": …, "feeds": [{"source": …,
/// "high_water_mark": …, "last_event_at": …, counters}], "untracked_events": …}}}`.
async fn feeds(State(state): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    let connectors: serde_json::Map<String, serde_json::Value> = (state.feeds.iter())
        .map(|f| {
            let view = serde_json::to_value(f.monitor.view(f.dedupe)).unwrap_or_default();
            (f.name.clone(), view)
        })
        .collect();
    Json(serde_json::json!({ "connectors": connectors }))
}

/// Liveness: the process answers HTTP.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: every gating connector is ready (its task runs, its source is connected, its sink
/// delivers and answers its probe), and the bridge is not shutting down. Connectors with
/// `readiness = "report"` are shown but do not turn it 503.
async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if state.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "shutting_down" })),
        )
            .into_response();
    }
    let state = &*state;
    let probes = state.connectors.iter().map(|c| async move {
        let probed = match tokio::time::timeout(state.ready_timeout, c.sink.ready()).await {
            Ok(Ok(())) => Ok(()),
            // The part is named already ("sink probe: …"): the reason alone.
            Ok(Err(SinkError::Unavailable { reason })) => Err(reason),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("readiness probe timed out".to_owned()),
        };
        state.metrics.sink_ready(&c.name, probed.is_ok());
        match probed {
            Ok(()) => c.health.ok(Part::SinkProbe),
            Err(e) => c.health.failed(Part::SinkProbe, e),
        }
        c.health.run_probe();
        (c.name.clone(), c.health.snapshot())
    });
    let snapshots = join_all(probes).await;
    let ready =
        (snapshots.iter()).all(|(_, snap)| snap.ready || snap.readiness == Readiness::Report);
    let connectors: serde_json::Map<String, serde_json::Value> = (snapshots.iter())
        .map(|(name, snap)| {
            let summary = if snap.ready {
                "ready".to_owned()
            } else {
                format!("not ready: {}", snap.problems.join("; "))
            };
            (name.clone(), serde_json::Value::String(summary))
        })
        .collect();
    let states: serde_json::Map<String, serde_json::Value> = (snapshots.into_iter())
        .map(|(name, snap)| {
            (
                name,
                // Strings, booleans and unit enums: serializing a snapshot cannot fail.
                serde_json::to_value(snap).expect("a snapshot serializes"),
            )
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "connectors": connectors,
        "states": states,
    });
    (status, Json(body)).into_response()
}
