//! The HTTP surface as route patterns: what `docs/openapi.yaml` describes, no more, no less.
//!
//! The patterns come from where the routers get theirs (the config defaults for the webhook
//! and replay paths, the admin path constants), and a test requests every one of them on a
//! running bridge and compares the list with the OpenAPI document, so neither can drift from
//! the code. Paths are OpenAPI templates: `{connector}` stands for a connector name.

use axum::http::Method;

use crate::embedded::EmbeddedSinkConfig;
use crate::http::admin;
use crate::http::WebhookSourceConfig;

/// Which listener serves a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Listener {
    /// `http.listen_addr`: webhook pushes and the replay resource (HTTPS with `[http.tls]`).
    Webhook,
    /// `admin.listen_addr`: metrics and probes.
    Admin,
}

/// One route: listener, method and path template.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// The listener.
    pub listener: Listener,
    /// The HTTP method.
    pub method: Method,
    /// The default path, `{connector}` for the connector name.
    pub path: String,
}

/// Every route the bridge serves with default paths. A webhook connector's `path` and an
/// embedded sink's `replay_path` can move theirs; the operations stay the same.
pub fn routes() -> Vec<Route> {
    let route = |listener, method, path: &str| Route {
        listener,
        method,
        path: path.to_owned(),
    };
    let mut routes = vec![
        route(
            Listener::Webhook,
            Method::POST,
            &WebhookSourceConfig::default().route_path("{connector}"),
        ),
        route(
            Listener::Webhook,
            Method::POST,
            &WebhookSourceConfig::default().token_path("{connector}"),
        ),
        route(
            Listener::Webhook,
            Method::GET,
            &EmbeddedSinkConfig::default().replay_path,
        ),
        route(
            Listener::Webhook,
            Method::GET,
            &format!(
                "{}({{EntityEventSequence}})",
                EmbeddedSinkConfig::default().replay_path
            ),
        ),
        route(
            Listener::Webhook,
            Method::GET,
            &format!(
                "{}{{Resource}}('{{key}}')",
                crate::embedded::metadata::service_root(&EmbeddedSinkConfig::default().replay_path)
            ),
        ),
        route(
            Listener::Webhook,
            Method::GET,
            &format!(
                "{}{{Resource}}",
                crate::embedded::metadata::service_root(&EmbeddedSinkConfig::default().replay_path)
            ),
        ),
        route(
            Listener::Webhook,
            Method::GET,
            &format!(
                "{}$metadata",
                crate::embedded::metadata::service_root(&EmbeddedSinkConfig::default().replay_path)
            ),
        ),
        route(
            Listener::Webhook,
            Method::GET,
            &crate::embedded::metadata::service_root(&EmbeddedSinkConfig::default().replay_path),
        ),
    ];
    routes.extend(
        admin::PATHS
            .iter()
            .map(|path| route(Listener::Admin, Method::GET, path)),
    );
    routes
}
