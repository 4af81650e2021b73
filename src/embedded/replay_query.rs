//! The database side of a replay request: one parsed query ([`ReplayQuery`]) becomes one SQL
//! statement over the log (positions, resource names, record key, order), read page by page
//! within the page's event and byte limits.

use rusqlite::types::Value;
use rusqlite::Connection;

use super::odata::ReplayQuery;
use super::store::{StoredEvent, EVENT_COLUMNS};

/// How much one page may hold.
#[derive(Debug, Clone, Copy)]
pub struct PageLimits {
    /// Most events.
    pub events: u64,
    /// About this many payload bytes (one event always fits).
    pub bytes: usize,
}

/// One page of results.
pub struct Page {
    /// The events, in the requested order.
    pub events: Vec<StoredEvent>,
    /// More match after this page.
    pub more: bool,
    /// `@odata.count`, when asked.
    pub count: Option<i64>,
}

/// Reads the page `q` asks for.
pub fn query_page(
    conn: &Connection,
    q: &ReplayQuery,
    limits: PageLimits,
) -> rusqlite::Result<Page> {
    let mut page = Page {
        events: Vec::new(),
        more: false,
        count: None,
    };
    if q.contradiction {
        page.count = q.count.then_some(0);
        return Ok(page);
    }
    let mut filter = String::from("position > ?1 AND position <= ?2");
    let mut params = vec![Value::Integer(q.after), Value::Integer(q.until)];
    if let Some(resources) = &q.resources {
        let marks: Vec<String> = (0..resources.len())
            .map(|i| format!("?{}", params.len() + 1 + i))
            .collect();
        filter.push_str(&format!(" AND resource_name IN ({})", marks.join(", ")));
        params.extend(resources.iter().map(|r| Value::Text(r.clone())));
    }
    if let Some(key) = &q.record_key {
        filter.push_str(&format!(" AND record_key = ?{}", params.len() + 1));
        params.push(Value::Text(key.clone()));
    }
    if q.count {
        let sql = format!("SELECT count(*) FROM events WHERE {filter}");
        page.count = Some(conn.query_row(&sql, rusqlite::params_from_iter(&params), |r| r.get(0))?);
    }
    // The skiptoken continues past the last position of the previous page (after it in
    // ascending order, before it in descending order); `$skip` applies to the first page only.
    let offset = match q.skiptoken {
        Some(token) if q.descending => {
            params[1] = Value::Integer(q.until.min(token.saturating_sub(1)));
            0
        }
        Some(token) => {
            params[0] = Value::Integer(q.after.max(token));
            0
        }
        None => q.skip,
    };
    if limits.events == 0 {
        // `$top=0`: only the count.
        return Ok(page);
    }
    let n = params.len();
    let order = if q.descending { "DESC" } else { "ASC" };
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE {filter} ORDER BY position {order} LIMIT ?{} OFFSET ?{}",
        n + 1,
        n + 2
    );
    params.push(Value::Integer(
        limits.events.saturating_add(1).min(i64::MAX as u64) as i64,
    ));
    params.push(Value::Integer(offset.min(i64::MAX as u64) as i64));
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(&params))?;
    let mut bytes = 0usize;
    while let Some(row) = rows.next()? {
        let event = StoredEvent::from_row(row)?;
        // Full in events, or this one would take the page past its bytes (a page always
        // holds at least one event, however large).
        let full = page.events.len() as u64 >= limits.events
            || (!page.events.is_empty() && bytes + event.payload.len() > limits.bytes);
        if full {
            page.more = true;
            break;
        }
        bytes += event.payload.len();
        page.events.push(event);
    }
    Ok(page)
}
