//! One partition's lane: batches its records, hands each batch to the sink, stores its offset.
//!
//! A lane is the unit of ordering. It keeps at most one batch in flight and retries that batch in
//! place, so the events of one ResourceRecordKey (one key → one partition) reach the sink in
//! order even across retries. Lanes of different partitions run concurrently; the sink's own
//! limits (e.g. the webhook sink's `max_concurrent_requests`) bound how many are sending at once.
//!
//! An offset is stored only after its event was delivered or dead-lettered, and only while the
//! lane still owns the partition: a revoked lane stops at once (its in-flight batch is
//! abandoned, to be redelivered by the next owner) and never stores again. librdkafka refuses
//! offsets for partitions no longer assigned, which closes the remaining race.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod deliver;
#[cfg(test)]
mod tests;

use super::record::PoisonRecord;
use super::source::SourceContext;

use crate::connector::{BatchHint, Message, Sink};
use crate::dead_letter::DeadLetter;
use crate::metrics::Metrics;
use crate::runtime::retry::{pause, RetryConfig};
use crate::runtime::Health;

/// What the dispatcher hands a lane, in offset order.
#[derive(Debug)]
pub enum Item {
    /// A parsed EntityEvent.
    Event(Message),
    /// A record that is not one.
    Poison(Box<PoisonRecord>),
}

impl Item {
    fn offset(&self) -> i64 {
        match self {
            Item::Event(m) => m.origin.as_ref().map(|o| o.offset).unwrap_or(-1),
            Item::Poison(p) => p.origin.offset,
        }
    }
}

/// What a lane needs of its consumer: flow control and the offset store of its partition.
/// The Kafka consumer implements it; it is a seam so that the lane logic (batching, retries in
/// place, poison isolation, offsets stored only after delivery, revocation) is tested with a
/// fake and paused time (`tests.rs`).
pub trait PartitionControl: Send + Sync {
    /// Stops fetching `topic`/`partition` (the lane is far behind).
    fn pause(&self, topic: &str, partition: i32);
    /// Fetches `topic`/`partition` again.
    fn resume(&self, topic: &str, partition: i32);
    /// Marks everything before `next_offset` done; committed with the next commit.
    fn store(&self, topic: &str, partition: i32, next_offset: i64) -> KafkaResult<()>;
}

fn store_offset<C: Consumer<SourceContext>>(
    consumer: &C,
    topic: &str,
    partition: i32,
    next_offset: i64,
) -> KafkaResult<()> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(next_offset))?;
    consumer.store_offsets(&tpl)
}

/// The two consumer types a lane meets: the source's stream consumer and the base consumer the
/// rebalance callback is handed.
macro_rules! partition_control {
    ($consumer:ty) => {
        impl PartitionControl for $consumer {
            fn pause(&self, topic: &str, partition: i32) {
                let _ = Consumer::pause(self, &partition_list(topic, partition));
            }
            fn resume(&self, topic: &str, partition: i32) {
                let _ = Consumer::resume(self, &partition_list(topic, partition));
            }
            fn store(&self, topic: &str, partition: i32, next_offset: i64) -> KafkaResult<()> {
                store_offset(self, topic, partition, next_offset)
            }
        }
    };
}
partition_control!(StreamConsumer<SourceContext>);
partition_control!(BaseConsumer<SourceContext>);

/// What every lane of a connector shares.
pub struct LaneShared {
    /// Connector name.
    pub connector: String,
    /// The consumer (offset store, pause / resume).
    pub consumer: Arc<dyn PartitionControl>,
    /// Where batches go.
    pub sink: Arc<dyn Sink>,
    /// Batch shape.
    pub hint: BatchHint,
    /// Backoff when the sink fails without retrying by itself.
    pub retry: RetryConfig,
    /// Where poison records and batches go.
    pub dead_letter: Arc<DeadLetter>,
    /// Cancelled at shutdown: finish the batch in flight, start no other.
    pub shutdown: CancellationToken,
    /// Read-ahead per partition before fetching pauses.
    pub max_buffered: usize,
    /// Metrics.
    pub metrics: Metrics,
    /// Where lanes report their sink delivering or failing.
    pub health: Health,
    /// The lanes whose sink is failing now: the connector's sink is healthy again only when
    /// none is (one lane delivering must not hide another one stuck).
    pub failing: Failing,
}

/// Which lanes report their sink failing (see [`LaneShared::failing`]). The lock guards set
/// insertions and removals only, so it is never poisoned (the `expect`s state that invariant).
#[derive(Default)]
pub struct Failing {
    count: AtomicUsize,
    lanes: Mutex<std::collections::HashSet<(Arc<str>, i32)>>,
}

/// The dispatcher's and the rebalance callback's handle on a running lane.
pub struct LaneHandle {
    topic: Arc<str>,
    partition: i32,
    tx: mpsc::UnboundedSender<Item>,
    queued: Arc<AtomicUsize>,
    paused: Arc<Mutex<bool>>,
    revoked: CancellationToken,
    stop: CancellationToken,
    last_offset: i64,
    /// The lane's task.
    pub task: tokio::task::JoinHandle<()>,
}

fn partition_list(topic: &str, partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    tpl
}

impl LaneHandle {
    /// Starts the lane of `topic`/`partition`.
    pub fn spawn(shared: Arc<LaneShared>, topic: Arc<str>, partition: i32) -> LaneHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let paused = Arc::new(Mutex::new(false));
        let revoked = CancellationToken::new();
        let stop = shared.shutdown.child_token();
        let lane = Lane {
            stop: stop.clone(),
            shared,
            topic: topic.clone(),
            partition,
            rx,
            queued: queued.clone(),
            paused: paused.clone(),
            revoked: revoked.clone(),
        };
        LaneHandle {
            topic,
            partition,
            tx,
            queued,
            paused,
            revoked,
            stop,
            last_offset: -1,
            task: tokio::spawn(lane.run()),
        }
    }

    /// Queues `item`; pauses fetching of the partition when the lane is far behind. Records at
    /// or below an offset already queued (a re-fetch) are skipped. Returns `false` when the lane
    /// has ended.
    pub fn push(&mut self, item: Item, consumer: &dyn PartitionControl, high: usize) -> bool {
        let offset = item.offset();
        if offset <= self.last_offset {
            return true;
        }
        self.last_offset = offset;
        if self.tx.send(item).is_err() {
            return false;
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) + 1 >= high {
            let mut paused = self.paused.lock().expect("pause lock");
            if !*paused {
                *paused = true;
                consumer.pause(&self.topic, self.partition);
            }
        }
        true
    }

    /// Stops the lane for good (partition revoked); resumes fetching if it was paused so the
    /// partition's next owner in this process starts clean.
    pub fn revoke(self, consumer: &dyn PartitionControl) -> tokio::task::JoinHandle<()> {
        self.revoked.cancel();
        self.stop.cancel();
        let mut paused = self.paused.lock().expect("pause lock");
        if *paused {
            *paused = false;
            consumer.resume(&self.topic, self.partition);
        }
        self.task
    }

    /// Closes the lane's queue (shutdown): it finishes its batch in flight and ends.
    pub fn close(self) -> tokio::task::JoinHandle<()> {
        self.task
    }
}

struct Lane {
    shared: Arc<LaneShared>,
    topic: Arc<str>,
    partition: i32,
    rx: mpsc::UnboundedReceiver<Item>,
    queued: Arc<AtomicUsize>,
    paused: Arc<Mutex<bool>>,
    revoked: CancellationToken,
    /// Cancelled when the lane is revoked or the source stops: ends retry waits.
    stop: CancellationToken,
}

impl Lane {
    /// Revoked or shutting down (`stop` is cancelled by both).
    fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Takes the next item, or `None` when the lane must end.
    async fn next(&mut self, deadline: Option<Instant>) -> Option<Item> {
        let item = tokio::select! {
            biased;
            _ = self.stop.cancelled() => None,
            _ = sleep_until_opt(deadline) => None,
            item = self.rx.recv() => item,
        }?;
        let left = self.queued.fetch_sub(1, Ordering::AcqRel) - 1;
        if left <= self.shared.max_buffered / 2 {
            let mut paused = self.paused.lock().expect("pause lock");
            if *paused && !self.revoked.is_cancelled() {
                *paused = false;
                self.shared.consumer.resume(&self.topic, self.partition);
            }
        }
        Some(item)
    }

    async fn run(mut self) {
        self.run_until_stopped().await;
        // A lane that ends (revoked, shutdown) no longer reports anything.
        self.sink_ok();
    }

    async fn run_until_stopped(&mut self) {
        let hint = self.shared.hint;
        let mut carry: Option<Item> = None;
        loop {
            if self.stopping() {
                return;
            }
            let first = match carry.take() {
                Some(item) => item,
                None => match self.next(None).await {
                    Some(item) => item,
                    None => return,
                },
            };
            let first = match first {
                Item::Poison(p) => {
                    if !self.dead_letter_poison(&p).await {
                        return;
                    }
                    self.store(p.origin.offset);
                    continue;
                }
                Item::Event(m) => m,
            };
            let mut bytes = first.payload.len();
            let mut batch = vec![first];
            let deadline = Instant::now() + hint.linger;
            while batch.len() < hint.max_events {
                match self.next(Some(deadline)).await {
                    Some(Item::Event(m)) if bytes + m.payload.len() < hint.max_bytes => {
                        bytes += m.payload.len() + 1;
                        batch.push(m);
                    }
                    Some(other) => {
                        carry = Some(other);
                        break;
                    }
                    None => break,
                }
            }
            if self.stopping() || !self.deliver(&batch).await {
                return;
            }
            let last = batch
                .last()
                .and_then(|m| m.origin.as_ref())
                .map(|o| o.offset);
            if let Some(offset) = last {
                self.store(offset);
            }
            self.shared.metrics.pump_events(
                &self.shared.connector,
                "delivered",
                batch.len() as u64,
            );
        }
    }

    async fn wait(&self, delay: Duration) -> bool {
        pause(delay, &self.stop).await
    }

    /// Marks everything up to `offset` done (committed with the next commit).
    fn store(&self, offset: i64) {
        if self.revoked.is_cancelled() {
            return;
        }
        let stored = self
            .shared
            .consumer
            .store(&self.topic, self.partition, offset + 1);
        if let Err(e) = stored {
            // Not assigned any more: the next owner redelivers from the last commit.
            tracing::debug!(connector = %self.shared.connector, topic = %self.topic, partition = self.partition, error = %e, "offset not stored");
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
