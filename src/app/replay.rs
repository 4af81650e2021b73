//! Collects the logs whose EntityEvent replay resource is served, with the tokens that may read
//! each (every writing connector's webhook tokens plus its `replay_tokens`), and builds their
//! routes. At the root because a log's readers are defined across connectors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::Router;

use crate::config::{Config, SinkConfig, SourceConfig};
use crate::embedded::replay::{replay_router, ReplayLog};
use crate::embedded::EmbeddedError;
use crate::metrics::Metrics;

/// Routes for every log with `replay = true`. `config` must be prepared (`app::prepare`):
/// files resolved, generated webhook tokens filled in.
pub async fn router(config: &Config, metrics: &Metrics) -> Result<Router, EmbeddedError> {
    // Per log: the first writing connector and its settings (writers of a shared log agree on
    // them, `config::logs`), and the tokens of every writer.
    let mut logs: BTreeMap<PathBuf, ReplayLog> = BTreeMap::new();
    for (name, connector) in &config.connectors {
        let SinkConfig::Embedded(sink) = &connector.sink else {
            continue;
        };
        if !sink.replay {
            continue;
        }
        let entry = logs
            .entry(sink.resolved_file())
            .or_insert_with(|| ReplayLog {
                connector: name.clone(),
                sink: sink.clone(),
                tokens: sink.replay_tokens.clone(),
            });
        if let SourceConfig::Webhook(w) = &connector.source {
            entry.tokens.extend(w.tokens.iter().cloned());
        }
    }
    let base = (config.http.public_base_url.as_deref())
        .unwrap_or("")
        .trim_end_matches('/');
    replay_router(logs.into_values().collect(), base, metrics).await
}
