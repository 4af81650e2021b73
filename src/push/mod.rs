//! Egress: the webhook (push) sink that POSTs RESO EntityEvent payloads to a remote consumer.
//!
//! One role per file: [`config`] (what operators set), [`batch`] (RESO payloads from raw event
//! bytes, POST-sized chunks), [`auth`] (fixed token or OAuth2 client credentials), [`capped`] (remote answers read up to a cap),
//! [`limit`]
//! (per-endpoint rate, concurrency and `Retry-After` pause), [`retry`] (answer classification),
//! [`peers`] (readiness from the traffic) and [`sink`] (the [`crate::connector::Sink`] tying
//! them together). Undeliverable events go through the core [`crate::dead_letter`]. See
//! `docs/delivery.md`, "Egress".

pub mod auth;
pub mod batch;
pub mod capped;
pub mod config;
pub mod limit;
pub mod peers;
pub mod retry;
pub mod sink;

pub use config::{AuthConfig, LimitsConfig, OnExhausted, PushRetryConfig, PushSinkConfig};
pub use sink::{PushBuildError, PushSink, USER_AGENT};
