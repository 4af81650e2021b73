//! Where a connector remembers which sequences each feed delivered: the [`SeenStore`] trait
//! and its embedded implementation, a SQLite file per connector under `data_dir`.
//!
//! Only delivered events are written (after the sink confirmed them), so a crash between
//! publish and mark can make an event look new again — a duplicate downstream — but can never
//! make an undelivered event look delivered. That is why the file runs with
//! `synchronous=NORMAL` (WAL): a power cut may forget the last marks, which costs duplicates,
//! never events, and spares an fsync per push.
//!
//! The window is bounded two ways, both per feed: the newest `window_events` sequences, and
//! (when set) nothing older than `window_age_hours`. Pruning runs after a `mark` every
//! [`prune_every`] marks of a feed or once a minute, so disk use stays flat however long a feed
//! runs; a failed prune is logged and tried again later (the marks are committed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{params, Connection};

/// An event's identity within its feed: a stable hash of its `ResourceName` and
/// `ResourceRecordKey` (the same sequence with another identity is a conflict).
pub type Identity = i64;

/// A store could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SeenStoreError {
    /// The store file could not be opened or created.
    #[error("cannot open the dedupe store {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A read or write failed.
    #[error("dedupe store error: {0}")]
    Store(String),
}

impl From<rusqlite::Error> for SeenStoreError {
    fn from(e: rusqlite::Error) -> Self {
        SeenStoreError::Store(e.to_string())
    }
}

/// What [`SeenStore::claim`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// Sequences the feed delivered within the window, with their identities.
    pub delivered: HashMap<i64, Identity>,
    /// Sequences another process is publishing right now (a shared store only): the caller
    /// releases what it claimed and tries again later.
    pub busy: Vec<i64>,
}

/// Remembers, per feed, which sequences were delivered and with which identity. A feed is
/// named by its `EntityEventSource` label (`""` for none); the store is the connector's own.
///
/// A store shared by several processes also arbitrates between them: [`SeenStore::claim`]
/// reserves the sequences not delivered yet for the caller until it [`SeenStore::mark`]s them
/// delivered or [`SeenStore::release`]s them, so two replicas never publish one sequence at
/// the same time. The embedded store serves one process, whose sends the feeds layer already
/// keeps apart, so it claims nothing.
#[async_trait]
pub trait SeenStore: Send + Sync {
    /// Looks `events` (sequence, identity) of `feed` up and claims those not delivered yet.
    async fn claim(
        &self,
        feed: &str,
        events: &[(i64, Identity)],
    ) -> Result<Claimed, SeenStoreError>;
    /// Remembers delivered events of `feed` (and ends their claims).
    async fn mark(&self, feed: &str, events: &[(i64, Identity)]) -> Result<(), SeenStoreError>;
    /// Gives up claims of `feed` whose send failed: the sequences stay undelivered.
    async fn release(&self, feed: &str, sequences: &[i64]) -> Result<(), SeenStoreError>;
    /// The highest delivered sequence of each feed with marks inside the window, the most
    /// recently marked feed first (the monitor resumes from them, up to its cap).
    async fn high_water_marks(&self) -> Result<Vec<(String, i64)>, SeenStoreError>;
}

/// Marks of one feed between two count prunes: an eighth of the window (at least 16, at most
/// 131 072), so the prune's walk down the window costs about eight index entries per mark and a
/// feed holds at most `window_events` plus this many rows.
pub fn prune_every(window_events: u64) -> u64 {
    (window_events / 8).clamp(16, 131_072)
}
/// Counts `marked` marks toward `feed`'s next count prune; whether it is due (the feed's
/// counter then goes). The counters stay bounded: past
/// [`super::config::MAX_TRACKED_FEEDS_LIMIT`] feeds they start over, since a retired label's
/// counter would otherwise stay for the life of the process (starting over delays a prune by
/// at most one interval).
pub(super) fn count_marks(
    counts: &mut HashMap<String, u64>,
    feed: &str,
    marked: u64,
    every: u64,
) -> bool {
    if counts.len() >= super::config::MAX_TRACKED_FEEDS_LIMIT && !counts.contains_key(feed) {
        counts.clear();
    }
    let count = counts.entry(feed.to_owned()).or_default();
    *count += marked;
    let due = *count >= every;
    if due {
        counts.remove(feed);
    }
    due
}

/// Longest time between two age prunes.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// The window a store keeps.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Newest sequences kept per feed.
    pub events: u64,
    /// Oldest mark kept; `None`: no age limit.
    pub max_age: Option<Duration>,
}

/// The embedded store: one SQLite file, one connection used from blocking threads.
///
/// Marks are kept as **runs**: one row per dense stretch of a marked batch (sequences no more
/// than [`RUN_GAP`] apart), holding its (sequence, identity) pairs as a sorted blob. A batch of
/// a hundred events is one row to write and, on look-up, one or two rows to read — the cost of
/// suppression per event is a few bytes, not a B-tree insert (docs/benchmarks.md).
pub struct EmbeddedSeen {
    inner: Arc<Mutex<Inner>>,
}

/// Largest distance between neighbouring sequences inside one run; a wider gap starts a new
/// run, so no run spans a range far wider than its events.
pub const RUN_GAP: i64 = 4_096;

struct Inner {
    conn: Connection,
    window: Window,
    marks_since_prune: HashMap<String, u64>,
    last_age_prune: Instant,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl EmbeddedSeen {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path, window: Window) -> Result<EmbeddedSeen, SeenStoreError> {
        let open_error = |reason: String| SeenStoreError::Open {
            path: path.to_owned(),
            reason,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        }
        let conn = Connection::open(path).map_err(|e| open_error(e.to_string()))?;
        init(&conn).map_err(|e| open_error(e.to_string()))?;
        Ok(EmbeddedSeen {
            inner: Arc::new(Mutex::new(Inner {
                conn,
                window,
                marks_since_prune: HashMap::new(),
                last_age_prune: Instant::now(),
            })),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Inner) -> Result<T, SeenStoreError> + Send + 'static,
    ) -> Result<T, SeenStoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // A panic inside `work` poisons the lock; the connection itself is still sound
            // (every write is one transaction), so keep using it.
            let mut guard = inner.lock().unwrap_or_else(|p| p.into_inner());
            work(&mut guard)
        })
        .await
        .map_err(|e| SeenStoreError::Store(format!("dedupe store task failed: {e}")))?
    }
}

fn init(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // `id` grows with every run, so of two runs holding one sequence the later one wins.
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS runs (
             id INTEGER PRIMARY KEY,
             feed TEXT NOT NULL,
             low INTEGER NOT NULL,
             high INTEGER NOT NULL,
             events INTEGER NOT NULL,
             marked_at_ms INTEGER NOT NULL,
             pairs BLOB NOT NULL
         );
         CREATE INDEX IF NOT EXISTS runs_by_high ON runs (feed, high);",
    )
}

/// `events` sorted by sequence, one per sequence (the last copy wins), cut into runs.
fn runs(events: &[(i64, Identity)]) -> Vec<Vec<(i64, Identity)>> {
    let mut sorted: Vec<(i64, Identity)> = events.to_vec();
    sorted.reverse();
    sorted.sort_by_key(|(s, _)| *s); // stable: the last copy of a sequence comes first
    sorted.dedup_by_key(|(s, _)| *s);
    let mut runs: Vec<Vec<(i64, Identity)>> = Vec::new();
    for pair in sorted {
        match runs.last_mut() {
            Some(run) if pair.0 - run[run.len() - 1].0 <= RUN_GAP => run.push(pair),
            _ => runs.push(vec![pair]),
        }
    }
    runs
}

/// A run's pairs as 16 bytes each (sequence, identity; little-endian).
fn encode(run: &[(i64, Identity)]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(run.len() * 16);
    for (sequence, identity) in run {
        blob.extend_from_slice(&sequence.to_le_bytes());
        blob.extend_from_slice(&identity.to_le_bytes());
    }
    blob
}

/// The identity of `sequence` in an encoded run, if it holds it (binary search).
fn find(blob: &[u8], sequence: i64) -> Option<Identity> {
    let read = |at: usize| -> Option<i64> {
        let bytes: [u8; 8] = blob.get(at..at + 8)?.try_into().ok()?;
        Some(i64::from_le_bytes(bytes))
    };
    let (mut low, mut high) = (0usize, blob.len() / 16);
    while low < high {
        let mid = (low + high) / 2;
        let at = read(mid * 16)?;
        match at.cmp(&sequence) {
            std::cmp::Ordering::Equal => return read(mid * 16 + 8),
            std::cmp::Ordering::Less => low = mid + 1,
            std::cmp::Ordering::Greater => high = mid,
        }
    }
    None
}

impl Inner {
    fn prune(&mut self, feed: &str, marked: u64) -> rusqlite::Result<()> {
        let every = prune_every(self.window.events);
        if count_marks(&mut self.marks_since_prune, feed, marked, every) {
            // Keep the newest runs holding `events` sequences: walk down from the top, then
            // delete the runs wholly below the last one kept.
            let mut stmt = self.conn.prepare_cached(
                "SELECT low, events FROM runs WHERE feed = ?1 ORDER BY high DESC",
            )?;
            let mut rows = stmt.query(params![feed])?;
            let (mut kept, mut floor) = (0u64, None);
            while let Some(row) = rows.next()? {
                kept += row.get::<_, i64>(1)?.max(0) as u64;
                if kept >= self.window.events {
                    floor = Some(row.get::<_, i64>(0)?);
                    break;
                }
            }
            drop(rows);
            if let Some(floor) = floor {
                self.conn.execute(
                    "DELETE FROM runs WHERE feed = ?1 AND high < ?2",
                    params![feed, floor],
                )?;
            }
        }
        if let Some(max_age) = self.window.max_age {
            if self.last_age_prune.elapsed() >= PRUNE_INTERVAL {
                self.last_age_prune = Instant::now();
                let oldest = now_ms().saturating_sub(max_age.as_millis() as i64);
                self.conn
                    .execute("DELETE FROM runs WHERE marked_at_ms < ?1", params![oldest])?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl SeenStore for EmbeddedSeen {
    async fn claim(
        &self,
        feed: &str,
        events: &[(i64, Identity)],
    ) -> Result<Claimed, SeenStoreError> {
        let feed = feed.to_owned();
        let mut wanted: Vec<i64> = events.iter().map(|(s, _)| *s).collect();
        wanted.sort_unstable();
        wanted.dedup();
        self.blocking(move |inner| {
            let oldest = inner.window.max_age.map_or(i64::MIN, |age| {
                now_ms().saturating_sub(age.as_millis() as i64)
            });
            let mut stmt = inner.conn.prepare_cached(
                "SELECT low, high, pairs FROM runs
                 WHERE feed = ?1 AND high >= ?2 AND low <= ?3 AND marked_at_ms >= ?4
                 ORDER BY id",
            )?;
            let mut delivered = HashMap::new();
            // One query per dense stretch of the wanted sequences (as they were stored).
            for stretch in wanted.chunk_by(|a, b| b - a <= RUN_GAP) {
                let (low, high) = (stretch[0], stretch[stretch.len() - 1]);
                let mut rows = stmt.query(params![feed, low, high, oldest])?;
                while let Some(row) = rows.next()? {
                    let (run_low, run_high): (i64, i64) = (row.get(0)?, row.get(1)?);
                    let blob = row.get_ref(2)?.as_blob().map_err(rusqlite::Error::from)?;
                    for &sequence in stretch.iter().filter(|s| (run_low..=run_high).contains(*s)) {
                        if let Some(identity) = find(blob, sequence) {
                            // Runs come oldest first: a later mark of a sequence wins.
                            delivered.insert(sequence, identity);
                        }
                    }
                }
            }
            Ok(Claimed {
                delivered,
                busy: Vec::new(),
            })
        })
        .await
    }

    async fn mark(&self, feed: &str, events: &[(i64, Identity)]) -> Result<(), SeenStoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let feed = feed.to_owned();
        let runs = runs(events);
        let marked = events.len() as u64;
        self.blocking(move |inner| {
            let at = now_ms();
            let tx = inner.conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO runs (feed, low, high, events, marked_at_ms, pairs)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for run in &runs {
                    let (low, high) = (run[0].0, run[run.len() - 1].0);
                    stmt.execute(params![feed, low, high, run.len() as i64, at, encode(run)])?;
                }
            }
            tx.commit()?;
            if let Err(e) = inner.prune(&feed, marked) {
                tracing::warn!(error = %e, "dedupe store prune failed; tried again later");
            }
            Ok(())
        })
        .await
    }

    async fn release(&self, _: &str, _: &[i64]) -> Result<(), SeenStoreError> {
        // Nothing was claimed in the file (one process: the layer's own claims suffice).
        Ok(())
    }

    async fn high_water_marks(&self) -> Result<Vec<(String, i64)>, SeenStoreError> {
        self.blocking(|inner| {
            // Feeds still inside the window, the most recently marked first (they get the
            // monitor's slots when the store holds more feeds than `max_tracked_feeds`).
            let oldest = inner.window.max_age.map_or(i64::MIN, |age| {
                now_ms().saturating_sub(age.as_millis() as i64)
            });
            let mut stmt = inner.conn.prepare(
                "SELECT feed, MAX(high) FROM runs WHERE marked_at_ms >= ?1
                 GROUP BY feed ORDER BY MAX(marked_at_ms) DESC",
            )?;
            let rows = stmt.query_map(params![oldest], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(events: u64) -> Window {
        Window {
            events,
            max_age: None,
        }
    }

    /// At start-up the monitor resumes feeds up to its cap: the recent ones first, and none
    /// whose marks all left the window while the bridge was down.
    #[tokio::test]
    async fn high_water_marks_skip_expired_feeds_and_come_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let aged = Window {
            events: 100,
            max_age: Some(Duration::from_secs(3_600)),
        };
        let store = EmbeddedSeen::open(&dir.path().join("c.db"), aged).unwrap();
        for feed in ["retired", "older", "newer"] {
            store.mark(feed, &[(7, 1)]).await.unwrap();
        }
        // Marks of "retired" two hours ago, of "older" a minute before "newer".
        store
            .blocking(|inner| {
                let now = now_ms();
                let set = "UPDATE runs SET marked_at_ms = ?1 WHERE feed = ?2";
                inner
                    .conn
                    .execute(set, params![now - 7_200_000, "retired"])?;
                inner.conn.execute(set, params![now - 60_000, "older"])?;
                Ok(())
            })
            .await
            .unwrap();
        let marks = store.high_water_marks().await.unwrap();
        assert_eq!(marks, vec![("newer".into(), 7), ("older".into(), 7)]);
    }

    #[test]
    fn prune_counters_stay_bounded_whatever_labels_come_and_go() {
        let mut counts = HashMap::new();
        assert!(!count_marks(&mut counts, "a", 10, 16));
        assert!(count_marks(&mut counts, "a", 10, 16), "due at 20 >= 16");
        assert!(counts.is_empty(), "a due counter goes");
        for i in 0..30_000 {
            count_marks(&mut counts, &format!("label-{i}"), 1, 16);
        }
        assert!(counts.len() <= crate::layers::feeds::config::MAX_TRACKED_FEEDS_LIMIT);
    }

    #[tokio::test]
    async fn remembers_marks_per_feed_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedupe/c.db");
        let store = EmbeddedSeen::open(&path, window(100)).unwrap();
        store.mark("", &[(1, 11), (2, 22)]).await.unwrap();
        store.mark("IDX", &[(2, 99)]).await.unwrap();
        drop(store);
        let store = EmbeddedSeen::open(&path, window(100)).unwrap();
        let seen = store.claim("", &[(1, 0), (2, 0), (3, 0)]).await.unwrap();
        assert_eq!(seen.delivered, HashMap::from([(1, 11), (2, 22)]));
        assert!(seen.busy.is_empty());
        let seen = store.claim("IDX", &[(1, 0), (2, 0)]).await.unwrap();
        assert_eq!(seen.delivered, HashMap::from([(2, 99)]), "feeds are apart");
        let mut hwm = store.high_water_marks().await.unwrap();
        hwm.sort();
        assert_eq!(hwm, vec![("".into(), 2), ("IDX".into(), 2)]);
    }

    #[tokio::test]
    async fn keeps_only_the_newest_window_events_per_feed() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedSeen::open(&dir.path().join("c.db"), window(100)).unwrap();
        for chunk in (1..=5_000i64).collect::<Vec<_>>().chunks(10) {
            let events: Vec<_> = chunk.iter().map(|&s| (s, 1)).collect();
            store.mark("f", &events).await.unwrap();
        }
        store.mark("other", &[(1, 1)]).await.unwrap();
        let all: Vec<(i64, Identity)> = (1..=5_000).map(|s| (s, 1)).collect();
        let seen = store.claim("f", &all).await.unwrap().delivered;
        assert!(seen.len() >= 100, "at least the window is kept");
        assert!(
            seen.len() <= 100 + prune_every(100) as usize + 10,
            "at most the window, one prune interval and one batch: {}",
            seen.len()
        );
        assert!(seen.contains_key(&5_000) && !seen.contains_key(&1));
        let other = store.claim("other", &[(1, 1)]).await.unwrap().delivered;
        assert_eq!(other.len(), 1, "another feed's window is its own");
        let rows: i64 = store
            .blocking(|i| {
                Ok(i.conn
                    .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))?)
            })
            .await
            .unwrap();
        assert!(rows < 30, "one row per marked batch, pruned: {rows}");
    }

    #[tokio::test]
    async fn sparse_batches_and_later_marks_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedSeen::open(&dir.path().join("c.db"), window(1_000)).unwrap();
        // Far apart: three runs, each found by its own stretch of the look-up.
        store
            .mark("f", &[(1, 10), (50_000, 11), (9_000_000_000, 12), (2, 13)])
            .await
            .unwrap();
        // A conflict published later: the later identity wins, in one batch and across two.
        store.mark("f", &[(2, 20), (2, 21)]).await.unwrap();
        let wanted = [(1, 0), (2, 0), (3, 0), (50_000, 0), (9_000_000_000, 0)];
        let seen = store.claim("f", &wanted).await.unwrap().delivered;
        assert_eq!(
            seen,
            HashMap::from([(1, 10), (2, 21), (50_000, 11), (9_000_000_000, 12)])
        );
        assert_eq!(
            store.high_water_marks().await.unwrap(),
            vec![("f".into(), 9_000_000_000)]
        );
    }

    #[test]
    fn runs_split_at_wide_gaps_and_keep_the_last_copy() {
        let cut = runs(&[(5, 1), (1, 1), (5, 2), (1 + RUN_GAP + 10, 3)]);
        assert_eq!(cut, vec![vec![(1, 1), (5, 2)], vec![(1 + RUN_GAP + 10, 3)]]);
        let blob = encode(&cut[0]);
        assert_eq!(
            (find(&blob, 5), find(&blob, 1), find(&blob, 3)),
            (Some(2), Some(1), None)
        );
    }
}
