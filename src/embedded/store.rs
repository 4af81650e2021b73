//! The log store: one SQLite database per log file, opened once per process.
//!
//! Why SQLite (see `docs/architecture.md`): a single-file, crash-safe store with decades of
//! power-loss testing, WAL for readers beside one writer, and indexes that make the replay
//! resource's queries (`position > N`, `ResourceName = …`, `count`) plain SQL. The database runs
//! in WAL mode with `synchronous=FULL`, so a committed transaction is fsynced before the writer
//! answers; every write goes through the group-commit [`Writer`]. Reads use a small pool of
//! `query_only` connections on blocking threads, never the async runtime's threads.
//!
//! A log is identified by its canonical path: [`Log::open`] keeps a process-wide registry so
//! every connector naming the same file shares one handle (one writer, one notifier).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OpenFlags};

use super::writer::{Shared, Writer};
use crate::connector::Message;
use crate::metrics::Metrics;

/// Jobs that may wait for the writer before appends are answered "overloaded" (429).
const WRITE_QUEUE_CAPACITY: usize = 4096;
/// Idle read connections kept per log.
const MAX_IDLE_READERS: usize = 8;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Schema version stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    sequence       INTEGER NOT NULL,
    resource_name  TEXT    NOT NULL,
    record_key     TEXT    NOT NULL,
    source_label   TEXT,
    connector      TEXT    NOT NULL,
    appended_at_ms INTEGER NOT NULL,
    payload_len    INTEGER NOT NULL,
    payload        BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_resource ON events (resource_name, position);
CREATE INDEX IF NOT EXISTS events_by_time ON events (appended_at_ms);
CREATE TABLE IF NOT EXISTS cursors (
    name          TEXT PRIMARY KEY,
    position      INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id                  INTEGER PRIMARY KEY,
    cursor              TEXT    NOT NULL,
    position            INTEGER NOT NULL,
    sequence            INTEGER NOT NULL,
    resource_name       TEXT    NOT NULL,
    record_key          TEXT    NOT NULL,
    source_label        TEXT,
    reason              TEXT    NOT NULL,
    dead_lettered_at_ms INTEGER NOT NULL,
    payload             BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES
    ('event_count', 0), ('payload_bytes', 0), ('retention_through', 0);
";

/// A store failure. Never contains event data.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The disk, or the configured `max_file_bytes`, is full; nothing was written.
    #[error("the log is full (disk space or max_file_bytes): {0}")]
    Full(String),
    /// Too many writes are waiting for the writer.
    #[error("too many writes are waiting for the log")]
    Overloaded,
    /// The writer thread has stopped.
    #[error("the log's writer has stopped")]
    Closed,
    /// A read ran past its time limit and was interrupted (the replay query timeout).
    #[error("the query ran past its time limit")]
    Interrupted,
    /// Any other SQLite or I/O failure; nothing of the failed write was committed.
    #[error("log store error: {0}")]
    Store(String),
    /// The log could not be opened or created.
    #[error("cannot open log `{path}`: {reason}")]
    Open {
        /// The log file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StoreError::Full(e.to_string()),
            Some(ErrorCode::OperationInterrupted) => StoreError::Interrupted,
            _ => StoreError::Store(e.to_string()),
        }
    }
}

/// One event as stored.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// The log position: strictly increasing, never reused.
    pub position: i64,
    /// The producer's `EntityEventSequence`.
    pub sequence: i64,
    /// `ResourceName`.
    pub resource_name: String,
    /// `ResourceRecordKey`.
    pub record_key: String,
    /// The push's `EntityEventSource` label, if any.
    pub source_label: Option<String>,
    /// The event's raw JSON bytes, as the producer sent them.
    pub payload: Vec<u8>,
}

/// Columns selected to build a [`StoredEvent`] with [`StoredEvent::from_row`].
pub const EVENT_COLUMNS: &str =
    "position, sequence, resource_name, record_key, source_label, payload";

impl StoredEvent {
    /// Reads a row selected with [`EVENT_COLUMNS`].
    pub fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
        Ok(StoredEvent {
            position: row.get(0)?,
            sequence: row.get(1)?,
            resource_name: row.get(2)?,
            record_key: row.get(3)?,
            source_label: row.get(4)?,
            payload: row.get(5)?,
        })
    }
}

/// An open log, shared by every connector that names its file.
pub struct Log {
    path: PathBuf,
    name: Arc<str>,
    writer: Writer,
    shared: Arc<Shared>,
    readers: Mutex<Vec<Connection>>,
    retention_claimed: AtomicBool,
}

static REGISTRY: LazyLock<Mutex<HashMap<PathBuf, Weak<Log>>>> = LazyLock::new(Default::default);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn canonical(path: &Path) -> Result<PathBuf, StoreError> {
    let open_err = |reason: String| StoreError::Open {
        path: path.to_owned(),
        reason,
    };
    let file = path
        .file_name()
        .ok_or_else(|| open_err("not a file path".into()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
    let dir = dir.canonicalize().map_err(|e| open_err(e.to_string()))?;
    Ok(dir.join(file))
}

impl Log {
    /// Opens (creating if needed) the log at `path`, or returns the handle this process already
    /// has for it. Blocking: call from start-up code or `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Arc<Log>, StoreError> {
        let path = canonical(path)?;
        let mut registry = REGISTRY.lock().expect("log registry lock");
        if let Some(log) = registry.get(&path).and_then(Weak::upgrade) {
            return Ok(log);
        }
        let log = Arc::new(Log::open_new(&path).map_err(|e| StoreError::Open {
            path: path.clone(),
            reason: e.to_string(),
        })?);
        registry.retain(|_, weak| weak.strong_count() > 0);
        registry.insert(path, Arc::downgrade(&log));
        Ok(log)
    }

    /// [`Log::open`] on a blocking thread.
    pub async fn open_async(path: PathBuf) -> Result<Arc<Log>, StoreError> {
        tokio::task::spawn_blocking(move || Log::open(&path))
            .await
            .map_err(|e| StoreError::Store(e.to_string()))?
    }

    fn open_new(path: &Path) -> Result<Log, Box<dyn std::error::Error + Send + Sync>> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(format!(
                "schema version {version} is newer than this bridge understands ({SCHEMA_VERSION})"
            )
            .into());
        }
        // Takes effect only on a new database (before its first table): lets retention give
        // freed pages back to the file system.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!("cannot enable WAL mode (got `{mode}`)").into());
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(super::records::SCHEMA)?;
        super::dead_letter::migrate(&conn)?;
        super::records::migrate(&conn)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        let shared = Arc::new(Shared::default());
        let writer = Writer::start(conn, shared.clone(), WRITE_QUEUE_CAPACITY)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Log {
            path: path.to_owned(),
            name: Arc::from(name),
            writer,
            shared,
            readers: Mutex::new(Vec::new()),
            retention_claimed: AtomicBool::new(false),
        })
    }

    /// The canonical path of the log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file name, used as the `topic` of messages read from this log.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Counters and the append notifier.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Publishes the stored event count and payload bytes under `connector`.
    pub fn report_size(&self, metrics: &Metrics, connector: &str) {
        metrics.embedded_log_size(
            connector,
            self.shared.events.load(Ordering::SeqCst),
            self.shared.payload_bytes.load(Ordering::SeqCst),
        );
        metrics.embedded_records_size(
            connector,
            self.shared.records.load(Ordering::SeqCst),
            self.shared.records_bytes.load(Ordering::SeqCst),
        );
    }

    /// `true` for the first caller only: that caller runs the log's retention.
    pub fn claim_retention(&self) -> bool {
        !self.retention_claimed.swap(true, Ordering::SeqCst)
    }

    /// Runs `work` in the writer's next group transaction; returns once it is durable.
    pub async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.writer.write(work).await
    }

    /// Runs `work` on a read connection on a blocking thread.
    pub async fn read<T, F>(self: &Arc<Self>, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let log = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match log.readers.lock().expect("reader pool lock").pop() {
                Some(conn) => conn,
                None => open_reader(&log.path)?,
            };
            let result = work(&conn).map_err(StoreError::from);
            let mut idle = log.readers.lock().expect("reader pool lock");
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Store(e.to_string()))?
    }

    /// Appends `batch` in order; returns once it is committed and fsynced.
    pub async fn append(&self, connector: &str, batch: &[Message]) -> Result<(), StoreError> {
        self.append_with_records(connector, batch, Arc::default())
            .await
    }

    /// [`Log::append`], also keeping the latest record of each event of the `records`
    /// resources, in the same transaction (`[sink.records]`).
    pub async fn append_with_records(
        &self,
        connector: &str,
        batch: &[Message],
        records: Arc<Vec<String>>,
    ) -> Result<(), StoreError> {
        let batch = batch.to_vec();
        let connector = connector.to_owned();
        self.write(move |conn| {
            let now = now_ms();
            let mut insert = conn.prepare_cached(
                "INSERT INTO events (sequence, resource_name, record_key, source_label, \
                 connector, appended_at_ms, payload_len, payload) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut bytes = 0i64;
            for m in &batch {
                insert.execute(params![
                    m.sequence,
                    m.resource_name,
                    m.record_key,
                    m.source_label.as_deref(),
                    connector,
                    now,
                    m.payload.len() as i64,
                    &m.payload[..],
                ])?;
                if !records.is_empty() {
                    super::records::apply(conn, &records, m, conn.last_insert_rowid())?;
                }
                bytes += m.payload.len() as i64;
            }
            add_meta(conn, batch.len() as i64, bytes)
        })
        .await
    }

    /// Limits the log's files to `max_file_bytes` together (0 = no limit): an eighth (at least
    /// two pages) is the write-ahead log's share, the rest the database's. The database stops
    /// at its pages (`max_page_count`); the write-ahead log is checkpointed and truncated to
    /// its share (`wal_autocheckpoint`, `journal_size_limit`), and the writer refuses a group
    /// while it is still over (readers holding it back), so the files never pass the cap by
    /// more than one group commit.
    pub async fn set_max_file_bytes(&self, max_file_bytes: u64) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        self.write(move |conn| {
            let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
            if max_file_bytes == 0 {
                shared.max_wal_bytes.store(0, Ordering::SeqCst);
                conn.pragma_update(None, "wal_autocheckpoint", 1000)?;
                conn.pragma_update(None, "journal_size_limit", -1)?;
                return conn.pragma_update(None, "max_page_count", u32::MAX as i64 - 1);
            }
            let max = i64::try_from(max_file_bytes).unwrap_or(i64::MAX);
            let wal = (max / 8).max(2 * page_size);
            shared.max_wal_bytes.store(wal, Ordering::SeqCst);
            conn.pragma_update(None, "wal_autocheckpoint", (wal / page_size / 2).max(1))?;
            conn.pragma_update(None, "journal_size_limit", wal)?;
            conn.pragma_update(None, "max_page_count", ((max - wal) / page_size).max(1))
        })
        .await
    }

    /// Keeps (or drops) the index of record keys that `$filter=ResourceRecordKey eq '…'` reads
    /// (`replay_index_record_keys`). Building it over an existing log takes one pass; keeping
    /// it costs appends about a third of their throughput (docs/benchmarks.md).
    pub async fn set_key_index(&self, on: bool) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.execute_batch(if on {
                "CREATE INDEX IF NOT EXISTS events_by_key ON events (record_key)"
            } else {
                "DROP INDEX IF EXISTS events_by_key"
            })
        })
        .await
    }

    /// Proves the writer answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.write(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }

    /// Up to `limit` events after `position`, in order.
    pub async fn read_after(
        self: &Arc<Self>,
        position: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![position, limit as i64], StoredEvent::from_row)?;
            rows.collect()
        })
        .await
    }
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// Adds to the stored event count and byte total.
pub fn add_meta(conn: &Connection, events: i64, bytes: i64) -> rusqlite::Result<()> {
    let mut update = conn.prepare_cached("UPDATE meta SET value = value + ?2 WHERE key = ?1")?;
    update.execute(params!["event_count", events])?;
    update.execute(params!["payload_bytes", bytes])?;
    Ok(())
}
