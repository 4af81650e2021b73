//! The webhook source: RCP-28 pushes in, one sink batch per push, an honest answer out.
//!
//! Order of checks, cheapest first, so unauthenticated or malformed traffic costs little:
//! bearer token (401) → content type and coding (415) → in-flight request slot (429) → body,
//! read within the listener's `body_read_timeout_ms` (408, [`super::deadline`]), its declared and decoded size (413) and the
//! in-flight byte budget taken as it arrives (429) → `EntityEventSource` header and payload
//! validation (400) → `sink.send`. Every answer given before the body was read whole says
//! `Connection: close`, so a producer that reuses connections sees the answer, not a reset. The answer is 200 only after the sink confirmed every event; a sink that is
//! saturated gives 429 and an unreachable bus 503, both with `Retry-After`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::Semaphore;

use super::auth::TokenSet;
use super::body::{content_coding, BodyError, BodyLimits, BodyPool, ByteBudget};
use super::config::WebhookSourceConfig;
use super::problem::{Item, Problem};
use crate::connector::{count_by_resource, Message, RejectKind, SendReport, Sink, SinkError};
use crate::event::{parse_payload, ParseOptions, Payload};
use crate::metrics::Metrics;
use crate::secret::SecretError;

/// Longest accepted `EntityEventSource` header (RCP-28: String(255)).
pub const MAX_SOURCE_LABEL_CHARS: usize = 255;
const SOURCE_HEADER: &str = "EntityEventSource";

/// One webhook connector's request handling state.
pub struct WebhookConnector {
    name: String,
    tokens: TokenSet,
    sink: Arc<dyn Sink>,
    parse: ParseOptions,
    limits: BodyLimits,
    bodies: Arc<BodyPool>,
    requests: Arc<Semaphore>,
    bytes: ByteBudget,
    overload_retry_after: u64,
    unavailable_retry_after: u64,
    metrics: Metrics,
    /// Whether the answer says how many events were duplicates (`[dedupe]` configured).
    report_duplicates: bool,
    /// The connector's token endpoint's issuer: its access tokens are accepted too.
    issuer: Option<Arc<super::jwt::Issuer>>,
    /// Per-producer quotas.
    quotas: super::quota::Quotas,
    /// The token endpoint's configured client ids: only their tokens are accepted.
    clients: std::collections::HashSet<String>,
    /// An external identity provider whose tokens are accepted too.
    external: Option<Arc<super::jwks::ExternalIssuer>>,
}

impl WebhookConnector {
    /// Makes the answer say how many events of each push were duplicates (and conflicts, when
    /// any): `{"accepted": N, "duplicates": D}`. For connectors with `[dedupe]`.
    pub fn reporting_duplicates(mut self) -> Self {
        self.report_duplicates = true;
        self
    }

    /// Resolves the tokens and wires the connector to its sink.
    pub fn build(
        name: &str,
        config: &WebhookSourceConfig,
        sink: Arc<dyn Sink>,
        metrics: Metrics,
    ) -> Result<Self, SecretError> {
        let tokens = config
            .tokens
            .iter()
            .map(|t| t.resolve())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WebhookConnector {
            name: name.to_owned(),
            tokens: TokenSet::new(&tokens),
            sink,
            parse: ParseOptions {
                coerce_numeric_record_key: config.coerce_numeric_record_key,
                max_events: config.max_events_per_push,
                max_depth: config.max_json_depth,
                refuse_rendered_annotations: true,
            },
            limits: BodyLimits {
                max_bytes: config.max_body_bytes,
                max_ratio: config.max_decompression_ratio,
            },
            bodies: BodyPool::new(),
            requests: Arc::new(Semaphore::new(config.max_in_flight_requests)),
            bytes: ByteBudget::new(config.max_in_flight_bytes)
                .with_gauge(metrics.request_bytes_in_flight(name)),
            overload_retry_after: config.overload_retry_after_seconds,
            unavailable_retry_after: config.unavailable_retry_after_seconds,
            metrics,
            report_duplicates: false,
            issuer: None,
            quotas: super::quota::Quotas::new(&config.quotas, &config.producers()),
            clients: config.client_ids().into_iter().map(str::to_owned).collect(),
            external: None,
        })
    }

    /// Accepts the access tokens `issuer` issues (the connector's token endpoint).
    pub fn accepting_issued_tokens(mut self, issuer: Arc<super::jwt::Issuer>) -> Self {
        self.issuer = Some(issuer);
        self
    }

    /// Accepts the tokens of an external identity provider (`[source.jwt]`).
    pub fn accepting_external_tokens(mut self, issuer: Arc<super::jwks::ExternalIssuer>) -> Self {
        self.external = Some(issuer);
        self
    }

    fn overloaded(&self, detail: &str) -> Problem {
        self.metrics.request_rejected(&self.name, "overloaded");
        Problem::new(StatusCode::TOO_MANY_REQUESTS, detail).retry_after(self.overload_retry_after)
    }

    async fn process(&self, headers: HeaderMap, body: Body) -> Result<Response, Problem> {
        let producer = self.authorize(&headers).await?;
        let _producer_slot = (self.quotas.admit(&producer))
            .map_err(|over| self.over_quota(&producer, over).close_connection())?;
        if !is_json(&headers) {
            self.metrics
                .request_rejected(&self.name, "unsupported_media_type");
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
            )
            .with_errors([header_item(
                header::CONTENT_TYPE,
                "must be application/json",
            )])
            .close_connection());
        }
        let coding = content_coding(&headers).map_err(|coding| {
            self.metrics
                .request_rejected(&self.name, "unsupported_media_type");
            let detail = format!("content coding `{coding}` is not supported (gzip or identity)");
            Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, detail.clone())
                .with_errors([header_item(header::CONTENT_ENCODING, &detail)])
                .header(
                    header::ACCEPT_ENCODING,
                    header::HeaderValue::from_static("gzip, identity"),
                )
                .close_connection()
        })?;
        let _request_slot = self.requests.clone().try_acquire_owned().map_err(|_| {
            self.overloaded("too many requests in flight; retry later")
                .close_connection()
        })?;
        let in_flight = self.metrics.requests_in_flight(&self.name);
        in_flight.inc();
        let _in_flight = scopeguard(move || in_flight.dec());

        let read = self.bodies.read(body, coding, self.limits, &self.bytes);
        // The listener bounds the read (`body_read_timeout_ms`, see `http::deadline`).
        let (body, _byte_budget) = read.await.map_err(|e| self.body_problem(e))?;
        let source_label = source_label(&headers).inspect_err(|_| {
            self.metrics.request_rejected(&self.name, "invalid");
        })?;
        let payload = parse_payload(&body, self.parse).map_err(|e| {
            self.metrics.request_rejected(&self.name, "invalid");
            Problem::new(StatusCode::BAD_REQUEST, e.to_string())
                .with_errors(e.violations.into_iter().map(Item::from))
        })?;
        (self.quotas.admit_events(&producer, payload.len()))
            .map_err(|over| self.over_quota(&producer, over))?;
        let multi_valued = payload.multi_valued;
        let messages = to_messages(payload, source_label);
        count_by_resource(&messages, |resource, n| {
            self.metrics.events_received(&self.name, resource, n)
        });
        let report = if messages.is_empty() {
            SendReport::default()
        } else {
            self.sink
                .send_report(&messages)
                .await
                .map_err(|e| self.sink_problem(e, multi_valued))?
        };
        tracing::debug!(connector = %self.name, events = messages.len(), duplicates = report.duplicates, "push accepted");
        let mut answer = serde_json::json!({ "accepted": messages.len() });
        if self.report_duplicates {
            answer["duplicates"] = report.duplicates.into();
            if report.conflicts > 0 {
                answer["conflicts"] = report.conflicts.into();
            }
        }
        Ok(Json(answer).into_response())
    }

    fn body_problem(&self, error: BodyError) -> Problem {
        let (status, outcome) = match error {
            BodyError::TooLarge { .. } | BodyError::RatioExceeded { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            }
            BodyError::OverBudget => return self.overloaded(&error.to_string()).close_connection(),
            BodyError::Unreadable(_) => (StatusCode::BAD_REQUEST, "invalid"),
            BodyError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "timeout"),
        };
        self.metrics.request_rejected(&self.name, outcome);
        Problem::new(status, error.to_string()).close_connection()
    }

    fn sink_problem(&self, error: SinkError, multi_valued: bool) -> Problem {
        match error {
            SinkError::Rejected {
                index,
                field,
                detail,
                kind,
            } => {
                let mut pointer = if multi_valued {
                    format!("/value/{index}")
                } else {
                    String::new()
                };
                if let Some(field) = field {
                    pointer.push('/');
                    pointer.push_str(field);
                }
                let (status, outcome, title) = match kind {
                    RejectKind::Unroutable => (
                        StatusCode::BAD_REQUEST,
                        "unroutable",
                        "nothing was published",
                    ),
                    RejectKind::TooLarge => (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "nothing was published",
                    ),
                    RejectKind::Conflict => {
                        (StatusCode::CONFLICT, "conflict", "nothing was published")
                    }
                    RejectKind::Unfetchable => (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "unfetchable",
                        "nothing was published",
                    ),
                    // Found only once the batch was with the broker: say so, never "nothing".
                    RejectKind::RefusedBySink => (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "other events of this push may already be published (resend the push \
                         without this event; consumers deduplicate by EntityEventSequence)",
                    ),
                };
                self.metrics.request_rejected(&self.name, outcome);
                Problem::new(status, format!("{title}: {detail}")).with_errors([Item {
                    pointer: Some(pointer),
                    header: None,
                    detail,
                }])
            }
            SinkError::Overloaded { reason } => {
                tracing::info!(connector = %self.name, %reason, "sink overloaded; answering 429");
                self.overloaded("the bus is saturated; retry later")
            }
            SinkError::Unavailable { reason } => {
                tracing::warn!(connector = %self.name, %reason, "sink unavailable; answering 503");
                self.metrics.request_rejected(&self.name, "unavailable");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the events could not be made durable; nothing should be considered accepted, retry later",
                )
                .retry_after(self.unavailable_retry_after)
            }
        }
    }
}

/// The axum handler for `POST <path>`.
pub async fn handle(
    State(connector): State<Arc<WebhookConnector>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let response = match connector.process(headers, body).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    };
    connector.metrics.http_request(
        &connector.name,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

fn header_item(name: header::HeaderName, detail: &str) -> Item {
    Item {
        pointer: None,
        header: Some(name.as_str().to_owned()),
        detail: detail.to_owned(),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn source_label(headers: &HeaderMap) -> Result<Option<Arc<str>>, Problem> {
    let Some(value) = headers.get(SOURCE_HEADER) else {
        return Ok(None);
    };
    let bad = |detail: &str| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("header `{SOURCE_HEADER}` {detail}"),
        )
        .with_errors([Item {
            pointer: None,
            header: Some(SOURCE_HEADER.into()),
            detail: detail.into(),
        }])
    };
    let text = std::str::from_utf8(value.as_bytes()).map_err(|_| bad("must be UTF-8"))?;
    let text = text.trim();
    if text.chars().count() > MAX_SOURCE_LABEL_CHARS {
        return Err(bad("must be at most 255 characters"));
    }
    Ok((!text.is_empty()).then(|| Arc::from(text)))
}

fn to_messages(payload: Payload, source_label: Option<Arc<str>>) -> Vec<Message> {
    payload
        .events
        .into_iter()
        .map(|e| Message {
            delete: false,
            conflict: None,
            sequence: e.sequence,
            resource_name: e.resource_name,
            record_key: e.record_key,
            source_label: source_label.clone(),
            payload: e.raw,
            origin: None,
        })
        .collect()
}

/// Runs `f` when dropped (keeps gauges right on every exit path, including cancellation).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[path = "webhook_access.rs"]
mod access;

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!is_json(&h));
    }

    #[test]
    fn source_label_rules() {
        let mut h = HeaderMap::new();
        assert!(source_label(&h).unwrap().is_none());
        h.insert(SOURCE_HEADER, HeaderValue::from_static("IDX Feed 123"));
        assert_eq!(source_label(&h).unwrap().as_deref(), Some("IDX Feed 123"));
        h.insert(
            SOURCE_HEADER,
            HeaderValue::from_str(&"x".repeat(256)).unwrap(),
        );
        let p = source_label(&h).unwrap_err();
        assert_eq!(p.errors[0].header.as_deref(), Some(SOURCE_HEADER));
    }
}
