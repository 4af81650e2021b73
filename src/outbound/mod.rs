//! The outbound HTTP client pieces any connector that calls a remote peer reuses: bearer
//! tokens (fixed or OAuth2 client credentials, [`auth`]), per-endpoint politeness (rate,
//! concurrency and `Retry-After` pauses, [`limit`]), what an answer means ([`answer`]: deliver,
//! pause, retry or give up) and answers read only up to a cap ([`capped`]). The webhook sink
//! is built from them; poll sources will be too.

pub mod answer;
pub mod auth;
pub mod capped;
pub mod config;
pub mod limit;

pub use config::{AuthConfig, ClientAuth, LimitsConfig};

/// `User-Agent` of every outbound request.
pub const USER_AGENT: &str = concat!("entity-bridge/", env!("CARGO_PKG_VERSION"));
