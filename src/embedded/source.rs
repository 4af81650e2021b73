//! The embedded source: reads a log from a named cursor stored in the same database.
//!
//! Same acknowledgement semantics as a Kafka offset: the cursor moves (durably, fsynced) only
//! when the pump settles a batch as [`Outcome::Delivered`]. [`Outcome::Retry`] leaves it where
//! it was, so the same batch is read again; [`Outcome::Poison`] (or the poison events of
//! [`Outcome::Partly`]) copies the batch into the
//! `dead_letters` table with the reason and moves the cursor past it in one transaction.
//! When caught up, the source sleeps until a writer in this process appends (a `Notify`) or
//! `poll_interval_ms` passes (writers in other processes).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::config::{EmbeddedSourceConfig, StartPosition};
use super::store::{Log, StoreError};
use super::EmbeddedError;
use crate::connector::{Message, Origin, Outcome, Source, SourceBatch, SourceError};
use crate::metrics::Metrics;

/// Reads an embedded log with a cursor.
pub struct EmbeddedSource {
    connector: String,
    log: Arc<Log>,
    cursor: String,
    position: i64,
    max_batch: usize,
    poll_interval: Duration,
    metrics: Metrics,
}

impl EmbeddedSourceConfig {
    /// Opens the log (`file` resolved against `data_dir`, see `app::prepare`) and the
    /// cursor, creating it at `start` when new.
    pub async fn build(
        &self,
        connector: &str,
        metrics: Metrics,
    ) -> Result<EmbeddedSource, EmbeddedError> {
        let fail = |source: StoreError| EmbeddedError::Log {
            connector: connector.to_owned(),
            source,
        };
        let log = Log::open_async(self.file.clone()).await.map_err(fail)?;
        let cursor = self.cursor_name(connector);
        let start = match self.start {
            StartPosition::Earliest => 0,
            StartPosition::Latest => log.shared().last_position.load(Ordering::SeqCst),
        };
        let position = log.open_cursor(&cursor, start).await.map_err(fail)?;
        tracing::info!(connector, %cursor, position, path = %log.path().display(), "embedded source open");
        Ok(EmbeddedSource {
            connector: connector.to_owned(),
            log,
            cursor,
            position,
            max_batch: self.max_batch,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            metrics,
        })
    }
}

fn unavailable(e: StoreError) -> SourceError {
    SourceError::Unavailable(e.to_string())
}

impl EmbeddedSource {
    /// The cursor's position: the last event settled.
    pub fn position(&self) -> i64 {
        self.position
    }

    fn report_lag(&self) {
        let last = self.log.shared().last_position.load(Ordering::SeqCst);
        self.metrics
            .embedded_cursor_lag(&self.connector, (last - self.position).max(0));
    }

    fn warn_if_skipped(&self, first: i64) {
        let through = self.log.shared().retention_through.load(Ordering::SeqCst);
        if self.position > 0 && first > self.position + 1 && self.position < through {
            tracing::warn!(
                connector = %self.connector,
                cursor = %self.cursor,
                skipped = through.min(first - 1) - self.position,
                "retention deleted events this cursor had not read; skipping ahead"
            );
        }
    }
}

#[async_trait]
impl Source for EmbeddedSource {
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        loop {
            let appended = self.log.shared().appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let events = self
                .log
                .read_after(self.position, self.max_batch)
                .await
                .map_err(unavailable)?;
            if let Some(first) = events.first() {
                self.warn_if_skipped(first.position);
                let topic = self.log.name().clone();
                let mut batch = SourceBatch::default();
                for e in events {
                    batch.receipts.push(e.position as u64);
                    batch.messages.push(Message {
                        delete: false,
                        conflict: None,
                        sequence: e.sequence,
                        resource_name: e.resource_name,
                        record_key: e.record_key,
                        source_label: e.source_label.map(Arc::from),
                        payload: e.payload.into(),
                        origin: Some(Origin {
                            topic: topic.clone(),
                            partition: -1,
                            offset: e.position,
                        }),
                    });
                }
                return Ok(Some(batch));
            }
            self.report_lag();
            tokio::select! {
                _ = appended => {}
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }

    async fn settle(&mut self, batch: SourceBatch, outcome: Outcome) -> Result<(), SourceError> {
        let Some(&last) = batch.receipts.last() else {
            return Ok(());
        };
        let last = last as i64;
        match outcome {
            Outcome::Delivered => {
                self.log
                    .set_cursor(&self.cursor, last)
                    .await
                    .map_err(unavailable)?;
            }
            Outcome::Retry => return Ok(()),
            Outcome::Poison { reason } => {
                let events = batch
                    .receipts
                    .iter()
                    .map(|&r| (r as i64, reason.clone()))
                    .collect();
                self.log
                    .dead_letter(&self.cursor, events, last)
                    .await
                    .map_err(unavailable)?;
                tracing::warn!(connector = %self.connector, cursor = %self.cursor, events = batch.receipts.len(), "batch dead-lettered into the log's dead_letters table");
            }
            Outcome::Partly { poison } => {
                let events: Vec<(i64, String)> = poison
                    .into_iter()
                    .filter_map(|(i, reason)| Some((*batch.receipts.get(i)? as i64, reason)))
                    .collect();
                let n = events.len();
                self.log
                    .dead_letter(&self.cursor, events, last)
                    .await
                    .map_err(unavailable)?;
                tracing::warn!(connector = %self.connector, cursor = %self.cursor, events = n, "poison events dead-lettered into the log's dead_letters table; the rest of the batch was delivered");
            }
        }
        self.position = last;
        self.report_lag();
        Ok(())
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        // The cursor is persisted by every settle; nothing is pending.
        Ok(())
    }
}

#[async_trait]
impl crate::runtime::build::BuildSource for EmbeddedSourceConfig {
    async fn build_task(
        &self,
        ctx: &crate::runtime::build::BuildContext,
        sink: Arc<dyn crate::connector::Sink>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<crate::runtime::Run, crate::runtime::build::BuildError> {
        let source = self
            .build(&ctx.connector, ctx.metrics.clone())
            .await
            .map_err(|e| e.into_build_error("source"))?;
        Ok(crate::runtime::pump::Pump::task(
            Box::new(source),
            sink,
            ctx,
            cancel,
        ))
    }
}
