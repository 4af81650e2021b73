//! The feeds layer over a recording sink and the real embedded store.

use std::path::Path;
use std::sync::Mutex;

use bytes::Bytes;

use super::*;
use crate::layers::feeds::{wrap, DedupeConfig, Wrapped};

/// Records what it published; fails while `down`, refuses events of `Bad`, and waits
/// `delay` per send.
#[derive(Default)]
struct Recording {
    published: Mutex<Vec<(Option<String>, i64)>>,
    down: std::sync::atomic::AtomicBool,
    delay: Duration,
    /// Refuse `Bad` events without naming them (index out of range).
    unnamed: bool,
    /// `Message::conflict` of every published event, in order.
    conflicts: Mutex<Vec<Option<i64>>>,
}

#[async_trait]
impl Sink for Recording {
    async fn send(&self, batch: &[Message]) -> Result<(), SinkError> {
        tokio::time::sleep(self.delay).await;
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SinkError::Unavailable {
                reason: "down".into(),
            });
        }
        if let Some(index) = batch.iter().position(|m| m.resource_name == "Bad") {
            return Err(SinkError::Rejected {
                index: if self.unnamed { usize::MAX } else { index },
                field: Some("ResourceName"),
                detail: "bad".into(),
                kind: RejectKind::Unroutable,
            });
        }
        (self.conflicts.lock().unwrap()).extend(batch.iter().map(|m| m.conflict));
        let mut published = self.published.lock().unwrap();
        published.extend(
            batch
                .iter()
                .map(|m| (m.source_label.as_deref().map(str::to_owned), m.sequence)),
        );
        Ok(())
    }
    async fn ready(&self) -> Result<(), SinkError> {
        Ok(())
    }
    async fn flush(&self, _: Duration) -> Result<(), SinkError> {
        Ok(())
    }
}

impl Recording {
    fn sequences(&self) -> Vec<i64> {
        self.published
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s)| *s)
            .collect()
    }
}

fn event(sequence: i64, label: Option<&str>) -> Message {
    Message {
        delete: false,
        conflict: None,
        sequence,
        resource_name: "Property".into(),
        record_key: format!("k{sequence}"),
        source_label: label.map(Arc::from),
        payload: Bytes::from_static(b"{}"),
        origin: None,
    }
}

fn events(range: std::ops::RangeInclusive<i64>) -> Vec<Message> {
    range.map(|s| event(s, None)).collect()
}

async fn layer(dir: &Path, sink: Arc<Recording>, config: Option<DedupeConfig>) -> Wrapped {
    layer_capped(dir, sink, config, 64).await
}

async fn layer_capped(
    dir: &Path,
    sink: Arc<Recording>,
    config: Option<DedupeConfig>,
    cap: usize,
) -> Wrapped {
    let tracking = crate::layers::feeds::Tracking {
        max_tracked_feeds: cap,
        evict_idle_feeds_after_hours: 168,
        mark_before_answer: false,
    };
    wrap("c", config.as_ref(), tracking, dir, sink, Metrics::new())
        .await
        .unwrap()
}

fn on() -> Option<DedupeConfig> {
    Some(DedupeConfig::default())
}

#[tokio::test]
async fn an_event_its_feed_delivered_is_acknowledged_not_published_again() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Recording::default());
    let w = layer(dir.path(), sink.clone(), on()).await;
    let first = w.sink.send_report(&events(1..=10)).await.unwrap();
    assert_eq!(first, SendReport::default());
    let again = w.sink.send_report(&events(5..=15)).await.unwrap();
    assert_eq!(again.duplicates, 6, "5..=10 were delivered");
    assert_eq!(sink.sequences(), (1..=15).collect::<Vec<_>>());

    let labelled: Vec<Message> = (5..=6).map(|s| event(s, Some("IDX"))).collect();
    let other_feed = w.sink.send_report(&labelled).await.unwrap();
    assert_eq!(
        other_feed.duplicates, 0,
        "another feed's sequences are its own"
    );
    let view = w.monitor.view(true);
    assert_eq!(view.feeds[0].duplicates, 6);
    assert_eq!(view.feeds[0].high_water_mark, Some(15));
}

#[tokio::test]
async fn a_sequence_repeated_inside_a_batch_is_published_once() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Recording::default());
    let w = layer(dir.path(), sink.clone(), on()).await;
    let batch = [
        event(1, None),
        event(2, None),
        event(2, None),
        event(3, None),
    ];
    let report = w.sink.send_report(&batch).await.unwrap();
    assert_eq!(report.duplicates, 1);
    assert_eq!(sink.sequences(), vec![1, 2, 3]);
}

#[tokio::test]
async fn a_failed_send_marks_nothing_and_its_retry_publishes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Recording::default());
    let w = layer(dir.path(), sink.clone(), on()).await;
    sink.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = w.sink.send_report(&events(1..=5)).await.unwrap_err();
    assert!(matches!(failed, SinkError::Unavailable { .. }));
    sink.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let retried = w.sink.send_report(&events(1..=5)).await.unwrap();
    assert_eq!(retried.duplicates, 0, "a 503 leaves the events unseen");
    assert_eq!(sink.sequences(), vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_rejection_names_the_event_in_the_batch_as_sent_by_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Recording::default());
    let w = layer(dir.path(), sink.clone(), on()).await;
    w.sink.send(&events(1..=3)).await.unwrap();
    let mut batch = events(1..=6);
    batch[4].resource_name = "Bad".into();
    let error = w.sink.send(&batch).await.unwrap_err();
    // 1..=3 are duplicates, so the sink saw [4, 5, 6] and refused its index 1.
    assert!(
        matches!(error, SinkError::Rejected { index: 4, .. }),
        "{error:?}"
    );
    assert_eq!(sink.sequences(), vec![1, 2, 3]);
    // Nothing of the refused send was marked: fixed and sent again, 4..=6 are published.
    batch[4].resource_name = "Property".into();
    let report = w.sink.send_report(&batch).await.unwrap();
    assert_eq!(report.duplicates, 3);
    assert_eq!(sink.sequences(), vec![1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn a_rejection_that_names_no_event_stays_unnamed() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Recording {
        unnamed: true,
        ..Recording::default()
    });
    let w = layer(dir.path(), sink.clone(), on()).await;
    w.sink.send(&events(1..=2)).await.unwrap();
    let mut batch = events(1..=4);
    batch[3].resource_name = "Bad".into();
    let error = w.sink.send(&batch).await.unwrap_err();
    // Out of range for the caller too, so it isolates by halving instead of blaming event 3.
    assert!(
        matches!(error, SinkError::Rejected { index: 4, .. }),
        "{error:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_send_waits_at_most_max_claim_wait_for_another_one() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Recording {
        delay: Duration::from_secs(30),
        ..Recording::default()
    });
    let config = DedupeConfig {
        max_claim_wait_ms: 1_000,
        ..DedupeConfig::default()
    };
    let w = layer(dir.path(), sink.clone(), Some(config)).await;
    let first_batch = events(1..=5);
    let slow = w.sink.send(&first_batch);
    let waiting = async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let started = tokio::time::Instant::now();
        let result = w.sink.send(&events(5..=6)).await;
        (result, started.elapsed())
    };
    let (first, (second, waited)) = tokio::join!(slow, waiting);
    first.unwrap();
    assert!(
        matches!(second, Err(SinkError::Overloaded { .. })),
        "{second:?}"
    );
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");
}

async fn conflict(
    on_conflict: OnConflict,
) -> (Result<SendReport, SinkError>, Arc<Recording>, Wrapped) {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Recording::default());
    let config = DedupeConfig {
        on_conflict,
        ..DedupeConfig::default()
    };
    let w = layer(dir.path(), sink.clone(), Some(config)).await;
    w.sink.send(&events(1..=2)).await.unwrap();
    let mut reused = event(2, None);
    reused.record_key = "another record".into();
    let result = w.sink.send_report(&[event(3, None), reused]).await;
    (result, sink, w)
}

#[tokio::test]
async fn a_conflict_is_counted_and_handled_by_the_policy() {
    let (published, sink, w) = conflict(OnConflict::Publish).await;
    assert_eq!(published.unwrap().conflicts, 1);
    assert_eq!(
        sink.sequences(),
        vec![1, 2, 3, 2],
        "published: nothing lost"
    );
    let mut reused = event(2, None);
    reused.record_key = "another record".into();
    assert_eq!(
        *sink.conflicts.lock().unwrap(),
        vec![None, None, None, Some(super::identity(&reused))],
        "the published conflict's idempotency key names its record"
    );
    assert_eq!(w.monitor.view(true).feeds[0].conflicts, 1);

    let (skipped, sink, _) = conflict(OnConflict::Skip).await;
    assert_eq!(skipped.unwrap().conflicts, 1);
    assert_eq!(sink.sequences(), vec![1, 2, 3], "skipped");

    let (rejected, sink, w) = conflict(OnConflict::Reject).await;
    match rejected.unwrap_err() {
        SinkError::Rejected {
            index, field, kind, ..
        } => {
            assert_eq!((index, field), (1, Some("EntityEventSequence")));
            assert_eq!(kind, RejectKind::Conflict);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sink.sequences(),
        vec![1, 2],
        "nothing of the batch published"
    );
    assert_eq!(w.monitor.view(true).feeds[0].conflicts, 1);
}

#[tokio::test]
async fn two_concurrent_sends_with_overlapping_sequences_publish_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Recording {
        delay: Duration::from_millis(50),
        ..Recording::default()
    });
    let w = layer(dir.path(), sink.clone(), on()).await;
    let (a, b) = (events(1..=60), events(40..=100));
    let (ra, rb) = tokio::join!(w.sink.send_report(&a), w.sink.send_report(&b));
    let duplicates = ra.unwrap().duplicates + rb.unwrap().duplicates;
    assert_eq!(duplicates, 21, "40..=60 are in both");
    let mut published = sink.sequences();
    let count = published.len();
    published.sort();
    published.dedup();
    assert_eq!(count, published.len(), "no event published twice");
    assert_eq!(published, (1..=100).collect::<Vec<_>>());
}

#[tokio::test]
async fn delivered_sequences_and_high_water_marks_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Recording::default());
    {
        let w = layer(dir.path(), sink.clone(), on()).await;
        w.sink.send(&events(1..=10)).await.unwrap();
        // Shutdown waits for the marks written after the answer.
        w.sink.flush(Duration::from_secs(5)).await.unwrap();
    }
    let w = layer(dir.path(), sink.clone(), on()).await;
    assert_eq!(w.monitor.view(true).feeds[0].high_water_mark, Some(10));
    let report = w.sink.send_report(&events(8..=12)).await.unwrap();
    assert_eq!(report.duplicates, 3);
    assert_eq!(sink.sequences(), (1..=12).collect::<Vec<_>>());
}

#[tokio::test]
async fn without_dedupe_everything_is_published_and_monitored() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Recording::default());
    let w = layer(dir.path(), sink.clone(), None).await;
    w.sink.send(&events(1..=3)).await.unwrap();
    let report = w.sink.send_report(&events(2..=4)).await.unwrap();
    assert_eq!(report, SendReport::default());
    assert_eq!(sink.sequences(), vec![1, 2, 3, 2, 3, 4]);
    let feed = &w.monitor.view(false).feeds[0];
    // 2 is below the mark (3); 3 equals it and is not counted.
    assert_eq!((feed.high_water_mark, feed.regressions), (Some(4), 1));
    assert!(
        !dir.path().join("dedupe").exists(),
        "no store without [dedupe]"
    );
}

#[tokio::test]
async fn feeds_past_the_cap_are_published_unchecked() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Recording::default());
    let w = layer_capped(dir.path(), sink.clone(), on(), 1).await;
    let a = [event(1, Some("a"))];
    let b = [event(1, Some("b"))];
    w.sink.send(&a).await.unwrap();
    assert_eq!(w.sink.send_report(&a).await.unwrap().duplicates, 1);
    w.sink.send(&b).await.unwrap();
    assert_eq!(w.sink.send_report(&b).await.unwrap().duplicates, 0);
    assert_eq!(sink.sequences(), vec![1, 1, 1]);
    assert_eq!(w.monitor.view(true).untracked_events, 2);
}

/// Issue 26, item 15: a pull source moves its checkpoint as soon as a send is answered. Its
/// marks must be in the store by then: a crash (nothing else runs after the answer here, as
/// after a `kill -9`) would otherwise leave the page unmarked, and the page asked for again
/// would be published twice. Before, the marks were written in the background after the answer.
#[tokio::test(flavor = "current_thread")]
async fn a_pull_source_s_marks_are_written_before_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Recording::default());
    let tracking = crate::layers::feeds::Tracking {
        max_tracked_feeds: 64,
        evict_idle_feeds_after_hours: 168,
        mark_before_answer: true,
    };
    let config = on();
    let w = wrap(
        "c",
        config.as_ref(),
        tracking,
        dir.path(),
        sink,
        Metrics::new(),
    )
    .await
    .unwrap();
    w.sink.send_report(&events(1..=10)).await.unwrap();
    // Straight after the answer, before anything else may run: read the store's file.
    let store = crate::layers::feeds::embedded_store_path(dir.path(), "c");
    let conn = rusqlite::Connection::open(store).unwrap();
    let marked: i64 = conn
        .query_row("SELECT coalesce(sum(events), 0) FROM runs", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        marked, 10,
        "every delivered event is marked when the send is answered"
    );
}
