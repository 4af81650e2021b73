//! `GET /dead-letters/{connector}` on the admin listener: the dead letters a connector wrote into
//! an embedded log ([`crate::embedded::dead_letter`]), oldest first, paged by id. Bounded like
//! every read: at most `limit` rows (default 100, at most 1000) and `admin.dead_letters_max_
//! page_bytes` of payload per page, read on a blocking thread under a time limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::problem::{Item, Problem};
use crate::embedded::dead_letter::list;
use crate::embedded::Log;

/// Rows per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// Most rows per page.
pub const MAX_LIMIT: usize = 1000;
/// Bound on one page's database work.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// `Retry-After` when the log cannot be read now.
const RETRY_AFTER_SECONDS: u64 = 5;

/// The logs holding each connector's dead letters (connectors whose destination is embedded).
pub type DeadLetterLogs = HashMap<String, Arc<Log>>;

/// What `GET /dead-letters/{connector}` reads.
pub struct DeadLetterPages {
    /// Each connector's log.
    pub logs: DeadLetterLogs,
    /// Payload bytes of one page (`admin.dead_letters_max_page_bytes`).
    pub max_page_bytes: usize,
}

/// The page of dead letters after `after` (an id; 0 = from the start).
pub async fn handle(
    State(state): State<Arc<DeadLetterPages>>,
    Path(connector): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(log) = state.logs.get(&connector) else {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "no connector of this name keeps its dead letters in an embedded log",
        )
        .into_response();
    };
    let (after, limit) = match parse(query.as_deref()) {
        Ok(p) => p,
        Err((name, detail)) => {
            return Problem::new(StatusCode::BAD_REQUEST, "invalid query parameter")
                .with_errors([Item {
                    pointer: None,
                    header: None,
                    detail: format!("`{name}` {detail}"),
                }])
                .into_response()
        }
    };
    let read = list(log, &connector, after, limit, state.max_page_bytes);
    let (rows, more) = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(page)) => page,
        Ok(Err(e)) => {
            tracing::warn!(%connector, error = %e, "cannot read dead letters");
            return unavailable("the log cannot be read now");
        }
        Err(_) => return unavailable("reading the dead letters took too long"),
    };
    let next = (more)
        .then(|| {
            rows.last()
                .map(|r| format!("/dead-letters/{connector}?after={}&limit={limit}", r.id))
        })
        .flatten();
    Json(serde_json::json!({ "connector": connector, "value": rows, "next": next })).into_response()
}

fn unavailable(detail: &str) -> Response {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail)
        .retry_after(RETRY_AFTER_SECONDS)
        .into_response()
}

/// `after` (a non-negative id) and `limit` (1 to [`MAX_LIMIT`]); `Err((parameter, why))`.
fn parse(query: Option<&str>) -> Result<(i64, usize), (String, &'static str)> {
    let (mut after, mut limit) = (0, DEFAULT_LIMIT);
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*key {
            "after" => {
                after = (value.parse::<i64>().ok())
                    .filter(|a| *a >= 0)
                    .ok_or(("after".to_owned(), "must be a dead letter's id (0 or more)"))?
            }
            "limit" => {
                limit = (value.parse::<usize>().ok())
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or(("limit".to_owned(), "must be between 1 and 1000"))?
            }
            other => return Err((other.to_owned(), "is not a parameter (after, limit)")),
        }
    }
    Ok((after, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_bounded_and_named() {
        assert_eq!(parse(None), Ok((0, DEFAULT_LIMIT)));
        assert_eq!(parse(Some("after=7&limit=2")), Ok((7, 2)));
        assert_eq!(parse(Some("limit=1001")).unwrap_err().0, "limit");
        assert_eq!(parse(Some("limit=0")).unwrap_err().0, "limit");
        assert_eq!(parse(Some("after=-1")).unwrap_err().0, "after");
        assert_eq!(parse(Some("offset=1")).unwrap_err().0, "offset");
    }
}
