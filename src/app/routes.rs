//! The webhook listener's route table as the configuration defines it, checked before start-up:
//! the router (axum) panics on a path it cannot register, so two routes with the same method
//! and path, or two patterns its matcher cannot tell apart, must be a configuration error that
//! names both owners, not a panic at start-up. The paths come from the same functions the
//! routers use ([`WebhookSourceConfig::route_path`], [`LogRoutes`]).
//!
//! [`WebhookSourceConfig::route_path`]: crate::http::WebhookSourceConfig::route_path

use std::collections::BTreeMap;

use axum::http::Method;

use crate::config::{Config, SourceConfig};
use crate::embedded::metadata::LogRoutes;

/// One route of the webhook listener and where it comes from.
#[derive(Debug, Clone)]
pub struct Route {
    /// The method.
    pub method: Method,
    /// The path pattern as registered (`/EntityEvent({key}`).
    pub path: String,
    /// The connector whose configuration defines it.
    pub connector: String,
    /// The key that sets it (`source.path`, `sink.replay_path`, `sink.records`).
    pub key: String,
}

/// Every route the webhook listener will serve, in the order they are registered.
pub fn table(config: &Config) -> Vec<Route> {
    let mut routes = Vec::new();
    let mut add = |method: Method, path: String, connector: &str, key: &str| {
        routes.push(Route {
            method,
            path,
            connector: connector.to_owned(),
            key: key.to_owned(),
        })
    };
    let mut roots = std::collections::HashSet::new();
    for (log, _) in super::replay::logs(config).into_values() {
        let routes = LogRoutes::of(&log.sink);
        for r in &routes.records {
            add(Method::GET, r.one.clone(), &log.connector, "sink.records");
            add(Method::GET, r.many.clone(), &log.connector, "sink.records");
        }
        // The first log of a root serves its documents (as `replay_router` does).
        if roots.insert(routes.root.clone()) {
            add(
                Method::GET,
                routes.metadata(),
                &log.connector,
                "sink.replay_path",
            );
            add(
                Method::GET,
                routes.root.clone(),
                &log.connector,
                "sink.replay_path",
            );
        }
        add(
            Method::GET,
            routes.entity,
            &log.connector,
            "sink.replay_path",
        );
        add(
            Method::GET,
            routes.collection,
            &log.connector,
            "sink.replay_path",
        );
    }
    for (name, connector) in &config.connectors {
        if let SourceConfig::Webhook(w) = &connector.source {
            add(Method::POST, w.route_path(name), name, "source.path");
            if w.token_endpoint.is_some() {
                add(
                    Method::POST,
                    w.token_path(name),
                    name,
                    "source.token_endpoint",
                );
            }
        }
    }
    routes
}

/// Refuses a table the router would panic on. `Err((connector, key, detail))`.
pub fn check(config: &Config) -> Result<(), (String, String, String)> {
    check_table(&table(config))
}

fn check_table(routes: &[Route]) -> Result<(), (String, String, String)> {
    let owner = |r: &Route| format!("`{}` of connector `{}`", r.key, r.connector);
    let mut matcher = matchit::Router::new();
    let mut by_path: BTreeMap<&str, Vec<&Route>> = BTreeMap::new();
    for (i, route) in routes.iter().enumerate() {
        let refuse = |detail: String| Err((route.connector.clone(), route.key.clone(), detail));
        if let Some(other) = (by_path.get(route.path.as_str()))
            .and_then(|rs| rs.iter().find(|r| r.method == route.method))
        {
            return refuse(format!(
                "{} {} is also served by {}; give each its own path",
                route.method,
                route.path,
                owner(other)
            ));
        }
        if !by_path.contains_key(route.path.as_str()) {
            if let Err(e) = matcher.insert(route.path.as_str(), i) {
                let with = match &e {
                    matchit::InsertError::Conflict { with } => (routes.iter())
                        .find(|r| &r.path == with)
                        .map(|r| format!(" ({} {} of {})", r.method, r.path, owner(r)))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                return refuse(format!(
                    "the route {} {} cannot be served: {e}{with}",
                    route.method, route.path
                ));
            }
        }
        by_path.entry(route.path.as_str()).or_default().push(route);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, path: &str, connector: &str) -> Route {
        Route {
            method,
            path: path.into(),
            connector: connector.into(),
            key: "k".into(),
        }
    }

    #[test]
    fn same_path_different_methods_share_a_route() {
        let routes = [
            route(Method::GET, "/EntityEvent", "a"),
            route(Method::POST, "/EntityEvent", "b"),
        ];
        check_table(&routes).unwrap();
    }

    #[test]
    fn same_method_and_path_is_refused_naming_both() {
        let routes = [
            route(Method::POST, "/webhooks/a/token", "a"),
            route(Method::POST, "/webhooks/a/token", "b"),
        ];
        let (connector, _, detail) = check_table(&routes).unwrap_err();
        assert_eq!(connector, "b");
        assert!(detail.contains("connector `a`"), "{detail}");
    }

    #[test]
    fn patterns_the_matcher_cannot_tell_apart_are_refused() {
        let routes = [
            route(Method::GET, "/Property({key}", "a"),
            route(Method::GET, "/Property({id}", "b"),
        ];
        let (connector, _, detail) = check_table(&routes).unwrap_err();
        assert_eq!(connector, "b");
        assert!(detail.contains("/Property({key}"), "{detail}");
    }
}
