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
//! `app::prepare` runs first at start-up: it resolves log files against `data_dir` and fills in
//! generated tokens, so everything after it sees an ordinary configuration. What spans several
//! connectors (which ones write, read and replay a log) lives at the root (`config::logs`,
//! `app::replay`): this folder sees one connector's settings at a time.

pub mod config;
mod cursors;
pub mod dead_letter;
pub mod metadata;
pub mod odata;
mod reads;
pub mod records;
mod records_http;
pub mod records_query;
mod render;
pub mod replay;
mod replay_query;
pub mod retention;
pub mod sink;
pub mod source;
pub mod store;
pub mod token;
mod writer;

#[cfg(test)]
mod cap_tests;
#[cfg(test)]
mod tests;

pub use config::{EmbeddedSinkConfig, EmbeddedSourceConfig, StartPosition};
pub use replay::{replay_router, ReplayLog};
pub use sink::EmbeddedSink;
pub use source::EmbeddedSource;
pub use store::{Log, StoreError};
pub use token::TokenNotice;

impl EmbeddedError {
    /// This error as the `part` (`sink`, `source`) of a connector that failed to build; the
    /// caller names the connector, so a log error keeps only its cause.
    pub fn into_build_error(self, part: &'static str) -> crate::runtime::build::BuildError {
        let source: Box<dyn std::error::Error + Send + Sync> = match self {
            EmbeddedError::Log { source, .. } => Box::new(source),
            other => Box::new(other),
        };
        crate::runtime::build::BuildError { part, source }
    }
}

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
