//! Unit tests of the log's size cap (`max_file_bytes`) with records and a held write-ahead log
//! (issue 26, item 6).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::retention::{run_once, RetentionPolicy};
use super::store::{Log, StoreError};
use crate::connector::Message;

/// A Property event of its own key whose `Data` holds about `bytes` bytes.
fn with_record(sequence: i64, bytes: usize) -> Message {
    Message {
        delete: false,
        conflict: None,
        sequence,
        resource_name: "Property".into(),
        record_key: format!("k{sequence}"),
        source_label: None,
        payload: Bytes::from(format!(
            r#"{{"EntityEventSequence":{sequence},"ResourceName":"Property","ResourceRecordKey":"k{sequence}","Data":{{"R":"{}"}}}}"#,
            "x".repeat(bytes)
        )),
        origin: None,
    }
}

/// Appends records until the log is full; how many were accepted.
async fn fill(log: &Arc<Log>, resources: &Arc<Vec<String>>, from: i64) -> i64 {
    let mut n = from;
    loop {
        match log
            .append_with_records("c", &[with_record(n, 2048)], resources.clone())
            .await
        {
            Ok(()) => n += 1,
            Err(StoreError::Full(_)) => return n - from,
            Err(e) => panic!("{e}"),
        }
        assert!(n - from < 10_000, "the cap never hit");
    }
}

/// Regression: records never left the database, so once they filled `max_file_bytes`, every
/// push got 503 for good, whatever event retention deleted.
#[tokio::test]
async fn records_retention_makes_room_where_event_retention_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(&dir.path().join("records.db")).unwrap();
    log.set_max_file_bytes(512 * 1024).await.unwrap();
    let resources = Arc::new(vec!["Property".to_owned()]);
    let accepted = fill(&log, &resources, 1).await;
    assert!(accepted > 10);
    let records = || {
        log.shared()
            .records
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    assert_eq!(records(), accepted);

    // Event retention deletes every event each time the log fills up, but the records stay:
    // soon they fill the file alone, and no push fits any more.
    let events_only = RetentionPolicy {
        max_bytes: Some(1),
        ..RetentionPolicy::default()
    };
    let mut next = 100_000;
    let mut rounds = 0;
    loop {
        let (_, dropped) = run_once(&log, events_only).await.unwrap();
        assert_eq!(dropped, 0, "event retention never drops records");
        let filled = fill(&log, &resources, next).await;
        next += filled;
        if filled == 0 {
            break;
        }
        rounds += 1;
        assert!(rounds < 100, "records never filled the log");
    }

    // The records' own bound drops the least recently updated.
    let bounded = RetentionPolicy {
        max_bytes: Some(1),
        records_max_bytes: Some(64 * 1024),
        ..RetentionPolicy::default()
    };
    let (_, dropped) = run_once(&log, bounded).await.unwrap();
    assert!(dropped > 0);
    assert!(
        log.shared()
            .records_bytes
            .load(std::sync::atomic::Ordering::SeqCst)
            <= 64 * 1024
    );
    let kept: Vec<String> = log
        .read(|c| {
            let mut s = c.prepare("SELECT record_key FROM records ORDER BY updated_at_ms")?;
            let keys = s.query_map([], |r| r.get(0))?.collect();
            keys
        })
        .await
        .unwrap();
    assert_eq!(
        kept.last().map(String::as_str),
        Some(format!("k{}", next - 1).as_str()),
        "the most recent record stays"
    );
    assert!(
        fill(&log, &resources, 200_000).await > 0,
        "pushes work again"
    );

    // By age: every record older than the bound goes.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let aged = RetentionPolicy {
        records_max_age: Some(Duration::from_millis(10)),
        ..RetentionPolicy::default()
    };
    run_once(&log, aged).await.unwrap();
    assert_eq!(records(), 0);
    assert_eq!(
        log.shared()
            .records_bytes
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// Regression: `max_file_bytes` bounded the database file only; a write-ahead log that a reader
/// held back grew without limit.
#[tokio::test]
async fn the_cap_covers_the_write_ahead_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.db");
    let log = Log::open(&path).unwrap();
    log.set_max_file_bytes(1024 * 1024).await.unwrap();
    // A reader that holds its snapshot: no frame written after it can be checkpointed.
    let reader = rusqlite::Connection::open(&path).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    let none = Arc::new(Vec::new());
    let mut n = 1;
    let error = loop {
        match log
            .append_with_records("c", &[with_record(n, 4096)], none.clone())
            .await
        {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 2_000, "the write-ahead log grew past the cap");
    };
    assert!(
        matches!(&error, StoreError::Full(why) if why.contains("write-ahead log")),
        "{error:?}"
    );
    let wal = std::fs::metadata(format!("{}-wal", path.display()))
        .unwrap()
        .len();
    assert!(wal <= 1024 * 1024, "{wal} bytes of write-ahead log");
    // The reader is done: the log is checkpointed, and writes work again.
    reader.execute_batch("COMMIT").unwrap();
    log.append_with_records("c", &[with_record(n, 4096)], none.clone())
        .await
        .unwrap();
    let stored = log.read_after(0, 10_000).await.unwrap();
    assert_eq!(stored.len() as i64, n, "every acknowledged append is there");
}

#[test]
fn a_capped_log_with_records_needs_a_records_bound() {
    let config = |extra: &str| -> super::EmbeddedSinkConfig {
        toml::from_str(&format!(
            "max_file_bytes = 1048576\n[records]\nresources = [\"Property\"]\n{extra}"
        ))
        .unwrap()
    };
    let (key, detail) = config("").validate().unwrap_err();
    assert_eq!(key, "records.max_bytes");
    assert!(detail.contains("every push would get 503"), "{detail}");
    assert_eq!(
        config("max_bytes = 2000000").validate().unwrap_err().0,
        "records.max_bytes"
    );
    config("max_bytes = 262144").validate().unwrap();
}

/// A log written before records had a retention opens with its records counted and aged.
#[tokio::test]
async fn an_older_records_table_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE records (resource_name TEXT NOT NULL, record_key TEXT NOT NULL,
                 position INTEGER NOT NULL, data BLOB NOT NULL,
                 PRIMARY KEY (resource_name, record_key)) WITHOUT ROWID;
             INSERT INTO records VALUES ('Property', 'a', 1, '{\"R\":1}'), ('Property', 'b', 2, '{}');",
        )
        .unwrap();
    }
    let log = Log::open(&path).unwrap();
    let shared = log.shared();
    assert_eq!(shared.records.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(
        shared
            .records_bytes
            .load(std::sync::atomic::Ordering::SeqCst),
        9
    );
    let aged: i64 = log
        .read(|c| c.query_row("SELECT min(updated_at_ms) FROM records", [], |r| r.get(0)))
        .await
        .unwrap();
    assert!(
        aged > 0,
        "records of unknown age count as updated at the migration"
    );
}
