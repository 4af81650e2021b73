//! Cross-connector checks of the embedded logs: which connectors write, read and replay which
//! log. Here, at the root, because they look at every connector at once; the embedded store
//! itself only ever sees its own connector's settings.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{Config, SinkConfig, SourceConfig};
use crate::embedded::EmbeddedSinkConfig;

/// Cross-connector checks: sinks sharing a log agree on its settings, replay paths are unique
/// and collide with no webhook path, no two sources share a cursor of one log.
/// `Err((connector, key, detail))`.
pub fn validate_logs(config: &Config) -> Result<(), (String, String, String)> {
    let mut logs: BTreeMap<PathBuf, (&str, &EmbeddedSinkConfig)> = BTreeMap::new();
    let mut replay_paths: BTreeMap<&str, PathBuf> = BTreeMap::new();
    let mut cursors: BTreeMap<(PathBuf, String), &str> = BTreeMap::new();
    let webhook_paths: BTreeMap<String, &str> = config
        .connectors
        .iter()
        .filter_map(|(name, c)| match &c.source {
            SourceConfig::Webhook(w) => Some((w.route_path(name), name.as_str())),
            _ => None,
        })
        .collect();
    for (name, connector) in &config.connectors {
        if let SourceConfig::Embedded(e) = &connector.source {
            let key = (e.path(&config.data_dir), e.cursor_name(name));
            if let Some(other) = cursors.insert(key, name) {
                return Err((
                    name.clone(),
                    "source.cursor".into(),
                    format!("connector `{other}` reads the same log with the same cursor"),
                ));
            }
        }
        let SinkConfig::Embedded(sink) = &connector.sink else {
            continue;
        };
        let path = sink.path(&config.data_dir, name);
        if let Some((other, settings)) = logs.get(&path) {
            if !(sink.share_log && settings.share_log) {
                return Err((
                    name.clone(),
                    "sink.file".into(),
                    format!(
                        "connector `{other}` writes the log `{}` too; two connectors share a log \
                         only when both set `share_log = true` (their producers' tokens can then \
                         replay each other's events)",
                        path.display()
                    ),
                ));
            }
            let mut a = (*settings).clone();
            a.file = sink.file.clone();
            if &a != sink {
                return Err((
                    name.clone(),
                    "sink".into(),
                    format!(
                        "writes the log `{}` like connector `{other}` but with other settings; \
                         connectors sharing a log must configure it identically",
                        path.display()
                    ),
                ));
            }
            continue;
        }
        logs.insert(path.clone(), (name, sink));
        if !sink.replay {
            continue;
        }
        if let Some(owner) = webhook_paths.get(&sink.replay_path) {
            return Err((
                name.clone(),
                "sink.replay_path".into(),
                format!(
                    "path `{}` is also the webhook path of connector `{owner}`",
                    sink.replay_path
                ),
            ));
        }
        if let Some(other) = replay_paths.insert(&sink.replay_path, path.clone()) {
            return Err((
                name.clone(),
                "sink.replay_path".into(),
                format!(
                    "path `{}` already serves the log `{}`; give this connector its own \
                     `replay_path` (e.g. `/{name}/EntityEvent`) or `replay = false`",
                    sink.replay_path,
                    other.display()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "logs_tests.rs"]
mod tests;
