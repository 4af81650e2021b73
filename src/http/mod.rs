//! HTTP: the webhook listener (producers push here) and the admin listener (probes, metrics).

pub mod admin;
mod auth;
mod body;
mod config;
pub mod problem;
pub mod surface;
pub mod tls;
pub mod webhook;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use tower_http::decompression::RequestDecompressionLayer;

pub use auth::TokenSet;
pub use config::WebhookSourceConfig;
pub use tls::TlsConfig;
pub use webhook::WebhookConnector;

use problem::Problem;

/// The webhook router: `POST <path>` for every webhook connector, gzip bodies accepted, plus
/// `extra` routes served on the same listener (the embedded log's replay resource).
pub fn webhook_router(routes: Vec<(String, Arc<WebhookConnector>)>, extra: Router) -> Router {
    let mut router = extra;
    for (path, connector) in routes {
        router = router.route(&path, post(webhook::handle).with_state(connector));
    }
    router
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "no webhook connector serves this path",
            )
            .into_response()
        })
        .layer(RequestDecompressionLayer::new())
}
