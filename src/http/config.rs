//! Configuration of the webhook source (one per connector; all share the webhook listener).

use serde::{Deserialize, Serialize};

use crate::secret::SecretRef;

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
    /// Largest accepted request body, after gzip decompression (413 above).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Requests processed at once before new ones get 429.
    #[serde(default = "default_max_in_flight_requests")]
    pub max_in_flight_requests: usize,
    /// Body bytes held by in-flight requests before new ones get 429.
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
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
}

impl Default for WebhookSourceConfig {
    fn default() -> Self {
        WebhookSourceConfig {
            path: None,
            tokens: Vec::new(),
            max_body_bytes: default_max_body_bytes(),
            max_in_flight_requests: default_max_in_flight_requests(),
            max_in_flight_bytes: default_max_in_flight_bytes(),
            overload_retry_after_seconds: default_overload_retry_after_seconds(),
            unavailable_retry_after_seconds: default_unavailable_retry_after_seconds(),
            coerce_numeric_record_key: false,
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
fn default_overload_retry_after_seconds() -> u64 {
    1
}
fn default_unavailable_retry_after_seconds() -> u64 {
    10
}

impl WebhookSourceConfig {
    /// The path this connector serves.
    pub fn route_path(&self, connector: &str) -> String {
        self.path
            .clone()
            .unwrap_or_else(|| format!("/webhooks/{connector}"))
    }

    /// Semantic checks; `Err((key, detail))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, d: &str| Err((k.to_owned(), d.to_owned()));
        if let Some(path) = &self.path {
            if !path.starts_with('/') || path.contains(['{', '}', '*', '?', '#']) {
                return err(
                    "path",
                    "must start with `/` and contain no `{`, `}`, `*`, `?` or `#`",
                );
            }
        }
        // No tokens is allowed: the bridge then generates one under `data_dir` on first start
        // (see `embedded::token`); there is never an open webhook.
        if self.max_body_bytes == 0 || self.max_body_bytes > u32::MAX as usize {
            return err("max_body_bytes", "must be between 1 and 4294967295");
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
