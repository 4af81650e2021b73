//! How every HTTP read of a log runs (replay pages, single events, records, record
//! collections): one way, so a new read cannot escape the log's limits.
//!
//! - **Slots**: each read holds one of the log's `replay_max_concurrent_requests` slots from
//!   before the database work until the answer body is built (`429` + `Retry-After` when none
//!   is free). A client that goes away does not free the slot early.
//! - **Off the async workers**: the query *and* the rendering of the answer run on a blocking
//!   thread ([`Log::read`]), so twelve reads of one wide event no longer delay another
//!   connector's push by seconds (rendering used to run after the slot was released, on the
//!   workers).
//! - **Time**: SQLite work is interrupted at `replay_query_timeout_ms` (`503`).
//! - **Bytes**: the work is handed the log's byte budget (`replay_max_page_bytes`) and stops
//!   adding to an answer once it is spent (one item always fits), so the answer's size does
//!   not depend on how often a client repeats itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use rusqlite::Connection;
use tokio::sync::Semaphore;

use super::store::{Log, StoreError};
use crate::http::problem::Problem;

/// `Retry-After` of a 503 when the store cannot be read.
pub const UNAVAILABLE_RETRY_AFTER_SECONDS: u64 = 5;
/// `Retry-After` of a 429 when every read slot of the log is taken.
const BUSY_RETRY_AFTER_SECONDS: u64 = 1;
/// SQLite virtual-machine steps between two looks at the query deadline.
const PROGRESS_STEPS: std::ffi::c_int = 1_000;

/// The bounded reads of one log, shared by its replay and record resources.
pub struct Reads {
    /// The connector named in logs.
    pub connector: String,
    /// The log.
    pub log: Arc<Log>,
    /// Bytes one answer may hold (`replay_max_page_bytes`).
    pub max_bytes: usize,
    slots: Arc<Semaphore>,
    timeout: Duration,
}

impl Reads {
    /// `slots` reads of `log` at once, each interrupted after `timeout`.
    pub fn new(
        connector: &str,
        log: Arc<Log>,
        slots: usize,
        timeout: Duration,
        max_bytes: usize,
    ) -> Reads {
        Reads {
            connector: connector.to_owned(),
            log,
            max_bytes,
            slots: Arc::new(Semaphore::new(slots)),
            timeout,
        }
    }

    /// Runs `work` (database work and rendering) under a slot, on a blocking thread, with the
    /// query deadline armed.
    pub async fn run<T, F>(&self, work: F) -> Result<T, Problem>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        // Held until the work ends, even when the client goes away first.
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many reads of this log at once; retry later",
            )
            .retry_after(BUSY_RETRY_AFTER_SECONDS)
        })?;
        let deadline = Instant::now() + self.timeout;
        let result = self
            .log
            .read(move |conn| {
                let _slot = slot;
                conn.progress_handler(PROGRESS_STEPS, Some(move || Instant::now() >= deadline));
                let result = work(conn);
                conn.progress_handler(0, None::<fn() -> bool>);
                result
            })
            .await;
        result.map_err(|e| self.unavailable(e))
    }

    /// Slots free right now.
    #[cfg(test)]
    pub fn available_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// Takes a slot as a read would (tests hold one to fill the log's slots).
    #[cfg(test)]
    pub fn take_slot(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.slots.clone().try_acquire_owned().expect("a free slot")
    }

    fn unavailable(&self, e: StoreError) -> Problem {
        if matches!(e, StoreError::Interrupted) {
            tracing::warn!(connector = %self.connector, timeout_ms = self.timeout.as_millis() as u64, "log read interrupted at replay_query_timeout_ms");
            return Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the query took longer than this log allows (replay_query_timeout_ms); \
                 narrow it with $filter=EntityEventSequence gt N or leave out $count",
            )
            .retry_after(UNAVAILABLE_RETRY_AFTER_SECONDS);
        }
        tracing::warn!(connector = %self.connector, error = %e, "log read failed");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the event log cannot be read right now; retry later",
        )
        .retry_after(UNAVAILABLE_RETRY_AFTER_SECONDS)
    }
}
