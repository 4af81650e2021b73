//! Egress: the webhook (push) sink that POSTs RESO EntityEvent payloads to a remote consumer.
//!
//! One role per file: [`config`] (what operators set), [`batch`] (RESO payloads from raw event
//! bytes, POST-sized chunks), [`peers`] (readiness from the traffic) and [`sink`] (the
//! [`crate::connector::Sink`] tying them together). The outbound HTTP pieces (auth, limits,
//! answer classification, capped reads) are the core's [`crate::outbound`], undeliverable
//! events go through the core [`crate::dead_letter`]. See `docs/delivery.md`, "Egress".

pub mod batch;
pub mod config;
pub mod peers;
pub mod sink;

pub use config::{AuthConfig, LimitsConfig, OnExhausted, PushRetryConfig, PushSinkConfig};
pub use sink::{PushBuildError, PushSink, USER_AGENT};
