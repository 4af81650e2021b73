//! Named consumer cursors and the dead-letter table, stored in the log's own database.
//!
//! A cursor is the position of the last event its source settled; it is written through the
//! log's writer (fsynced) and only on `Outcome::Delivered` or `Outcome::Poison`, so after a
//! crash a source re-reads at most the batch that was in flight (at-least-once). Dead letters
//! keep a full copy of each event with the reason, so they outlive retention.

use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

use super::store::{now_ms, Log, StoreError};

impl Log {
    /// A cursor's position, creating it at `start_position` when it does not exist yet.
    pub async fn open_cursor(&self, name: &str, start_position: i64) -> Result<i64, StoreError> {
        let name = name.to_owned();
        self.write(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO cursors (name, position, updated_at_ms) VALUES (?1, ?2, ?3)",
                params![name, start_position, now_ms()],
            )?;
            conn.query_row(
                "SELECT position FROM cursors WHERE name = ?1",
                [&name],
                |r| r.get(0),
            )
        })
        .await
    }

    /// Moves a cursor; durable on return.
    pub async fn set_cursor(&self, name: &str, position: i64) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(move |conn| set_cursor(conn, &name, position))
            .await
    }

    /// Copies the events at these positions into `dead_letters`, each with its reason, and
    /// moves the cursor to `through`, in one transaction.
    pub async fn dead_letter(
        &self,
        cursor: &str,
        events: Vec<(i64, String)>,
        through: i64,
    ) -> Result<(), StoreError> {
        let cursor = cursor.to_owned();
        self.write(move |conn| {
            let mut copy = conn.prepare_cached(
                "INSERT INTO dead_letters (cursor, position, sequence, resource_name, record_key, \
                 source_label, reason, dead_lettered_at_ms, payload) \
                 SELECT ?1, position, sequence, resource_name, record_key, source_label, ?2, ?3, \
                 payload FROM events WHERE position = ?4",
            )?;
            let now = now_ms();
            for (position, reason) in events {
                copy.execute(params![cursor, reason, now, position])?;
            }
            set_cursor(conn, &cursor, through)
        })
        .await
    }

    /// A cursor's position, if it exists.
    pub async fn cursor(self: &Arc<Self>, name: &str) -> Result<Option<i64>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| {
            conn.query_row(
                "SELECT position FROM cursors WHERE name = ?1",
                [&name],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }
}

fn set_cursor(conn: &Connection, name: &str, position: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO cursors (name, position, updated_at_ms) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET position = excluded.position, \
         updated_at_ms = excluded.updated_at_ms",
        params![name, position, now_ms()],
    )?;
    Ok(())
}
