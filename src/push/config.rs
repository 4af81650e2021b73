//! Configuration of the webhook (push) sink: endpoint, batching, auth, limits, retry, dead letter.
//!
//! Kept apart from the sink so `entity-bridge check` can validate and print it without building
//! HTTP clients. Secrets (a fixed token, an OAuth2 client secret) are references only.

use serde::{Deserialize, Serialize};

use crate::outbound::config::check_url;

use crate::dead_letter::DeadLetterConfig;
pub use crate::outbound::{AuthConfig, ClientAuth, LimitsConfig};

/// POSTs batches of EntityEvents to a consumer's endpoint as RESO multi-valued payloads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSinkConfig {
    /// The consumer's endpoint that receives the POSTs: `https://`, or `http://` to a loopback
    /// host (or any host with `allow_insecure_http = true`). No credentials in the URL: the
    /// token goes in `auth`.
    pub url: String,
    /// Allow plain `http://` for `url` and `auth.token_url` to hosts other than loopback. The
    /// bearer token and client secret then cross the network in clear text: only for a
    /// private network (a compose file, a sidecar) where TLS is terminated elsewhere.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// `EntityEventSource` header sent with every POST. When unset, the label carried by the
    /// events (their `EntityEventSource` Kafka header) is sent, and a batch never mixes labels.
    #[serde(default)]
    pub entity_event_source: Option<String>,
    /// Most events in one POST.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// Most bytes of one POST body (envelope included). An event too large to fit alone is
    /// dead-lettered.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// How long a partition's partial batch may wait for more events before it is sent.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Bound on one POST, from connecting to the end of the answer; a timeout is retried.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Bound on establishing the TCP/TLS connection.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long the consumer endpoint, the token endpoint or the dead-letter destination may
    /// keep failing (no answer, 5xx, refused token) before the connector reports not ready.
    /// Any answer that is not a failure (2xx, 4xx, 429) clears it; an idle sink stays ready.
    #[serde(default = "default_not_ready_after_ms")]
    pub not_ready_after_ms: u64,
    /// How the bridge proves itself to the consumer (`Authorization: Bearer …`).
    pub auth: AuthConfig,
    /// Politeness limits of this endpoint, shared by every partition of the connector.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Retries, `Retry-After` handling and what happens when retrying does not help.
    #[serde(default)]
    pub retry: PushRetryConfig,
    /// Where batches that cannot be delivered go (poison answers, exhausted retries).
    pub dead_letter: DeadLetterConfig,
}

/// What to do with a batch whose retries lasted longer than `max_retry_duration_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExhausted {
    /// Keep retrying forever: the partition waits, order and completeness are preserved.
    #[default]
    Block,
    /// Write the batch to the dead-letter destination and move on.
    DeadLetter,
}

/// Retry policy of the webhook sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRetryConfig {
    /// Cap of the first backoff; each retry doubles the cap up to `max_backoff_ms`, and the
    /// actual wait is drawn uniformly from zero to the cap (full jitter).
    #[serde(default = "default_min_backoff_ms")]
    pub min_backoff_ms: u64,
    /// Largest backoff cap.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Longest `Retry-After` honoured; longer requests are cut to this.
    #[serde(default = "default_max_retry_after_seconds")]
    pub max_retry_after_seconds: u64,
    /// How long a batch may keep failing (5xx, timeouts, …) before `on_exhausted` applies.
    /// Time spent honouring `Retry-After` does not count.
    #[serde(default = "default_max_retry_duration_ms")]
    pub max_retry_duration_ms: u64,
    /// `block` (default: retry forever, keep order) or `dead_letter`.
    #[serde(default)]
    pub on_exhausted: OnExhausted,
}

impl PushRetryConfig {
    /// The webhook sink's backoff: the core engine's ([`crate::runtime::retry`]) with these bounds.
    pub fn backoff(&self) -> crate::runtime::retry::Backoff {
        crate::runtime::retry::Backoff::new(
            std::time::Duration::from_millis(self.min_backoff_ms),
            std::time::Duration::from_millis(self.max_backoff_ms),
        )
    }
}

impl Default for PushRetryConfig {
    fn default() -> Self {
        PushRetryConfig {
            min_backoff_ms: default_min_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            max_retry_after_seconds: default_max_retry_after_seconds(),
            max_retry_duration_ms: default_max_retry_duration_ms(),
            on_exhausted: OnExhausted::default(),
        }
    }
}

fn default_max_events() -> usize {
    100
}
fn default_max_bytes() -> usize {
    4 << 20
}
fn default_linger_ms() -> u64 {
    50
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_not_ready_after_ms() -> u64 {
    10_000
}
fn default_min_backoff_ms() -> u64 {
    500
}
fn default_max_backoff_ms() -> u64 {
    60_000
}
fn default_max_retry_after_seconds() -> u64 {
    600
}
fn default_max_retry_duration_ms() -> u64 {
    3_600_000
}

/// Slowest rate accepted: one per day. Slower rates once overflowed the period and panicked.
const MIN_RATE_PER_SECOND: f64 = 1.0 / 86_400.0;

fn check_rate(key: &str, rate: Option<f64>) -> Result<(), (String, String)> {
    match rate {
        Some(r) if !(r.is_finite() && (MIN_RATE_PER_SECOND..=1e6).contains(&r)) => Err((
            key.into(),
            "must be between 0.0000116 (one a day) and 1000000".into(),
        )),
        _ => Ok(()),
    }
}

impl PushSinkConfig {
    /// Semantic checks; `Err((key, detail))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        check_url("url", &self.url, self.allow_insecure_http)?;
        if let Some(label) = &self.entity_event_source {
            if label.is_empty() || label.chars().count() > 255 {
                return Err((
                    "entity_event_source".into(),
                    "must be 1 to 255 characters".into(),
                ));
            }
            if http::HeaderValue::from_str(label).is_err() {
                return Err((
                    "entity_event_source".into(),
                    "must be a valid HTTP header value".into(),
                ));
            }
        }
        if !(1..=10_000).contains(&self.max_events) {
            return Err(("max_events".into(), "must be between 1 and 10000".into()));
        }
        if self.max_bytes < 1024 {
            return Err(("max_bytes".into(), "must be at least 1024".into()));
        }
        if self.linger_ms > 60_000 {
            return Err(("linger_ms".into(), "must be at most 60000".into()));
        }
        if self.request_timeout_ms < 100 || self.connect_timeout_ms < 100 {
            return Err((
                "request_timeout_ms".into(),
                "request_timeout_ms and connect_timeout_ms must be at least 100".into(),
            ));
        }
        if self.not_ready_after_ms > 3_600_000 {
            return Err((
                "not_ready_after_ms".into(),
                "must be at most 3600000 (an hour)".into(),
            ));
        }
        if let AuthConfig::Oauth2 {
            token_url,
            client_id,
            grant_type,
            ..
        } = &self.auth
        {
            check_url("auth.token_url", token_url, self.allow_insecure_http)?;
            if client_id.is_empty() {
                return Err(("auth.client_id".into(), "must not be empty".into()));
            }
            if grant_type != "client_credentials" {
                return Err((
                    "auth.grant_type".into(),
                    "only `client_credentials` is supported (a producer has no user to log in)"
                        .into(),
                ));
            }
        }
        check_rate(
            "limits.requests_per_second",
            self.limits.requests_per_second,
        )?;
        check_rate("limits.events_per_second", self.limits.events_per_second)?;
        if !(1..=1024).contains(&self.limits.max_concurrent_requests) {
            return Err((
                "limits.max_concurrent_requests".into(),
                "must be between 1 and 1024".into(),
            ));
        }
        let r = &self.retry;
        if r.min_backoff_ms == 0 || r.max_backoff_ms < r.min_backoff_ms {
            return Err((
                "retry.max_backoff_ms".into(),
                "min_backoff_ms must be positive and at most max_backoff_ms".into(),
            ));
        }
        if r.max_retry_duration_ms == 0 {
            return Err((
                "retry.max_retry_duration_ms".into(),
                "must be positive".into(),
            ));
        }
        self.dead_letter
            .validate()
            .map_err(|(k, d)| (format!("dead_letter.{k}"), d))
    }

    /// A copy safe to print: secrets are references already; inline librdkafka values of the
    /// dead-letter producer that look secret are masked.
    pub fn masked(&self) -> Self {
        let mut copy = self.clone();
        copy.dead_letter = copy.dead_letter.masked();
        copy
    }
}

#[async_trait::async_trait]
impl crate::runtime::build::BuildSink for PushSinkConfig {
    async fn build_sink(
        &self,
        ctx: &crate::runtime::build::BuildContext,
    ) -> Result<std::sync::Arc<dyn crate::connector::Sink>, crate::runtime::build::BuildError> {
        let sink = self
            .build(&ctx.connector, ctx.metrics.clone(), ctx.stop.clone())
            .map_err(crate::runtime::build::BuildError::sink)?;
        Ok(std::sync::Arc::new(sink))
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
