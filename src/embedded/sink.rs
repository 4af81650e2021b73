//! The embedded sink: appends each batch to the local log and answers only after the fsync.
//!
//! `send` returns `Ok` once the batch's transaction is committed with `synchronous=FULL`, so
//! an answered push survives `kill -9` and power loss. A full disk (or `max_file_bytes`) and
//! every other store error become [`SinkError::Unavailable`] (503 + `Retry-After` at the
//! webhook); a writer queue that is full becomes [`SinkError::Overloaded`] (429). SQLite
//! rolls the failed transaction back, so nothing half-written is ever visible.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::config::EmbeddedSinkConfig;
use super::retention::{self, RetentionPolicy};
use super::store::{Log, StoreError};
use super::EmbeddedError;
use crate::connector::{Message, Sink, SinkError};
use crate::metrics::Metrics;

/// Appends to an embedded log.
pub struct EmbeddedSink {
    connector: String,
    log: Arc<Log>,
    /// The resources whose latest records are kept (`[sink.records]`).
    records: Arc<Vec<String>>,
    metrics: Metrics,
    _retention: Option<DropGuard>,
}

impl EmbeddedSinkConfig {
    /// Opens the log (`file` must already be resolved against `data_dir`, see
    /// `app::prepare`) and starts its retention.
    pub async fn build(
        &self,
        connector: &str,
        metrics: Metrics,
    ) -> Result<EmbeddedSink, EmbeddedError> {
        let fail = |source: StoreError| EmbeddedError::Log {
            connector: connector.to_owned(),
            source,
        };
        let log = Log::open_async(self.resolved_file()).await.map_err(fail)?;
        log.set_max_file_bytes(self.max_file_bytes)
            .await
            .map_err(fail)?;
        log.set_key_index(self.replay_index_record_keys)
            .await
            .map_err(fail)?;
        let policy = RetentionPolicy {
            max_age: (self.retention_max_age_hours > 0)
                .then(|| Duration::from_secs(self.retention_max_age_hours.saturating_mul(3600))),
            max_bytes: (self.retention_max_bytes > 0).then_some(self.retention_max_bytes),
            records_max_age: (self.records.as_ref())
                .filter(|r| r.max_age_hours > 0)
                .map(|r| Duration::from_secs(r.max_age_hours.saturating_mul(3600))),
            records_max_bytes: (self.records.as_ref())
                .filter(|r| r.max_bytes > 0)
                .map(|r| r.max_bytes),
        };
        let mut guard = None;
        if policy.is_active() && log.claim_retention() {
            let cancel = CancellationToken::new();
            retention::spawn(
                &log,
                connector.to_owned(),
                policy,
                Duration::from_secs(self.retention_interval_seconds),
                metrics.clone(),
                cancel.clone(),
            );
            guard = Some(cancel.drop_guard());
        }
        log.report_size(&metrics, connector);
        tracing::info!(connector, path = %log.path().display(), "embedded log open");
        Ok(EmbeddedSink {
            connector: connector.to_owned(),
            log,
            records: Arc::new(
                (self.records.iter())
                    .flat_map(|r| r.resources.iter().cloned())
                    .collect(),
            ),
            metrics,
            _retention: guard,
        })
    }
}

impl EmbeddedSink {
    /// The log this sink appends to.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }
}

fn sink_error(e: StoreError) -> SinkError {
    match e {
        StoreError::Overloaded => SinkError::Overloaded {
            reason: e.to_string(),
        },
        other => SinkError::Unavailable {
            reason: other.to_string(),
        },
    }
}

#[async_trait]
impl Sink for EmbeddedSink {
    async fn send(&self, batch: &[Message]) -> Result<(), SinkError> {
        self.log
            .append_with_records(&self.connector, batch, self.records.clone())
            .await
            .map_err(sink_error)?;
        self.log.report_size(&self.metrics, &self.connector);
        Ok(())
    }

    async fn ready(&self) -> Result<(), SinkError> {
        self.log.ping().await.map_err(sink_error)
    }

    async fn flush(&self, _timeout: Duration) -> Result<(), SinkError> {
        // Every `send` is durable before it returns: nothing is buffered.
        Ok(())
    }
}

#[async_trait]
impl crate::runtime::build::BuildSink for EmbeddedSinkConfig {
    async fn build_sink(
        &self,
        ctx: &crate::runtime::build::BuildContext,
    ) -> Result<Arc<dyn Sink>, crate::runtime::build::BuildError> {
        let sink = self
            .build(&ctx.connector, ctx.metrics.clone())
            .await
            .map_err(|e| e.into_build_error("sink"))?;
        Ok(std::sync::Arc::new(sink))
    }
}
