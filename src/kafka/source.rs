//! The Kafka source: a consumer group member that feeds a sink through one lane per partition.
//!
//! Why not the generic [`crate::runtime::pump::Pump`]: the pump keeps one batch in flight for the whole
//! connector, which is right for a queue but would serialize every partition behind the slowest
//! one. Here a dispatcher task reads the consumer and routes each record to its partition's
//! [`lane`](super::lane): per-partition order, cross-partition parallelism.
//!
//! Offsets: auto-commit and auto-store are off. Lanes store `offset + 1` after delivery (or
//! dead-lettering); stored offsets are committed every `commit_interval_ms`, synchronously in
//! the revoke callback before partitions are handed to another member, and at shutdown. A
//! revoked partition's lane is stopped before that commit, so an undelivered in-flight batch is
//! never committed: the next owner redelivers it (duplicates possible, loss not).
//!
//! Shutdown: stop reading, let lanes finish the POST in flight (bounded by half of
//! `shutdown_timeout_ms`, then abandoned), commit what was delivered, leave the group.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Headers, Message as _};
use rdkafka::statistics::Statistics;
use rdkafka::TopicPartitionList;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lane::{Item, LaneHandle, LaneShared};
use super::record::{parse_record, RecordView};
use super::sink::KafkaBuildError;
use super::source_config::KafkaSourceConfig;
use crate::connector::{Origin, Sink, SourceError};
use crate::dead_letter::{DeadLetter, DeadLetterConfig};
use crate::metrics::Metrics;
use crate::runtime::retry::RetryConfig;
use crate::runtime::{panic_message, Health, Part};

type Lanes = Arc<Mutex<HashMap<(Arc<str>, i32), LaneHandle>>>;

/// Consumer callbacks: rebalance (stop lanes, commit), commit results, statistics (lag, broker
/// connections), client errors.
pub struct SourceContext {
    connector: String,
    lanes: Lanes,
    retired: Arc<Mutex<Vec<JoinHandle<()>>>>,
    metrics: Metrics,
    health: Health,
}

fn commit_stored<C: Consumer<SourceContext>>(consumer: &C, mode: CommitMode) -> KafkaResult<()> {
    match consumer.commit_consumer_state(mode) {
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        other => other,
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum();
        self.metrics.consumer_lag(&self.connector, lag);
        // Bootstrap entries have no node id; a learned broker that is UP means connected.
        if (statistics.brokers.values()).any(|b| b.nodeid >= 0 && b.state == "UP") {
            self.health.ok(Part::Source);
        } else {
            self.health
                .failed(Part::Source, "no connection to a Kafka broker is up");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.failed(
                Part::Source,
                format!("all Kafka brokers are down: {reason}"),
            );
        }
        tracing::warn!(connector = %self.connector, error = %error, %reason, "kafka consumer client error");
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let mut stopped = 0;
                {
                    let mut lanes = self.lanes.lock().expect("lanes lock");
                    for e in tpl.elements() {
                        if let Some(lane) = lanes.remove(&(Arc::from(e.topic()), e.partition())) {
                            let task = lane.revoke(consumer);
                            self.retired.lock().expect("retired lock").push(task);
                            stopped += 1;
                        }
                    }
                }
                // Only offsets of delivered events are stored: commit them before the handover.
                if let Err(e) = commit_stored(consumer, CommitMode::Sync) {
                    tracing::warn!(connector = %self.connector, error = %e, "commit on revoke failed; the next owner redelivers from the previous commit");
                }
                tracing::info!(connector = %self.connector, partitions = tpl.count(), lanes_stopped = stopped, "partitions revoked; delivered offsets committed");
            }
            Rebalance::Assign(tpl) => {
                tracing::info!(connector = %self.connector, partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Error(e) => {
                tracing::warn!(connector = %self.connector, error = %e, "rebalance error");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(connector = %self.connector, error = %e, "offset commit failed; retried at the next interval")
            }
        }
    }
}

/// Why a Kafka source could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceBuildError {
    /// The consumer could not be created (bad librdkafka options, unreadable secrets).
    #[error(transparent)]
    Consumer(#[from] KafkaBuildError),
    /// The dead-letter writer could not be built.
    #[error("dead_letter: {0}")]
    DeadLetter(#[from] crate::dead_letter::DeadLetterBuildError),
}

/// A running Kafka source, ready to [`KafkaSource::run`].
pub struct KafkaSource {
    connector: String,
    consumer: Arc<StreamConsumer<SourceContext>>,
    lanes: Lanes,
    retired: Arc<Mutex<Vec<JoinHandle<()>>>>,
    topics: Vec<String>,
    commit_interval: Duration,
    max_buffered: usize,
    max_depth: usize,
    sink: Arc<dyn Sink>,
    retry: RetryConfig,
    dead_letter: Arc<DeadLetter>,
    metrics: Metrics,
    health: Health,
    drain_timeout: Duration,
    /// `unassigned_rejoin_after_ms` (`None`: off) and where a group without commits starts.
    rejoin_after: Option<Duration>,
    reset: super::source_config::OffsetReset,
}

impl KafkaSourceConfig {
    /// Builds the consumer (no network yet). `dead_letter` is the source's own or the sink's;
    /// `shutdown_timeout` bounds the drain at shutdown; `health` hears about broker
    /// connections and deliveries.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        &self,
        connector: &str,
        sink: Arc<dyn Sink>,
        dead_letter: &DeadLetterConfig,
        retry: RetryConfig,
        metrics: Metrics,
        health: Health,
        shutdown_timeout: Duration,
    ) -> Result<KafkaSource, KafkaSourceBuildError> {
        let lanes: Lanes = Arc::default();
        let retired: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let context = SourceContext {
            connector: connector.to_owned(),
            lanes: lanes.clone(),
            retired: retired.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
        };
        let consumer: StreamConsumer<SourceContext> = self
            .client_config(connector)?
            .create_with_context(context)
            .map_err(KafkaBuildError::from)?;
        Ok(KafkaSource {
            connector: connector.to_owned(),
            consumer: Arc::new(consumer),
            lanes,
            retired,
            topics: self.topics.clone(),
            commit_interval: Duration::from_millis(self.commit_interval_ms),
            max_buffered: self.max_buffered_events_per_partition,
            max_depth: self.max_json_depth,
            sink,
            retry,
            dead_letter: Arc::new(dead_letter.build(connector, metrics.clone())?),
            rejoin_after: self.unassigned_rejoin_after(),
            reset: self.auto_offset_reset,
            metrics,
            health,
            drain_timeout: shutdown_timeout / 2,
        })
    }
}

fn view<'a>(m: &'a BorrowedMessage<'a>) -> RecordView<'a> {
    let mut headers = Vec::new();
    let mut unreadable_header = false;
    if let Some(h) = m.headers() {
        for i in 0..h.count() {
            match header_at(h, i) {
                Some((Ok(key), Some(value))) => headers.push((key, value)),
                Some((Ok(_), None)) => {}
                Some((Err(_), _)) | None => unreadable_header = true,
            }
        }
    }
    RecordView {
        key: m.key(),
        payload: m.payload(),
        headers,
        unreadable_header,
    }
}

/// A header as read: its key (if UTF-8) and its value (if any).
type RawHeader<'a> = (Result<&'a str, std::str::Utf8Error>, Option<&'a [u8]>);

/// Header `idx` as (key, value), without rdkafka's `Headers::get`, which panics on a key that
/// is not UTF-8 (any producer can write one, and the panic took the whole source down).
/// The crate's only `unsafe` (`[lints.rust] unsafe_code = "deny"` elsewhere).
#[allow(unsafe_code)]
fn header_at(headers: &BorrowedHeaders, idx: usize) -> Option<RawHeader<'_>> {
    let mut name: *const std::ffi::c_char = std::ptr::null();
    let mut value: *const std::ffi::c_void = std::ptr::null();
    let mut size = 0usize;
    // SAFETY: a `&BorrowedHeaders` is the librdkafka headers pointer of a message that outlives
    // the returned borrows (rdkafka's own accessors cast it the same way). On success,
    // librdkafka sets `name` to a NUL-terminated string and `value` to `size` bytes (or null)
    // owned by those headers.
    unsafe {
        let err = rdkafka::bindings::rd_kafka_header_get_all(
            (headers as *const BorrowedHeaders).cast(),
            idx,
            &mut name,
            &mut value,
            &mut size,
        );
        if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            || name.is_null()
        {
            return None;
        }
        let key = std::ffi::CStr::from_ptr(name).to_str();
        let value =
            (!value.is_null()).then(|| std::slice::from_raw_parts(value.cast::<u8>(), size));
        Some((key, value))
    }
}

impl KafkaSource {
    /// Consumes until `cancel` fires, then drains, commits and leaves the group. Returns an
    /// error when a lane died (panicked, or its sink failed for good): the source then stops
    /// like at shutdown, committing only what was delivered, so that its supervisor can start a
    /// fresh one, which redelivers the rest.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), SourceError> {
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.consumer
            .subscribe(&topics)
            .map_err(|e| SourceError::Fatal(format!("cannot subscribe to {topics:?}: {e}")))?;
        tracing::info!(connector = %self.connector, topics = ?topics, "kafka source subscribed");
        // Stops the lanes at shutdown, and when this source gives up after a lane died — or
        // panics: the guard cancels it on unwinding too, so lanes blocked on their queue end
        // and release the consumer instead of keeping it in the group unpolled.
        let stop = cancel.child_token();
        let _stop_on_exit = stop.clone().drop_guard();
        let shared = Arc::new(LaneShared {
            connector: self.connector.clone(),
            consumer: self.consumer.clone(),
            sink: self.sink.clone(),
            hint: self.sink.batch_hint(),
            retry: self.retry.clone(),
            dead_letter: self.dead_letter.clone(),
            shutdown: stop.clone(),
            max_buffered: self.max_buffered,
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            failing: Default::default(),
        });
        let mut unassigned = super::unassigned::UnassignedWatch::default();
        let mut commit_tick = tokio::time::interval(self.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let failure = loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break None,
                _ = commit_tick.tick() => {
                    if let Err(e) = commit_stored(&*self.consumer, CommitMode::Async) {
                        tracing::warn!(connector = %self.connector, error = %e, "offset commit failed");
                    }
                    if let Some(dead) = self.dead_lane().await {
                        break Some(dead);
                    }
                    if let Some(stuck) = self.unassigned(&mut unassigned).await {
                        break Some(stuck);
                    }
                }
                received = self.consumer.recv() => match received {
                    Ok(m) => {
                        self.health.ok(Part::Source);
                        if !self.dispatch(&m, &shared) {
                            if let Some(dead) = self.dead_lane().await {
                                break Some(dead);
                            }
                        }
                    }
                    Err(e) => {
                        self.health.failed(Part::Source, &e);
                        tracing::warn!(connector = %self.connector, error = %e, "kafka consumer error");
                        tokio::select! {
                            _ = cancel.cancelled() => break None,
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                    }
                },
            }
        };
        stop.cancel();
        self.finish(shared).await;
        failure.map_or(Ok(()), Err)
    }

    /// A lane that ended while its partition is still assigned and the source still runs: it
    /// panicked or its sink failed for good, and its partition would stall. Removes it and says
    /// why it ended.
    async fn dead_lane(&self) -> Option<SourceError> {
        let (key, lane) = {
            let mut lanes = self.lanes.lock().expect("lanes lock");
            let key = lanes
                .iter()
                .find(|(_, lane)| lane.task.is_finished())
                .map(|(key, _)| key.clone())?;
            let lane = lanes.remove(&key)?;
            (key, lane)
        };
        let why = match lane.close().await {
            Ok(()) => "its sink failed for good".to_owned(),
            Err(e) if e.is_panic() => format!("panicked: {}", panic_message(&*e.into_panic())),
            Err(e) => e.to_string(),
        };
        Some(SourceError::Fatal(format!(
            "the lane of {} partition {} stopped ({why}); restarting the source",
            key.0, key.1
        )))
    }

    /// With no partition assigned, whether lagging partitions stayed unconsumed for
    /// `unassigned_rejoin_after_ms` ([`super::unassigned`]): then the source is not ready and
    /// stops, and its supervisor starts a consumer that joins the group afresh.
    async fn unassigned(
        &self,
        watch: &mut super::unassigned::UnassignedWatch,
    ) -> Option<SourceError> {
        let bound = self.rejoin_after?;
        let (consumer, topics, reset) = (self.consumer.clone(), self.topics.clone(), self.reset);
        let checked = tokio::task::spawn_blocking(move || {
            super::unassigned::lagging(&*consumer, &topics, reset)
        })
        .await;
        let lagging = match checked {
            Ok(Ok(lagging)) => lagging,
            Ok(Err(e)) => {
                tracing::debug!(connector = %self.connector, error = %e, "cannot look at the lag of unassigned partitions; tried again");
                return None;
            }
            Err(e) => {
                tracing::warn!(connector = %self.connector, error = %e, "lag check failed");
                return None;
            }
        };
        let why = watch.observe(lagging, bound)?;
        tracing::warn!(connector = %self.connector, reason = %why, "kafka source holds no partition while lag waits; rejoining");
        self.health.failed(Part::Source, &why);
        self.metrics.consumer_rejoin(&self.connector);
        Some(SourceError::Fatal(why))
    }

    /// Routes a record to its partition's lane; `false` when that lane has ended.
    fn dispatch(&self, m: &BorrowedMessage<'_>, shared: &Arc<LaneShared>) -> bool {
        let mut lanes = self.lanes.lock().expect("lanes lock");
        let key = (Arc::<str>::from(m.topic()), m.partition());
        let origin = Origin {
            topic: key.0.clone(),
            partition: m.partition(),
            offset: m.offset(),
        };
        let item = match parse_record(&view(m), origin, self.max_depth) {
            Ok(message) => Item::Event(message),
            Err(poison) => {
                tracing::warn!(connector = %self.connector, topic = %key.0, partition = key.1, offset = m.offset(), reason = %poison.reason, "record is not an EntityEvent; dead-lettering");
                Item::Poison(poison)
            }
        };
        let lane = lanes
            .entry(key.clone())
            .or_insert_with(|| LaneHandle::spawn(shared.clone(), key.0.clone(), key.1));
        // A lane that ended leaves the record for redelivery by the next source.
        lane.push(item, &*self.consumer, self.max_buffered)
    }

    async fn finish(self, shared: Arc<LaneShared>) {
        let started = Instant::now();
        let deadline = started + self.drain_timeout;
        let mut tasks: Vec<JoinHandle<()>> = {
            let mut lanes = self.lanes.lock().expect("lanes lock");
            lanes.drain().map(|(_, lane)| lane.close()).collect()
        };
        tasks.extend(self.retired.lock().expect("retired lock").drain(..));
        drop(shared);
        let mut abandoned = 0;
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
                abandoned += 1;
            }
        }
        if abandoned > 0 {
            tracing::warn!(connector = %self.connector, lanes = abandoned, "in-flight batches abandoned at shutdown; they are redelivered after the restart");
        }
        let connector = self.connector.clone();
        let consumer = self.consumer;
        let closing = tokio::task::spawn_blocking(move || {
            if let Err(e) = commit_stored(&*consumer, CommitMode::Sync) {
                tracing::warn!(%connector, error = %e, "final offset commit failed; undelivered-looking events are redelivered");
            }
            // Dropping the last handle leaves the group (revoke callback, commit once more).
            drop(consumer);
        });
        let _ = closing.await;
        tracing::info!(connector = %self.connector, elapsed_ms = started.elapsed().as_millis() as u64, "kafka source stopped; delivered offsets committed");
    }
}
