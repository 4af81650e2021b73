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
use rusqlite::{params, Connection, OptionalExtension};

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
    /// Each remembered feed's highest delivered sequence (the monitor resumes from them).
    async fn high_water_marks(&self) -> Result<Vec<(String, i64)>, SeenStoreError>;
}

/// Marks of one feed between two count prunes: an eighth of the window (at least 16, at most
/// 131 072), so the prune's walk down the window costs about eight index entries per mark and a
/// feed holds at most `window_events` plus this many rows.
pub fn prune_every(window_events: u64) -> u64 {
    (window_events / 8).clamp(16, 131_072)
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
pub struct EmbeddedSeen {
    inner: Arc<Mutex<Inner>>,
}

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
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS seen (
             feed TEXT NOT NULL,
             sequence INTEGER NOT NULL,
             identity INTEGER NOT NULL,
             marked_at_ms INTEGER NOT NULL,
             PRIMARY KEY (feed, sequence)
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS seen_by_age ON seen (marked_at_ms);",
    )
}

impl Inner {
    fn prune(&mut self, feed: &str, marked: u64) -> rusqlite::Result<()> {
        let count = self.marks_since_prune.entry(feed.to_owned()).or_default();
        *count += marked;
        if *count >= prune_every(self.window.events) {
            *count = 0;
            // Keep the newest `events` sequences of the feed: delete below the one at that rank.
            let keep = i64::try_from(self.window.events).unwrap_or(i64::MAX);
            self.conn.execute(
                "DELETE FROM seen WHERE feed = ?1 AND sequence < (
                     SELECT sequence FROM seen WHERE feed = ?1
                     ORDER BY sequence DESC LIMIT 1 OFFSET ?2 - 1)",
                params![feed, keep],
            )?;
        }
        if let Some(max_age) = self.window.max_age {
            if self.last_age_prune.elapsed() >= PRUNE_INTERVAL {
                self.last_age_prune = Instant::now();
                let oldest = now_ms().saturating_sub(max_age.as_millis() as i64);
                self.conn
                    .execute("DELETE FROM seen WHERE marked_at_ms < ?1", params![oldest])?;
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
        let sequences: Vec<i64> = events.iter().map(|(s, _)| *s).collect();
        self.blocking(move |inner| {
            let oldest = inner.window.max_age.map_or(i64::MIN, |age| {
                now_ms().saturating_sub(age.as_millis() as i64)
            });
            let mut delivered = HashMap::new();
            let (Some(&low), Some(&high)) = (sequences.iter().min(), sequences.iter().max()) else {
                return Ok(Claimed::default());
            };
            // A batch's sequences are usually one dense run: one range scan instead of a look-up
            // per event. Sparse ones (a range far wider than the batch) are looked up one by one.
            if (high - low) as u128 <= 4 * sequences.len() as u128 {
                let mut stmt = inner.conn.prepare_cached(
                    "SELECT sequence, identity FROM seen
                     WHERE feed = ?1 AND sequence BETWEEN ?2 AND ?3 AND marked_at_ms >= ?4",
                )?;
                let wanted: std::collections::HashSet<i64> = sequences.iter().copied().collect();
                let rows = stmt.query_map(params![feed, low, high, oldest], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                })?;
                for row in rows {
                    let (sequence, identity) = row?;
                    if wanted.contains(&sequence) {
                        delivered.insert(sequence, identity);
                    }
                }
            } else {
                let mut stmt = inner.conn.prepare_cached(
                    "SELECT identity FROM seen
                     WHERE feed = ?1 AND sequence = ?2 AND marked_at_ms >= ?3",
                )?;
                for sequence in sequences {
                    let identity: Option<i64> = stmt
                        .query_row(params![feed, sequence, oldest], |r| r.get(0))
                        .optional()?;
                    if let Some(identity) = identity {
                        delivered.insert(sequence, identity);
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
        let events = events.to_vec();
        self.blocking(move |inner| {
            let at = now_ms();
            let tx = inner.conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO seen (feed, sequence, identity, marked_at_ms)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (feed, sequence)
                     DO UPDATE SET identity = excluded.identity,
                                   marked_at_ms = excluded.marked_at_ms",
                )?;
                for (sequence, identity) in &events {
                    stmt.execute(params![feed, sequence, identity, at])?;
                }
            }
            tx.commit()?;
            if let Err(e) = inner.prune(&feed, events.len() as u64) {
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
            let mut stmt = inner
                .conn
                .prepare("SELECT feed, MAX(sequence) FROM seen GROUP BY feed")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
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
        for chunk in (1..=5_000i64).collect::<Vec<_>>().chunks(500) {
            let events: Vec<_> = chunk.iter().map(|&s| (s, 1)).collect();
            store.mark("f", &events).await.unwrap();
        }
        store.mark("other", &[(1, 1)]).await.unwrap();
        let all: Vec<(i64, Identity)> = (1..=5_000).map(|s| (s, 1)).collect();
        let seen = store.claim("f", &all).await.unwrap().delivered;
        assert!(seen.len() >= 100, "at least the window is kept");
        assert!(
            seen.len() <= 100 + prune_every(100) as usize,
            "at most the window plus one prune interval: {}",
            seen.len()
        );
        assert!(seen.contains_key(&5_000) && !seen.contains_key(&1));
        let other = store.claim("other", &[(1, 1)]).await.unwrap().delivered;
        assert_eq!(other.len(), 1, "another feed's window is its own");
    }
}
