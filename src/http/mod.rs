//! HTTP: the webhook listener (producers push here) and the admin listener (probes, metrics).

pub mod admin;
mod admin_dead_letters;
mod auth;
mod body;
mod config;
pub mod deadline;
pub mod jwks;
pub mod jwt;
pub mod problem;
pub mod quota;
pub mod serve;
pub mod tls;
pub mod token;
mod token_config;
mod token_guard;
mod token_request;
pub mod webhook;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;

pub use admin_dead_letters::{DeadLetterLogs, DeadLetterPages};
pub use auth::TokenSet;
pub use config::{
    default_max_json_depth, valid_route_path, ConnectionsConfig, WebhookSourceConfig,
    MAX_JSON_DEPTH_CEILING, MAX_JSON_DEPTH_RANGE, MAX_TIMEOUT_MS, ROUTE_PATH_RULE,
};
pub use tls::TlsConfig;
pub use token_config::{TokenClientConfig, TokenEndpointConfig};
pub use webhook::WebhookConnector;

use problem::Problem;

/// The webhook router: `POST <path>` for every webhook connector (gzip bodies are decoded by the
/// connector, see [`body`]), `POST <path>/token` for those with a token endpoint, plus `extra`
/// routes served on the same listener (the embedded log's replay resource). Unknown paths and
/// methods get problem bodies too.
pub fn webhook_router(
    routes: Vec<(String, Arc<WebhookConnector>)>,
    tokens: Vec<(String, Arc<token::TokenEndpoint>)>,
    extra: Router,
) -> Router {
    let mut router = extra;
    for (path, connector) in routes {
        router = router.route(&path, post(webhook::handle).with_state(connector));
    }
    for (path, endpoint) in tokens {
        router =
            router.route(
                &path,
                post(token::handle).with_state(endpoint).layer(
                    axum::extract::DefaultBodyLimit::max(token::MAX_TOKEN_REQUEST_BYTES),
                ),
            );
    }
    router
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "no webhook connector serves this path",
            )
            .into_response()
        })
        .method_not_allowed_fallback(method_not_allowed)
}

/// Unknown admin paths get a problem body too.
pub(crate) async fn admin_not_found() -> axum::response::Response {
    Problem::new(
        StatusCode::NOT_FOUND,
        "the admin listener serves /metrics, /healthz and /readyz",
    )
    .into_response()
}

pub(crate) async fn method_not_allowed(method: axum::http::Method) -> axum::response::Response {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on this path"),
    )
    .into_response()
}
