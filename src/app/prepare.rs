//! Readies a validated configuration for start-up: embedded log files become paths under
//! `data_dir`, and every webhook source without tokens gets its generated token file. Here at
//! the root because it walks every connector; the embedded store and the token files only
//! ever see one.

use crate::config::{Config, SinkConfig, SourceConfig};
use crate::embedded::token;
use crate::embedded::{EmbeddedError, TokenNotice};

/// Resolves log files and generates missing webhook tokens (created on first start). Returns
/// the notices to print once the listener is bound.
pub fn prepare(mut config: Config) -> Result<(Config, Vec<TokenNotice>), EmbeddedError> {
    let data_dir = config.data_dir.clone();
    let mut notices = Vec::new();
    for (name, connector) in config.connectors.iter_mut() {
        match &mut connector.source {
            SourceConfig::Webhook(w)
                if w.tokens.is_empty() && w.token_endpoint.is_none() && w.jwt.is_none() =>
            {
                let (reference, notice) = token::ensure_token(&data_dir, name, &w.route_path(name))
                    .map_err(|source| EmbeddedError::Token {
                        connector: name.clone(),
                        source,
                    })?;
                w.tokens.push(reference);
                notices.push(notice);
            }
            SourceConfig::Embedded(e) => e.file = e.path(&data_dir),
            _ => {}
        }
        if let SinkConfig::Embedded(s) = &mut connector.sink {
            s.file = Some(s.path(&data_dir, name));
        }
    }
    warn_about_orphaned_default_log(&config);
    Ok((config, notices))
}

/// Before each connector had its own log, every embedded sink without a `file` wrote
/// `events.db`. A log of that name that nothing opens any more is most likely such a log:
/// say how to keep serving it instead of replaying from an empty `<connector>.db` in silence.
fn warn_about_orphaned_default_log(config: &Config) {
    let old = config.data_dir.join("events.db");
    if !old.is_file() {
        return;
    }
    let used = config.connectors.values().any(|c| {
        matches!(&c.sink, SinkConfig::Embedded(s) if s.file.as_deref() == Some(old.as_path()))
            || matches!(&c.source, SourceConfig::Embedded(e) if e.file == old)
    });
    if !used {
        tracing::warn!(
            file = %old.display(),
            "no connector uses this log: embedded sinks without `file` now write <connector>.db; \
             to keep appending to and replaying this one, set `file = \"events.db\"` on the \
             connector that wrote it (or `share_log = true` on each connector that shared it)"
        );
    }
}
