//! A lane's delivery: offering a batch to the sink until it is settled (retried in place,
//! poison isolated around), dead-letter writes, and the lane's report of its sink's health.

use std::sync::atomic::Ordering;

use futures::future::BoxFuture;

use super::{Lane, PoisonRecord};
use crate::connector::{Message, Retriable, RetryAction, SinkError};
use crate::dead_letter::{DeadLetterInfo, DeadRecord};
use crate::runtime::retry::{until_ok, wait_after};
use crate::runtime::Part;

impl Lane {
    /// Reports this lane's sink failing.
    pub(super) fn sink_failed(&self, error: impl std::fmt::Display) {
        let failing = &self.shared.failing;
        let mut lanes = failing.lanes.lock().expect("failing lock");
        if lanes.insert((self.topic.clone(), self.partition)) {
            failing.count.fetch_add(1, Ordering::AcqRel);
        }
        self.shared.health.failed(Part::Sink, error);
    }

    /// Reports this lane's sink working; the connector's sink is healthy once no lane fails.
    /// One atomic load while no lane fails.
    pub(super) fn sink_ok(&self) {
        let failing = &self.shared.failing;
        if failing.count.load(Ordering::Acquire) == 0 {
            self.shared.health.ok(Part::Sink);
            return;
        }
        let mut lanes = failing.lanes.lock().expect("failing lock");
        if lanes.remove(&(self.topic.clone(), self.partition)) {
            failing.count.fetch_sub(1, Ordering::AcqRel);
        }
        if lanes.is_empty() {
            self.shared.health.ok(Part::Sink);
        }
    }

    /// Offers the batch until the sink settles it; `false` when the lane must stop first.
    /// Transient failures are retried in place. When the sink refuses the batch as poison, the
    /// refused event (named by the sink's `Rejected { index }`, else found by halving) is
    /// dead-lettered alone and its neighbours are delivered around it, in order.
    pub(super) fn deliver<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            if batch.is_empty() {
                return true;
            }
            let mut backoff = self.shared.retry.backoff();
            let error = loop {
                let result = tokio::select! {
                    biased;
                    _ = self.revoked.cancelled() => return false,
                    r = self.shared.sink.send(batch) => r,
                };
                let error = match result {
                    Ok(()) => {
                        self.sink_ok();
                        return true;
                    }
                    Err(e) => e,
                };
                if self.stopping() {
                    return false;
                }
                match error.retry_action() {
                    RetryAction::Poison => break error,
                    RetryAction::Retry { after } => {
                        self.sink_failed(&error);
                        let delay = wait_after(&mut backoff, after);
                        tracing::warn!(connector = %self.shared.connector, topic = %self.topic, partition = self.partition, error = %error, delay_ms = delay.as_millis() as u64, "sink failed; retrying the batch in place");
                        if !self.wait(delay).await {
                            return false;
                        }
                    }
                    RetryAction::Fatal => {
                        tracing::error!(connector = %self.shared.connector, error = %error, "sink failed for good; partition stalled until restart");
                        return false;
                    }
                }
            };
            match error {
                SinkError::Rejected { index, .. } if index < batch.len() => {
                    self.deliver(&batch[..index]).await
                        && self
                            .dead_letter_rejected(&batch[index..=index], &error)
                            .await
                        && self.deliver(&batch[index + 1..]).await
                }
                _ if batch.len() == 1 => self.dead_letter_rejected(batch, &error).await,
                _ => {
                    let (first, second) = batch.split_at(batch.len() / 2);
                    self.deliver(first).await && self.deliver(second).await
                }
            }
        })
    }

    /// Dead-letters events the sink refused (`rejected`, with the sink's reason).
    async fn dead_letter_rejected(&self, events: &[Message], error: &SinkError) -> bool {
        let detail = error.to_string();
        let records: Vec<DeadRecord<'_>> = events.iter().map(DeadRecord::from).collect();
        let info = DeadLetterInfo {
            reason: "rejected",
            detail: &detail,
            http_status: None,
            attempts: 1,
        };
        self.dead_letter(&records, info).await
    }

    pub(super) async fn dead_letter_poison(&self, p: &PoisonRecord) -> bool {
        let record = DeadRecord {
            key: p.key.as_deref(),
            payload: &p.payload,
            sequence: None,
            resource_name: p.resource_name.as_deref(),
            source_label: p.source_label.as_deref(),
            origin: Some(&p.origin),
        };
        let info = DeadLetterInfo {
            reason: "unparseable",
            detail: &p.reason,
            http_status: None,
            attempts: 0,
        };
        self.dead_letter(&[record], info).await
    }

    /// Writes to the dead-letter topic until it succeeds; `false` when the lane must stop first.
    async fn dead_letter(&self, records: &[DeadRecord<'_>], info: DeadLetterInfo<'_>) -> bool {
        let shared = &self.shared;
        let written = until_ok(
            shared.retry.backoff(),
            &self.stop,
            "dead-letter write",
            &shared.connector,
            || async {
                let result = shared.dead_letter.write(records, info).await;
                if let Err(e) = &result {
                    self.sink_failed(format_args!("cannot dead-letter: {e}"));
                }
                result
            },
        )
        .await;
        if written.is_some() {
            self.sink_ok();
        }
        written.is_some()
    }
}
