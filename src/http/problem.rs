//! RFC 9457 `application/problem+json` answers.
//!
//! Every non-2xx answer of the webhook listener is a [`Problem`]: a short title, a detail fit
//! for the producer's logs, the failing items (JSON Pointers into the body, or a header name),
//! and `Retry-After` / `WWW-Authenticate` where the status calls for them. Internals (broker
//! addresses, librdkafka errors) never appear here; they go to the bridge's own log.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::event::Violation;

/// One failing item of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    /// JSON Pointer (RFC 6901) into the request body, when the item is in the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// Request header name, when the item is a header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// What is wrong with it.
    pub detail: String,
}

impl From<Violation> for Item {
    fn from(v: Violation) -> Self {
        Item {
            pointer: Some(v.pointer),
            header: None,
            detail: v.detail,
        }
    }
}

/// A problem answer.
#[derive(Debug, Clone)]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable explanation of this occurrence.
    pub detail: String,
    /// The failing items, if any.
    pub errors: Vec<Item>,
    /// `Retry-After` in seconds (429 / 503).
    pub retry_after_seconds: Option<u64>,
    /// Other response headers (e.g. `Accept-Encoding` with a 415, `Connection: close`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "<[Item]>::is_empty")]
    errors: &'a [Item],
}

impl Problem {
    /// A problem with a status and detail.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem {
            status,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after_seconds: None,
            headers: Vec::new(),
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Says `Connection: close`: the answer came before the request body was read, so the
    /// connection cannot carry another request (HTTP/2 drops the header; its streams are
    /// independent).
    pub fn close_connection(self) -> Self {
        self.header(header::CONNECTION, HeaderValue::from_static("close"))
    }

    /// Adds the failing items.
    pub fn with_errors(mut self, errors: impl IntoIterator<Item = Item>) -> Self {
        self.errors.extend(errors);
        self
    }

    /// Adds a `Retry-After`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = Body {
            kind: "about:blank",
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
            errors: &self.errors,
        };
        let json = serde_json::to_vec(&body).expect("problem serializes");
        let mut response = (self.status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // A challenge the caller set (RFC 6750 `invalid_token`) wins over the plain one.
            headers
                .entry(header::WWW_AUTHENTICATE)
                .or_insert(HeaderValue::from_static("Bearer realm=\"entity-bridge\""));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn problem_shape() {
        let p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "broker unavailable").retry_after(7);
        let r = p.into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 503);
        assert_eq!(v["title"], "Service Unavailable");
        assert!(v.get("errors").is_none());
    }

    #[test]
    fn unauthorized_carries_challenge() {
        let r = Problem::new(StatusCode::UNAUTHORIZED, "x").into_response();
        assert!(r.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
    }
}
