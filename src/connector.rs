//! What flows through a connector and the contract every sink obeys.
//!
//! A [`Message`] is one EntityEvent with the routing facts already extracted and its raw JSON kept
//! as bytes (never re-serialized). A [`Sink`] durably accepts a batch of messages: `send` returns
//! `Ok` only once every message is durable (Kafka `acks=all` delivery reports, …). Sources map a
//! [`SinkError`] to their upstream answer: the webhook source turns it into 400 / 413 / 429 / 503.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// One EntityEvent on its way from a source to a sink.
#[derive(Debug, Clone)]
pub struct Message {
    /// `EntityEventSequence` of the event (positive).
    pub sequence: i64,
    /// `ResourceName`, e.g. `Property`.
    pub resource_name: String,
    /// `ResourceRecordKey`: the partitioning key, so one record's events stay in order.
    pub record_key: String,
    /// The `EntityEventSource` label of the push, when the producer sent one.
    pub source_label: Option<Arc<str>>,
    /// The event object's exact JSON bytes, as the producer sent them.
    pub payload: Bytes,
    /// Where a pull source read the message (dead-letter headers, logs); `None` for pushes.
    pub origin: Option<Origin>,
    /// The record is gone (an events API's deleted resource, or a record hydration found
    /// deleted): the payload carries `"@EntityBridge.Deleted": true` and no `Data`, and sinks
    /// with a delete form of their own write that (the Kafka sink: a tombstone, by default).
    pub delete: bool,
    /// Set by the feeds layer on an event published under `on_conflict = "publish"` although
    /// its feed delivered its `EntityEventSequence` for another record: this event's identity
    /// ([`crate::layers::feeds::identity`]), which its idempotency key then names, so a consumer
    /// deduplicating by `message_id` keeps it. `None` for every other event.
    pub conflict: Option<i64>,
}

/// Where a pull source read a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Kafka topic, AMQP queue or embedded log name.
    pub topic: Arc<str>,
    /// Kafka partition; `-1` where the bus has none.
    pub partition: i32,
    /// Kafka offset, AMQP delivery tag or embedded log position.
    pub offset: i64,
}

/// Why a message cannot be accepted by a sink no matter how often it is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// The message cannot be routed (e.g. an unknown `ResourceName` under a `reject` policy).
    Unroutable,
    /// The message is larger than the bus accepts (found before anything was sent).
    TooLarge,
    /// The bus itself refused the message as too large after the batch was handed over: the
    /// other messages of the batch may have been published.
    RefusedBySink,
    /// Its feed already delivered its `EntityEventSequence` for another record, and the
    /// connector's `[dedupe] on_conflict` is `reject` (found before anything was sent).
    Conflict,
    /// Its record could not be fetched for `[hydrate]` (found before anything was sent).
    Unfetchable,
}

/// A sink's failure, classified by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Message `index` of the batch can never be accepted; nothing of the batch was sent, except
    /// under [`RejectKind::RefusedBySink`].
    #[error("message {index} rejected: {detail}")]
    Rejected {
        /// Position of the message in the batch.
        index: usize,
        /// The field of the event that caused the rejection, when one did.
        field: Option<&'static str>,
        /// What is wrong, fit to show to the producer.
        detail: String,
        /// Category of the rejection.
        kind: RejectKind,
    },
    /// The sink is saturated (e.g. the producer queue is full); try again shortly.
    #[error("sink overloaded: {reason}")]
    Overloaded {
        /// What is saturated.
        reason: String,
    },
    /// The bus is unreachable or did not confirm in time; the batch may be partly written.
    #[error("sink unavailable: {reason}")]
    Unavailable {
        /// What failed (no payload data, no secrets).
        reason: String,
    },
}

impl SinkError {
    /// The `outcome` metric label of this error.
    pub fn outcome(&self) -> &'static str {
        match self {
            SinkError::Rejected { .. } => "rejected",
            SinkError::Overloaded { .. } => "overloaded",
            SinkError::Unavailable { .. } => "unavailable",
        }
    }
}

/// What a caller should do with a failed operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAction {
    /// Try the same thing again, after the given delay when one is known.
    Retry {
        /// A delay requested by the peer, if any.
        after: Option<Duration>,
    },
    /// Retrying cannot help: the input itself is unacceptable.
    Poison,
    /// The component is broken (configuration, programming error); stop.
    Fatal,
}

/// Classifies an error for retry decisions.
pub trait Retriable {
    /// What to do about this error.
    fn retry_action(&self) -> RetryAction;
}

impl Retriable for SinkError {
    fn retry_action(&self) -> RetryAction {
        match self {
            SinkError::Rejected { .. } => RetryAction::Poison,
            SinkError::Overloaded { .. } | SinkError::Unavailable { .. } => {
                RetryAction::Retry { after: None }
            }
        }
    }
}

/// Durably accepts batches of messages (delivery contract, rule 1).
#[async_trait]
pub trait Sink: Send + Sync {
    /// Returns `Ok` only when every message of `batch` is durable or delivered.
    async fn send(&self, batch: &[Message]) -> Result<(), SinkError>;
    /// Like [`Sink::send`], and says what the send did besides publishing: events acknowledged
    /// without being published again (the feeds layer's duplicate suppression). Sinks that
    /// publish everything keep the default.
    async fn send_report(&self, batch: &[Message]) -> Result<SendReport, SinkError> {
        self.send(batch).await.map(|()| SendReport::default())
    }
    /// Readiness probe: `Ok` when the sink can currently reach its bus.
    async fn ready(&self) -> Result<(), SinkError>;
    /// Delivers or waits for everything queued, up to `timeout`; called once at shutdown.
    async fn flush(&self, timeout: Duration) -> Result<(), SinkError>;
    /// How this sink likes its batches; sources that assemble batches themselves (the Kafka
    /// source) size and time theirs by it. Sinks without a preference keep the default.
    fn batch_hint(&self) -> BatchHint {
        BatchHint::default()
    }
}

/// What an `Ok` send did besides publishing (see [`Sink::send_report`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    /// Events acknowledged without being published: their feed already delivered them.
    pub duplicates: usize,
    /// Events whose sequence their feed already delivered for another record (published or
    /// skipped, as `on_conflict` says).
    pub conflicts: usize,
}

/// A sink's preferred batch shape (see [`Sink::batch_hint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHint {
    /// Most events in one batch.
    pub max_events: usize,
    /// Most payload bytes (sum of raw events) in one batch.
    pub max_bytes: usize,
    /// How long a source may wait for more events before handing over a partial batch.
    pub linger: Duration,
}

impl Default for BatchHint {
    fn default() -> Self {
        BatchHint {
            max_events: 500,
            max_bytes: 1 << 20,
            linger: Duration::from_millis(5),
        }
    }
}

/// Opaque settlement handle of one message, meaningful only to the source that issued it
/// (an AMQP delivery tag, a Kafka offset, an embedded-log position).
pub type Receipt = u64;

/// A batch taken from a pull source, settled exactly once through [`Source::settle`].
#[derive(Debug, Clone, Default)]
pub struct SourceBatch {
    /// The messages, in source order.
    pub messages: Vec<Message>,
    /// One receipt per message, same order.
    pub receipts: Vec<Receipt>,
}

/// How a batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sink said `Ok`: acknowledge upstream (AMQP `basic.ack`, store offset, advance cursor).
    Delivered,
    /// A retryable failure: hand the batch back so it is delivered again (AMQP nack + requeue,
    /// cursor not advanced). The pump has already waited its backoff.
    Retry,
    /// The batch can never be accepted: dead-letter it (AMQP nack without requeue → DLX).
    Poison {
        /// Why, for dead-letter headers and logs (no payload data).
        reason: String,
    },
    /// Every message was delivered except these poison ones (index in the batch, reason):
    /// acknowledge the others and dead-letter these, as the pump isolated them.
    Partly {
        /// `(index, reason)` of each poison message, in batch order.
        poison: Vec<(usize, String)>,
    },
}

/// A source's failure. Sources reconnect by themselves; the pump backs off and asks again.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The bus is unreachable for now (connection or channel lost).
    #[error("source unavailable: {0}")]
    Unavailable(String),
    /// The source cannot work (bad configuration, missing queue); the connector stops.
    #[error("source failed: {0}")]
    Fatal(String),
}

impl Retriable for SourceError {
    fn retry_action(&self) -> RetryAction {
        match self {
            SourceError::Unavailable(_) => RetryAction::Retry { after: None },
            SourceError::Fatal(_) => RetryAction::Fatal,
        }
    }
}

/// A pull-based source (delivery contract, rule 2): the pump takes a batch, offers it to the
/// sink and settles it exactly once with the outcome.
#[async_trait]
pub trait Source: Send {
    /// Waits for the next batch. `Ok(None)` means the source has ended for good.
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError>;
    /// Settles a batch taken from [`Source::next_batch`] exactly once.
    async fn settle(&mut self, batch: SourceBatch, outcome: Outcome) -> Result<(), SourceError>;
    /// Called once at shutdown after the last settle: commit progress, close connections.
    async fn close(&mut self) -> Result<(), SourceError>;
    /// Whether the batch now with the pump is still held by this source, so that retrying it
    /// in place makes sense. `false` once it is void: an AMQP channel that delivered it closed
    /// and the broker requeued it; the pump then hands it back and takes the next batch.
    fn is_held(&self) -> bool {
        true
    }
    /// A cheap check of the source's connection that `/readyz` may call at any time while the
    /// source works elsewhere (e.g. "is the AMQP connection open"). Sources without one are
    /// judged by their batches alone.
    fn probe(&self) -> Option<Probe> {
        None
    }
}

/// A cheap, non-blocking check of whether a part is connected (see [`Source::probe`]): `Err`
/// says why not, fit for `/readyz` (no secrets).
pub type Probe = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Calls `f(resource, count)` once per distinct ResourceName of a batch, in order of first
/// appearance. Linear in the batch: a short list for the usual handful of resources, a map once
/// a batch holds many distinct names.
pub fn count_by_resource(batch: &[Message], mut f: impl FnMut(&str, u64)) {
    const LINEAR_SCAN: usize = 16;
    let mut counts: Vec<(&str, u64)> = Vec::new();
    let mut index: Option<std::collections::HashMap<&str, usize>> = None;
    for m in batch {
        let name = m.resource_name.as_str();
        let slot = match &mut index {
            Some(map) => map.get(name).copied(),
            None => counts.iter().position(|(r, _)| *r == name),
        };
        match slot {
            Some(i) => counts[i].1 += 1,
            None => {
                if let Some(map) = &mut index {
                    map.insert(name, counts.len());
                }
                counts.push((name, 1));
                if index.is_none() && counts.len() > LINEAR_SCAN {
                    index = Some(
                        counts
                            .iter()
                            .enumerate()
                            .map(|(i, (r, _))| (*r, i))
                            .collect(),
                    );
                }
            }
        }
    }
    for (resource, n) in counts {
        f(resource, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(resource: &str) -> Message {
        Message {
            delete: false,
            conflict: None,
            sequence: 1,
            resource_name: resource.into(),
            record_key: "k".into(),
            source_label: None,
            payload: Bytes::new(),
            origin: None,
        }
    }

    #[test]
    fn counts_by_resource_in_first_appearance_order() {
        // Few names (the list) and many names (the map) give the same answer.
        let mut batch: Vec<Message> = ["B", "A", "B"].iter().map(|r| message(r)).collect();
        batch.extend((0..40).map(|i| message(&format!("R{}", i % 20))));
        batch.push(message("A"));
        let mut seen = Vec::new();
        count_by_resource(&batch, |r, n| seen.push((r.to_owned(), n)));
        assert_eq!(seen[0], ("B".into(), 2));
        assert_eq!(seen[1], ("A".into(), 2));
        assert_eq!(seen.len(), 22);
        assert!(seen[2..].iter().all(|(_, n)| *n == 2), "{seen:?}");
        assert_eq!(seen[21].0, "R19");
    }
}
