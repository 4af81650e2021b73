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
//! Authorization: the bearer tokens of the webhook connectors writing to the log (its own
//! connector, plus those configured to share it, `share_log`), and the sink's `replay_tokens`,
//! checked like the webhook's (constant time). A token opens only the logs its connector writes.
//!
//! Bounded per request and per log: a page holds at most `replay_max_page_size` events and
//! about `replay_max_page_bytes` bytes, stored and rendered; `$skip` is capped
//! (`replay_max_skip`); every read runs through the log's [`Reads`] (slots, a blocking thread
//! for the query and the rendering, the query deadline). Readers use their own WAL
//! connections, so a replay never blocks the writer. `@odata.nextLink` is relative, or built from
//! `http.public_base_url`; never from the request's `Host`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::odata::{parse_query, ReplayQuery};
use super::reads::Reads;
pub use super::render::render_event;
use super::replay_query::{query_page, Page, PageLimits};
use super::store::Log;
use super::EmbeddedError;
use super::EmbeddedSinkConfig;
use crate::http::problem::{Item, Problem};
use crate::http::TokenSet;
use crate::metrics::Metrics;

/// Annotation carrying the producer's own `EntityEventSequence`.
pub const SOURCE_SEQUENCE_ANNOTATION: &str = crate::event::RENDERED_ANNOTATIONS[0];
/// Annotation carrying the push's `EntityEventSource` header.
pub const SOURCE_LABEL_ANNOTATION: &str = crate::event::RENDERED_ANNOTATIONS[1];

/// One log's replay resource.
struct Replay {
    connector: String,
    path: String,
    /// The resources whose records the log serves, and the service root they are under.
    records: Vec<String>,
    root: String,
    /// `http.public_base_url` without its trailing `/`; empty: relative links.
    base: String,
    reads: Arc<Reads>,
    tokens: TokenSet,
    limits: PageLimits,
    max_skip: u64,
    /// Whether `ResourceRecordKey eq` has an index to read (`replay_index_record_keys`).
    keys_indexed: bool,
    metrics: Metrics,
}

/// A log whose replay resource is served: the first connector writing it, its settings and the
/// tokens of every writer (the composition root collects them, `app::replay`).
pub struct ReplayLog {
    /// The connector named in logs and metrics.
    pub connector: String,
    /// Its sink settings (every writer of a shared log has the same, `config::logs`).
    pub sink: EmbeddedSinkConfig,
    /// The tokens that may read it: `replay_tokens` plus every writer's webhook tokens.
    pub tokens: Vec<crate::secret::SecretRef>,
}

/// Routes for `logs`; `base` is `http.public_base_url` (trailing `/` trimmed) or empty.
pub async fn replay_router(
    logs: Vec<ReplayLog>,
    base: &str,
    metrics: &Metrics,
) -> Result<Router, EmbeddedError> {
    let mut router = Router::new();
    let mut roots = std::collections::HashSet::new();
    for ReplayLog {
        connector,
        sink,
        tokens: refs,
    } in logs
    {
        let file = sink.resolved_file();
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
        let routes = super::metadata::LogRoutes::of(&sink);
        let path = routes.collection.clone();
        tracing::info!(%connector, %path, "replay resource ready");
        // The OData service root of the log: its metadata and service documents. The first
        // log of a root serves them (give each log its own root, e.g. `/mls/EntityEvent`).
        let root = routes.root.clone();
        let served: Vec<(String, String)> = (routes.records.iter())
            .map(|r| (r.resource.clone(), r.key_field.clone()))
            .collect();
        // One set of read slots per log: replay pages and records share them.
        let reads = Arc::new(Reads::new(
            &connector,
            log,
            sink.replay_max_concurrent_requests,
            Duration::from_millis(sink.replay_query_timeout_ms),
            sink.replay_max_page_bytes,
        ));
        for r in &routes.records {
            let records = Arc::new(super::records_http::RecordResource {
                resource: r.resource.clone(),
                key_field: r.key_field.clone(),
                reads: reads.clone(),
                tokens: TokenSet::new(&secrets),
                link_base: format!("{base}{}", r.many),
            });
            router = router
                .route(
                    &r.one,
                    get(super::records_http::one).with_state(records.clone()),
                )
                .route(&r.many, get(super::records_http::many).with_state(records));
        }
        if roots.insert(root.clone()) {
            let docs = Arc::new(super::metadata::Documents {
                tokens: TokenSet::new(&secrets),
                entity_set: path[root.len()..].to_owned(),
                records: served.clone(),
            });
            router = router
                .route(
                    &routes.metadata(),
                    get(super::metadata::metadata).with_state(docs.clone()),
                )
                .route(&root, get(super::metadata::service).with_state(docs));
        } else {
            tracing::warn!(%connector, %path, %root, "another log already serves this service root's $metadata; give this log its own root (e.g. /<name>/EntityEvent)");
        }
        let state = Arc::new(Replay {
            connector,
            path: path.clone(),
            records: served.iter().map(|(r, _)| r.clone()).collect(),
            root: root.clone(),
            base: base.to_owned(),
            reads,
            tokens: TokenSet::new(&secrets),
            limits: PageLimits {
                events: sink.replay_max_page_size as u64,
                bytes: sink.replay_max_page_bytes,
            },
            max_skip: sink.replay_max_skip,
            keys_indexed: sink.replay_index_record_keys,
            metrics: metrics.clone(),
        });
        router = router
            .route(&routes.entity, get(handle_entity).with_state(state.clone()))
            .route(&path, get(handle).with_state(state));
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

/// `GET <path>(<key>)`: the path parameter holds the key and the closing parenthesis.
async fn handle_entity(
    State(replay): State<Arc<Replay>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let response = match replay.serve_entity(&headers, &key, query.as_deref()).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    };
    replay
        .metrics
        .replay_request(&replay.connector, response.status().as_u16());
    response
}

/// A refused query option: 400 naming it.
fn query_problem(e: super::odata::QueryError) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        format!("unsupported or invalid query option `{}`", e.option),
    )
    .with_errors([Item {
        pointer: None,
        header: None,
        detail: e.to_string(),
    }])
}

impl Replay {
    /// The bearer token and the OData request headers; whether the client asked for
    /// `odata.metadata=none`.
    fn check(&self, headers: &HeaderMap) -> Result<bool, Problem> {
        super::metadata::admit(&self.tokens, headers)
    }

    /// The page limits of `q`: the log's, and `$top`.
    fn page_limits(&self, q: &ReplayQuery) -> PageLimits {
        PageLimits {
            events: q.top.unwrap_or(u64::MAX).min(self.limits.events),
            ..self.limits
        }
    }

    async fn serve(
        self: &Arc<Self>,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Response, Problem> {
        let no_metadata = self.check(headers)?;
        let q = parse_query(query).map_err(query_problem)?;
        if q.skip > self.max_skip {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "unsupported or invalid query option `$skip`",
            )
            .with_errors([Item {
                pointer: None,
                header: None,
                detail: format!(
                    "`$skip`: at most {} (skipping is a scan); page with @odata.nextLink or \
                     $filter=EntityEventSequence gt N",
                    self.max_skip
                ),
            }]));
        }
        if q.record_key.is_some() && !self.keys_indexed {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "unsupported or invalid query option `$filter`",
            )
            .with_errors([Item {
                pointer: None,
                header: None,
                detail: "`ResourceRecordKey eq` is not available on this log: it does not \
                         index record keys (replay_index_record_keys = false)"
                    .into(),
            }]));
        }
        let me = self.clone();
        let (body, events) = (self.reads)
            .run(move |conn| {
                let page = query_page(conn, &q, me.page_limits(&q))?;
                Ok(me.render_page(&q, page, no_metadata))
            })
            .await?;
        self.metrics.replay_events(&self.connector, events);
        Ok(super::metadata::odata_json(body, no_metadata))
    }

    /// The answer body of `page` and how many of its events it holds: rendering stops once the
    /// rendered events pass the page's byte budget (one always fits), and the next link then
    /// continues after the last one rendered.
    fn render_page(&self, q: &ReplayQuery, mut page: Page, no_metadata: bool) -> (Vec<u8>, u64) {
        let budget = self.limits.bytes;
        let mut body = Vec::with_capacity(
            128 + (page.events.iter())
                .map(|e| e.payload.len() + 64)
                .sum::<usize>()
                .min(budget.saturating_add(4096)),
        );
        body.push(b'{');
        if !no_metadata {
            body.extend_from_slice(b"\"@odata.context\":\"$metadata#EntityEvent\",");
        }
        if let Some(count) = page.count {
            body.extend_from_slice(format!("\"@odata.count\":{count},").as_bytes());
        }
        body.extend_from_slice(b"\"value\":[");
        let start = body.len();
        let mut rendered = 0;
        for (i, event) in page.events.iter().enumerate() {
            let mark = body.len();
            if i > 0 {
                body.push(b',');
            }
            let url = self.record_url(event);
            render_event(&mut body, event, q.select.as_deref(), url.as_deref());
            if i > 0 && body.len() - start > budget {
                body.truncate(mark);
                page.more = true;
                break;
            }
            rendered = i + 1;
        }
        page.events.truncate(rendered);
        body.push(b']');
        if let Some(link) = self.next_link(q, &page) {
            body.extend_from_slice(b",\"@odata.nextLink\":");
            // Invariant: a `String` always serializes to a JSON string.
            body.extend_from_slice(&serde_json::to_vec(&link).expect("string serializes"));
        }
        body.push(b'}');
        (body, rendered as u64)
    }

    /// Where the log serves `event`'s record (`[sink.records]`), if it does.
    fn record_url(&self, event: &super::store::StoredEvent) -> Option<String> {
        if !self.records.contains(&event.resource_name) {
            return None;
        }
        let key = crate::outbound::odata_key(&event.record_key);
        Some(format!(
            "{}{}{}('{key}')",
            self.base, self.root, event.resource_name
        ))
    }

    /// Server-driven paging: the same query continued after the last position of this page.
    /// Relative unless `http.public_base_url` is set: the request's `Host` is not trusted.
    fn next_link(&self, q: &ReplayQuery, page: &Page) -> Option<String> {
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
        let mut link = self.base.clone();
        link.push_str(&self.path);
        link.push('?');
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(filter) = &q.filter {
            query.append_pair("$filter", filter);
        }
        if let Some(top) = remaining {
            query.append_pair("$top", &top.to_string());
        }
        if q.descending {
            query.append_pair("$orderby", "EntityEventSequence desc");
        }
        if let Some(select) = &q.select {
            query.append_pair("$select", &select.join(","));
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

#[path = "replay_entity.rs"]
mod entity;

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
