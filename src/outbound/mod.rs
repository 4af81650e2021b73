//! The outbound HTTP client pieces any connector that calls a remote peer reuses: bearer
//! tokens (fixed or OAuth2 client credentials, [`auth`]), per-endpoint politeness (rate,
//! concurrency and `Retry-After` pauses, [`limit`]), what an answer means ([`answer`]: deliver,
//! pause, retry or give up) and answers read only up to a cap ([`capped`]). The webhook sink
//! is built from them, and so is the GET client ([`get`]) that poll sources and record
//! hydration read producers with.

pub mod answer;
pub mod auth;
pub mod capped;
pub mod config;
pub mod get;
pub mod limit;

pub use config::{AuthConfig, ClientAuth, LimitsConfig};

/// `value` percent-encoded for a URL query or path segment (spaces as `%20`, which OData
/// servers expect, never `+`).
pub fn percent_encode(value: &str) -> String {
    // `byte_serialize` writes a space as `+` and a literal `+` as `%2B`, so the swap is exact.
    form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A record key as the inside of an OData key literal in a URL (`'…'`): quotes doubled, then
/// percent-encoded.
pub fn odata_key(key: &str) -> String {
    percent_encode(&key.replace('\'', "''"))
}

/// `User-Agent` of every outbound request.
pub const USER_AGENT: &str = concat!("entity-bridge/", env!("CARGO_PKG_VERSION"));
