//! A real local HTTP producer for the poll tests: a RESO `EntityEvent` resource
//! (`$filter=EntityEventSequence gt N`, `$orderby`, `$top`, server-driven paging with
//! `@odata.nextLink`) and an events-after-sequence-id API (`startAfterSequenceId`, `perPage`),
//! both behind an optional OAuth2 token check, with scripted misbehaviour: 429 with
//! `Retry-After`, and a page whose body breaks off halfway.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::receiver::OAuthPeer;

/// What the producer does with the next requests (one entry per request, then normal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehave {
    /// Answered normally.
    Pass,
    /// 429 with `Retry-After: <seconds>`.
    Throttle(u64),
    /// The page's body stops halfway (the connection breaks).
    BreakHalfway,
    /// A 200 whose body is JSON but not a page.
    NotAPage,
    /// A 200 whose body starts, then stalls for this many milliseconds.
    StallBody(u64),
    /// A 200 whose body is this many bytes of padding.
    Oversized(usize),
    /// The page answered as if the filter asked for everything: old events again (the RESO
    /// resource only).
    IgnoreFilter,
}

/// The producer's state, shared with the test.
pub struct ProducerState {
    /// RESO events, ascending by `EntityEventSequence`.
    pub events: Mutex<Vec<Value>>,
    /// Events-API events (native format), ascending by `sequenceId`.
    pub api_events: Mutex<Vec<Value>>,
    /// Most events the producer puts in one page, whatever was asked.
    pub server_page: usize,
    /// Scripted answers for the next event requests.
    pub script: Mutex<VecDeque<Misbehave>>,
    /// Every event request: when, path and query, and its status.
    pub requests: Mutex<Vec<(Instant, String, u16)>>,
    /// When set, requests need a bearer token this peer issued.
    pub oauth: Option<Arc<OAuthPeer>>,
    /// Records by `Resource('key')`, served at `/odata/Resource('key')`; absent ones are 404,
    /// and a record whose value is the string `"fail"` always answers 500.
    pub records: Mutex<std::collections::HashMap<String, Value>>,
    /// Scripted answers for the next record requests.
    pub record_script: Mutex<VecDeque<Misbehave>>,
    /// Every record request: what was asked and its status.
    pub record_requests: Mutex<Vec<(String, u16)>>,
    /// Pages sent gzip-compressed (the request accepted gzip).
    pub gzipped_pages: std::sync::atomic::AtomicUsize,
}

/// A running producer.
pub struct Producer {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Its state.
    pub state: Arc<ProducerState>,
}

impl Producer {
    /// Starts a producer serving at most `server_page` events per page.
    pub async fn start(server_page: usize, oauth: Option<Arc<OAuthPeer>>) -> Producer {
        let state = Arc::new(ProducerState {
            events: Mutex::default(),
            api_events: Mutex::default(),
            server_page,
            script: Mutex::default(),
            requests: Mutex::default(),
            oauth,
            records: Mutex::default(),
            record_script: Mutex::default(),
            record_requests: Mutex::default(),
            gzipped_pages: Default::default(),
        });
        let app = Router::new()
            .route("/odata/EntityEvent", get(reso))
            .route("/events/query", get(events_api))
            .route("/odata/{entity}", get(record))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Producer { base, state }
    }

    /// Appends RESO events `sequences` (key `K<seq % 3>`, resource Property).
    pub fn add_reso(&self, sequences: impl IntoIterator<Item = i64>) {
        let mut events = self.state.events.lock().unwrap();
        for s in sequences {
            events.push(json!({
                "EntityEventSequence": s,
                "ResourceName": "Property",
                "ResourceRecordKey": format!("K{}", s % 3),
                "Data": {"ListPrice": 100000 + s},
            }));
        }
    }

    /// Scripts the answers of the next event requests.
    pub fn script(&self, answers: &[Misbehave]) {
        self.state.script.lock().unwrap().extend(answers);
    }

    /// The event requests so far.
    pub fn requests(&self) -> Vec<(Instant, String, u16)> {
        self.state.requests.lock().unwrap().clone()
    }
}

/// A poll connector's `[source]` (and its `[source.dead_letter]` to the Kafka topic `dlq`) of
/// type `kind` reading `url`: 50 requests a second, `idle_interval_ms` after a short page, and
/// `extra` lines for the source.
pub fn poll_source(kind: &str, url: &str, idle_interval_ms: u64, dlq: &str, extra: &str) -> String {
    format!(
        "[source]\ntype = \"{kind}\"\nurl = \"{url}\"\nidle_interval_ms = {idle_interval_ms}\n{extra}\n\
         [source.limits]\nrequests_per_second = 50\n\
         [source.dead_letter]\ntype = \"kafka\"\nbootstrap_servers = \"{}\"\ntopic = \"{dlq}\"\n",
        crate::common::kafka()
    )
}

type Params = Query<Vec<(String, String)>>;

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Checks the token and runs the script; `Some(answer)` when the request is answered by them.
fn gate(state: &ProducerState, headers: &HeaderMap, what: String) -> Result<(), Box<Response>> {
    let log = |status: u16| {
        state
            .requests
            .lock()
            .unwrap()
            .push((Instant::now(), what.clone(), status))
    };
    if let Some(oauth) = &state.oauth {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !token.is_some_and(|t| oauth.accepts(t)) {
            log(401);
            return Err(Box::new(StatusCode::UNAUTHORIZED.into_response()));
        }
    }
    let next = state.script.lock().unwrap().pop_front();
    match next {
        Some(Misbehave::Throttle(seconds)) => {
            log(429);
            Err(Box::new(
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", seconds.to_string())],
                )
                    .into_response(),
            ))
        }
        Some(Misbehave::BreakHalfway) => {
            log(200);
            Err(Box::new(broken_body()))
        }
        Some(Misbehave::NotAPage) => {
            log(200);
            Err(Box::new(axum::Json(json!([1, 2, 3])).into_response()))
        }
        Some(Misbehave::StallBody(ms)) => {
            log(200);
            let start = futures::stream::once(async {
                Ok::<_, std::io::Error>(Bytes::from_static(b"{\"value\":["))
            });
            let stall = futures::stream::once(async move {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                Ok::<_, std::io::Error>(Bytes::from_static(b"]}"))
            });
            let body = axum::body::Body::from_stream(futures::StreamExt::chain(start, stall));
            Err(Box::new(
                ([("content-type", "application/json")], body).into_response(),
            ))
        }
        Some(Misbehave::Oversized(bytes)) => {
            log(200);
            let body = format!("{{\"value\":[],\"pad\":\"{}\"}}", "x".repeat(bytes));
            Err(Box::new(
                ([("content-type", "application/json")], body).into_response(),
            ))
        }
        Some(Misbehave::IgnoreFilter) => {
            log(200);
            Err(Box::new(StatusCode::CONTINUE.into_response()))
        }
        Some(Misbehave::Pass) | None => {
            log(200);
            Ok(())
        }
    }
}

/// A 200 whose JSON body breaks off halfway.
fn broken_body() -> Response {
    let half = Bytes::from_static(br#"{"value":[{"EntityEventSequence":1,"Resour"#);
    let chunks = futures::stream::iter(vec![
        Ok::<_, std::io::Error>(half),
        Err(std::io::Error::other("the producer broke off")),
    ]);
    (
        [("content-type", "application/json")],
        axum::body::Body::from_stream(chunks),
    )
        .into_response()
}

/// `EntityEventSequence gt N` of a `$filter`.
fn after(filter: Option<&str>) -> i64 {
    filter
        .and_then(|f| f.strip_prefix("EntityEventSequence gt "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

async fn reso(State(state): State<Arc<ProducerState>>, headers: HeaderMap, q: Params) -> Response {
    let what = format!("/odata/EntityEvent?{}", serde_urlencoded(&q.0));
    let mut ignore_filter = false;
    if let Err(answer) = gate(&state, &headers, what) {
        // The marker of `IgnoreFilter`: answer the page from the start.
        ignore_filter = answer.status() == StatusCode::CONTINUE;
        if !ignore_filter {
            return *answer;
        }
    }
    let events = state.events.lock().unwrap().clone();
    let top: usize = param(&q.0, "$top")
        .and_then(|t| t.parse().ok())
        .unwrap_or(usize::MAX);
    if param(&q.0, "$orderby") == Some("EntityEventSequence desc") {
        let newest: Vec<Value> = events.iter().rev().take(top).cloned().collect();
        return axum::Json(json!({"value": newest})).into_response();
    }
    let gt = param(&q.0, "$skiptoken")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| after(param(&q.0, "$filter")));
    let gt = if ignore_filter { 0 } else { gt };
    let matching: Vec<&Value> = events
        .iter()
        .filter(|e| e["EntityEventSequence"].as_i64().unwrap() > gt)
        .take(top)
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .take(state.server_page)
        .map(|e| (*e).clone())
        .collect();
    let mut body = json!({"@odata.context": "$metadata#EntityEvent", "value": page});
    if matching.len() > state.server_page {
        let last = page.last().unwrap()["EntityEventSequence"]
            .as_i64()
            .unwrap();
        // Relative, as many OData servers write it.
        body["@odata.nextLink"] = json!(format!("EntityEvent?$skiptoken={last}"));
    }
    let gzip = headers
        .get("accept-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    if !gzip {
        return axum::Json(body).into_response();
    }
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(body.to_string().as_bytes()).unwrap();
    state
        .gzipped_pages
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (
        [
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        encoder.finish().unwrap(),
    )
        .into_response()
}

async fn events_api(
    State(state): State<Arc<ProducerState>>,
    headers: HeaderMap,
    q: Params,
) -> Response {
    let what = format!("/events/query?{}", serde_urlencoded(&q.0));
    if let Err(answer) = gate(&state, &headers, what) {
        return *answer;
    }
    let gt: i64 = param(&q.0, "startAfterSequenceId")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let per_page: usize = param(&q.0, "perPage")
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
        .min(state.server_page);
    let events = state.api_events.lock().unwrap();
    let page: Vec<&Value> = events
        .iter()
        .filter(|e| e["sequenceId"].as_i64().unwrap() > gt)
        .take(per_page)
        .collect();
    axum::Json(json!({"data": page, "meta": {"perPage": per_page}})).into_response()
}

fn serde_urlencoded(q: &[(String, String)]) -> String {
    q.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `GET /odata/Resource('key')`: one record.
async fn record(
    State(state): State<Arc<ProducerState>>,
    axum::extract::Path(entity): axum::extract::Path<String>,
) -> Response {
    let log = |status: u16| {
        state
            .record_requests
            .lock()
            .unwrap()
            .push((entity.clone(), status))
    };
    let scripted = state.record_script.lock().unwrap().pop_front();
    if let Some(Misbehave::Throttle(seconds)) = scripted {
        log(429);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", seconds.to_string())],
        )
            .into_response();
    }
    let found = state.records.lock().unwrap().get(&entity).cloned();
    match found {
        Some(Value::String(s)) if s == "fail" => {
            log(500);
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Some(record) => {
            log(200);
            axum::Json(record).into_response()
        }
        None => {
            log(404);
            StatusCode::NOT_FOUND.into_response()
        }
    }
}
