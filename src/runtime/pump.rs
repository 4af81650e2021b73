//! The pump: moves batches from a pull [`Source`] to a [`Sink`], settling each exactly once.
//!
//! This loop is the delivery contract for every pull-based connector (AMQP, embedded log,
//! Kafka): a batch is acknowledged upstream only after the sink said `Ok`; a retryable sink
//! error waits the retry engine's backoff ([`crate::runtime::retry`]) and offers the same batch again, in place, so
//! nothing read after it overtakes it; it is handed back to the source only at shutdown. When the sink refuses a batch as poison, the pump isolates the refused messages
//! (the sink names the one at fault, else the batch is split in halves) and delivers the others
//! around them, in order; the source then acknowledges the delivered ones and dead-letters only
//! the poison ones ([`Outcome::Partly`]). One batch is in flight at a time, so order is
//! preserved.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use futures::future::BoxFuture;

use crate::connector::{
    Message, Outcome, Retriable, RetryAction, Sink, SinkError, Source, SourceBatch, SourceError,
};
use crate::metrics::Metrics;
use crate::runtime::retry::{pause, wait_after, Backoff};
use crate::runtime::{Health, Part};

pub use crate::runtime::retry::RetryConfig;

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

impl Pump {
    /// The connector's task: a pump over `source` into `sink` until `cancel` (the source's
    /// probe goes to the connector's health).
    pub fn task(
        source: Box<dyn Source>,
        sink: Arc<dyn Sink>,
        ctx: &crate::runtime::build::BuildContext,
        cancel: CancellationToken,
    ) -> crate::runtime::Run {
        use futures::FutureExt;
        ctx.health.set_probe(source.probe());
        let pump = Pump {
            connector: ctx.connector.clone(),
            source,
            sink,
            retry: ctx.retry.clone(),
            metrics: ctx.metrics.clone(),
            health: ctx.health.clone(),
        };
        pump.run(cancel).boxed()
    }

    /// Offers `batch` to the sink until it is settled: delivered (poison events isolated
    /// around), refused whole, or — only when `cancel` fires during a retry — handed back
    /// ([`Outcome::Retry`]). A retryable failure is retried in place after the backoff instead
    /// of handing the batch back: the source keeps holding it, so nothing read after it can
    /// overtake it (an AMQP source's prefetched deliveries would), and per-key order holds
    /// through retries. A batch the source no longer holds ([`Source::is_held`]) is handed
    /// back too. `Err` only for a fatal sink error.
    async fn deliver(
        // `&mut`: a `&Pump` held across an await would need the source to be `Sync`.
        &mut self,
        batch: &SourceBatch,
        backoff: &mut Backoff,
        cancel: &CancellationToken,
    ) -> Result<Outcome, SinkError> {
        let name = &self.connector;
        let count = batch.messages.len() as u64;
        loop {
            let mut poison = Vec::new();
            let e = match isolate(self.sink.as_ref(), &batch.messages, 0, &mut poison).await {
                Ok(()) => {
                    self.health.ok(Part::Sink);
                    if poison.is_empty() {
                        return Ok(Outcome::Delivered);
                    }
                    tracing::warn!(connector = %name, poison = poison.len(), events = count, first = %poison[0].1, "poison events isolated; the rest of the batch was delivered");
                    return Ok(Outcome::Partly { poison });
                }
                Err(e) => e,
            };
            match e.retry_action() {
                RetryAction::Retry { after } => {
                    self.health.failed(Part::Sink, &e);
                    let delay = wait_after(backoff, after);
                    tracing::warn!(connector = %name, error = %e, ?delay, events = count, "sink failed; retrying the batch in place");
                    self.metrics.pump_events(name, "retried", count);
                    if !pause(delay, cancel).await || !self.source.is_held() {
                        return Ok(Outcome::Retry);
                    }
                }
                RetryAction::Poison => {
                    tracing::warn!(connector = %name, error = %e, events = count, "batch cannot be delivered; dead-lettering");
                    return Ok(Outcome::Poison {
                        reason: e.to_string(),
                    });
                }
                RetryAction::Fatal => return Err(e),
            }
        }
    }

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
                    let delay = backoff.next_delay();
                    tracing::warn!(connector = %name, error = %e, ?delay, "source unavailable; retrying");
                    if !pause(delay, &cancel).await {
                        break;
                    }
                    continue;
                }
            };
            let count = batch.messages.len() as u64;
            let outcome = match self.deliver(&batch, &mut backoff, &cancel).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    let _ = self.source.settle(batch, Outcome::Retry).await;
                    let _ = self.source.close().await;
                    return Err(SourceError::Fatal(e.to_string()));
                }
            };
            let handed_back = outcome == Outcome::Retry;
            match &outcome {
                Outcome::Delivered => self.metrics.pump_events(&name, "delivered", count),
                // Handed back at shutdown: each retry in place was counted already.
                Outcome::Retry => {}
                Outcome::Poison { .. } => self.metrics.pump_events(&name, "dead_lettered", count),
                Outcome::Partly { poison } => {
                    let dead = poison.len() as u64;
                    self.metrics.pump_events(&name, "dead_lettered", dead);
                    self.metrics
                        .pump_events(&name, "delivered", count.saturating_sub(dead));
                }
            }
            // The publish metrics are the sink layer's (`layers::Observed`), not the pump's.
            match self.source.settle(batch, outcome).await {
                Ok(()) if !handed_back => backoff.reset(),
                Ok(()) => {}
                Err(e) => {
                    // Unsettled deliveries come back after the source reconnects: at-least-once.
                    // Backed off like a failing source, so a settle that keeps failing (its
                    // dead-letter destination down) does not spin on the same batch.
                    self.health.failed(Part::Source, &e);
                    let delay = backoff.next_delay();
                    tracing::warn!(connector = %name, error = %e, ?delay, "could not settle batch; it will be redelivered");
                    if !pause(delay, &cancel).await {
                        break;
                    }
                }
            }
        }
        self.source.close().await
    }
}

#[cfg(test)]
#[path = "pump_tests.rs"]
mod tests;
