//! The log's single writer thread, with group commit.
//!
//! SQLite allows one writer at a time, and with `synchronous=FULL` every commit is an fsync.
//! So all writes of a log (appends, cursor moves, dead letters, retention) go through one
//! dedicated thread that owns the write connection: it takes every job waiting in its queue,
//! runs each in its own savepoint inside one `BEGIN IMMEDIATE` transaction, commits (one fsync
//! for the whole group), and only then answers each job. A job that fails is rolled back alone;
//! a failed commit fails every job of the group. Nobody hears "done" before the fsync.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{oneshot, Notify};

use super::store::StoreError;

/// Jobs in one group commit at most (bounds the transaction and the latency of its first job).
const MAX_GROUP: usize = 256;

/// Runs after the group's commit with its outcome; answers the job's caller.
type Finish = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;
/// Work done inside the group transaction: `(its error if it failed, finisher)`.
type Job = Box<dyn FnOnce(&Connection) -> (Option<StoreError>, Finish) + Send>;

/// Facts about the log that readers need without a query, refreshed after every commit.
#[derive(Debug, Default)]
pub struct Shared {
    /// Highest position ever appended (0 when empty).
    pub last_position: AtomicI64,
    /// Events currently stored.
    pub events: AtomicI64,
    /// Event payload bytes currently stored.
    pub payload_bytes: AtomicI64,
    /// Highest position deleted by retention (0 when none).
    pub retention_through: AtomicI64,
    /// Records kept (`[sink.records]`).
    pub records: AtomicI64,
    /// Bytes of the records' `Data`.
    pub records_bytes: AtomicI64,
    /// The write-ahead log's share of `max_file_bytes` (0: no cap).
    pub max_wal_bytes: AtomicI64,
    /// Woken after each commit that appended events.
    pub appended: Notify,
}

/// A handle for queueing jobs to the writer thread. The thread ends when the last handle drops.
#[derive(Clone)]
pub struct Writer {
    queue: SyncSender<Job>,
}

impl Writer {
    /// Starts the writer thread owning `conn`; `queue_capacity` jobs may wait before callers
    /// are told the log is overloaded.
    pub fn start(
        conn: Connection,
        shared: Arc<Shared>,
        queue_capacity: usize,
    ) -> std::io::Result<Writer> {
        let (queue, jobs) = std::sync::mpsc::sync_channel(queue_capacity);
        refresh(&conn, &shared).map_err(std::io::Error::other)?;
        std::thread::Builder::new()
            .name("embedded-log-writer".into())
            .spawn(move || run(conn, jobs, shared))?;
        Ok(Writer { queue })
    }

    /// Runs `work` in the next group transaction; resolves once that transaction is durable.
    pub async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| match work(conn) {
            Ok(value) => (
                None,
                Box::new(move |commit: Result<(), &StoreError>| {
                    let _ = reply.send(commit.map(|()| value).map_err(Clone::clone));
                }),
            ),
            Err(e) => {
                let error = StoreError::from(e);
                (
                    Some(error.clone()),
                    Box::new(move |_: Result<(), &StoreError>| {
                        let _ = reply.send(Err(error));
                    }),
                )
            }
        });
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(StoreError::Overloaded),
            Err(TrySendError::Disconnected(_)) => return Err(StoreError::Closed),
        }
        // A job dropped unanswered belonged to a group that SQLite rolled back as a whole.
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Store(
                "the write was rolled back with its group after another write failed".into(),
            ))
        })
    }
}

fn run(mut conn: Connection, jobs: Receiver<Job>, shared: Arc<Shared>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let mut finishers: Vec<Finish> = Vec::with_capacity(group.len());
        let before = shared.last_position.load(Ordering::SeqCst);
        let refuse = wal_within_share(&conn, &shared).err();
        let outcome = commit_group(&mut conn, group, &mut finishers, refuse);
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, jobs = finishers.len(), "embedded log write failed; nothing of it was committed");
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        } else if let Err(e) = refresh(&conn, &shared) {
            tracing::warn!(error = %e, "cannot read embedded log counters");
        }
        for finish in finishers {
            finish(outcome.as_ref().map(|_| ()));
        }
        if outcome.is_ok() && shared.last_position.load(Ordering::SeqCst) > before {
            shared.appended.notify_waiters();
        }
    }
}

/// Runs the group in one transaction and commits it, or rolls it all back when `refuse` says
/// why it may not be committed (the jobs run only to produce their finishers).
fn commit_group(
    conn: &mut Connection,
    group: Vec<Job>,
    finishers: &mut Vec<Finish>,
    refuse: Option<StoreError>,
) -> Result<(), StoreError> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for job in group {
        let savepoint = tx.savepoint()?;
        let (error, finish) = job(&savepoint);
        finishers.push(finish);
        match error {
            None => savepoint.commit()?,
            Some(error) => {
                // Dropping the savepoint rolls this job back alone, unless SQLite already
                // rolled back the whole transaction (it may on SQLITE_FULL / IOERR / NOMEM):
                // then the whole group failed.
                drop(savepoint);
                if tx.is_autocommit() {
                    return Err(error);
                }
            }
        }
    }
    if let Some(refused) = refuse {
        tx.rollback()?;
        return Err(refused);
    }
    tx.commit()?;
    Ok(())
}

/// Whether the write-ahead log is within its share of `max_file_bytes`, checkpointing and
/// truncating it first when it is not. (Its index, `-shm`, is a fixed 32 KiB per 4 MiB of log
/// and not counted.)
fn wal_within_share(conn: &Connection, shared: &Shared) -> Result<(), StoreError> {
    let share = shared.max_wal_bytes.load(Ordering::SeqCst);
    if share <= 0 {
        return Ok(());
    }
    let Some(path) = conn.path().filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let size = || std::fs::metadata(format!("{path}-wal")).map_or(0, |m| m.len() as i64);
    if size() <= share {
        return Ok(());
    }
    // Readers may hold frames back; then the log stays over until they are done.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    if size() <= share {
        return Ok(());
    }
    Err(StoreError::Full(format!(
        "the write-ahead log is over its share of max_file_bytes ({share} bytes) while readers \
         hold it; retry later"
    )))
}

/// Reloads [`Shared`] from the committed state.
fn refresh(conn: &Connection, shared: &Shared) -> rusqlite::Result<()> {
    let meta = |key: &str| -> rusqlite::Result<i64> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
    };
    let last: i64 = conn.query_row(
        "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
        [],
        |r| r.get(0),
    )?;
    shared.last_position.store(last, Ordering::SeqCst);
    shared.events.store(meta("event_count")?, Ordering::SeqCst);
    shared
        .payload_bytes
        .store(meta("payload_bytes")?, Ordering::SeqCst);
    shared
        .retention_through
        .store(meta("retention_through")?, Ordering::SeqCst);
    shared
        .records
        .store(meta("record_count")?, Ordering::SeqCst);
    shared
        .records_bytes
        .store(meta("records_bytes")?, Ordering::SeqCst);
    Ok(())
}
