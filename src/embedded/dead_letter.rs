//! Dead letters kept in an embedded log (`[source.dead_letter] type = "embedded"`), so a bridge
//! without Kafka or RabbitMQ can run every source: a pull feed into the embedded log sets its
//! unusable events aside in a table of that same log (`dead_letters`), fsynced in the
//! writer's transaction like an append, and the admin listener lists them
//! (`GET /dead-letters/<connector>`).
//!
//! The table keeps each event's exact bytes and the facts the bus destinations put in headers
//! (reason, detail, status, attempts, sequence, resource, key, feed label, origin). It is
//! bounded: rows older than the log's `retention_max_age_hours` are dropped by retention, and
//! at most `max_events` rows per connector are kept (the oldest go first). The embedded
//! source writes the same table for events of the log its cursor refused (with its `cursor`
//! and their `position`); those rows have no `connector` and are not listed here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use super::store::{now_ms, Log, StoreError};
use crate::dead_letter::{DeadLetterError, DeadLetterInfo, DeadLetterWriter, DeadRecord};

/// The columns pull-feed dead letters add to the log's `dead_letters` table (which the
/// embedded source writes, with `cursor` and `position`). Added in place (`ALTER TABLE`), so a
/// log gains no page: a log at the smallest `max_file_bytes` still opens. Feed rows have an
/// empty `cursor`, position 0, and `''` for an unknown resource or key.
const COLUMNS: [(&str, &str); 7] = [
    ("connector", "TEXT"),
    ("detail", "TEXT"),
    ("http_status", "INTEGER"),
    ("attempts", "INTEGER"),
    ("original_topic", "TEXT"),
    ("original_partition", "INTEGER"),
    ("original_offset", "INTEGER"),
];

/// Adds the missing columns to `dead_letters` (at open, before the writer starts).
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let mut present = Vec::new();
    {
        let mut statement = conn.prepare("PRAGMA table_info(dead_letters)")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            present.push(row.get::<_, String>(1)?);
        }
    }
    for (name, kind) in COLUMNS {
        if !present.iter().any(|p| p == name) {
            conn.execute_batch(&format!(
                "ALTER TABLE dead_letters ADD COLUMN {name} {kind}"
            ))?;
        }
    }
    Ok(())
}

/// An embedded log as dead-letter destination.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedDeadLetterConfig {
    /// The log, relative to `data_dir`: one an embedded sink of this bridge writes (its
    /// retention applies). Absent: the connector's own embedded sink's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Dead letters kept for this connector; beyond it the oldest are dropped (1–10000000).
    #[serde(default = "default_max_events")]
    pub max_events: u64,
}

fn default_max_events() -> u64 {
    100_000
}

impl Default for EmbeddedDeadLetterConfig {
    fn default() -> Self {
        EmbeddedDeadLetterConfig {
            file: None,
            max_events: default_max_events(),
        }
    }
}

/// Largest `max_events`.
pub const MAX_EVENTS_CEILING: u64 = 10_000_000;

impl EmbeddedDeadLetterConfig {
    /// Semantic checks; `Err((key, detail))`. Which log `file` names is checked across
    /// connectors (`config::validate`).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(1..=MAX_EVENTS_CEILING).contains(&self.max_events) {
            return Err(("max_events".into(), "must be between 1 and 10000000".into()));
        }
        if self.file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            return Err(("file".into(), "must not be empty".into()));
        }
        Ok(())
    }

    /// Opens the log (after `app::prepare`, `file` is resolved). Blocking, like [`Log::open`].
    pub fn build(&self) -> Result<EmbeddedDeadLetter, StoreError> {
        let file = self.file.clone().unwrap_or_default();
        Ok(EmbeddedDeadLetter {
            destination: file.display().to_string(),
            log: Log::open(&file)?,
            max_events: self.max_events,
        })
    }
}

/// Writes dead letters into a log's `dead_letters` table.
pub struct EmbeddedDeadLetter {
    log: Arc<Log>,
    destination: String,
    max_events: u64,
}

/// One row to insert, owned (the writer runs on its own thread).
struct Row {
    sequence: Option<i64>,
    resource_name: Option<String>,
    record_key: Option<String>,
    source_label: Option<String>,
    origin: Option<(String, i32, i64)>,
    payload: Vec<u8>,
}

#[async_trait]
impl DeadLetterWriter for EmbeddedDeadLetter {
    async fn write(
        &self,
        records: &[DeadRecord<'_>],
        info: &DeadLetterInfo<'_>,
        connector: &str,
    ) -> Result<(), DeadLetterError> {
        let rows: Vec<Row> = (records.iter())
            .map(|r| Row {
                sequence: r.sequence,
                resource_name: r.resource_name.map(str::to_owned),
                record_key: r.key.map(|k| String::from_utf8_lossy(k).into_owned()),
                source_label: r.source_label.map(str::to_owned),
                origin: r
                    .origin
                    .map(|o| (o.topic.to_string(), o.partition, o.offset)),
                payload: r.payload.to_vec(),
            })
            .collect();
        let (connector, reason, detail) = (
            connector.to_owned(),
            info.reason.to_owned(),
            info.detail.to_owned(),
        );
        let (status, attempts, keep) = (info.http_status, info.attempts, self.max_events);
        let dropped = self
            .log
            .write(move |conn| {
                insert(
                    conn, &connector, &reason, &detail, status, attempts, rows, keep,
                )
            })
            .await
            .map_err(|e| DeadLetterError::Unavailable {
                destination: self.destination.clone(),
                reason: e.to_string(),
            })?;
        if dropped > 0 {
            tracing::warn!(destination = %self.destination, dropped, max_events = self.max_events, "the oldest embedded dead letters were dropped to keep max_events");
        }
        Ok(())
    }

    async fn flush(&self, _timeout: Duration) -> Result<(), DeadLetterError> {
        // Every write is durable when it returns.
        Ok(())
    }

    fn destination(&self) -> &str {
        &self.destination
    }
}

/// Inserts the rows and drops the connector's oldest beyond `keep`; returns the rows dropped.
#[allow(clippy::too_many_arguments)]
fn insert(
    conn: &Connection,
    connector: &str,
    reason: &str,
    detail: &str,
    status: Option<u16>,
    attempts: u32,
    rows: Vec<Row>,
    keep: u64,
) -> rusqlite::Result<usize> {
    let mut statement = conn.prepare_cached(
        "INSERT INTO dead_letters (cursor, position, connector, reason, detail, http_status, \
         attempts, sequence, resource_name, record_key, source_label, original_topic, \
         original_partition, original_offset, dead_lettered_at_ms, payload) \
         VALUES ('', 0, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    let now = now_ms();
    for row in rows {
        let (topic, partition, offset) = match row.origin {
            Some((t, p, o)) => (Some(t), Some(p), Some(o)),
            None => (None, None, None),
        };
        statement.execute(params![
            connector,
            reason,
            detail,
            status,
            attempts,
            row.sequence.unwrap_or(0),
            row.resource_name.unwrap_or_default(),
            row.record_key.unwrap_or_default(),
            row.source_label,
            topic,
            partition,
            offset,
            now,
            row.payload
        ])?;
    }
    conn.prepare_cached(
        "DELETE FROM dead_letters WHERE connector = ?1 AND id <= (SELECT id FROM \
         dead_letters WHERE connector = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
    )?
    .execute(params![connector, keep as i64])
}

/// Drops the feed dead letters written before `cutoff_ms` (retention by age); returns how
/// many. A scan of the table (at most `max_events` rows per connector), once per retention
/// interval: an index would cost every log a page, which small `max_file_bytes` caps lack.
/// The embedded source's rows (no `connector`) keep their own lifetime.
pub fn drop_older_than(conn: &Connection, cutoff_ms: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM dead_letters WHERE connector IS NOT NULL AND dead_lettered_at_ms < ?1",
        [cutoff_ms],
    )
}

/// One dead letter, as the admin listener shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterView {
    /// Its id in the table (ascending in write order; page with `after`).
    pub id: i64,
    /// When it was written (RFC 3339, UTC).
    pub dead_lettered_at: String,
    /// `rejected`, `retries_exhausted`, `too_large` or `unparseable`.
    pub reason: String,
    /// Why, in a few words (no payload data).
    pub detail: String,
    /// The consumer's or producer's last HTTP status, if any.
    pub http_status: Option<u16>,
    /// Attempts made.
    pub attempts: u32,
    /// `EntityEventSequence`, when known (and not 0).
    #[serde(rename = "EntityEventSequence")]
    pub sequence: Option<i64>,
    /// `ResourceName`, when known.
    #[serde(rename = "ResourceName")]
    pub resource_name: Option<String>,
    /// `ResourceRecordKey`, when known.
    #[serde(rename = "ResourceRecordKey")]
    pub record_key: Option<String>,
    /// `EntityEventSource`, when known.
    #[serde(rename = "EntityEventSource")]
    pub source_label: Option<String>,
    /// Where the event was read: topic (or feed URL), partition, offset (or sequence).
    pub original_topic: Option<String>,
    /// See `original_topic`.
    pub original_partition: Option<i32>,
    /// See `original_topic`.
    pub original_offset: Option<i64>,
    /// The event's exact bytes as text (invalid UTF-8 replaced: an unparseable event may
    /// not be text at all).
    pub payload: String,
}

/// At most `limit` dead letters of `connector` after `after_id`, stopping once `max_bytes` of
/// payload are gathered (at least one row); and whether more follow.
pub async fn list(
    log: &Arc<Log>,
    connector: &str,
    after_id: i64,
    limit: usize,
    max_bytes: usize,
) -> Result<(Vec<DeadLetterView>, bool), StoreError> {
    let connector = connector.to_owned();
    log.read(move |conn| {
        let mut statement = conn.prepare_cached(
            "SELECT id, dead_lettered_at_ms, reason, detail, http_status, attempts, sequence, \
             resource_name, record_key, source_label, original_topic, original_partition, \
             original_offset, payload FROM dead_letters WHERE connector = ?1 AND id > ?2 \
             ORDER BY id LIMIT ?3",
        )?;
        let mut rows = statement.query(params![connector, after_id, limit as i64 + 1])?;
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        while let Some(row) = rows.next()? {
            if out.len() == limit || (!out.is_empty() && bytes >= max_bytes) {
                return Ok((out, true));
            }
            let payload: Vec<u8> = row.get(13)?;
            let known = |text: String| (!text.is_empty()).then_some(text);
            bytes += payload.len();
            out.push(DeadLetterView {
                id: row.get(0)?,
                dead_lettered_at: rfc3339(row.get(1)?),
                reason: row.get(2)?,
                detail: row.get(3)?,
                http_status: row.get(4)?,
                attempts: row.get(5)?,
                sequence: Some(row.get::<_, i64>(6)?).filter(|s| *s != 0),
                resource_name: known(row.get(7)?),
                record_key: known(row.get(8)?),
                source_label: row.get(9)?,
                original_topic: row.get(10)?,
                original_partition: row.get(11)?,
                original_offset: row.get(12)?,
                payload: String::from_utf8_lossy(&payload).into_owned(),
            });
        }
        Ok((out, false))
    })
    .await
}

fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::DeadLetterWriter;

    fn info() -> DeadLetterInfo<'static> {
        DeadLetterInfo {
            reason: "unparseable",
            detail: "`/` is not an object",
            http_status: None,
            attempts: 0,
        }
    }

    #[tokio::test]
    async fn kept_per_connector_up_to_max_events_and_dropped_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedDeadLetterConfig {
            file: Some(dir.path().join("log.db")),
            max_events: 3,
        };
        let writer = config.build().unwrap();
        for n in 0..5u8 {
            let payload = [b'0' + n];
            let record = DeadRecord {
                payload: &payload,
                sequence: Some(i64::from(n)),
                ..Default::default()
            };
            writer.write(&[record], &info(), "a").await.unwrap();
        }
        let other = DeadRecord {
            payload: b"x",
            ..Default::default()
        };
        writer.write(&[other], &info(), "b").await.unwrap();
        let (rows, more) = list(&writer.log, "a", 0, 100, 1 << 20).await.unwrap();
        let kept: Vec<Option<i64>> = rows.iter().map(|r| r.sequence).collect();
        assert_eq!(kept, [Some(2), Some(3), Some(4)], "the newest three");
        assert!(!more);
        // Paged by count and by bytes (at least one row per page).
        let (rows, more) = list(&writer.log, "a", 0, 2, 1 << 20).await.unwrap();
        assert_eq!((rows.len(), more), (2, true));
        let (rows, more) = list(&writer.log, "a", 0, 100, 1).await.unwrap();
        assert_eq!((rows.len(), more), (1, true));
        let (rows, _) = list(&writer.log, "b", 0, 100, 1 << 20).await.unwrap();
        assert_eq!(rows.len(), 1, "another connector's rows are its own");
        let dropped = (writer.log)
            .write(|conn| drop_older_than(conn, now_ms() + 1))
            .await
            .unwrap();
        assert_eq!(dropped, 4);
    }
}
