//! Retention: deletes the oldest events of a log by age and/or stored size, in the background.
//!
//! Retention only ever deletes a prefix of the log (everything up to some position), in chunks
//! so the writer is never held for long, and records the highest deleted position as
//! `retention_through`. **Retention wins over cursors**: an embedded source whose cursor is
//! behind `retention_through` skips the deleted events (it logs how many) rather than keeping
//! the disk filling up for a stalled consumer. Freed pages are returned to the file system with
//! `PRAGMA incremental_vacuum`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use tokio_util::sync::CancellationToken;

use super::store::{add_meta, now_ms, Log, StoreError};
use crate::metrics::Metrics;

/// Most events deleted by one retention transaction.
const CHUNK: i64 = 5_000;

/// What a log keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Delete events appended longer ago than this.
    pub max_age: Option<Duration>,
    /// Delete the oldest events while stored payload bytes exceed this.
    pub max_bytes: Option<u64>,
    /// Drop records (`[sink.records]`) not updated for this long.
    pub records_max_age: Option<Duration>,
    /// Drop the least recently updated records while their bytes exceed this.
    pub records_max_bytes: Option<u64>,
}

impl RetentionPolicy {
    /// Whether the policy deletes anything at all.
    pub fn is_active(&self) -> bool {
        self.max_age.is_some()
            || self.max_bytes.is_some()
            || self.records_max_age.is_some()
            || self.records_max_bytes.is_some()
    }
}

/// One records retention transaction: drops at most [`CHUNK`] of the least recently updated
/// records the policy no longer keeps. Returns the records dropped.
pub fn step_records(
    conn: &Connection,
    policy: RetentionPolicy,
    now_ms: i64,
) -> rusqlite::Result<i64> {
    let mut cutoff = i64::MIN;
    if let Some(age) = policy.records_max_age {
        cutoff = now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
    }
    let mut excess = 0i64;
    if let Some(max_bytes) = policy.records_max_bytes {
        let stored: i64 = conn.query_row(
            "SELECT value FROM meta WHERE key = 'records_bytes'",
            [],
            |r| r.get(0),
        )?;
        excess = stored.saturating_sub(i64::try_from(max_bytes).unwrap_or(i64::MAX));
    }
    // The oldest first: those past the age, then more while bytes are in excess.
    let mut oldest = conn.prepare_cached(
        "SELECT resource_name, record_key, updated_at_ms, data_len FROM records \
         ORDER BY updated_at_ms LIMIT ?1",
    )?;
    let mut rows = oldest.query([CHUNK])?;
    let mut doomed: Vec<(String, String, i64)> = Vec::new();
    let mut freed = 0i64;
    while let Some(row) = rows.next()? {
        let (updated, len): (i64, i64) = (row.get(2)?, row.get(3)?);
        if updated >= cutoff && freed >= excess {
            break;
        }
        freed += len;
        doomed.push((row.get(0)?, row.get(1)?, len));
    }
    drop(rows);
    let mut delete =
        conn.prepare_cached("DELETE FROM records WHERE resource_name = ?1 AND record_key = ?2")?;
    for (resource, key, _) in &doomed {
        delete.execute(params![resource, key])?;
    }
    super::records::add_record_meta(conn, -(doomed.len() as i64), -freed)?;
    Ok(doomed.len() as i64)
}

/// One retention transaction: deletes at most [`CHUNK`] of the oldest events the policy no
/// longer keeps. Returns `(events deleted, payload bytes deleted)`.
pub fn step(
    conn: &Connection,
    policy: RetentionPolicy,
    now_ms: i64,
) -> rusqlite::Result<(i64, i64)> {
    let mut through = 0i64;
    if let Some(age) = policy.max_age {
        let cutoff = now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        through = conn.query_row(
            "SELECT coalesce(max(position), 0) FROM events WHERE appended_at_ms < ?1",
            [cutoff],
            |r| r.get(0),
        )?;
    }
    if let Some(max_bytes) = policy.max_bytes {
        let stored: i64 = conn.query_row(
            "SELECT value FROM meta WHERE key = 'payload_bytes'",
            [],
            |r| r.get(0),
        )?;
        let excess = stored - max_bytes as i64;
        if excess > 0 {
            let mut oldest = conn.prepare_cached(
                "SELECT position, payload_len FROM events ORDER BY position LIMIT ?1",
            )?;
            let mut rows = oldest.query([CHUNK])?;
            let mut freed = 0i64;
            while let Some(row) = rows.next()? {
                let (position, len): (i64, i64) = (row.get(0)?, row.get(1)?);
                freed += len;
                through = through.max(position);
                if freed >= excess {
                    break;
                }
            }
        }
    }
    if through == 0 {
        return Ok((0, 0));
    }
    let cap: Option<i64> = conn
        .query_row(
            "SELECT position FROM events ORDER BY position LIMIT 1 OFFSET ?1",
            [CHUNK - 1],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(cap) = cap {
        through = through.min(cap);
    }
    let (events, bytes): (i64, i64) = conn.query_row(
        "SELECT count(*), coalesce(sum(payload_len), 0) FROM events WHERE position <= ?1",
        [through],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    conn.execute("DELETE FROM events WHERE position <= ?1", [through])?;
    add_meta(conn, -events, -bytes)?;
    conn.execute(
        "UPDATE meta SET value = max(value, ?1) WHERE key = 'retention_through'",
        params![through],
    )?;
    Ok((events, bytes))
}

/// Applies the policy until nothing more is due; returns the events and the records deleted.
pub async fn run_once(log: &Log, policy: RetentionPolicy) -> Result<(i64, i64), StoreError> {
    let mut total = 0;
    loop {
        let (events, _) = log.write(move |conn| step(conn, policy, now_ms())).await?;
        total += events;
        if events < CHUNK {
            break;
        }
    }
    let mut records = 0;
    while policy.records_max_age.is_some() || policy.records_max_bytes.is_some() {
        let dropped = log
            .write(move |conn| step_records(conn, policy, now_ms()))
            .await?;
        records += dropped;
        if dropped < CHUNK {
            break;
        }
    }
    // Dead letters connectors keep in the log (`dead_letters` rows with a connector) age out
    // with the events.
    let mut dead_letters = 0;
    if let Some(age) = policy.max_age {
        let cutoff = now_ms().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        dead_letters = log
            .write(move |conn| super::dead_letter::drop_older_than(conn, cutoff))
            .await?;
    }
    if dead_letters > 0 {
        tracing::info!(log = %log.name(), dead_letters, "retention dropped dead letters older than retention_max_age_hours");
    }
    if total > 0 || records > 0 || dead_letters > 0 {
        log.write(|conn| conn.execute_batch("PRAGMA incremental_vacuum"))
            .await?;
    }
    Ok((total, records))
}

/// Starts the background retention of `log`, reporting under `connector`. Ends when `cancel`
/// fires or the log is closed.
pub fn spawn(
    log: &Arc<Log>,
    connector: String,
    policy: RetentionPolicy,
    interval: Duration,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let log: Weak<Log> = Arc::downgrade(log);
    tokio::spawn(async move {
        loop {
            let Some(strong) = log.upgrade() else { break };
            match run_once(&strong, policy).await {
                Ok((0, 0)) => {}
                Ok((deleted, records)) => {
                    tracing::info!(%connector, deleted, records, "retention deleted the oldest events and records");
                    metrics.embedded_retention_deleted(&connector, deleted as u64);
                    metrics.embedded_records_dropped(&connector, records as u64);
                }
                Err(e) => tracing::warn!(%connector, error = %e, "retention failed; will retry"),
            }
            strong.report_size(&metrics, &connector);
            drop(strong);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::store::now_ms;

    fn insert(conn: &Connection, n: i64, at_ms: i64, len: i64) {
        for i in 0..n {
            conn.execute(
                "INSERT INTO events (sequence, resource_name, record_key, source_label, connector, \
                 appended_at_ms, payload_len, payload) VALUES (?1, 'Property', 'k', NULL, 'c', ?2, ?3, x'00')",
                params![i + 1, at_ms, len],
            )
            .unwrap();
        }
        add_meta(conn, n, n * len).unwrap();
    }

    #[tokio::test]
    async fn age_and_size_delete_a_prefix_and_record_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(&dir.path().join("r.db")).unwrap();
        let now = now_ms();
        log.write(move |c| {
            insert(c, 3, now - 10_000, 100);
            insert(c, 4, now, 100);
            Ok(())
        })
        .await
        .unwrap();
        // Regression: an age too large for i64 milliseconds wrapped negative and deleted all.
        let forever = RetentionPolicy {
            max_age: Some(Duration::from_secs(u64::MAX)),
            max_bytes: None,
            ..RetentionPolicy::default()
        };
        assert_eq!(
            log.write(move |c| step(c, forever, now)).await.unwrap(),
            (0, 0)
        );
        let age = RetentionPolicy {
            max_age: Some(Duration::from_secs(5)),
            max_bytes: None,
            ..RetentionPolicy::default()
        };
        assert_eq!(
            log.write(move |c| step(c, age, now)).await.unwrap(),
            (3, 300)
        );
        assert_eq!(log.write(move |c| step(c, age, now)).await.unwrap(), (0, 0));
        let size = RetentionPolicy {
            max_age: None,
            max_bytes: Some(250),
            ..RetentionPolicy::default()
        };
        // 400 bytes stored, 250 allowed: the two oldest go.
        assert_eq!(run_once(&log, size).await.unwrap(), (2, 0));
        let shared = log.shared();
        use std::sync::atomic::Ordering::SeqCst;
        assert_eq!(shared.events.load(SeqCst), 2);
        assert_eq!(shared.payload_bytes.load(SeqCst), 200);
        assert_eq!(shared.retention_through.load(SeqCst), 5);
        assert_eq!(shared.last_position.load(SeqCst), 7);
        let left = log.read_after(0, 10).await.unwrap();
        assert_eq!(
            left.iter().map(|e| e.position).collect::<Vec<_>>(),
            vec![6, 7]
        );
    }
}
