//! Configuration of the webhook source (one per connector; all share the webhook listener).

use serde::{Deserialize, Serialize};

use crate::secret::SecretRef;

pub use crate::event::{default_max_json_depth, MAX_JSON_DEPTH_CEILING, MAX_JSON_DEPTH_RANGE};

/// Receives RESO EntityEvent pushes (RCP-28) on `POST <path>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSourceConfig {
    /// URL path that receives pushes. Default: `/webhooks/<connector name>`.
    #[serde(default)]
    pub path: Option<String>,
    /// Bearer tokens accepted from producers, by reference (`{ env = "…" }` or
    /// `{ file = "…" }`). Several tokens allow rotation without downtime. When empty, a random
    /// token is generated on first start and kept in `<data_dir>/tokens/<connector>.token`.
    #[serde(default)]
    pub tokens: Vec<SecretRef>,
    /// An OAuth2 token endpoint (`POST <path>/token`, client credentials) for producers that
    /// need dynamic tokens; the access tokens it issues are accepted next to `tokens`. With it
    /// and no `tokens`, no token is generated: the issued tokens are the only way in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint: Option<super::TokenEndpointConfig>,
    /// Per-producer quotas (`[source.quotas."<producer>"]`): a producer is a fixed token
    /// (`token-1`, `token-2`, … in the order of `tokens`) or a token endpoint client
    /// (`client_id`); `"*"` applies to every producer without its own entry. Over its quota a
    /// producer gets 429 with a `Retry-After` from its own quota.
    /// Bearer JWTs of an external identity provider (`[source.jwt]`), checked against its
    /// JWKS, accepted next to `tokens`. For quotas, all of them together are the producer `jwt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<super::jwks::ExternalJwtConfig>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub quotas: std::collections::BTreeMap<String, super::quota::QuotaConfig>,
    /// Largest accepted request body, after gzip decompression (413 above; a larger declared
    /// `Content-Length` is refused before the body is read).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Requests processed at once before new ones get 429.
    #[serde(default = "default_max_in_flight_requests")]
    pub max_in_flight_requests: usize,
    /// Body bytes (after decompression) held by in-flight requests before new ones get 429. Taken
    /// as bodies arrive (a declared `Content-Length` up front), so it bounds the memory of
    /// request bodies.
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
    /// Largest ratio of decompressed to compressed size of a gzip body (413 above; the first
    /// 64 KiB are always allowed). JSON batches rarely pass 30; a gzip bomb passes 1000.
    #[serde(default = "default_max_decompression_ratio")]
    pub max_decompression_ratio: usize,
    /// `Retry-After` sent with 429 (this connector is overloaded).
    #[serde(default = "default_overload_retry_after_seconds")]
    pub overload_retry_after_seconds: u64,
    /// `Retry-After` sent with 503 (the bus is unreachable or did not confirm in time).
    #[serde(default = "default_unavailable_retry_after_seconds")]
    pub unavailable_retry_after_seconds: u64,
    /// Accept a JSON number as `ResourceRecordKey` (its literal text becomes the key; the
    /// event's bytes are unchanged). Off by default: RESO defines the key as a string.
    #[serde(default)]
    pub coerce_numeric_record_key: bool,
    /// Most events in one push, counted while the body is parsed (400 naming `/value/<n>` above;
    /// the producer splits the batch).
    #[serde(default = "default_max_events_per_push")]
    pub max_events_per_push: usize,
    /// Deepest nesting of objects and arrays in one event, the event object being level 1 (400
    /// naming the event above). The default keeps every event readable by consumers whose JSON
    /// parser stops at 128 levels (serde_json, many others).
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
}

impl Default for WebhookSourceConfig {
    fn default() -> Self {
        WebhookSourceConfig {
            path: None,
            tokens: Vec::new(),
            token_endpoint: None,
            quotas: Default::default(),
            jwt: None,
            max_body_bytes: default_max_body_bytes(),
            max_in_flight_requests: default_max_in_flight_requests(),
            max_in_flight_bytes: default_max_in_flight_bytes(),
            max_decompression_ratio: default_max_decompression_ratio(),
            overload_retry_after_seconds: default_overload_retry_after_seconds(),
            unavailable_retry_after_seconds: default_unavailable_retry_after_seconds(),
            coerce_numeric_record_key: false,
            max_events_per_push: default_max_events_per_push(),
            max_json_depth: default_max_json_depth(),
        }
    }
}

fn default_max_body_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_max_in_flight_requests() -> usize {
    256
}
fn default_max_in_flight_bytes() -> usize {
    256 * 1024 * 1024
}
fn default_max_events_per_push() -> usize {
    crate::event::DEFAULT_MAX_EVENTS
}
fn default_max_decompression_ratio() -> usize {
    200
}
fn default_overload_retry_after_seconds() -> u64 {
    1
}
fn default_unavailable_retry_after_seconds() -> u64 {
    10
}

/// What a configured URL path must look like ([`valid_route_path`]).
pub const ROUTE_PATH_RULE: &str = "must start with `/`, contain no `{`, `}`, `*`, `?` or `#`, \
     and have no segment starting with `:`";

/// A path the router serves literally: no pattern syntax (`{}`, `*`), no query or fragment,
/// and no segment starting with `:` (the router refuses those as old-style captures).
pub fn valid_route_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains(['{', '}', '*', '?', '#'])
        && !path.split('/').any(|segment| segment.starts_with(':'))
}

impl WebhookSourceConfig {
    /// The path this connector serves.
    pub fn route_path(&self, connector: &str) -> String {
        self.path
            .clone()
            .unwrap_or_else(|| format!("/webhooks/{connector}"))
    }

    /// The client ids of the token endpoint, if any.
    pub fn client_ids(&self) -> Vec<&str> {
        (self.token_endpoint.iter())
            .flat_map(|t| t.clients.iter().map(|c| c.client_id.as_str()))
            .collect()
    }

    /// Every producer a quota can name: `token-N` per fixed token, then the client ids.
    pub fn producers(&self) -> Vec<String> {
        let tokens = (0..self.tokens.len()).map(super::quota::token_producer);
        let external = self
            .jwt
            .as_ref()
            .map(|_| super::quota::EXTERNAL_PRODUCER.to_owned());
        tokens
            .chain(self.client_ids().into_iter().map(str::to_owned))
            .chain(external)
            .collect()
    }

    /// The token endpoint's path: `<path>/token`.
    pub fn token_path(&self, connector: &str) -> String {
        format!("{}/token", self.route_path(connector).trim_end_matches('/'))
    }

    /// Semantic checks; `Err((key, detail))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, d: &str| Err((k.to_owned(), d.to_owned()));
        if let Some(t) = &self.token_endpoint {
            t.validate()
                .map_err(|(k, d)| (format!("token_endpoint.{k}"), d))?;
        }
        if let Some(j) = &self.jwt {
            j.validate().map_err(|(k, d)| (format!("jwt.{k}"), d))?;
        }
        let mut named = self.client_ids();
        if self.jwt.is_some() {
            named.push(super::quota::EXTERNAL_PRODUCER);
        }
        super::quota::validate(&self.quotas, self.tokens.len(), &named)?;
        if let Some(path) = &self.path {
            if !valid_route_path(path) {
                return err("path", ROUTE_PATH_RULE);
            }
        }
        // No tokens is allowed: the bridge then generates one under `data_dir` on first start
        // (see `embedded::token`); there is never an open webhook.
        if self.max_body_bytes == 0 || self.max_body_bytes > u32::MAX as usize {
            return err("max_body_bytes", "must be between 1 and 4294967295");
        }
        if self.max_decompression_ratio < 2 {
            return err("max_decompression_ratio", "must be at least 2");
        }
        if self.max_events_per_push == 0 {
            return err("max_events_per_push", "must be at least 1");
        }
        if !(1..=MAX_JSON_DEPTH_CEILING).contains(&self.max_json_depth) {
            return err("max_json_depth", MAX_JSON_DEPTH_RANGE);
        }
        if self.max_in_flight_requests == 0 {
            return err("max_in_flight_requests", "must be at least 1");
        }
        if self.max_in_flight_bytes < self.max_body_bytes {
            return err(
                "max_in_flight_bytes",
                "must be at least max_body_bytes (or no request of the largest size could run)",
            );
        }
        Ok(())
    }
}

/// Connection limits and timeouts of a listener (`[http.connections]`, `[admin.connections]`).
/// They apply to plain HTTP/1.1, h2c and TLS alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Most connections open at once. Beyond it the listener stops accepting until one closes
    /// (new clients wait in the kernel's backlog, then time out), so file descriptors and memory
    /// stay bounded.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a client has to send a request's complete headers: from the connection's accept
    /// (TLS handshake included) for its first request, from its first byte for later ones.
    /// The connection is closed beyond it.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// How long a kept-alive connection may wait, with no request in flight, for its next
    /// request before it is closed.
    #[serde(default = "default_keep_alive_idle_timeout_ms")]
    pub keep_alive_idle_timeout_ms: u64,
    /// HTTP/2: interval of the PING that checks an open connection is still alive (`0` turns
    /// the PINGs off).
    #[serde(default = "default_http2_keep_alive_interval_ms")]
    pub http2_keep_alive_interval_ms: u64,
    /// HTTP/2: time a PING may wait for its answer before the connection is closed.
    #[serde(default = "default_http2_keep_alive_timeout_ms")]
    pub http2_keep_alive_timeout_ms: u64,
    /// HTTP/2: most concurrent streams (requests) one connection may open.
    #[serde(default = "default_http2_max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
    /// When the bridge closes a connection, how long it still reads (and drops) what the client
    /// sends, e.g. the rest of a body it answered early, so the answer is not lost to a reset.
    #[serde(default = "default_close_linger_ms")]
    pub close_linger_ms: u64,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max_connections: default_max_connections(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
            keep_alive_idle_timeout_ms: default_keep_alive_idle_timeout_ms(),
            http2_keep_alive_interval_ms: default_http2_keep_alive_interval_ms(),
            http2_keep_alive_timeout_ms: default_http2_keep_alive_timeout_ms(),
            http2_max_concurrent_streams: default_http2_max_concurrent_streams(),
            close_linger_ms: default_close_linger_ms(),
        }
    }
}

impl ConnectionsConfig {
    /// The admin listener's defaults: a scraper and a few probes need few connections.
    pub fn admin() -> Self {
        ConnectionsConfig {
            max_connections: 64,
            ..ConnectionsConfig::default()
        }
    }

    /// Semantic checks; `Err((key, detail))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, d: &str| Err((k.to_owned(), d.to_owned()));
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            return err("max_connections", "must be between 1 and 1000000");
        }
        for (key, ms) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            (
                "keep_alive_idle_timeout_ms",
                self.keep_alive_idle_timeout_ms,
            ),
            (
                "http2_keep_alive_timeout_ms",
                self.http2_keep_alive_timeout_ms,
            ),
        ] {
            if !(1..=MAX_TIMEOUT_MS).contains(&ms) {
                return err(key, "must be between 1 and 86400000 (one day)");
            }
        }
        if self.http2_keep_alive_interval_ms > MAX_TIMEOUT_MS {
            return err(
                "http2_keep_alive_interval_ms",
                "must be at most 86400000 (one day); 0 turns the PINGs off",
            );
        }
        if self.close_linger_ms > 60_000 {
            return err("close_linger_ms", "must be at most 60000");
        }
        if self.http2_max_concurrent_streams == 0 {
            return err("http2_max_concurrent_streams", "must be at least 1");
        }
        Ok(())
    }
}

/// Longest timeout accepted anywhere in the listener settings (one day).
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;

fn default_max_connections() -> usize {
    1024
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_keep_alive_idle_timeout_ms() -> u64 {
    75_000
}
fn default_http2_keep_alive_interval_ms() -> u64 {
    30_000
}
fn default_http2_keep_alive_timeout_ms() -> u64 {
    20_000
}
fn default_http2_max_concurrent_streams() -> u32 {
    128
}
fn default_close_linger_ms() -> u64 {
    2_000
}
