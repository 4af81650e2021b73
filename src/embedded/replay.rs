//! The replay resource: `GET /EntityEvent` on the webhook listener, RESO's EntityEvent resource
//! served from the embedded log (RCP-28: providers SHOULD host it so consumers can replay).
//!
//! **Which sequence consumers see.** A log can be fed by several producers and connectors, and
//! producers retry, so their `EntityEventSequence` values are neither unique nor ordered in the
//! log. The resource therefore exposes the **log position** as `EntityEventSequence`: strictly
//! increasing, never reused, the key of `$filter=EntityEventSequence gt N` and of the paging.
//! Each event is otherwise the producer's event: every member's value is byte-for-byte what
//! was pushed (members are re-joined compactly), only the `EntityEventSequence` value is the
//! position, and the producer's own value is kept in the instance annotation
//! `@EntityBridge.SourceEntityEventSequence` (plus `@EntityBridge.EntityEventSource` when the
//! push had that header).
//!
//! Authorization: the bearer tokens of every webhook connector writing to the log, plus the
//! sink's `replay_tokens`, checked like the webhook's (constant time).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rusqlite::types::Value;
use rusqlite::Connection;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::odata::{parse_query, ReplayQuery};
use super::store::{Log, StoredEvent, EVENT_COLUMNS};
use super::EmbeddedError;
use crate::config::{Config, SinkConfig, SourceConfig};
use crate::http::problem::{Item, Problem};
use crate::http::TokenSet;
use crate::metrics::Metrics;

/// `Retry-After` of a 503 when the store cannot be read.
const UNAVAILABLE_RETRY_AFTER_SECONDS: u64 = 5;
/// Annotation carrying the producer's own `EntityEventSequence`.
pub const SOURCE_SEQUENCE_ANNOTATION: &str = "@EntityBridge.SourceEntityEventSequence";
/// Annotation carrying the push's `EntityEventSource` header.
pub const SOURCE_LABEL_ANNOTATION: &str = "@EntityBridge.EntityEventSource";

/// One log's replay resource.
struct Replay {
    connector: String,
    path: String,
    log: Arc<Log>,
    tokens: TokenSet,
    max_page: u64,
    metrics: Metrics,
}

/// One page of results.
struct Page {
    events: Vec<StoredEvent>,
    more: bool,
    count: Option<i64>,
}

/// Routes for every log with `replay = true`. `config` must be prepared ([`super::prepare`]):
/// files resolved, generated webhook tokens filled in.
pub async fn replay_router(config: &Config, metrics: &Metrics) -> Result<Router, EmbeddedError> {
    let mut logs: BTreeMap<PathBuf, (String, String, u64, Vec<crate::secret::SecretRef>)> =
        BTreeMap::new();
    for (name, connector) in &config.connectors {
        let SinkConfig::Embedded(sink) = &connector.sink else {
            continue;
        };
        if !sink.replay {
            continue;
        }
        let entry = logs.entry(sink.file.clone()).or_insert_with(|| {
            (
                name.clone(),
                sink.replay_path.clone(),
                sink.replay_max_page_size as u64,
                sink.replay_tokens.clone(),
            )
        });
        if let SourceConfig::Webhook(w) = &connector.source {
            entry.3.extend(w.tokens.iter().cloned());
        }
    }
    let mut router = Router::new();
    for (file, (connector, path, max_page, refs)) in logs {
        let secrets = refs
            .iter()
            .map(|r| r.resolve())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| EmbeddedError::Secret {
                connector: connector.clone(),
                source,
            })?;
        if secrets.is_empty() {
            return Err(EmbeddedError::NoReplayTokens { connector });
        }
        let log = Log::open_async(file)
            .await
            .map_err(|source| EmbeddedError::Log {
                connector: connector.clone(),
                source,
            })?;
        tracing::info!(%connector, %path, "replay resource ready");
        let state = Arc::new(Replay {
            connector,
            path: path.clone(),
            log,
            tokens: TokenSet::new(&secrets),
            max_page,
            metrics: metrics.clone(),
        });
        router = router.route(&path, get(handle).with_state(state));
    }
    Ok(router)
}

async fn handle(
    State(replay): State<Arc<Replay>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let response = match replay.serve(&headers, query.as_deref()).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    };
    replay
        .metrics
        .replay_request(&replay.connector, response.status().as_u16());
    response
}

impl Replay {
    async fn serve(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Response, Problem> {
        if !self.tokens.verify(headers.get(header::AUTHORIZATION)) {
            return Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "a valid `Authorization: Bearer <token>` header is required",
            ));
        }
        let q = parse_query(query).map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("unsupported or invalid query option `{}`", e.option),
            )
            .with_errors([Item {
                pointer: None,
                header: None,
                detail: e.to_string(),
            }])
        })?;
        let page_size = q.top.unwrap_or(u64::MAX).min(self.max_page);
        let query = q.clone();
        let page = self
            .log
            .read(move |conn| query_page(conn, &query, page_size))
            .await
            .map_err(|e| {
                tracing::warn!(connector = %self.connector, error = %e, "replay query failed");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the event log cannot be read right now; retry later",
                )
                .retry_after(UNAVAILABLE_RETRY_AFTER_SECONDS)
            })?;
        self.metrics
            .replay_events(&self.connector, page.events.len() as u64);
        let next = self.next_link(headers, &q, &page);
        let mut body = Vec::with_capacity(
            128 + page
                .events
                .iter()
                .map(|e| e.payload.len() + 64)
                .sum::<usize>(),
        );
        body.extend_from_slice(b"{\"@odata.context\":\"$metadata#EntityEvent\"");
        if let Some(count) = page.count {
            body.extend_from_slice(format!(",\"@odata.count\":{count}").as_bytes());
        }
        body.extend_from_slice(b",\"value\":[");
        for (i, event) in page.events.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            render_event(&mut body, event);
        }
        body.push(b']');
        if let Some(link) = next {
            body.extend_from_slice(b",\"@odata.nextLink\":");
            body.extend_from_slice(&serde_json::to_vec(&link).expect("string serializes"));
        }
        body.push(b'}');
        let mut response = (StatusCode::OK, body).into_response();
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; odata.metadata=minimal"),
        );
        h.insert("OData-Version", HeaderValue::from_static("4.0"));
        Ok(response)
    }

    /// Server-driven paging: the same query continued after the last position of this page.
    fn next_link(&self, headers: &HeaderMap, q: &ReplayQuery, page: &Page) -> Option<String> {
        let last = page.events.last()?.position;
        let returned = page.events.len() as u64;
        let remaining = match q.top {
            Some(top) if top <= returned => return None,
            Some(top) => Some(top - returned),
            None => None,
        };
        if !page.more {
            return None;
        }
        let mut link = String::new();
        if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
            let scheme = headers
                .get("x-forwarded-proto")
                .and_then(|h| h.to_str().ok())
                .filter(|p| *p == "https" || *p == "http")
                .unwrap_or("http");
            link.push_str(&format!("{scheme}://{host}"));
        }
        link.push_str(&self.path);
        link.push('?');
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(filter) = &q.filter {
            query.append_pair("$filter", filter);
        }
        if let Some(top) = remaining {
            query.append_pair("$top", &top.to_string());
        }
        if q.count {
            query.append_pair("$count", "true");
        }
        query.append_pair("$skiptoken", &last.to_string());
        // Keep `$` readable: it is allowed unencoded in a query (RFC 3986 sub-delims).
        link.push_str(&query.finish().replace("%24", "$"));
        Some(link)
    }
}

fn query_page(conn: &Connection, q: &ReplayQuery, page_size: u64) -> rusqlite::Result<Page> {
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
    if let Some(resource) = &q.resource {
        filter.push_str(" AND resource_name = ?3");
        params.push(Value::Text(resource.clone()));
    }
    if q.count {
        let sql = format!("SELECT count(*) FROM events WHERE {filter}");
        page.count = Some(conn.query_row(&sql, rusqlite::params_from_iter(&params), |r| r.get(0))?);
    }
    // The skiptoken continues after a position; `$skip` applied to the first page only.
    let offset = match q.skiptoken {
        Some(token) => {
            params[0] = Value::Integer(q.after.max(token));
            0
        }
        None => q.skip,
    };
    let n = params.len();
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE {filter} ORDER BY position LIMIT ?{} OFFSET ?{}",
        n + 1,
        n + 2
    );
    params.push(Value::Integer(
        page_size.saturating_add(1).min(i64::MAX as u64) as i64,
    ));
    params.push(Value::Integer(offset.min(i64::MAX as u64) as i64));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(&params), StoredEvent::from_row)?;
    page.events = rows.collect::<rusqlite::Result<_>>()?;
    if page.events.len() as u64 > page_size {
        page.events.truncate(page_size as usize);
        page.more = true;
    }
    Ok(page)
}

/// An event object's members in document order, values kept as raw JSON text.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// Writes `event` as served: the position as `EntityEventSequence`, the producer's values
/// otherwise untouched, the producer's sequence (and source label) as annotations.
pub fn render_event(out: &mut Vec<u8>, event: &StoredEvent) {
    let Ok(Members(members)) = serde_json::from_slice::<Members>(&event.payload) else {
        // Cannot happen for events validated at ingress; serve them as stored.
        out.extend_from_slice(&event.payload);
        return;
    };
    let json = |s: &str| serde_json::to_vec(s).expect("string serializes");
    out.push(b'{');
    out.extend_from_slice(&json(SOURCE_SEQUENCE_ANNOTATION));
    out.extend_from_slice(format!(":{}", event.sequence).as_bytes());
    if let Some(label) = &event.source_label {
        out.push(b',');
        out.extend_from_slice(&json(SOURCE_LABEL_ANNOTATION));
        out.push(b':');
        out.extend_from_slice(&json(label));
    }
    let mut has_sequence = false;
    for (key, value) in &members {
        out.push(b',');
        out.extend_from_slice(&json(key));
        out.push(b':');
        if key == "EntityEventSequence" {
            has_sequence = true;
            out.extend_from_slice(event.position.to_string().as_bytes());
        } else {
            out.extend_from_slice(value.get().as_bytes());
        }
    }
    if !has_sequence {
        out.extend_from_slice(format!(",\"EntityEventSequence\":{}", event.position).as_bytes());
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_swaps_the_sequence_and_keeps_everything_else() {
        let event = StoredEvent {
            position: 7,
            sequence: 1101,
            resource_name: "Property".into(),
            record_key: "235021".into(),
            source_label: Some("IDX Feed 123".into()),
            payload: br#"{ "EntityEventSequence": 1101, "ResourceName":"Property",
                "ResourceRecordKey":"235021", "Data": {"ListPrice": 450000.00, "X":[1, 2]} }"#
                .to_vec(),
        };
        let mut out = Vec::new();
        render_event(&mut out, &event);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            r#"{"@EntityBridge.SourceEntityEventSequence":1101,"@EntityBridge.EntityEventSource":"IDX Feed 123","EntityEventSequence":7,"ResourceName":"Property","ResourceRecordKey":"235021","Data":{"ListPrice": 450000.00, "X":[1, 2]}}"#
        );
    }
}
