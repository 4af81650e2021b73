//! What an outbound request's answer means: deliver, wait and retry, or give up.
//!
//! The rules (RCP-28 "polite behaviour" plus ordinary HTTP semantics):
//!
//! - 2xx: delivered.
//! - 429 or 503 with `Retry-After` (delta-seconds or HTTP-date, capped): the consumer said when to
//!   come back, so the whole endpoint pauses until then and the same batch is retried.
//! - 408, 429, 5xx except 501, timeouts and connection errors: retry the same batch after the
//!   core retry engine's exponential backoff with full jitter ([`crate::runtime::retry`]).
//! - 401: the caller refreshes the token and retries once at once; if the fresh token is refused
//!   too, it is an authorization problem of the connector, not of the batch, and is retried
//!   with backoff like a 5xx (dead-lettering every batch because a secret is wrong would be worse).
//! - any other status (other 4xx, 501, 3xx — redirects are not followed): poison, never retried.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

/// What to do after one POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The consumer accepted the batch.
    Delivered,
    /// The consumer asked for a pause of the whole endpoint (429/503 + `Retry-After`).
    Throttled {
        /// How long, already capped.
        pause: Duration,
    },
    /// Retry the same batch after a backoff; `cause` is a metric label.
    Retry {
        /// Why (`status_5xx`, `status_429`, `status_408`, `unauthorized`).
        cause: &'static str,
    },
    /// The token was refused; refresh it and retry once.
    Unauthorized,
    /// The consumer refuses this batch for good.
    Poison,
}

/// Classifies an HTTP answer. `now` is the wall clock for HTTP-date `Retry-After` values.
pub fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    max_retry_after: Duration,
    now: SystemTime,
) -> Verdict {
    let code = status.as_u16();
    if status.is_success() {
        return Verdict::Delivered;
    }
    if code == 429 || code == 503 {
        if let Some(pause) = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now))
        {
            return Verdict::Throttled {
                pause: pause.min(max_retry_after),
            };
        }
    }
    match code {
        401 => Verdict::Unauthorized,
        408 => Verdict::Retry {
            cause: "status_408",
        },
        429 => Verdict::Retry {
            cause: "status_429",
        },
        501 => Verdict::Poison,
        500..=599 => Verdict::Retry {
            cause: "status_5xx",
        },
        _ => Verdict::Poison,
    }
}

/// Parses a `Retry-After` value: delta-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, and the obsolete forms). A date in the past means zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long digit strings saturate instead of failing.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The status class label of a metric (`2xx`, `4xx`, …).
pub fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_secs(600);

    fn headers(retry_after: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = retry_after {
            h.insert(http::header::RETRY_AFTER, v.parse().unwrap());
        }
        h
    }

    fn verdict(code: u16, retry_after: Option<&str>) -> Verdict {
        classify(
            StatusCode::from_u16(code).unwrap(),
            &headers(retry_after),
            CAP,
            SystemTime::now(),
        )
    }

    #[test]
    fn retry_after_delta_seconds_and_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 07:28:00
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // RFC 850 and asctime forms are accepted too; a past date means "now".
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:27:00 2015", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn throttling_pauses_and_is_capped() {
        assert_eq!(
            verdict(429, Some("2")),
            Verdict::Throttled {
                pause: Duration::from_secs(2)
            }
        );
        assert_eq!(
            verdict(503, Some("100000")),
            Verdict::Throttled { pause: CAP }
        );
        // Retry-After on other statuses is not a pause request.
        assert_eq!(
            verdict(500, Some("5")),
            Verdict::Retry {
                cause: "status_5xx"
            }
        );
        // 429 without (or with an unreadable) Retry-After backs off instead.
        assert_eq!(
            verdict(429, Some("later")),
            Verdict::Retry {
                cause: "status_429"
            }
        );
    }

    #[test]
    fn classification_table() {
        for ok in [200, 201, 202, 204] {
            assert_eq!(verdict(ok, None), Verdict::Delivered, "{ok}");
        }
        for retry in [408, 429, 500, 502, 503, 504, 507, 599] {
            assert!(
                matches!(verdict(retry, None), Verdict::Retry { .. }),
                "{retry}"
            );
        }
        for poison in [400, 403, 404, 405, 409, 413, 415, 422, 501, 301, 302, 307] {
            assert_eq!(verdict(poison, None), Verdict::Poison, "{poison}");
        }
        assert_eq!(verdict(401, None), Verdict::Unauthorized);
        assert_eq!(status_class(StatusCode::NOT_IMPLEMENTED), "5xx");
        assert_eq!(status_class(StatusCode::NO_CONTENT), "2xx");
    }
}
