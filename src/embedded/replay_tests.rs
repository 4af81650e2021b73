//! Unit tests of [`super`].

use super::*;
use crate::embedded::store::StoredEvent;
use axum::http::{header, HeaderValue};

#[test]
fn rendering_swaps_the_sequence_and_keeps_everything_else() {
    let event = StoredEvent {
        position: 7,
        sequence: 1101,
        resource_name: "Property".into(),
        record_key: "235021".into(),
        source_label: Some("IDX Feed 123".into()),
        payload: br#"{ "EntityEventSequence": 1101, "ResourceName":"Property",
            "ResourceRecordKey":"235021", "Data": {"ListPrice": 450000.00, "X":[1, 2]} }"#
            .to_vec(),
    };
    let mut out = Vec::new();
    render_event(&mut out, &event, None, None);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        r#"{"@EntityBridge.SourceEntityEventSequence":1101,"@EntityBridge.EntityEventSource":"IDX Feed 123","EntityEventSequence":7,"ResourceName":"Property","ResourceRecordKey":"235021","Data":{"ListPrice": 450000.00, "X":[1, 2]}}"#
    );
}

/// A replay resource over a fresh log of `events` small events.
async fn replay(
    dir: &std::path::Path,
    events: usize,
    timeout: Duration,
    slots: usize,
) -> Arc<Replay> {
    let log = Log::open(&dir.join("replay.db")).unwrap();
    let batch: Vec<crate::connector::Message> = (1..=events as i64)
        .map(|i| crate::connector::Message {
            delete: false,
            conflict: None,
            sequence: i,
            resource_name: "Property".into(),
            record_key: format!("K{i}"),
            source_label: None,
            payload: bytes::Bytes::from(format!(
                r#"{{"EntityEventSequence":{i},"ResourceName":"Property","ResourceRecordKey":"K{i}"}}"#
            )),
            origin: None,
        })
        .collect();
    for chunk in batch.chunks(1000) {
        log.append("t", chunk).await.unwrap();
    }
    log.set_key_index(true).await.unwrap();
    over(log, timeout, slots)
}

/// A replay resource over `log`.
fn over(log: Arc<Log>, timeout: Duration, slots: usize) -> Arc<Replay> {
    Arc::new(Replay {
        connector: "t".into(),
        path: "/EntityEvent".into(),
        records: Vec::new(),
        root: "/".into(),
        base: String::new(),
        reads: Arc::new(Reads::new("t", log, slots, timeout, 4 << 20)),
        tokens: TokenSet::new(&[crate::secret::Secret::new("tok")]),
        limits: PageLimits {
            events: 1000,
            bytes: 4 << 20,
        },
        max_skip: 100_000,
        keys_indexed: true,
        metrics: Metrics::new(),
    })
}

fn bearer() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer tok"),
    );
    headers
}

fn status(result: Result<Response, Problem>) -> (u16, Option<String>) {
    let response = match result {
        Ok(r) => r,
        Err(p) => p.into_response(),
    };
    let retry = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), retry)
}

#[tokio::test]
async fn requests_beyond_the_concurrency_cap_get_429() {
    let dir = tempfile::tempdir().unwrap();
    let replay = replay(dir.path(), 3, Duration::from_secs(5), 1).await;
    let held = replay.reads.take_slot();
    assert_eq!(
        status(replay.serve(&bearer(), None).await),
        (429, Some("1".into()))
    );
    drop(held);
    assert_eq!(status(replay.serve(&bearer(), None).await).0, 200);
}

#[tokio::test]
async fn a_query_past_its_time_limit_is_interrupted_with_503() {
    let dir = tempfile::tempdir().unwrap();
    // No time at all: the first look at the deadline interrupts the count.
    let replay = replay(dir.path(), 5000, Duration::ZERO, 4).await;
    let (code, retry) = status(replay.serve(&bearer(), Some("$count=true")).await);
    assert_eq!((code, retry.as_deref()), (503, Some("5")));
    // The connection goes back to the pool without the handler: the next query is fine.
    let patient = over(replay.reads.log.clone(), Duration::from_secs(30), 4);
    assert_eq!(
        status(patient.serve(&bearer(), Some("$count=true")).await).0,
        200
    );
    assert_eq!(
        replay.reads.available_slots(),
        4,
        "every slot is back once the work ended"
    );
}

/// SQLite virtual-machine steps (in hundreds) that `query` takes on `replay`'s log.
async fn steps(replay: &Replay, query: &str) -> (u64, usize) {
    let q = parse_query(Some(query)).unwrap();
    let limits = replay.page_limits(&q);
    replay
        .reads
        .log
        .read(move |conn| {
            let steps = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let counter = steps.clone();
            conn.progress_handler(
                100,
                Some(move || {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    false
                }),
            );
            let page = query_page(conn, &q, limits);
            conn.progress_handler(0, None::<fn() -> bool>);
            Ok((
                steps.load(std::sync::atomic::Ordering::Relaxed),
                page?.events.len(),
            ))
        })
        .await
        .unwrap()
}

/// Regression: `ResourceRecordKey eq` scanned the whole log (0.32 s at 600k events; 8 of them
/// took every replay slot). It reads through an index now: the work does not grow with the log.
#[tokio::test]
async fn a_record_key_filter_reads_an_index_not_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let replay = replay(dir.path(), 20_000, Duration::from_secs(30), 4).await;
    let (work, found) = steps(&replay, "$filter=ResourceRecordKey eq 'K7'&$count=true").await;
    assert_eq!(found, 1);
    // A scan of 20 000 rows takes far more than 200 × 100 steps.
    assert!(work < 200, "{work} hundred VM steps for one key");
    let (work, found) = steps(&replay, "$filter=ResourceRecordKey eq 'K7' and EntityEventSequence gt 5&$orderby=EntityEventSequence desc").await;
    assert_eq!(found, 1);
    assert!(
        work < 200,
        "{work} hundred VM steps for one key, newest first"
    );
    // A log that opts out of the index refuses the filter rather than scanning.
    replay.reads.log.set_key_index(false).await.unwrap();
    let unindexed = Arc::new(Replay {
        connector: "t".into(),
        path: "/EntityEvent".into(),
        records: Vec::new(),
        root: "/".into(),
        base: String::new(),
        reads: replay.reads.clone(),
        tokens: TokenSet::new(&[crate::secret::Secret::new("tok")]),
        limits: replay.limits,
        max_skip: 100_000,
        keys_indexed: false,
        metrics: Metrics::new(),
    });
    let headers = bearer();
    let refused = unindexed.serve(&headers, Some("$filter=ResourceRecordKey eq 'K7'"));
    assert_eq!(status(refused.await).0, 400);
    let other = unindexed.serve(&headers, Some("$filter=EntityEventSequence gt 5"));
    assert_eq!(status(other.await).0, 200);
}

/// An event that came with a bridge annotation (another bridge's replay, through a pull
/// source) is served with one member of that name: this log's.
#[test]
fn rendering_replaces_annotations_the_event_came_with() {
    let event = StoredEvent {
        position: 3,
        sequence: 40,
        resource_name: "Property".into(),
        record_key: "K".into(),
        source_label: Some("mine".into()),
        payload: br#"{"@EntityBridge.SourceEntityEventSequence":999,"@EntityBridge.EntityEventSource":"forged","EntityEventSequence":40,"ResourceName":"Property","ResourceRecordKey":"K"}"#.to_vec(),
    };
    let mut out = Vec::new();
    render_event(&mut out, &event, None, None);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        r#"{"@EntityBridge.SourceEntityEventSequence":40,"@EntityBridge.EntityEventSource":"mine","EntityEventSequence":3,"ResourceName":"Property","ResourceRecordKey":"K"}"#
    );
}
