//! The pump: moves batches from a pull [`Source`] to a [`Sink`], settling each exactly once.
//!
//! This loop is the delivery contract for every pull-based connector (AMQP, embedded log,
//! Kafka): a batch is acknowledged upstream only after the sink said `Ok`; a retryable sink
//! error waits an exponential backoff with full jitter (backon) and hands the batch back for
//! redelivery. When the sink refuses a batch as poison, the pump isolates the refused messages
//! (the sink names the one at fault, else the batch is split in halves) and delivers the others
//! around them, in order; the source then acknowledges the delivered ones and dead-letters only
//! the poison ones ([`Outcome::Partly`]). One batch is in flight at a time, so order is
//! preserved.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use futures::future::BoxFuture;

use crate::connector::{
    Message, Outcome, Retriable, RetryAction, Sink, SinkError, Source, SourceError,
};
use crate::metrics::Metrics;
use crate::runtime::{Health, Part};

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
    /// Where the pump reports its source and sink working or failing.
    pub health: Health,
}

/// Sends `messages` (which start at `offset` in their batch). When the sink refuses them as
/// poison, the messages around the refused one (named by the sink's `Rejected { index }`, else
/// found by halving) are delivered in order, and each refused message is recorded in `poison`
/// with its reason. A retryable or fatal error ends it at once: the caller hands the whole
/// batch back (what was delivered is delivered again: at least once).
fn isolate<'a>(
    sink: &'a dyn Sink,
    messages: &'a [Message],
    offset: usize,
    poison: &'a mut Vec<(usize, String)>,
) -> BoxFuture<'a, Result<(), SinkError>> {
    Box::pin(async move {
        if messages.is_empty() {
            return Ok(());
        }
        let error = match sink.send(messages).await {
            Ok(()) => return Ok(()),
            Err(e) if e.retry_action() == RetryAction::Poison => e,
            Err(e) => return Err(e),
        };
        match error {
            SinkError::Rejected { index, .. } if index < messages.len() => {
                isolate(sink, &messages[..index], offset, poison).await?;
                poison.push((offset + index, error.to_string()));
                isolate(sink, &messages[index + 1..], offset + index + 1, poison).await
            }
            _ if messages.len() == 1 => {
                poison.push((offset, error.to_string()));
                Ok(())
            }
            _ => {
                let (first, second) = messages.split_at(messages.len() / 2);
                isolate(sink, first, offset, poison).await?;
                isolate(sink, second, offset + first.len(), poison).await
            }
        }
    })
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
                Ok(Some(batch)) => {
                    self.health.ok(Part::Source);
                    batch
                }
                Ok(None) => break,
                Err(e) if e.retry_action() == RetryAction::Fatal => {
                    tracing::error!(connector = %name, error = %e, "source failed; connector stopped");
                    let _ = self.source.close().await;
                    return Err(e);
                }
                Err(e) => {
                    self.health.failed(Part::Source, &e);
                    let delay = backoff.next().unwrap_or(Duration::from_secs(1));
                    tracing::warn!(connector = %name, error = %e, ?delay, "source unavailable; retrying");
                    if !pause(delay, &cancel).await {
                        break;
                    }
                    continue;
                }
            };
            let count = batch.messages.len() as u64;
            let mut poison = Vec::new();
            let result = isolate(self.sink.as_ref(), &batch.messages, 0, &mut poison).await;
            let outcome = match result {
                Ok(()) if poison.is_empty() => {
                    self.health.ok(Part::Sink);
                    backoff = self.retry.backoff();
                    Outcome::Delivered
                }
                Ok(()) => {
                    self.health.ok(Part::Sink);
                    backoff = self.retry.backoff();
                    tracing::warn!(connector = %name, poison = poison.len(), events = count, first = %poison[0].1, "poison events isolated; the rest of the batch was delivered");
                    Outcome::Partly { poison }
                }
                Err(e) => match e.retry_action() {
                    RetryAction::Retry { after } => {
                        self.health.failed(Part::Sink, &e);
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
                Outcome::Partly { poison } => {
                    let dead = poison.len() as u64;
                    self.metrics.pump_events(&name, "dead_lettered", dead);
                    self.metrics
                        .pump_events(&name, "delivered", count.saturating_sub(dead));
                    "dead_lettered"
                }
            };
            if !matches!(outcome, Outcome::Partly { .. }) {
                self.metrics.pump_events(&name, label, count);
            }
            // `publish_duration` is the sink's own (one record per send, one vocabulary).
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

    use std::sync::Mutex;

    use async_trait::async_trait;
    use bytes::Bytes;

    use crate::connector::{RejectKind, SourceBatch};

    fn message(sequence: i64, key: &str, resource: &str) -> Message {
        Message {
            sequence,
            resource_name: resource.into(),
            record_key: key.into(),
            source_label: None,
            payload: Bytes::new(),
            origin: None,
        }
    }

    /// A sink that refuses any batch holding a `Bad` event, naming it (`named`) or not.
    struct Refusing {
        named: bool,
        delivered: Mutex<Vec<i64>>,
        sends: Mutex<usize>,
    }

    #[async_trait]
    impl Sink for Refusing {
        async fn send(&self, batch: &[Message]) -> Result<(), SinkError> {
            *self.sends.lock().unwrap() += 1;
            if let Some(index) = batch.iter().position(|m| m.resource_name == "Bad") {
                return Err(SinkError::Rejected {
                    index: if self.named { index } else { usize::MAX },
                    field: Some("ResourceName"),
                    detail: format!("event {} is bad", batch[index].sequence),
                    kind: RejectKind::Unroutable,
                });
            }
            let mut delivered = self.delivered.lock().unwrap();
            delivered.extend(batch.iter().map(|m| m.sequence));
            Ok(())
        }
        async fn ready(&self) -> Result<(), SinkError> {
            Ok(())
        }
        async fn flush(&self, _: Duration) -> Result<(), SinkError> {
            Ok(())
        }
    }

    /// A source of one batch that records how it was settled.
    struct OneBatch {
        batch: Option<SourceBatch>,
        settled: Arc<Mutex<Vec<Outcome>>>,
    }

    #[async_trait]
    impl Source for OneBatch {
        async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
            Ok(self.batch.take())
        }
        async fn settle(&mut self, _: SourceBatch, outcome: Outcome) -> Result<(), SourceError> {
            self.settled.lock().unwrap().push(outcome);
            Ok(())
        }
        async fn close(&mut self) -> Result<(), SourceError> {
            Ok(())
        }
    }

    async fn run(named: bool, bad: &[i64]) -> (Vec<i64>, Vec<Outcome>, usize) {
        let messages: Vec<Message> = (1..=100)
            .map(|s| {
                let resource = if bad.contains(&s) { "Bad" } else { "Property" };
                message(s, &format!("k{}", s % 3), resource)
            })
            .collect();
        let receipts = (1..=100).collect();
        let settled = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::new(Refusing {
            named,
            delivered: Mutex::new(Vec::new()),
            sends: Mutex::new(0),
        });
        let pump = Pump {
            connector: "t".into(),
            source: Box::new(OneBatch {
                batch: Some(SourceBatch { messages, receipts }),
                settled: settled.clone(),
            }),
            sink: sink.clone(),
            retry: RetryConfig::default(),
            metrics: Metrics::new(),
            health: Health::new("t", crate::runtime::Readiness::Gate, Metrics::new()),
        };
        pump.run(CancellationToken::new()).await.unwrap();
        let delivered = sink.delivered.lock().unwrap().clone();
        let sends = *sink.sends.lock().unwrap();
        let outcomes = settled.lock().unwrap().clone();
        (delivered, outcomes, sends)
    }

    /// Regression: one poison event in a batch of 100 dead-lettered all 100.
    #[tokio::test]
    async fn poison_events_are_isolated_and_their_neighbours_delivered_in_order() {
        for named in [true, false] {
            for bad in [vec![37], vec![1, 50, 100]] {
                let (delivered, outcomes, sends) = run(named, &bad).await;
                let good: Vec<i64> = (1..=100).filter(|s| !bad.contains(s)).collect();
                assert_eq!(delivered, good, "named {named}, bad {bad:?}");
                let indices: Vec<usize> = bad.iter().map(|s| (*s - 1) as usize).collect();
                match &outcomes[..] {
                    [Outcome::Partly { poison }] => {
                        assert_eq!(poison.iter().map(|(i, _)| *i).collect::<Vec<_>>(), indices);
                        assert!(poison.iter().all(|(_, why)| why.contains("is bad")));
                    }
                    other => panic!("{other:?}"),
                }
                // Named rejections cost about two sends per poison event; halving about
                // 2·log2(100) per poison event.
                let bound = if named {
                    1 + 2 * bad.len()
                } else {
                    1 + 16 * bad.len()
                };
                assert!(sends <= bound, "{sends} sends for {bad:?} (named {named})");
            }
        }
        let (delivered, outcomes, _) = run(true, &[]).await;
        assert_eq!(delivered.len(), 100);
        assert_eq!(outcomes, vec![Outcome::Delivered]);
    }
}
