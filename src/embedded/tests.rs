//! Unit tests of the store and the cursor source against real SQLite files in temp dirs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::config::{EmbeddedSourceConfig, StartPosition};
use super::retention::{run_once, RetentionPolicy};
use super::store::{Log, StoreError};
use crate::connector::{Message, Outcome, Source};
use crate::metrics::Metrics;

fn message(sequence: i64, payload_bytes: usize) -> Message {
    let head = format!(
        "{{\"EntityEventSequence\":{sequence},\"ResourceName\":\"Property\",\"ResourceRecordKey\":\"k\",\"P\":\""
    );
    let pad = "x".repeat(payload_bytes.saturating_sub(head.len() + 2));
    Message {
        delete: false,
        conflict: None,
        sequence,
        resource_name: "Property".into(),
        record_key: format!("k{}", sequence % 7),
        source_label: None,
        payload: Bytes::from(format!("{head}{pad}\"}}")),
        origin: None,
    }
}

fn batch(from: i64, n: i64) -> Vec<Message> {
    (from..from + n).map(|s| message(s, 100)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_are_group_committed_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(&dir.path().join("a.db")).unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append("c", &batch(i * 10 + 1, 10)).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let events = log.read_after(0, 1000).await.unwrap();
    assert_eq!(events.len(), 500);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.position,
            i as i64 + 1,
            "positions are dense and increasing"
        );
    }
    // Each batch is contiguous and in order in the log.
    for chunk in events.chunks(10) {
        let first = chunk[0].sequence;
        assert_eq!(first % 10, 1);
        for (j, e) in chunk.iter().enumerate() {
            assert_eq!(e.sequence, first + j as i64);
        }
    }
    // The same path gives the same handle.
    assert!(Arc::ptr_eq(
        &log,
        &Log::open(&dir.path().join("./a.db")).unwrap()
    ));
}

#[tokio::test]
async fn a_full_log_refuses_writes_without_damage_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(&dir.path().join("full.db")).unwrap();
    log.set_max_file_bytes(128 * 1024).await.unwrap();
    let mut accepted = 0;
    let error = loop {
        match log.append("c", &[message(accepted + 1, 4096)]).await {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 1000, "the cap never hit");
    };
    assert!(matches!(error, StoreError::Full(_)), "{error:?}");
    let stored = log.read_after(0, 1000).await.unwrap();
    assert_eq!(
        stored.len() as i64,
        accepted,
        "every acknowledged append is there"
    );
    let check: String = log
        .read(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get(0)))
        .await
        .unwrap();
    assert_eq!(check, "ok");
    // Retention frees space; writes work again.
    let policy = RetentionPolicy {
        max_age: None,
        max_bytes: Some(16 * 1024),
        ..RetentionPolicy::default()
    };
    assert!(run_once(&log, policy).await.unwrap().0 > 0);
    log.append("c", &[message(10_000, 4096)]).await.unwrap();
}

fn source_config(file: &std::path::Path, max_batch: usize) -> EmbeddedSourceConfig {
    EmbeddedSourceConfig {
        file: file.to_owned(),
        cursor: Some("egress".into()),
        start: StartPosition::Earliest,
        max_batch,
        poll_interval_ms: 60_000,
    }
}

fn positions(b: &crate::connector::SourceBatch) -> Vec<u64> {
    b.receipts.clone()
}

#[tokio::test]
async fn cursor_moves_only_on_delivered_and_poison_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.db");
    let log = Log::open(&file).unwrap();
    log.append("in", &batch(1, 5)).await.unwrap();
    let config = source_config(&file, 2);
    let mut source = config.build("egress", Metrics::new()).await.unwrap();

    let b = source.next_batch().await.unwrap().unwrap();
    assert_eq!(positions(&b), vec![1, 2]);
    assert_eq!(b.messages[0].origin.as_ref().unwrap().offset, 1);
    source.settle(b, Outcome::Retry).await.unwrap();
    assert_eq!(log.cursor("egress").await.unwrap(), Some(0));
    let b = source.next_batch().await.unwrap().unwrap();
    assert_eq!(positions(&b), vec![1, 2], "a retried batch comes back");
    source.settle(b, Outcome::Delivered).await.unwrap();
    assert_eq!(log.cursor("egress").await.unwrap(), Some(2));

    let b = source.next_batch().await.unwrap().unwrap();
    assert_eq!(positions(&b), vec![3, 4]);
    let reason = "message 0 rejected: too large".to_owned();
    source
        .settle(
            b,
            Outcome::Poison {
                reason: reason.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(log.cursor("egress").await.unwrap(), Some(4));
    let dead: Vec<(i64, String)> = log
        .read(|c| {
            let mut s = c.prepare("SELECT position, reason FROM dead_letters ORDER BY id")?;
            let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
        .unwrap();
    assert_eq!(dead, vec![(3, reason.clone()), (4, reason)]);

    // A restarted source continues after the persisted cursor.
    drop(source);
    let mut source = config.build("egress", Metrics::new()).await.unwrap();
    let b = source.next_batch().await.unwrap().unwrap();
    assert_eq!(positions(&b), vec![5]);
}

#[tokio::test]
async fn a_caught_up_source_wakes_on_append_and_latest_skips_history() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("n.db");
    let log = Log::open(&file).unwrap();
    log.append("in", &batch(1, 3)).await.unwrap();
    let mut config = source_config(&file, 10);
    config.start = StartPosition::Latest;
    let mut source = config.build("egress", Metrics::new()).await.unwrap();
    assert_eq!(source.position(), 3);
    let writer = log.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        writer.append("in", &batch(4, 2)).await.unwrap();
    });
    // poll_interval is a minute: only the in-process notification can wake it in time.
    let b = tokio::time::timeout(Duration::from_secs(5), source.next_batch())
        .await
        .expect("woken by the append")
        .unwrap()
        .unwrap();
    assert_eq!(positions(&b), vec![4, 5]);
}

#[tokio::test]
async fn retention_wins_and_cursors_skip_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.db");
    let log = Log::open(&file).unwrap();
    log.append("in", &batch(1, 10)).await.unwrap();
    let config = source_config(&file, 3);
    let mut source = config.build("egress", Metrics::new()).await.unwrap();
    let b = source.next_batch().await.unwrap().unwrap();
    source.settle(b, Outcome::Delivered).await.unwrap();
    // Keep only the newest ~2 events (100 bytes each).
    let policy = RetentionPolicy {
        max_age: None,
        max_bytes: Some(250),
        ..RetentionPolicy::default()
    };
    assert_eq!(run_once(&log, policy).await.unwrap(), (8, 0));
    let b = source.next_batch().await.unwrap().unwrap();
    assert_eq!(positions(&b), vec![9, 10], "events 4..=8 were never read");
}

/// Retention deletes old events, never the latest record of a key (`[sink.records]`).
#[tokio::test]
async fn retention_keeps_the_latest_record_of_each_key() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(&dir.path().join("r.db")).unwrap();
    let event = |sequence: i64, key: &str, price: i64| {
        Message {
        delete: false,
        conflict: None,
        sequence,
        resource_name: "Property".into(),
        record_key: key.into(),
        source_label: None,
        payload: format!(
            r#"{{"EntityEventSequence":{sequence},"ResourceName":"Property","ResourceRecordKey":"{key}","Data":{{"ListPrice":{price}}}}}"#
        )
        .into(),
        origin: None,
    }
    };
    let served = Arc::new(vec!["Property".to_owned()]);
    let batch: Vec<Message> = vec![event(1, "A", 1), event(2, "B", 2), event(3, "A", 3)];
    log.append_with_records("in", &batch, served.clone())
        .await
        .unwrap();
    let policy = RetentionPolicy {
        max_age: None,
        max_bytes: Some(1),
        ..RetentionPolicy::default()
    };
    assert!(run_once(&log, policy).await.unwrap().0 >= 2);
    let keys = vec!["A".to_owned(), "B".to_owned()];
    let records = log
        .read(move |conn| super::records::read(conn, "Property", &keys))
        .await
        .unwrap();
    let prices: Vec<String> = records
        .iter()
        .map(|(_, data)| String::from_utf8(data.clone()).unwrap())
        .collect();
    assert_eq!(prices, vec![r#"{"ListPrice":3}"#, r#"{"ListPrice":2}"#]);
}
