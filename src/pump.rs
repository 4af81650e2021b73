//! The pump: moves batches from a pull [`Source`] to a [`Sink`], settling each exactly once.
//!
//! This loop is the delivery contract for every pull-based connector (AMQP, embedded log,
//! Kafka): a batch is acknowledged upstream only after the sink said `Ok`; a retryable sink
//! error waits an exponential backoff with full jitter (backon) and hands the batch back for
//! redelivery; a poison batch is dead-lettered by the source. One batch is in flight at a time,
//! so order is preserved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::connector::{Outcome, Retriable, RetryAction, Sink, Source, SourceError};
use crate::metrics::Metrics;

/// Backoff between retries of a failing sink or source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First backoff delay.
    #[serde(default = "default_min_backoff_ms")]
    pub min_backoff_ms: u64,
    /// Largest backoff delay (the exponential growth stops here).
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            min_backoff_ms: default_min_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

fn default_min_backoff_ms() -> u64 {
    200
}
fn default_max_backoff_ms() -> u64 {
    30_000
}

impl RetryConfig {
    /// An endless iterator of jittered exponential delays.
    pub fn backoff(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.min_backoff_ms))
            .with_max_delay(Duration::from_millis(
                self.max_backoff_ms.max(self.min_backoff_ms),
            ))
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// One pull-based connector's loop.
pub struct Pump {
    /// Connector name (logs, metrics).
    pub connector: String,
    /// Where batches come from.
    pub source: Box<dyn Source>,
    /// Where they go.
    pub sink: Arc<dyn Sink>,
    /// Backoff policy.
    pub retry: RetryConfig,
    /// Process metrics.
    pub metrics: Metrics,
}

/// Sleeps `delay` unless cancelled first; returns `false` when cancelled.
async fn pause(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

impl Pump {
    /// Runs until `cancel` fires or the source ends; then closes the source (committing
    /// progress). Returns an error only when the source or sink failed for good.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), SourceError> {
        let mut backoff = self.retry.backoff();
        let name = self.connector.clone();
        loop {
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                next = self.source.next_batch() => next,
            };
            let batch = match next {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                Err(e) if e.retry_action() == RetryAction::Fatal => {
                    tracing::error!(connector = %name, error = %e, "source failed; connector stopped");
                    let _ = self.source.close().await;
                    return Err(e);
                }
                Err(e) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(1));
                    tracing::warn!(connector = %name, error = %e, ?delay, "source unavailable; retrying");
                    if !pause(delay, &cancel).await {
                        break;
                    }
                    continue;
                }
            };
            let count = batch.messages.len() as u64;
            let started = Instant::now();
            let result = if batch.messages.is_empty() {
                Ok(())
            } else {
                self.sink.send(&batch.messages).await
            };
            let outcome = match result {
                Ok(()) => {
                    backoff = self.retry.backoff();
                    Outcome::Delivered
                }
                Err(e) => match e.retry_action() {
                    RetryAction::Retry { after } => {
                        let delay = after
                            .or_else(|| backoff.next())
                            .unwrap_or(Duration::from_secs(1));
                        tracing::warn!(connector = %name, error = %e, ?delay, events = count, "sink failed; batch will be redelivered");
                        pause(delay, &cancel).await;
                        Outcome::Retry
                    }
                    RetryAction::Poison => {
                        tracing::warn!(connector = %name, error = %e, events = count, "batch cannot be delivered; dead-lettering");
                        Outcome::Poison {
                            reason: e.to_string(),
                        }
                    }
                    RetryAction::Fatal => {
                        let _ = self.source.settle(batch, Outcome::Retry).await;
                        let _ = self.source.close().await;
                        return Err(SourceError::Fatal(e.to_string()));
                    }
                },
            };
            let label = match &outcome {
                Outcome::Delivered => "delivered",
                Outcome::Retry => "retried",
                Outcome::Poison { .. } => "dead_lettered",
            };
            self.metrics.pump_events(&name, label, count);
            self.metrics
                .publish_duration(&name, label, started.elapsed().as_secs_f64());
            if let Err(e) = self.source.settle(batch, outcome).await {
                // Unsettled deliveries come back after the source reconnects: at-least-once.
                tracing::warn!(connector = %name, error = %e, "could not settle batch; it will be redelivered");
            }
        }
        self.source.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let retry = RetryConfig {
            min_backoff_ms: 10,
            max_backoff_ms: 100,
        };
        let delays: Vec<Duration> = retry.backoff().take(20).collect();
        assert_eq!(delays.len(), 20, "endless");
        // backon's jitter adds up to one min_delay on top of the capped delay.
        assert!(
            delays.iter().all(|d| *d <= Duration::from_millis(200)),
            "{delays:?}"
        );
    }
}
