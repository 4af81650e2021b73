//! The feeds layer: wraps a connector's sink, suppresses events their feed already delivered
//! (`[dedupe]`) and tells the [`FeedMonitor`] what each send did.
//!
//! One send, with dedupe on:
//! 1. **Claim** the batch's (feed, sequence) pairs. A pair another send is publishing right now
//!    makes this send wait until that one settled, then look again — so two concurrent pushes
//!    with overlapping sequences publish each event once, and a push never overtakes the
//!    earlier events of its keys that another push still has in flight.
//! 2. **Look up** the claimed sequences in the store; a delivered one with the same identity
//!    (`ResourceName` + `ResourceRecordKey`) is a duplicate, with another identity a conflict
//!    (`on_conflict`). A sequence repeated inside the batch is judged against its first copy.
//! 3. **Send** the rest to the sink, in order. A sink's `Rejected { index }` is mapped back to
//!    the event's place in the original batch.
//! 4. Only after the sink said `Ok`, **mark** them delivered — for a webhook push in the
//!    background, after the send was answered; for a pull source before the answer, since its
//!    checkpoint moves on it — while the claims still hold. A failed send marks nothing (the events
//!    stay unseen and are published on the retry); a failed mark or lookup costs duplicates,
//!    never events (counted in `entity_bridge_dedupe_store_errors_total`).
//! 5. Release the claims once marked (also when the caller goes away mid-send: the guards'
//!    `Drop`).
//!
//! The claims and the store round are in [`super::dedupe`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio_util::task::TaskTracker;

use super::config::OnConflict;
use super::dedupe::{Dedupe, Key};
use super::monitor::FeedMonitor;
use super::order::Stream;
use super::store::Identity;
use crate::connector::{BatchHint, Message, RejectKind, SendReport, Sink, SinkError};
use crate::metrics::Metrics;

/// An event's identity: the first 8 bytes of SHA-256 over `ResourceName`, NUL,
/// `ResourceRecordKey` (stable across processes and versions, unlike `std`'s hasher).
pub fn identity(m: &Message) -> Identity {
    let mut h = Sha256::new();
    h.update(m.resource_name.as_bytes());
    h.update([0]);
    h.update(m.record_key.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Groups `(feed, item)` pairs by feed, feeds in order of first appearance, items in order.
/// Batches hold one feed or a few, so a linear search beats hashing.
fn by_feed<T>(pairs: impl Iterator<Item = (Arc<str>, T)>) -> Vec<(Arc<str>, Vec<T>)> {
    let mut groups: Vec<(Arc<str>, Vec<T>)> = Vec::new();
    for (feed, item) in pairs {
        match groups.iter_mut().find(|(f, _)| *f == feed) {
            Some((_, items)) => items.push(item),
            None => groups.push((feed, vec![item])),
        }
    }
    groups
}

/// The layer (see the module docs).
pub struct Feeds {
    inner: Arc<dyn Sink>,
    connector: String,
    monitor: Arc<FeedMonitor>,
    dedupe: Option<Arc<Dedupe>>,
    metrics: Metrics,
    no_label: Arc<str>,
    /// Marks being written after their sends were answered.
    marking: TaskTracker,
    /// Marks are written before the answer (pull sources) instead of after it.
    mark_before_answer: bool,
}

/// What was decided for one event of a batch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Publish,
    Duplicate,
    /// A conflict that is published anyway (`on_conflict = "publish"`).
    ConflictPublished,
    /// A conflict acknowledged without publishing (`on_conflict = "skip"`).
    ConflictSkipped,
}

impl Feeds {
    /// Wraps `inner`, the sink of `connector`; `dedupe` when `[dedupe]` is configured.
    pub fn new(
        connector: &str,
        inner: Arc<dyn Sink>,
        monitor: Arc<FeedMonitor>,
        dedupe: Option<Dedupe>,
        metrics: Metrics,
    ) -> Feeds {
        Feeds {
            inner,
            connector: connector.to_owned(),
            monitor,
            dedupe: dedupe.map(Arc::new),
            metrics,
            no_label: Arc::from(""),
            marking: TaskTracker::new(),
            mark_before_answer: false,
        }
    }

    /// Writes the marks before answering a send ([`super::Tracking::mark_before_answer`]).
    pub fn marking_before_answer(mut self) -> Feeds {
        self.mark_before_answer = true;
        self
    }

    fn feed_of(&self, m: &Message) -> Arc<str> {
        m.source_label
            .clone()
            .unwrap_or_else(|| self.no_label.clone())
    }

    /// Tells the monitor what a confirmed send did, feed by feed (and Kafka partition by
    /// partition), in batch order.
    fn record(&self, batch: &[Message], verdicts: Option<&[Verdict]>) {
        /// One (feed, stream) of the batch: the sequences published, duplicates, conflicts.
        struct Part {
            feed: Arc<str>,
            stream: Stream,
            published: Vec<i64>,
            duplicates: u64,
            conflicts: u64,
        }
        let mut parts: Vec<Part> = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            let feed = self.feed_of(m);
            let stream: Stream = (m.origin.as_ref())
                .filter(|o| o.partition >= 0)
                .map(|o| (o.topic.clone(), o.partition));
            let at = match (parts.iter()).position(|p| p.feed == feed && p.stream == stream) {
                Some(at) => at,
                None => {
                    parts.push(Part {
                        feed,
                        stream,
                        published: Vec::new(),
                        duplicates: 0,
                        conflicts: 0,
                    });
                    parts.len() - 1
                }
            };
            let part = &mut parts[at];
            match verdicts.map_or(Verdict::Publish, |v| v[i]) {
                Verdict::Publish => part.published.push(m.sequence),
                Verdict::Duplicate => part.duplicates += 1,
                Verdict::ConflictPublished => {
                    part.published.push(m.sequence);
                    part.conflicts += 1;
                }
                Verdict::ConflictSkipped => part.conflicts += 1,
            }
        }
        for p in parts {
            (self.monitor).record_stream(
                &p.feed,
                &p.stream,
                &p.published,
                p.duplicates,
                p.conflicts,
            );
        }
    }

    async fn send_deduplicated(
        &self,
        dedupe: &Arc<Dedupe>,
        batch: &[Message],
    ) -> Result<SendReport, SinkError> {
        // Which events are checked: those of tracked feeds (the cap bounds the store's feeds).
        let mut admitted: Vec<(Arc<str>, bool)> = Vec::new();
        let mut checked = Vec::with_capacity(batch.len());
        for m in batch {
            let feed = self.feed_of(m);
            let ok = match admitted.iter().find(|(f, _)| *f == feed) {
                Some((_, ok)) => *ok,
                None => {
                    let ok = self.monitor.admit(&feed);
                    admitted.push((feed, ok));
                    ok
                }
            };
            checked.push(ok);
        }
        // Distinct keys; `first[i]` is the index of the first event with event i's key.
        let mut first_of: HashMap<Key, usize> = HashMap::new();
        let mut first = vec![usize::MAX; batch.len()];
        for (i, m) in batch.iter().enumerate().filter(|(i, _)| checked[*i]) {
            first[i] = *first_of.entry((self.feed_of(m), m.sequence)).or_insert(i);
        }
        let keys: Vec<Key> = first_of.into_keys().collect();
        let local = dedupe.claim_local(keys).await?;

        let identities: Vec<Identity> = batch.iter().map(identity).collect();
        let lookups = by_feed(
            (batch.iter().enumerate())
                .filter(|(i, _)| first[*i] == *i)
                .map(|(i, m)| (self.feed_of(m), (m.sequence, identities[i]))),
        );
        let mut stored = (dedupe.claim_stored(&lookups, &self.connector, &self.metrics)).await?;
        let delivered = std::mem::take(&mut stored.delivered);

        let mut verdicts = vec![Verdict::Publish; batch.len()];
        for (i, m) in batch.iter().enumerate().filter(|(i, _)| checked[*i]) {
            let known = if first[i] == i {
                delivered.get(&(self.feed_of(m), m.sequence)).copied()
            } else {
                Some(identities[first[i]])
            };
            verdicts[i] = match known {
                None => Verdict::Publish,
                Some(id) if id == identities[i] => Verdict::Duplicate,
                Some(_) => {
                    tracing::warn!(connector = %self.connector, feed = %self.feed_of(m), sequence = m.sequence, policy = ?dedupe.on_conflict, "sequence already delivered for another record");
                    match dedupe.on_conflict {
                        OnConflict::Publish => Verdict::ConflictPublished,
                        OnConflict::Skip => Verdict::ConflictSkipped,
                        OnConflict::Reject => {
                            self.monitor.record(&self.feed_of(m), &[], 0, 1);
                            stored.release(&self.connector, &self.metrics).await;
                            return Err(SinkError::Rejected {
                                index: i,
                                field: Some("EntityEventSequence"),
                                detail: format!(
                                    "EntityEventSequence {} was already delivered for another ResourceName or ResourceRecordKey",
                                    m.sequence
                                ),
                                kind: RejectKind::Conflict,
                            });
                        }
                    }
                }
            };
        }

        let publish = |v: &Verdict| matches!(v, Verdict::Publish | Verdict::ConflictPublished);
        let sent: Vec<usize> = (0..batch.len())
            .filter(|&i| publish(&verdicts[i]))
            .collect();
        let conflicted = verdicts.contains(&Verdict::ConflictPublished);
        let result = if sent.len() == batch.len() && !conflicted {
            self.inner.send(batch).await
        } else if sent.is_empty() {
            Ok(())
        } else {
            // A published conflict's idempotency key names its record (`Message::conflict`).
            let copy = |i: usize| {
                let mut m = batch[i].clone();
                if verdicts[i] == Verdict::ConflictPublished {
                    m.conflict = Some(identities[i]);
                }
                m
            };
            let subset: Vec<Message> = sent.iter().map(|&i| copy(i)).collect();
            self.inner.send(&subset).await.map_err(|e| match e {
                SinkError::Rejected {
                    index,
                    field,
                    detail,
                    kind,
                } => SinkError::Rejected {
                    // Out of range: no event named, the caller isolates by halving.
                    index: sent.get(index).copied().unwrap_or(batch.len()),
                    field,
                    detail,
                    kind,
                },
                other => other,
            })
        };
        if let Err(e) = result {
            // Not delivered: nothing is marked, and other sends may publish these now.
            stored.release(&self.connector, &self.metrics).await;
            return Err(e);
        }

        // Delivered: remember what was published (the claims still hold, so no other send
        // looks these sequences up before they are marked). A published conflict is not
        // remembered: its sequence keeps the record delivered first, so that record sent again
        // stays a duplicate, and the conflict sent again keeps its own id. Only first copies
        // are `Publish`, so each sequence is marked once.
        let marks = by_feed(
            (sent
                .iter()
                .filter(|&&i| checked[i] && verdicts[i] == Verdict::Publish))
            .map(|&i| (self.feed_of(&batch[i]), (batch[i].sequence, identities[i]))),
        );
        // Marked after the answer, off the push's latency: the claims stay held until the
        // marks are written, so any send of these sequences meanwhile waits and then sees them
        // delivered. A crash before the write costs duplicates, never events; `flush` (shutdown)
        // waits for what is still being written.
        let (dedupe, connector, metrics) =
            (dedupe.clone(), self.connector.clone(), self.metrics.clone());
        let marking = async move {
            dedupe.mark(stored, &marks, &connector, &metrics).await;
            drop(local);
        };
        if self.mark_before_answer {
            // A pull source moves its checkpoint on the answer: marked first, a page it asks
            // for again after a crash is suppressed.
            marking.await;
        } else {
            self.marking.spawn(marking);
        }
        self.record(batch, Some(&verdicts));
        let count = |wanted: Verdict| verdicts.iter().filter(|v| **v == wanted).count();
        Ok(SendReport {
            duplicates: count(Verdict::Duplicate),
            conflicts: count(Verdict::ConflictPublished) + count(Verdict::ConflictSkipped),
        })
    }
}

#[async_trait]
impl Sink for Feeds {
    async fn send(&self, batch: &[Message]) -> Result<(), SinkError> {
        self.send_report(batch).await.map(|_| ())
    }

    async fn send_report(&self, batch: &[Message]) -> Result<SendReport, SinkError> {
        if batch.is_empty() {
            return self.inner.send(batch).await.map(|()| SendReport::default());
        }
        match &self.dedupe {
            Some(dedupe) => self.send_deduplicated(dedupe, batch).await,
            None => {
                self.inner.send(batch).await?;
                self.record(batch, None);
                Ok(SendReport::default())
            }
        }
    }

    async fn ready(&self) -> Result<(), SinkError> {
        self.inner.ready().await
    }

    async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        // Delivered events still being marked: wait for them, within the shutdown budget.
        self.marking.close();
        if tokio::time::timeout(timeout, self.marking.wait())
            .await
            .is_err()
        {
            tracing::warn!(connector = %self.connector, "dedupe marks still being written at shutdown; those events may be published again if resent");
        }
        self.inner.flush(timeout).await
    }

    fn batch_hint(&self) -> BatchHint {
        self.inner.batch_hint()
    }
}

#[cfg(test)]
#[path = "layer_tests.rs"]
mod tests;
