//! `[hydrate]`: fetching the record of every event that arrives without `Data`.

use serde::{Deserialize, Serialize};

use crate::outbound::config::check_url;
use crate::outbound::AuthConfig;

/// Record hydration of a connector: an event without `Data` gets its record fetched from the
/// producer and put into `Data` before it is published.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HydrateConfig {
    /// Where a record is fetched when the event has no usable `ResourceRecordUrl`, e.g.
    /// `https://api.example.com/odata/{ResourceName}('{ResourceRecordKey}')`. The key is
    /// percent-encoded, with `'` doubled as OData string literals want.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_template: Option<String>,
    /// Origins (`https://api.example.com`) whose `ResourceRecordUrl`s are fetched. An event's
    /// URL on any other origin is not fetched (the bridge would send its token there, or reach
    /// internal addresses a producer names): the template is used instead, or the event is
    /// refused. Default: the template's origin.
    #[serde(default)]
    pub record_url_origins: Vec<String>,
    /// Allow plain `http://` record URLs and `auth.token_url` on hosts other than loopback:
    /// the token then crosses the network in clear text (a private network only).
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// How the bridge authenticates to the producer's API (the same table as `[sink.auth]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Rate and concurrency towards the producer (`[hydrate.limits]`).
    #[serde(default)]
    pub limits: HydrateLimitsConfig,
    /// Time for one record request, body included.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Largest record accepted (after decompression); a larger one cannot be hydrated.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Deepest nesting of a fetched record (its object is level 2 inside the event).
    #[serde(default = "crate::event::default_max_json_depth")]
    pub max_json_depth: usize,
    /// Sends in which one record may fail (timeouts, 5xx, 429, 403) while others of its batch
    /// arrive before it is refused and its event dead-lettered (pull sources; the connector's
    /// `[retry]` backoff between sends). A webhook push gets one attempt and a 503.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Statuses that mean the record is gone: the event becomes a delete.
    #[serde(default = "default_gone_statuses")]
    pub gone_statuses: Vec<u16>,
    /// A 400 whose body contains this text also means gone (RESO servers answer a deleted or
    /// off-market record with 400 and a message such as "no longer available").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gone_400_contains: Option<String>,
}

/// Politeness towards the producer's record API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HydrateLimitsConfig {
    /// Most record requests per second (spaced evenly).
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: f64,
    /// Most record requests in flight at once.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Longest `Retry-After` honoured.
    #[serde(default = "default_max_retry_after_seconds")]
    pub max_retry_after_seconds: u64,
}

impl Default for HydrateLimitsConfig {
    fn default() -> Self {
        HydrateLimitsConfig {
            requests_per_second: default_requests_per_second(),
            max_concurrent_requests: default_max_concurrent_requests(),
            max_retry_after_seconds: default_max_retry_after_seconds(),
        }
    }
}

fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_max_record_bytes() -> usize {
    8 << 20
}
fn default_max_attempts() -> u32 {
    5
}
fn default_gone_statuses() -> Vec<u16> {
    vec![404, 410]
}
fn default_requests_per_second() -> f64 {
    20.0
}
fn default_max_concurrent_requests() -> usize {
    4
}
fn default_max_retry_after_seconds() -> u64 {
    600
}

/// The origin (`scheme://host:port`) of a URL, as compared with `record_url_origins`.
pub fn origin_of(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    matches!(url.scheme(), "http" | "https").then(|| url.origin().ascii_serialization())
}

impl HydrateConfig {
    /// The origins whose record URLs are fetched.
    pub fn allowed_origins(&self) -> Vec<String> {
        let mut origins: Vec<String> = (self.record_url_origins.iter())
            .filter_map(|o| origin_of(o))
            .collect();
        if self.record_url_origins.is_empty() {
            origins.extend(self.url_template.as_deref().and_then(origin_of));
        }
        origins
    }

    /// Semantic checks; `Err((key, detail))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, d: &str| Err((k.to_owned(), d.to_owned()));
        if let Some(t) = &self.url_template {
            let probe = t
                .replace("{ResourceName}", "Property")
                .replace("{ResourceRecordKey}", "k");
            if origin_of(&probe).is_none() || probe.contains(['{', '}']) {
                return err(
                    "url_template",
                    "must be an http(s) URL whose only placeholders are {ResourceName} and {ResourceRecordKey}",
                );
            }
            check_url("url_template", &probe, self.allow_insecure_http)?;
        }
        for o in &self.record_url_origins {
            if origin_of(o).is_none() {
                return err(
                    "record_url_origins",
                    "must be http(s) origins, e.g. \"https://api.example.com\"",
                );
            }
            check_url("record_url_origins", o, self.allow_insecure_http)?;
        }
        if let Some(AuthConfig::Oauth2 { token_url, .. }) = &self.auth {
            check_url("auth.token_url", token_url, self.allow_insecure_http)?;
        }
        if self.url_template.is_none() && self.record_url_origins.is_empty() {
            return err(
                "url_template",
                "is required unless record_url_origins names where ResourceRecordUrls may point",
            );
        }
        let l = &self.limits;
        if !(l.requests_per_second.is_finite()
            && (1.0 / 86_400.0..=1_000_000.0).contains(&l.requests_per_second))
        {
            return err(
                "limits.requests_per_second",
                "must be between 0.0000116 and 1000000",
            );
        }
        if !(1..=256).contains(&l.max_concurrent_requests) {
            return err(
                "limits.max_concurrent_requests",
                "must be between 1 and 256",
            );
        }
        if !(1..=86_400).contains(&l.max_retry_after_seconds) {
            return err(
                "limits.max_retry_after_seconds",
                "must be between 1 and 86400",
            );
        }
        if !(1..=crate::http::MAX_TIMEOUT_MS).contains(&self.request_timeout_ms) {
            return err(
                "request_timeout_ms",
                "must be between 1 and 86400000 (one day)",
            );
        }
        if !(1024..=1 << 30).contains(&self.max_record_bytes) {
            return err("max_record_bytes", "must be between 1024 and 1073741824");
        }
        if !(1..=crate::event::MAX_JSON_DEPTH_CEILING).contains(&self.max_json_depth) {
            return err("max_json_depth", crate::event::MAX_JSON_DEPTH_RANGE);
        }
        if !(1..=100).contains(&self.max_attempts) {
            return err("max_attempts", "must be between 1 and 100");
        }
        if self.gone_statuses.iter().any(|s| !(400..=499).contains(s)) {
            return err("gone_statuses", "must be 4xx statuses");
        }
        Ok(())
    }
}
