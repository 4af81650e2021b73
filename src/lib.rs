//! entity-bridge: the RESO EntityEvent webhook protocol (RCP-28) at the edge of an event bus.
//!
//! A *connector* wires one source to one sink. The webhook source receives producer pushes and
//! hands each batch to a sink (Kafka today) that answers only once the events are durable; the
//! HTTP answer is derived from that (see `docs/delivery.md`).
//!
//! Module map (every module; `docs/architecture.md` says more of each):
//!
//! Core, named by everything else:
//! - [`event`]: parse and validate EntityEvent payloads, keeping each event's raw JSON bytes.
//! - [`connector`]: the [`connector::Message`] that flows between source and sink, the
//!   [`connector::Sink`] / [`connector::Source`] traits and their error contract.
//! - [`runtime`]: what runs connectors: how parts are built ([`runtime::build`]), the pump
//!   that moves batches from a pull source to a sink ([`runtime::pump`]), the one retry engine
//!   ([`runtime::retry`]), each connector's health and the supervisor that restarts its task.
//! - [`dead_letter`]: where refused events go, and the trait each destination implements.
//! - [`routing`]: `{ResourceName}` / `{EntityEventSource}` templates of topics and keys.
//! - [`resources`]: which `ResourceName`s a bus sink accepts (RESO Data Dictionary by default).
//! - [`secret`]: secrets by reference (`env` / `file`), masked everywhere.
//! - [`metrics`]: every Prometheus metric of the process, in one registry.
//!
//! Sink layers, wrapped around every connector's sink ([`layers`]):
//! - [`layers::feeds`]: sequence tracking per feed and `[dedupe]` (outermost).
//! - [`layers::hydrate`]: fetches the record of events without `Data` (`[hydrate]`).
//! - [`layers::Observed`]: the publish metrics of each send (innermost).
//!
//! Buses and protocols (leaves):
//! - [`http`]: the listeners (webhook and admin), the webhook source, its token endpoint,
//!   JWT / JWKS checks and quotas.
//! - [`kafka`]: the Kafka sink and the Kafka source (rdkafka; one ordered lane per partition).
//! - [`amqp`]: the RabbitMQ sink and source (lapin), with publisher confirms and reconnects.
//! - [`embedded`]: the embedded durable event log (SQLite): sink, cursor source, retention,
//!   dead letters, the `GET /EntityEvent` replay resource and record resources, generated
//!   webhook tokens.
//! - [`push`]: the webhook (push) sink: RESO batches POSTed to a consumer, auth, rate limits,
//!   Retry-After, retries and dead letters (egress).
//! - [`poll`]: the poll sources (`reso_poll`, `events_poll`): a producer's event log read page
//!   by page after a durable checkpoint.
//! - [`outbound`]: the outbound HTTP pieces (auth, limits, answer classification) shared by
//!   `push`, `poll` and `hydrate`.
//!
//! Composition:
//! - [`config`]: layered configuration (defaults < `bridge.toml` < `connectors/*.toml` < env).
//! - [`app`]: checks a configuration (`preflight`), builds the running bridge and shuts it down.
//! - [`surface`]: the served routes, checked against `docs/openapi.yaml`.

pub mod amqp;
pub mod app;
pub mod config;
pub mod connector;
pub mod dead_letter;
pub mod embedded;
pub mod event;
pub mod http;
pub mod kafka;
pub mod layers;
pub mod metrics;
pub mod outbound;
pub mod poll;
pub mod push;
pub mod resources;
pub mod routing;
pub mod runtime;
pub mod secret;
pub mod surface;
