//! The embedded durable event log: the default sink when no Kafka or RabbitMQ is around, a
//! pull source for egress, and the RESO EntityEvent replay resource.
//!
//! - [`store`]: the SQLite-backed log (WAL, `synchronous=FULL`), one handle per file per
//!   process; [`writer`]: its group-commit writer thread.
//! - [`sink`]: append a batch, answer after the fsync.
//! - `cursors`: named consumer cursors and dead letters in the log's own database.
//! - [`source`]: read from a named cursor that advances only on `Outcome::Delivered`.
//! - [`retention`]: delete the oldest events by age / size; retention wins over cursors.
//! - [`replay`] + [`odata`]: `GET /EntityEvent` with the OData subset consumers use.
//! - [`token`]: a generated webhook token when none is configured (no insecure default).
//!
//! [`prepare`] runs first at start-up: it resolves log files against `data_dir` and fills in
//! generated tokens, so everything after it sees an ordinary configuration.

pub mod config;
mod cursors;
pub mod odata;
mod render;
pub mod replay;
pub mod retention;
pub mod sink;
pub mod source;
pub mod store;
pub mod token;
mod writer;

#[cfg(test)]
mod tests;

pub use config::{validate_logs, EmbeddedSinkConfig, EmbeddedSourceConfig, StartPosition};
pub use replay::replay_router;
pub use sink::EmbeddedSink;
pub use source::EmbeddedSource;
pub use store::{Log, StoreError};
pub use token::TokenNotice;

use crate::config::{Config, SinkConfig, SourceConfig};

/// Why the embedded parts of the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// A log could not be opened or configured.
    #[error("connector `{connector}`: {source}")]
    Log {
        /// The connector.
        connector: String,
        /// Why.
        source: StoreError,
    },
    /// A webhook token could not be generated or read.
    #[error("connector `{connector}`: {source}")]
    Token {
        /// The connector.
        connector: String,
        /// Why.
        source: token::TokenError,
    },
    /// A replay token could not be resolved.
    #[error("connector `{connector}`: replay token: {source}")]
    Secret {
        /// The connector.
        connector: String,
        /// Why.
        source: crate::secret::SecretError,
    },
    /// A replay resource would accept no token at all.
    #[error(
        "connector `{connector}`: the replay resource has no token (no webhook connector writes \
         to this log): set `replay_tokens`, or `replay = false`"
    )]
    NoReplayTokens {
        /// The connector.
        connector: String,
    },
}

/// Readies a validated configuration for start-up: embedded log files become paths under
/// `data_dir`, and every webhook source without tokens gets its generated token file
/// (created on first start). Returns the notices to print once the listener is bound.
pub fn prepare(mut config: Config) -> Result<(Config, Vec<TokenNotice>), EmbeddedError> {
    let data_dir = config.data_dir.clone();
    let mut notices = Vec::new();
    for (name, connector) in config.connectors.iter_mut() {
        match &mut connector.source {
            SourceConfig::Webhook(w) if w.tokens.is_empty() => {
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
