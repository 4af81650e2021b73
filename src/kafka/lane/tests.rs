//! A lane with a fake consumer, a scripted sink and a fake dead-letter writer, in paused time:
//! batching by the sink's hint, retries in place, poison isolation, offsets stored only after
//! delivery, revocation and read-ahead pausing. The broker-backed tests (`tests/it`) cover the
//! same lane on a real consumer group.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::error::KafkaResult;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Item, LaneHandle, LaneShared, PartitionControl, PoisonRecord};
use crate::connector::{BatchHint, Message, Origin, RejectKind, Sink, SinkError};
use crate::dead_letter::{
    DeadLetter, DeadLetterError, DeadLetterInfo, DeadLetterWriter, DeadRecord,
};
use crate::metrics::Metrics;
use crate::runtime::retry::RetryConfig;
use crate::runtime::{Health, Readiness, State};

const TOPIC: &str = "reso.Property";

/// What the lane asked of its consumer, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Pause,
    Resume,
    Store(i64),
}

#[derive(Default)]
struct Control {
    calls: Mutex<Vec<Call>>,
}

impl Control {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    fn stored(&self) -> Vec<i64> {
        let calls = self.calls();
        calls
            .into_iter()
            .filter_map(|c| match c {
                Call::Store(o) => Some(o),
                _ => None,
            })
            .collect()
    }
}

impl PartitionControl for Control {
    fn pause(&self, _: &str, _: i32) {
        self.calls.lock().unwrap().push(Call::Pause);
    }
    fn resume(&self, _: &str, _: i32) {
        self.calls.lock().unwrap().push(Call::Resume);
    }
    fn store(&self, topic: &str, partition: i32, next_offset: i64) -> KafkaResult<()> {
        assert_eq!((topic, partition), (TOPIC, 3), "the lane's own partition");
        self.calls.lock().unwrap().push(Call::Store(next_offset));
        Ok(())
    }
}

/// A sink that first plays its script (one answer per send), then refuses any batch holding a
/// `Bad` event (naming it when `named`) and accepts the rest. `gate`, when set, holds every
/// send until notified.
#[derive(Default)]
struct Scripted {
    script: Mutex<VecDeque<SinkError>>,
    named: bool,
    max_events: usize,
    gate: Option<Arc<Notify>>,
    sends: Mutex<usize>,
    delivered: Mutex<Vec<Vec<i64>>>,
}

#[async_trait]
impl Sink for Scripted {
    async fn send(&self, batch: &[Message]) -> Result<(), SinkError> {
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
        *self.sends.lock().unwrap() += 1;
        if let Some(error) = self.script.lock().unwrap().pop_front() {
            return Err(error);
        }
        if let Some(index) = batch.iter().position(|m| m.resource_name == "Bad") {
            return Err(SinkError::Rejected {
                index: if self.named { index } else { usize::MAX },
                field: None,
                detail: format!("event {} is bad", batch[index].sequence),
                kind: RejectKind::RefusedBySink,
            });
        }
        let sequences = batch.iter().map(|m| m.sequence).collect();
        self.delivered.lock().unwrap().push(sequences);
        Ok(())
    }
    async fn ready(&self) -> Result<(), SinkError> {
        Ok(())
    }
    async fn flush(&self, _: Duration) -> Result<(), SinkError> {
        Ok(())
    }
    fn batch_hint(&self) -> BatchHint {
        BatchHint {
            max_events: self.max_events,
            max_bytes: 1 << 20,
            linger: Duration::from_millis(50),
        }
    }
}

impl Scripted {
    fn delivered(&self) -> Vec<i64> {
        self.delivered.lock().unwrap().concat()
    }
}

/// Dead letters as (sequence or offset, reason); the first `failures` writes fail.
#[derive(Default)]
struct Letters {
    failures: Mutex<usize>,
    written: Mutex<Vec<(i64, &'static str)>>,
}

#[async_trait]
impl DeadLetterWriter for Arc<Letters> {
    async fn write(
        &self,
        records: &[DeadRecord<'_>],
        info: &DeadLetterInfo<'_>,
        _: &str,
    ) -> Result<(), DeadLetterError> {
        {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(DeadLetterError::Unavailable {
                    destination: "dlq".into(),
                    reason: "down".into(),
                });
            }
        }
        let mut written = self.written.lock().unwrap();
        for r in records {
            let id = r.sequence.or(r.origin.map(|o| o.offset)).unwrap();
            written.push((id, info.reason));
        }
        Ok(())
    }
    async fn flush(&self, _: Duration) -> Result<(), DeadLetterError> {
        Ok(())
    }
    fn destination(&self) -> &str {
        "dlq"
    }
}

struct Harness {
    lane: LaneHandle,
    control: Arc<Control>,
    sink: Arc<Scripted>,
    letters: Arc<Letters>,
    health: Health,
    shutdown: CancellationToken,
    max_buffered: usize,
}

fn harness(sink: Scripted, letters: Letters, max_buffered: usize) -> Harness {
    let metrics = Metrics::new();
    let health = Health::new("c", Readiness::Gate, metrics.clone());
    let control = Arc::new(Control::default());
    let sink = Arc::new(sink);
    let letters = Arc::new(letters);
    let shutdown = CancellationToken::new();
    let shared = Arc::new(LaneShared {
        connector: "c".into(),
        consumer: control.clone(),
        sink: sink.clone(),
        hint: sink.batch_hint(),
        retry: RetryConfig {
            min_backoff_ms: 100,
            max_backoff_ms: 1_000,
        },
        dead_letter: Arc::new(DeadLetter::new(
            "c",
            Box::new(letters.clone()),
            metrics.clone(),
        )),
        shutdown: shutdown.clone(),
        max_buffered,
        metrics,
        health: health.clone(),
        failing: Default::default(),
    });
    Harness {
        lane: LaneHandle::spawn(shared, Arc::from(TOPIC), 3),
        control,
        sink,
        letters,
        health,
        shutdown,
        max_buffered,
    }
}

fn origin(offset: i64) -> Origin {
    Origin {
        topic: Arc::from(TOPIC),
        partition: 3,
        offset,
    }
}

/// The event at `offset`: sequence `offset + 1`, `Bad` when listed.
fn event(offset: i64, bad: &[i64]) -> Item {
    let sequence = offset + 1;
    Item::Event(Message {
        delete: false,
        conflict: None,
        sequence,
        resource_name: if bad.contains(&sequence) {
            "Bad"
        } else {
            "Property"
        }
        .into(),
        record_key: format!("k{}", offset % 3),
        source_label: None,
        payload: Bytes::from_static(b"{}"),
        origin: Some(origin(offset)),
    })
}

impl Harness {
    fn push(&mut self, item: Item) {
        let high = self.max_buffered;
        assert!(self.lane.push(item, &*self.control, high), "lane alive");
    }

    fn push_events(&mut self, offsets: std::ops::Range<i64>, bad: &[i64]) {
        for offset in offsets {
            self.push(event(offset, bad));
        }
    }

    /// Lets paused time run until `done` holds (at most a simulated minute).
    async fn until(&self, what: &str, done: impl Fn(&Harness) -> bool) {
        for _ in 0..6_000 {
            if done(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not reached within a minute: {what}");
    }
}

fn sequences(range: std::ops::RangeInclusive<i64>, except: &[i64]) -> Vec<i64> {
    range.filter(|s| !except.contains(s)).collect()
}

#[tokio::test(start_paused = true)]
async fn batches_follow_the_hint_and_offsets_are_stored_after_each_delivery() {
    let sink = Scripted {
        max_events: 4,
        ..Default::default()
    };
    let mut h = harness(sink, Letters::default(), 1_000);
    h.push_events(0..10, &[]);
    h.until("all delivered", |h| h.control.stored().last() == Some(&10))
        .await;
    let batches = h.sink.delivered.lock().unwrap().clone();
    assert_eq!(
        batches,
        vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10]]
    );
    assert_eq!(
        h.control.stored(),
        vec![4, 8, 10],
        "one store per delivered batch"
    );

    // A lone event goes out after the linger, not after a full batch.
    h.push(event(10, &[]));
    h.until("the lone event", |h| h.control.stored().last() == Some(&11))
        .await;
    assert_eq!(h.sink.delivered(), sequences(1..=11, &[]));
}

#[tokio::test(start_paused = true)]
async fn a_failing_sink_is_retried_in_place_and_nothing_is_stored_until_it_delivers() {
    let sink = Scripted {
        max_events: 5,
        script: Mutex::new(VecDeque::from([
            SinkError::Unavailable {
                reason: "broker down".into(),
            },
            SinkError::Overloaded {
                reason: "queue full".into(),
            },
            SinkError::Unavailable {
                reason: "broker down".into(),
            },
        ])),
        ..Default::default()
    };
    let mut h = harness(sink, Letters::default(), 1_000);
    h.push_events(0..12, &[]);
    h.until("the lane reports its sink failing", |h| {
        h.health.state() == State::Degraded
    })
    .await;
    assert!(
        h.control.stored().is_empty(),
        "nothing stored while failing"
    );

    h.until("all delivered", |h| h.control.stored().last() == Some(&12))
        .await;
    assert_eq!(
        *h.sink.sends.lock().unwrap(),
        3 + 3,
        "three failures, three batches"
    );
    assert_eq!(
        h.sink.delivered(),
        sequences(1..=12, &[]),
        "in order, each once"
    );
    assert_eq!(h.control.stored(), vec![5, 10, 12]);
    assert_eq!(h.health.state(), State::Running, "healthy again");
}

async fn poison(named: bool, bad: &[i64]) {
    let sink = Scripted {
        max_events: 100,
        named,
        ..Default::default()
    };
    let mut h = harness(sink, Letters::default(), 1_000);
    h.push_events(0..100, bad);
    h.until("the batch settled", |h| {
        h.control.stored().last() == Some(&100)
    })
    .await;
    assert_eq!(
        h.sink.delivered(),
        sequences(1..=100, bad),
        "good neighbours delivered in order (named: {named}, bad: {bad:?})"
    );
    let written = h.letters.written.lock().unwrap().clone();
    let expected: Vec<(i64, &str)> = bad.iter().map(|&s| (s, "rejected")).collect();
    assert_eq!(written, expected, "only the poison is dead-lettered");
    assert_eq!(
        h.control.stored(),
        vec![100],
        "the batch is stored once, settled"
    );
}

#[tokio::test(start_paused = true)]
async fn one_poison_event_in_a_batch_of_100_is_dead_lettered_alone() {
    poison(true, &[50]).await;
    poison(false, &[50]).await;
}

#[tokio::test(start_paused = true)]
async fn three_poison_events_in_a_batch_of_100_are_dead_lettered_alone() {
    poison(true, &[1, 50, 100]).await;
    poison(false, &[1, 50, 100]).await;
}

#[tokio::test(start_paused = true)]
async fn an_unparseable_record_is_dead_lettered_and_its_neighbours_delivered() {
    let sink = Scripted {
        max_events: 10,
        ..Default::default()
    };
    let mut h = harness(sink, Letters::default(), 1_000);
    h.push_events(0..3, &[]);
    h.push(Item::Poison(Box::new(PoisonRecord {
        key: None,
        payload: Bytes::from_static(b"not json"),
        resource_name: None,
        source_label: None,
        origin: origin(3),
        reason: "not JSON".into(),
    })));
    h.push_events(4..6, &[]);
    h.until("all settled", |h| h.control.stored().last() == Some(&6))
        .await;
    assert_eq!(h.sink.delivered(), vec![1, 2, 3, 5, 6]);
    assert_eq!(*h.letters.written.lock().unwrap(), vec![(3, "unparseable")]);
    assert_eq!(
        h.control.stored(),
        vec![3, 4, 6],
        "before, at and after the poison"
    );
}

#[tokio::test(start_paused = true)]
async fn offsets_wait_for_the_dead_letter_write() {
    let sink = Scripted {
        max_events: 10,
        named: true,
        ..Default::default()
    };
    let letters = Letters {
        failures: Mutex::new(3),
        ..Default::default()
    };
    let mut h = harness(sink, letters, 1_000);
    h.push_events(0..4, &[3]);
    h.until("the good events before the poison", |h| {
        h.sink.delivered() == vec![1, 2]
    })
    .await;
    h.until("a failed dead-letter write", |h| {
        h.health.state() == State::Degraded
    })
    .await;
    assert!(
        h.control.stored().is_empty(),
        "nothing stored before the write"
    );
    h.until("all settled", |h| h.control.stored().last() == Some(&4))
        .await;
    assert_eq!(*h.letters.written.lock().unwrap(), vec![(3, "rejected")]);
    assert_eq!(h.sink.delivered(), vec![1, 2, 4]);
    assert_eq!(h.health.state(), State::Running);
}

#[tokio::test(start_paused = true)]
async fn a_revoked_lane_stops_retrying_and_never_stores() {
    let always_down: VecDeque<SinkError> = (0..1_000)
        .map(|_| SinkError::Unavailable {
            reason: "down".into(),
        })
        .collect();
    let sink = Scripted {
        max_events: 10,
        script: Mutex::new(always_down),
        ..Default::default()
    };
    let mut h = harness(sink, Letters::default(), 1_000);
    h.push_events(0..5, &[]);
    h.until("a few retries", |h| *h.sink.sends.lock().unwrap() >= 3)
        .await;
    let task = h.lane.revoke(&*h.control);
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("a revoked lane ends at once")
        .expect("without panicking");
    let sends = *h.sink.sends.lock().unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(*h.sink.sends.lock().unwrap(), sends, "no send after revoke");
    assert!(
        h.control.stored().is_empty(),
        "an undelivered batch is never stored"
    );
    assert_eq!(
        h.health.state(),
        State::Running,
        "an ended lane reports nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_the_batch_in_flight_and_starts_no_other() {
    let gate = Arc::new(Notify::new());
    let sink = Scripted {
        max_events: 2,
        gate: Some(gate.clone()),
        ..Default::default()
    };
    let mut h = harness(sink, Letters::default(), 1_000);
    h.push_events(0..6, &[]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.shutdown.cancel();
    gate.notify_one();
    let task = h.lane.close();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the lane ends after its batch in flight")
        .expect("without panicking");
    assert_eq!(h.sink.delivered(), vec![1, 2], "only the batch in flight");
    assert_eq!(h.control.stored(), vec![2], "and its offset stored");
}

#[tokio::test(start_paused = true)]
async fn a_lane_far_behind_pauses_its_partition_and_resumes_at_half() {
    let gate = Arc::new(Notify::new());
    let sink = Scripted {
        max_events: 1,
        gate: Some(gate.clone()),
        ..Default::default()
    };
    let mut h = harness(sink, Letters::default(), 10);
    h.push_events(0..12, &[]);
    assert_eq!(
        h.control.calls(),
        vec![Call::Pause],
        "paused once at 10 queued"
    );
    h.until("resumed", |h| {
        gate.notify_one();
        h.control.calls().contains(&Call::Resume)
    })
    .await;
    let calls = h.control.calls();
    let resume_at = calls.iter().position(|c| *c == Call::Resume).unwrap();
    let delivered_before_resume = calls[..resume_at]
        .iter()
        .filter(|c| matches!(c, Call::Store(_)))
        .count();
    // 12 queued: resumed when the 7th is taken, leaving 5 (half of 10) queued.
    assert_eq!(
        delivered_before_resume, 6,
        "resumed after draining to half, not before"
    );
    h.until("all delivered", |h| {
        gate.notify_one();
        h.control.stored().last() == Some(&12)
    })
    .await;
    assert_eq!(h.sink.delivered(), sequences(1..=12, &[]));
    assert_eq!(
        h.control
            .calls()
            .iter()
            .filter(|c| **c == Call::Pause)
            .count(),
        1,
        "paused once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refetched_record_is_not_queued_twice() {
    let sink = Scripted {
        max_events: 10,
        ..Default::default()
    };
    let mut h = harness(sink, Letters::default(), 1_000);
    h.push_events(0..3, &[]);
    h.push_events(1..5, &[]);
    h.until("all settled", |h| h.control.stored().last() == Some(&5))
        .await;
    assert_eq!(h.sink.delivered(), vec![1, 2, 3, 4, 5]);
}
