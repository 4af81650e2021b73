//! entity-bridge: the RESO EntityEvent webhook protocol (RCP-28) at the edge of an event bus.
//!
//! A *connector* wires one source to one sink. The webhook source receives producer pushes and
//! hands each batch to a sink (Kafka today) that answers only once the events are durable; the
//! HTTP answer is derived from that (see `docs/delivery.md`).
//!
//! Module map:
//! - [`event`]: parse and validate EntityEvent payloads, keeping each event's raw JSON bytes.
//! - [`connector`]: the [`connector::Message`] that flows between source and sink, the
//!   [`connector::Sink`] trait and its error contract.
//! - [`config`]: layered configuration (defaults < `bridge.toml` < `connectors/*.toml` < env).
//! - [`secret`]: secrets by reference (`env` / `file`), masked everywhere.
//! - [`http`]: the webhook listener and the admin listener (`/metrics`, `/healthz`, `/readyz`).
//! - [`kafka`]: the Kafka sink and the Kafka source (rdkafka; one ordered lane per partition).
//! - [`push`]: the webhook (push) sink: RESO batches POSTed to a consumer, auth, rate limits,
//!   Retry-After, retries and dead letters (egress).
//! - [`amqp`]: the RabbitMQ sink and source (lapin), with publisher confirms and reconnects.
//! - [`embedded`]: the embedded durable event log (SQLite): sink, cursor source, retention,
//!   the `GET /EntityEvent` replay resource, generated webhook tokens.
//! - [`pump`]: the loop that moves batches from a pull source to a sink and settles them.
//! - [`resources`]: which `ResourceName`s a bus sink accepts (RESO Data Dictionary by default).
//! - [`metrics`]: every Prometheus metric of the process, in one registry.
//! - [`app`]: builds the running bridge from a config and shuts it down cleanly.

pub mod amqp;
pub mod app;
pub mod build;
pub mod config;
pub mod connector;
pub mod dead_letter;
pub mod embedded;
pub mod event;
pub mod feeds;
pub mod http;
pub mod hydrate;
pub mod kafka;
pub mod layers;
pub mod metrics;
pub mod outbound;
pub mod poll;
pub mod pump;
pub mod push;
pub mod resources;
pub mod retry;
pub mod routing;
pub mod runtime;
pub mod secret;
pub mod surface;
