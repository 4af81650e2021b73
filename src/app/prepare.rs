//! Readies a validated configuration for start-up: embedded log files become paths under
//! `data_dir`, and every webhook source without tokens gets its generated token file. Here at
//! the root because it walks every connector; the embedded store and the token files only
//! ever see one.

use crate::config::{Config, SinkConfig, SourceConfig};
use crate::dead_letter::DeadLetterConfig;
use crate::embedded::token;
use crate::embedded::{EmbeddedError, TokenNotice};
use crate::poll::{EventsPollConfig, ResoPollConfig};

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
        let own_log = match &mut connector.sink {
            SinkConfig::Embedded(s) => {
                s.file = Some(s.path(&data_dir, name));
                s.file.clone()
            }
            _ => None,
        };
        // Embedded dead-letter destinations: `file` under data_dir, or the sink's own log.
        let dead_letters = [
            match &mut connector.source {
                SourceConfig::Kafka(k) => k.dead_letter.as_mut(),
                SourceConfig::ResoPoll(ResoPollConfig(p))
                | SourceConfig::EventsPoll(EventsPollConfig(p)) => p.dead_letter.as_mut(),
                _ => None,
            },
            match &mut connector.sink {
                SinkConfig::Webhook(p) => Some(&mut p.dead_letter),
                _ => None,
            },
        ];
        for dead_letter in dead_letters.into_iter().flatten() {
            if let DeadLetterConfig::Embedded(e) = dead_letter {
                e.file = match &e.file {
                    Some(f) => Some(data_dir.join(f)),
                    None => own_log.clone(),
                };
            }
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
