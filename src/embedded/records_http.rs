//! Serving the record resources of a log (`[sink.records]`): `GET {root}Property('235021')`
//! (one record, 404 when unknown or deleted) and `GET {root}Property?$filter=ListingKey eq
//! '…'` or `in ('…', …)` (at most [`MAX_KEYS`](super::records_query::MAX_KEYS) keys), with the same tokens as the replay
//! resource. A record is the `Data` object of the latest event of its key, byte for byte, with
//! `@odata.context` in front.
//!
//! Reads run like replay pages ([`Reads`]: the log's slots, its query deadline, a blocking
//! thread for the read and the answer). A collection names each key once however often the
//! filter repeats it (first occurrence order); `$top` and `$skip` bound which keys are read,
//! and the answer holds records until `replay_max_page_bytes` is spent (one always fits), then
//! `@odata.nextLink` asks for the rest with `$skip`. (A filter of 100 copies of one 1 MiB key
//! answered 100 MiB.)

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::reads::Reads;
use super::records_query::{literal, parse_record_query, RecordQuery as Wanted};
use crate::http::problem::Problem;
use crate::http::TokenSet;

/// One served resource of one log.
pub struct RecordResource {
    /// The resource, e.g. `Property`.
    pub resource: String,
    /// Its key field, e.g. `ListingKey`.
    pub key_field: String,
    /// The log's bounded reads (shared with its replay resource).
    pub reads: Arc<Reads>,
    /// Who may read.
    pub tokens: TokenSet,
    /// The collection's URL for next links: `http.public_base_url` (or nothing), the service
    /// root, the resource.
    pub link_base: String,
}

fn bad(option: &str, detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        format!(
            "unsupported or invalid query option `{option}`: {}",
            detail.into()
        ),
    )
}

/// The keys a collection request asks for, or a 400 naming the option.
fn keys(r: &RecordResource, query: Option<&str>) -> Result<Wanted, Problem> {
    parse_record_query(&r.key_field, query).map_err(|e| bad(&e.option, e.detail))
}

/// `data` (an object's bytes) with `@odata.context` as its first member.
fn with_context(context: &str, data: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{{\"@odata.context\":{}",
        // Invariant: a `&str` always serializes to a JSON string.
        serde_json::to_string(context).expect("a str serializes")
    )
    .into_bytes();
    let body = data.trim_ascii();
    let inner = body.strip_prefix(b"{").unwrap_or(body).trim_ascii_start();
    if inner != b"}" {
        out.push(b',');
    }
    out.extend_from_slice(inner);
    out
}

/// `GET {root}<Resource>('<key>')`: the path parameter holds `'<key>')`.
pub async fn one(
    State(r): State<Arc<RecordResource>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response {
    let answer = async {
        let no_metadata = super::metadata::admit(&r.tokens, &headers)?;
        let key = key.strip_suffix(')').and_then(literal).ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "the key must be a quoted string, e.g. ('235021')",
            )
        })?;
        let resource = r.resource.clone();
        let wanted = [key.clone()];
        let found = (r.reads)
            .run(move |conn| super::records::read(conn, &resource, &wanted))
            .await?;
        let Some((_, data)) = found.into_iter().next() else {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no {} record `{key}` (never received with Data, or deleted)",
                    r.resource
                ),
            ));
        };
        let body = if no_metadata {
            data
        } else {
            with_context(&format!("$metadata#{}/$entity", r.resource), &data)
        };
        Ok::<_, Problem>(super::metadata::odata_json(body, no_metadata))
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// `GET {root}<Resource>?$filter=<key> eq|in …`.
pub async fn many(
    State(r): State<Arc<RecordResource>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let answer = async {
        let no_metadata = super::metadata::admit(&r.tokens, &headers)?;
        let wanted = keys(&r, query.as_deref())?;
        let me = r.clone();
        let body = (r.reads)
            .run(move |conn| me.collection(conn, &wanted, no_metadata))
            .await?;
        Ok::<_, Problem>(super::metadata::odata_json(body, no_metadata))
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

impl RecordResource {
    /// The collection answer for `wanted`, built within the byte budget.
    fn collection(
        &self,
        conn: &rusqlite::Connection,
        wanted: &Wanted,
        no_metadata: bool,
    ) -> rusqlite::Result<Vec<u8>> {
        let from = wanted.skip.min(wanted.keys.len());
        let until = match wanted.top {
            Some(top) => from.saturating_add(top).min(wanted.keys.len()),
            None => wanted.keys.len(),
        };
        let budget = self.reads.max_bytes;
        let mut body = Vec::new();
        body.push(b'{');
        if !no_metadata {
            body.extend_from_slice(
                format!("\"@odata.context\":\"$metadata#{}\",", self.resource).as_bytes(),
            );
        }
        body.extend_from_slice(b"\"value\":[");
        let start = body.len();
        // Keys are read one at a time, and reading stops when the budget is spent: memory is
        // the budget plus one record, whatever the filter names.
        let mut next = None;
        let mut served = 0;
        for (i, key) in wanted.keys[from..until].iter().enumerate() {
            let found = super::records::read(conn, &self.resource, std::slice::from_ref(key))?;
            let Some((_, data)) = found.into_iter().next() else {
                continue;
            };
            if served > 0 && body.len() - start + data.len() + 1 > budget {
                next = Some(from + i);
                break;
            }
            if served > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&data);
            served += 1;
        }
        body.push(b']');
        if let Some(skip) = next {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("$filter", &wanted.filter);
            if wanted.top.is_some() {
                query.append_pair("$top", &(until - skip).to_string());
            }
            query.append_pair("$skip", &skip.to_string());
            let link = format!("{}?{}", self.link_base, query.finish().replace("%24", "$"));
            body.extend_from_slice(b",\"@odata.nextLink\":");
            // Invariant: a `String` always serializes to a JSON string.
            body.extend_from_slice(&serde_json::to_vec(&link).expect("string serializes"));
        }
        body.push(b'}');
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_comes_first() {
        assert_eq!(
            with_context("$metadata#Property/$entity", br#"{"ListPrice": 1.50}"#),
            br#"{"@odata.context":"$metadata#Property/$entity","ListPrice": 1.50}"#.to_vec()
        );
    }
}
