//! Record resources of an embedded log (`[sink.records]`, opt-in): the latest record of each
//! (`ResourceName`, `ResourceRecordKey`) whose events carry `Data`, kept in a `records` table of
//! the log, written in the same transaction as the events, and served RESO-style
//! (`/Property('235021')`, [`super::records_http`]).
//!
//! The latest arrival wins (the log's order). An event marked as a delete
//! (`"@EntityBridge.Deleted": true`, or a message the bridge marked so) removes the record: it
//! answers 404 from then on. Event retention deletes old events, never records, so the latest
//! record of every key stays until it is deleted — or until the records' own retention
//! (`max_age_hours`, `max_bytes`: least recently updated first) drops it
//! ([`super::retention`]).

use std::collections::BTreeMap;

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::connector::Message;

/// `[sink.records]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsConfig {
    /// The resources whose records are kept and served, e.g. `["Property", "Member"]`.
    pub resources: Vec<String>,
    /// Key field per resource where it differs from the RESO Data Dictionary's (`Property` →
    /// `ListingKey`, `Member` → `MemberKey`, …; otherwise `<Resource>Key`).
    #[serde(default)]
    pub key_fields: BTreeMap<String, String>,
    /// Drop records not updated for this many hours (0 = keep each until its key is deleted).
    /// Event retention never drops records; this does.
    #[serde(default)]
    pub max_age_hours: u64,
    /// Drop the least recently updated records while the records' `Data` bytes exceed this (0 =
    /// no bound). Required with the sink's `max_file_bytes`: records are kept until deleted, so
    /// without a bound they would fill the file and every push would get 503.
    #[serde(default)]
    pub max_bytes: u64,
}

/// The Data Dictionary's key field of `resource`.
pub fn dictionary_key(resource: &str) -> String {
    match resource {
        "Property" => "ListingKey",
        "Member" => "MemberKey",
        "Office" => "OfficeKey",
        "Media" => "MediaKey",
        "OpenHouse" => "OpenHouseKey",
        "Teams" => "TeamKey",
        "TeamMembers" => "TeamMemberKey",
        "Contacts" => "ContactKey",
        "PropertyRooms" => "RoomKey",
        "PropertyUnitTypes" => "UnitTypeKey",
        "PropertyGreenVerification" => "GreenBuildingVerificationKey",
        "PropertyPowerProduction" => "PowerProductionKey",
        "HistoryTransactional" => "HistoryTransactionalKey",
        "Showing" => "ShowingKey",
        "SavedSearch" => "SavedSearchKey",
        "Prospecting" => "ProspectingKey",
        "Queue" => "QueueTransactionKey",
        "Rules" => "RuleKey",
        "OUID" => "OrganizationUniqueIdKey",
        other => return format!("{other}Key"),
    }
    .to_owned()
}

impl RecordsConfig {
    /// `(resource, key field)` of every served resource.
    pub fn served(&self) -> Vec<(String, String)> {
        (self.resources.iter())
            .map(|r| {
                let key = self
                    .key_fields
                    .get(r)
                    .cloned()
                    .unwrap_or_else(|| dictionary_key(r));
                (r.clone(), key)
            })
            .collect()
    }

    /// Semantic checks; `Err((key, detail))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.resources.is_empty() {
            return Err((
                "records.resources".into(),
                "must name at least one resource".into(),
            ));
        }
        for r in self.resources.iter().chain(self.key_fields.values()) {
            if !crate::resources::well_formed(r) || r == "EntityEvent" {
                return Err((
                    "records".into(),
                    format!(
                        "`{r}` is not a resource or field name (OData identifier, not EntityEvent)"
                    ),
                ));
            }
        }
        if let Some(r) = self.key_fields.keys().find(|r| !self.resources.contains(r)) {
            return Err((
                format!("records.key_fields.{r}"),
                "names a resource not in `resources`".into(),
            ));
        }
        Ok(())
    }
}

/// What an event does to its record.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<'a> {
    /// Its `Data` object becomes the record.
    Upsert(&'a str),
    /// The record is gone.
    Delete,
    /// Nothing (no `Data`, or not an object).
    Keep,
}

/// What `m` does to its record.
pub fn change(m: &Message) -> Change<'_> {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(rename = "Data", borrow, default)]
        data: Option<&'a RawValue>,
        #[serde(rename = "@EntityBridge.Deleted", default)]
        deleted: Option<bool>,
    }
    let Ok(probe) = serde_json::from_slice::<Probe<'_>>(&m.payload) else {
        return Change::Keep;
    };
    if m.delete || probe.deleted == Some(true) {
        return Change::Delete;
    }
    match probe.data.map(RawValue::get) {
        Some(data) if data.trim_start().starts_with('{') => Change::Upsert(data),
        _ => Change::Keep,
    }
}

/// The records table (created with the log's schema; [`migrate`] brings older tables up).
/// `data_len` and `updated_at_ms` serve retention: the records' bytes are kept in `meta`
/// (`records_bytes`, `record_count`) as they change, and the least recently updated go first.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    resource_name TEXT    NOT NULL,
    record_key    TEXT    NOT NULL,
    position      INTEGER NOT NULL,
    data          BLOB    NOT NULL,
    updated_at_ms INTEGER NOT NULL DEFAULT 0,
    data_len      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (resource_name, record_key)
) WITHOUT ROWID;
";

/// Brings a records table of an earlier version up to [`SCHEMA`] (its columns for retention,
/// filled from the data; records of unknown age count as updated now) and makes sure the
/// counters in `meta` exist. Idempotent; runs at every open.
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let mut columns = Vec::new();
    let mut info = conn.prepare("PRAGMA table_info(records)")?;
    let mut rows = info.query([])?;
    while let Some(row) = rows.next()? {
        columns.push(row.get::<_, String>(1)?);
    }
    if !columns.iter().any(|c| c == "data_len") {
        conn.execute_batch(
            "ALTER TABLE records ADD COLUMN updated_at_ms INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE records ADD COLUMN data_len INTEGER NOT NULL DEFAULT 0;",
        )?;
        conn.execute(
            "UPDATE records SET data_len = length(data), updated_at_ms = ?1",
            [super::store::now_ms()],
        )?;
    }
    conn.execute_batch("CREATE INDEX IF NOT EXISTS records_by_age ON records (updated_at_ms);")?;
    let counted: i64 = conn.query_row(
        "SELECT count(*) FROM meta WHERE key = 'records_bytes'",
        [],
        |r| r.get(0),
    )?;
    if counted == 0 {
        conn.execute(
            "INSERT INTO meta (key, value) SELECT 'records_bytes', coalesce(sum(data_len), 0) FROM records",
            [],
        )?;
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) SELECT 'record_count', count(*) FROM records",
            [],
        )?;
    }
    Ok(())
}

/// Adds to the records' counters in `meta`.
pub fn add_record_meta(conn: &Connection, records: i64, bytes: i64) -> rusqlite::Result<()> {
    let mut update = conn.prepare_cached("UPDATE meta SET value = value + ?2 WHERE key = ?1")?;
    update.execute(params!["record_count", records])?;
    update.execute(params!["records_bytes", bytes])?;
    Ok(())
}

/// The stored size of a record, if there is one.
fn stored_len(conn: &Connection, resource: &str, key: &str) -> rusqlite::Result<Option<i64>> {
    let mut find = conn.prepare_cached(
        "SELECT data_len FROM records WHERE resource_name = ?1 AND record_key = ?2",
    )?;
    let mut rows = find.query(params![resource, key])?;
    rows.next()?.map(|r| r.get(0)).transpose()
}

/// Applies `m` (appended at `position`) to the records of the served `resources`.
pub fn apply(
    conn: &Connection,
    resources: &[String],
    m: &Message,
    position: i64,
) -> rusqlite::Result<()> {
    if !resources.contains(&m.resource_name) {
        return Ok(());
    }
    match change(m) {
        Change::Upsert(data) => {
            let before = stored_len(conn, &m.resource_name, &m.record_key)?;
            let mut upsert = conn.prepare_cached(
                "INSERT OR REPLACE INTO records \
                 (resource_name, record_key, position, data, updated_at_ms, data_len) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let len = data.len() as i64;
            upsert.execute(params![
                m.resource_name,
                m.record_key,
                position,
                data.as_bytes(),
                super::store::now_ms(),
                len
            ])?;
            add_record_meta(conn, i64::from(before.is_none()), len - before.unwrap_or(0))?;
        }
        Change::Delete => {
            let Some(before) = stored_len(conn, &m.resource_name, &m.record_key)? else {
                return Ok(());
            };
            let mut delete = conn.prepare_cached(
                "DELETE FROM records WHERE resource_name = ?1 AND record_key = ?2",
            )?;
            delete.execute(params![m.resource_name, m.record_key])?;
            add_record_meta(conn, -1, -before)?;
        }
        Change::Keep => {}
    }
    Ok(())
}

/// The records of `resource` with these keys (at most as many as keys), in key order.
pub fn read(
    conn: &Connection,
    resource: &str,
    keys: &[String],
) -> rusqlite::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut one = conn.prepare_cached(
        "SELECT record_key, data FROM records WHERE resource_name = ?1 AND record_key = ?2",
    )?;
    for key in keys {
        let mut rows = one.query(params![resource, key])?;
        if let Some(row) = rows.next()? {
            out.push((row.get(0)?, row.get(1)?));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &str) -> Message {
        Message {
            sequence: 1,
            resource_name: "Property".into(),
            record_key: "K".into(),
            source_label: None,
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
            origin: None,
            delete: false,
            conflict: None,
        }
    }

    #[test]
    fn what_an_event_does_to_its_record() {
        let m = message(r#"{"ResourceRecordKey":"K","Data":{"ListPrice": 1.50}}"#);
        assert_eq!(change(&m), Change::Upsert(r#"{"ListPrice": 1.50}"#));
        let m = message(r#"{"ResourceRecordKey":"K","@EntityBridge.Deleted":true}"#);
        assert_eq!(change(&m), Change::Delete);
        assert_eq!(
            change(&message(r#"{"ResourceRecordKey":"K"}"#)),
            Change::Keep
        );
        assert_eq!(change(&message(r#"{"Data":null}"#)), Change::Keep);
        assert_eq!(change(&message(r#"{"Data":[1]}"#)), Change::Keep);
        assert_eq!(dictionary_key("Property"), "ListingKey");
        assert_eq!(dictionary_key("Widget"), "WidgetKey");
    }
}
