//! The admin listener: `/metrics`, `/healthz`, `/readyz`, on its own port.
//!
//! Separate from the webhook listener so Prometheus and orchestrator probes never compete with
//! producers, and so the admin port can stay off the public network.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::connector::Sink;
use crate::metrics::Metrics;

/// What the admin endpoints need.
#[derive(Clone)]
pub struct AdminState {
    /// The process metrics.
    pub metrics: Metrics,
    /// Every connector's sink, by connector name.
    pub sinks: Vec<(String, Arc<dyn Sink>)>,
    /// Timeout of each readiness probe.
    pub ready_timeout: Duration,
    /// Cancelled when shutdown begins; `/readyz` then answers 503 so traffic drains away.
    pub shutdown: CancellationToken,
}

/// Prometheus text exposition.
pub const METRICS_PATH: &str = "/metrics";
/// Liveness probe.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Readiness probe.
pub const READYZ_PATH: &str = "/readyz";
/// Every path the admin router serves (all `GET`).
pub const PATHS: [&str; 3] = [METRICS_PATH, HEALTHZ_PATH, READYZ_PATH];

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route(METRICS_PATH, get(metrics))
        .route(HEALTHZ_PATH, get(healthz))
        .route(READYZ_PATH, get(readyz))
        .fallback(super::admin_not_found)
        .method_not_allowed_fallback(super::method_not_allowed)
        .with_state(Arc::new(state))
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

/// Liveness: the process answers HTTP.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: every sink reaches its bus, and the bridge is not shutting down.
async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if state.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "shutting_down" })),
        )
            .into_response();
    }
    let state = &*state;
    let probes = state.sinks.iter().map(|(name, sink)| async move {
        let result = match tokio::time::timeout(state.ready_timeout, sink.ready()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("readiness probe timed out".to_owned()),
        };
        state.metrics.sink_ready(name, result.is_ok());
        (name.clone(), result)
    });
    let results = join_all(probes).await;
    let ready = results.iter().all(|(_, r)| r.is_ok());
    let connectors: serde_json::Map<String, serde_json::Value> = results
        .into_iter()
        .map(|(name, r)| {
            let v = match r {
                Ok(()) => serde_json::json!("ready"),
                Err(e) => serde_json::json!(format!("not ready: {e}")),
            };
            (name, v)
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
    });
    (status, Json(body)).into_response()
}
