//! Serving the record resources of a log (`[sink.records]`): `GET {root}Property('235021')`
//! (one record, 404 when unknown or deleted) and `GET {root}Property?$filter=ListingKey eq
//! '…'` or `in ('…', …)` (at most [`MAX_KEYS`] keys), with the same tokens as the replay
//! resource. A record is the `Data` object of the latest event of its key, byte for byte, with
//! `@odata.context` in front.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::store::Log;
use crate::http::problem::Problem;
use crate::http::TokenSet;

/// Most keys one collection request may name.
pub const MAX_KEYS: usize = 100;

/// One served resource of one log.
pub struct RecordResource {
    /// The resource, e.g. `Property`.
    pub resource: String,
    /// Its key field, e.g. `ListingKey`.
    pub key_field: String,
    /// The log.
    pub log: Arc<Log>,
    /// Who may read.
    pub tokens: TokenSet,
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

/// A quoted OData string literal (`'K''5'` → `K'5`).
fn literal(text: &str) -> Option<String> {
    let inner = text.trim().strip_prefix('\'')?.strip_suffix('\'')?;
    let mut out = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' && chars.next() != Some('\'') {
            return None;
        }
        out.push(c);
    }
    Some(out)
}

/// Splits `('a', 'b')` into its literals (quotes respected).
fn list(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    let mut items = Vec::new();
    let (mut current, mut quoted) = (String::new(), false);
    for c in inner.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => items.push(literal(&std::mem::take(&mut current))?),
            _ => current.push(c),
        }
    }
    items.push(literal(&current)?);
    Some(items)
}

/// The keys a collection request asks for: `$filter=<key> eq '…'` or `<key> in (…)`.
fn keys(r: &RecordResource, query: Option<&str>) -> Result<(Vec<String>, Option<usize>), Problem> {
    let (mut filter, mut top) = (None, None);
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "$filter" if filter.is_none() => filter = Some(v.into_owned()),
            "$top" if top.is_none() => {
                top = Some(
                    v.parse::<usize>()
                        .map_err(|_| bad("$top", "must be a non-negative integer"))?,
                )
            }
            "$format" if v == "json" || v == "application/json" => {}
            other => {
                return Err(bad(
                    other,
                    "unsupported here (supported: $filter on the key, $top)",
                ))
            }
        }
    }
    let need = format!("`{0} eq '…'` or `{0} in ('…', …)` is required", r.key_field);
    let filter = filter.ok_or_else(|| bad("$filter", need.clone()))?;
    let rest = filter
        .trim()
        .strip_prefix(r.key_field.as_str())
        .ok_or_else(|| bad("$filter", need.clone()))?
        .trim_start();
    let keys = if let Some(v) = rest.strip_prefix("eq ") {
        vec![literal(v).ok_or_else(|| bad("$filter", need.clone()))?]
    } else if let Some(v) = rest.strip_prefix("in ") {
        list(v).ok_or_else(|| bad("$filter", need.clone()))?
    } else {
        return Err(bad("$filter", need));
    };
    if keys.len() > MAX_KEYS {
        return Err(bad(
            "$filter",
            format!("at most {MAX_KEYS} keys per request"),
        ));
    }
    Ok((keys, top))
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

async fn read(r: &RecordResource, keys: Vec<String>) -> Result<Vec<(String, Vec<u8>)>, Problem> {
    let resource = r.resource.clone();
    r.log
        .read(move |conn| super::records::read(conn, &resource, &keys))
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the records cannot be read right now; retry later",
            )
            .retry_after(5)
        })
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
        let found = read(&r, vec![key.clone()]).await?;
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
        let (keys, top) = keys(&r, query.as_deref())?;
        let mut found = read(&r, keys).await?;
        found.truncate(top.unwrap_or(MAX_KEYS));
        let mut body = Vec::new();
        body.push(b'{');
        if !no_metadata {
            body.extend_from_slice(
                format!("\"@odata.context\":\"$metadata#{}\",", r.resource).as_bytes(),
            );
        }
        body.extend_from_slice(b"\"value\":[");
        for (i, (_, data)) in found.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(data);
        }
        body.extend_from_slice(b"]}");
        Ok::<_, Problem>(super::metadata::odata_json(body, no_metadata))
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_lists_and_context() {
        assert_eq!(literal("'K''5'").as_deref(), Some("K'5"));
        assert_eq!(literal("'a'b'"), None);
        assert_eq!(
            list("('a', 'b,c')").unwrap(),
            vec!["a".to_owned(), "b,c".to_owned()]
        );
        assert!(list("('a', b)").is_none());
        assert_eq!(
            with_context("$metadata#Property/$entity", br#"{"ListPrice": 1.50}"#),
            br#"{"@odata.context":"$metadata#Property/$entity","ListPrice": 1.50}"#.to_vec()
        );
    }
}
