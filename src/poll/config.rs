//! Configuration of the poll sources: `type = "reso_poll"` (a remote RESO `EntityEvent`
//! resource) and `type = "events_poll"` (an "events after sequence id" API). Both share this
//! struct; only `events_poll` reads `[source.mapping]`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dead_letter::DeadLetterConfig;
use crate::outbound::config::check_url;
use crate::outbound::AuthConfig;

/// Polls a producer's event log over HTTP and hands each page to the sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollSourceConfig {
    /// The producer's endpoint: for `reso_poll` the `EntityEvent` resource
    /// (`https://api.example.com/odata/EntityEvent`), for `events_poll` the events query URL
    /// (`https://api.example.com/v1/integration_api/events/query`). `http` or `https`.
    pub url: String,
    /// Allow plain `http://` for `url` and `auth.token_url` to hosts other than loopback: the
    /// token then crosses the network in clear text (a private network only).
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// How the bridge authenticates (`[source.auth]`: a fixed token or OAuth2 client
    /// credentials). Absent: no `Authorization` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Request rate and politeness towards the producer (`[source.limits]`).
    #[serde(default)]
    pub limits: PollLimitsConfig,
    /// Most events asked for per request (`$top` / the events API's page size parameter).
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// Wait between polls once caught up (a page shorter than `page_size` without a next
    /// link). A full page is followed by the next request at once (within `limits`).
    #[serde(default = "default_idle_interval_ms")]
    pub idle_interval_ms: u64,
    /// Where a new feed starts: `"earliest"` (everything the producer retains), `"latest"`
    /// (only events after the newest one now; `reso_poll` only) or a sequence number (events
    /// after it). Ignored once a checkpoint exists: a restart always resumes from it.
    #[serde(default)]
    pub start: PollStart,
    /// Extra query parameters sent with every first-page request (e.g. an events API's
    /// `eventTypes`); the bridge's own parameters cannot be overridden.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Time for one request, from connecting to the last byte of the page.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Largest page accepted, after decompression; a larger one is an error (retried with
    /// backoff, `/readyz` degraded): lower `page_size` or raise this.
    #[serde(default = "default_max_page_bytes")]
    pub max_page_bytes: usize,
    /// Deepest nesting of objects and arrays in one event (the event object is level 1); a
    /// deeper event is dead-lettered as unparseable.
    #[serde(default = "crate::event::default_max_json_depth")]
    pub max_json_depth: usize,
    /// Where events the page holds but that are not valid EntityEvents (or that the sink
    /// refuses for good) go. Defaults to the webhook sink's `dead_letter`; required when the
    /// sink has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterConfig>,
    /// How an `events_poll` API's events become EntityEvents (`[source.mapping]`); its
    /// defaults fit the native event format of the events-after-sequence reference. Not
    /// allowed on `reso_poll`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<EventMapping>,
}

/// Politeness towards the producer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollLimitsConfig {
    /// Most requests per second (spaced evenly).
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: f64,
    /// Longest pause honoured from a `Retry-After` (a longer one is cut to this).
    #[serde(default = "default_max_retry_after_seconds")]
    pub max_retry_after_seconds: u64,
}

impl Default for PollLimitsConfig {
    fn default() -> Self {
        PollLimitsConfig {
            requests_per_second: default_requests_per_second(),
            max_retry_after_seconds: default_max_retry_after_seconds(),
        }
    }
}

/// Where a feed without a checkpoint starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PollStart {
    /// Everything the producer still retains.
    #[default]
    Earliest,
    /// Only events after the newest one at first start.
    Latest,
    /// Events after this sequence.
    After(i64),
}

impl Serialize for PollStart {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PollStart::Earliest => s.serialize_str("earliest"),
            PollStart::Latest => s.serialize_str("latest"),
            PollStart::After(n) => s.serialize_i64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for PollStart {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PollStart;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"earliest\", \"latest\" or a sequence number (0 or more)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PollStart, E> {
                match v {
                    "earliest" => Ok(PollStart::Earliest),
                    "latest" => Ok(PollStart::Latest),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PollStart, E> {
                if v < 0 {
                    return Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self));
                }
                Ok(PollStart::After(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PollStart, E> {
                i64::try_from(v)
                    .map(PollStart::After)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// How an events API is asked for a page and how its events map to EntityEvent fields. Field
/// locations are RFC 6901 JSON Pointers into one event (`/attributes/sequenceId` for the
/// Integration API format).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventMapping {
    /// Query parameter carrying the last sequence seen (events after it are returned).
    #[serde(default = "default_after_param")]
    pub after_param: String,
    /// Query parameter carrying `page_size`.
    #[serde(default = "default_page_size_param")]
    pub page_size_param: String,
    /// Where the array of events is in the answer (`""`: the answer is the array).
    #[serde(default = "default_events_pointer")]
    pub events: String,
    /// The event's sequence id (an integer or a string of digits) → `EntityEventSequence`.
    #[serde(default = "default_sequence_pointer")]
    pub sequence: String,
    /// The event's type → `EntityEventType` (optional in an event).
    #[serde(default = "default_event_type_pointer")]
    pub event_type: String,
    /// The resource type → `ResourceName` (an OData identifier, e.g. `listing`).
    #[serde(default = "default_resource_name_pointer")]
    pub resource_name: String,
    /// The resource id → `ResourceRecordKey` (a string, or a number taken as its text).
    #[serde(default = "default_record_key_pointer")]
    pub record_key: String,
    /// The resource after the event → `Data`; `null` or missing means the record was deleted.
    #[serde(default = "default_data_pointer")]
    pub data: String,
    /// Event types to pass (exact, or a prefix ending in `*` such as `listing/*`); empty: every
    /// type, including types the producer adds later. Others are skipped (counted, not an
    /// error).
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Keep the producer's event, untouched, in `@EntityBridge.OriginalEvent` (previous values,
    /// audit data, timestamps).
    #[serde(default = "default_true")]
    pub keep_original: bool,
}

impl Default for EventMapping {
    fn default() -> Self {
        EventMapping {
            after_param: default_after_param(),
            page_size_param: default_page_size_param(),
            events: default_events_pointer(),
            sequence: default_sequence_pointer(),
            event_type: default_event_type_pointer(),
            resource_name: default_resource_name_pointer(),
            record_key: default_record_key_pointer(),
            data: default_data_pointer(),
            event_types: Vec::new(),
            keep_original: true,
        }
    }
}

/// Most events one request may ask for.
pub const MAX_PAGE_SIZE: usize = 10_000;

fn default_page_size() -> usize {
    100
}
fn default_idle_interval_ms() -> u64 {
    30_000
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_max_page_bytes() -> usize {
    32 << 20
}
fn default_requests_per_second() -> f64 {
    2.0
}
fn default_max_retry_after_seconds() -> u64 {
    600
}
fn default_after_param() -> String {
    "startAfterSequenceId".into()
}
fn default_page_size_param() -> String {
    "perPage".into()
}
fn default_events_pointer() -> String {
    "/data".into()
}
fn default_sequence_pointer() -> String {
    "/sequenceId".into()
}
fn default_event_type_pointer() -> String {
    "/eventType".into()
}
fn default_resource_name_pointer() -> String {
    "/resourceType".into()
}
fn default_record_key_pointer() -> String {
    "/resourceId".into()
}
fn default_data_pointer() -> String {
    "/resource".into()
}
fn default_true() -> bool {
    true
}

/// Query parameters the RESO poll sets itself.
const RESO_PARAMS: &[&str] = &["$filter", "$orderby", "$top", "$skip"];

impl PollSourceConfig {
    /// Semantic checks; `reso` for `reso_poll`. `Err((key, detail))`.
    pub fn validate(&self, reso: bool) -> Result<(), (String, String)> {
        let err = |k: &str, d: &str| Err((k.to_owned(), d.to_owned()));
        check_url("url", &self.url, self.allow_insecure_http)?;
        if let Some(AuthConfig::Oauth2 { token_url, .. }) = &self.auth {
            check_url("auth.token_url", token_url, self.allow_insecure_http)?;
        }
        if !(1..=MAX_PAGE_SIZE).contains(&self.page_size) {
            return err("page_size", "must be between 1 and 10000");
        }
        for (key, ms) in [
            ("idle_interval_ms", self.idle_interval_ms),
            ("request_timeout_ms", self.request_timeout_ms),
        ] {
            if !(1..=crate::http::MAX_TIMEOUT_MS).contains(&ms) {
                return err(key, "must be between 1 and 86400000 (one day)");
            }
        }
        if !(1024..=1 << 30).contains(&self.max_page_bytes) {
            return err("max_page_bytes", "must be between 1024 and 1073741824");
        }
        let rps = self.limits.requests_per_second;
        if !(rps.is_finite() && (1.0 / 86_400.0..=1_000.0).contains(&rps)) {
            return err(
                "limits.requests_per_second",
                "must be between 0.0000116 (one a day) and 1000",
            );
        }
        if !(1..=86_400).contains(&self.limits.max_retry_after_seconds) {
            return err(
                "limits.max_retry_after_seconds",
                "must be between 1 and 86400",
            );
        }
        if !(1..=crate::event::MAX_JSON_DEPTH_CEILING).contains(&self.max_json_depth) {
            return err("max_json_depth", crate::event::MAX_JSON_DEPTH_RANGE);
        }
        if let Some(dl) = &self.dead_letter {
            dl.validate()
                .map_err(|(k, d)| (format!("dead_letter.{k}"), d))?;
        }
        if reso {
            if self.mapping.is_some() {
                return err("mapping", "applies to type = \"events_poll\" only");
            }
            if let Some(k) = self
                .query
                .keys()
                .find(|k| RESO_PARAMS.contains(&k.as_str()))
            {
                return Err((format!("query.\"{k}\""), "is set by the bridge".into()));
            }
        } else {
            if self.start == PollStart::Latest {
                return err(
                    "start",
                    "\"latest\" needs a way to ask for the newest event, which an events API \
                     lacks: give a sequence number (events after it) or \"earliest\"",
                );
            }
            let m = self.mapping.clone().unwrap_or_default();
            for (key, pointer) in [
                ("events", &m.events),
                ("sequence", &m.sequence),
                ("event_type", &m.event_type),
                ("resource_name", &m.resource_name),
                ("record_key", &m.record_key),
                ("data", &m.data),
            ] {
                if !pointer.is_empty() && !pointer.starts_with('/') {
                    return Err((
                        format!("mapping.{key}"),
                        "must be a JSON Pointer (RFC 6901), e.g. \"/sequenceId\"".into(),
                    ));
                }
            }
            for (key, param) in [
                ("after_param", &m.after_param),
                ("page_size_param", &m.page_size_param),
            ] {
                if param.is_empty() {
                    return Err((format!("mapping.{key}"), "must not be empty".into()));
                }
                if self.query.contains_key(param) {
                    return Err((format!("query.\"{param}\""), "is set by the bridge".into()));
                }
            }
        }
        Ok(())
    }

    /// A copy safe to print.
    pub fn masked(&self) -> Self {
        let mut copy = self.clone();
        copy.dead_letter = self.dead_letter.as_ref().map(DeadLetterConfig::masked);
        copy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<PollSourceConfig, String> {
        toml::from_str(toml).map_err(|e| e.to_string())
    }

    #[test]
    fn start_is_a_word_or_a_sequence() {
        let c = parse("url = \"https://x.example/EntityEvent\"").unwrap();
        assert_eq!(c.start, PollStart::Earliest);
        let c = parse("url = \"https://x\"\nstart = \"latest\"").unwrap();
        assert_eq!(c.start, PollStart::Latest);
        let c = parse("url = \"https://x\"\nstart = 1200").unwrap();
        assert_eq!(c.start, PollStart::After(1200));
        assert!(parse("url = \"https://x\"\nstart = -1").is_err());
        let e = parse("url = \"https://x\"\nstart = \"newest\"").unwrap_err();
        assert!(
            e.contains("\"earliest\", \"latest\" or a sequence number"),
            "{e}"
        );
    }

    #[test]
    fn validation_names_the_key() {
        let c = parse("url = \"https://x.example/EntityEvent\"").unwrap();
        c.validate(true).unwrap();
        c.validate(false).unwrap();
        let bad = |toml: &str, reso: bool| parse(toml).unwrap().validate(reso).unwrap_err().0;
        assert_eq!(bad("url = \"ftp://x\"", true), "url");
        assert_eq!(bad("url = \"http://mls.example/EntityEvent\"", true), "url");
        parse("url = \"http://mls.example/EntityEvent\"\nallow_insecure_http = true")
            .unwrap()
            .validate(true)
            .unwrap();
        assert_eq!(bad("url = \"https://x\"\npage_size = 0", true), "page_size");
        assert_eq!(
            bad(
                "url = \"https://x\"\n[limits]\nrequests_per_second = 0.0",
                true
            ),
            "limits.requests_per_second"
        );
        assert_eq!(bad("url = \"https://x\"\n[mapping]\n", true), "mapping");
        assert_eq!(
            bad("url = \"https://x\"\n[query]\n\"$top\" = \"5\"", true),
            "query.\"$top\""
        );
        assert_eq!(
            bad("url = \"https://x\"\nstart = \"latest\"", false),
            "start"
        );
        assert_eq!(
            bad("url = \"https://x\"\n[mapping]\nsequence = \"seq\"", false),
            "mapping.sequence"
        );
        assert_eq!(
            bad("url = \"https://x\"\n[query]\nperPage = \"5\"", false),
            "query.\"perPage\""
        );
    }
}
