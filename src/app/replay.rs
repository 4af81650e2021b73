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
    let base = (config.http.public_base_url.as_deref())
        .unwrap_or("")
        .trim_end_matches('/');
    let logs = logs(config).into_values().map(|(log, _)| log).collect();
    replay_router(logs, base, metrics).await
}

/// Every log with `replay = true`: the first writing connector and its settings (writers of a
/// shared log agree on them, `config::logs`), the tokens of every writer, and whether a writer
/// is a webhook source that gets a generated token at start-up (`app::prepare`).
pub(super) fn logs(config: &Config) -> BTreeMap<PathBuf, (ReplayLog, bool)> {
    let mut logs: BTreeMap<PathBuf, (ReplayLog, bool)> = BTreeMap::new();
    for (name, connector) in &config.connectors {
        let SinkConfig::Embedded(sink) = &connector.sink else {
            continue;
        };
        if !sink.replay {
            continue;
        }
        let (entry, generated) = logs
            .entry(sink.path(&config.data_dir, name))
            .or_insert_with(|| {
                let log = ReplayLog {
                    connector: name.clone(),
                    sink: sink.clone(),
                    tokens: sink.replay_tokens.clone(),
                };
                (log, false)
            });
        if let SourceConfig::Webhook(w) = &connector.source {
            entry.tokens.extend(w.tokens.iter().cloned());
            *generated |= w.tokens.is_empty() && w.token_endpoint.is_none() && w.jwt.is_none();
        }
    }
    logs
}

/// A replay resource no token can read is refused: issued and IdP tokens do not read it, so
/// a log written only by such webhook sources needs `replay_tokens`. `Err((connector, key,
/// detail))`.
pub(super) fn check_readers(config: &Config) -> Result<(), (String, String, String)> {
    for (log, generated) in logs(config).into_values() {
        if log.tokens.is_empty() && !generated {
            return Err((
                log.connector,
                "sink.replay".into(),
                "the replay resource would accept no token: it is read with the webhook \
                 source's fixed `tokens` or the sink's `replay_tokens` (tokens issued by a \
                 token endpoint or an identity provider cannot read it); set \
                 `sink.replay_tokens`, give the source `tokens`, or set `sink.replay = false`"
                    .into(),
            ));
        }
    }
    Ok(())
}
