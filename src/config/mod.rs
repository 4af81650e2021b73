//! The bridge's configuration: structs that are the documentation, and their validation.
//!
//! Every struct here denies unknown keys and documents each field; durations carry their unit
//! in the name. Loading and layering (defaults < `bridge.toml` < `connectors/*.toml` < env)
//! lives in [`load`]; semantic checks that serde cannot express live in [`Config::validate`].

mod error;
mod load;
mod logs;
mod validate;

pub use error::ConfigError;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use load::{load, ConfigSources};

use crate::amqp::{AmqpSinkConfig, AmqpSourceConfig};
use crate::dead_letter::DeadLetterConfig;
use crate::embedded::{EmbeddedSinkConfig, EmbeddedSourceConfig};
use crate::http::WebhookSourceConfig;
use crate::kafka::KafkaSinkConfig;
use crate::kafka::KafkaSourceConfig;
use crate::layers::feeds::DedupeConfig;
use crate::poll::{EventsPollConfig, ResoPollConfig};
use crate::push::PushSinkConfig;
use crate::runtime::build::{BuildSink, BuildSource};
use crate::runtime::retry::RetryConfig;
use crate::runtime::Readiness;

/// The whole bridge: listeners, logging and the connectors.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The listener that receives webhook pushes for every webhook connector.
    #[serde(default)]
    pub http: HttpConfig,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz`. Keep it off the public network.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Logging output.
    #[serde(default)]
    pub log: LogConfig,
    /// Upper bound for a graceful shutdown: finishing in-flight requests and flushing sinks.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Directory for local state: embedded logs (relative `file`s are under it) and generated
    /// webhook tokens. A relative path is relative to the working directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The connectors by name; each `connectors/<name>.toml` file fills one entry.
    #[serde(default)]
    pub connectors: BTreeMap<String, ConnectorConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: HttpConfig::default(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
            data_dir: default_data_dir(),
            connectors: BTreeMap::new(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

fn default_shutdown_timeout_ms() -> u64 {
    30_000
}

/// The webhook listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port to listen on for webhook pushes.
    #[serde(default = "default_http_listen")]
    pub listen_addr: SocketAddr,
    /// Serve HTTPS from these PEM files (`[http.tls]`). Absent: plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::http::TlsConfig>,
    /// Time a request's body may take to arrive once its headers are read, on every route of
    /// the listener (pushes, the token endpoint, …) and every HTTP/2 stream: 408 and the
    /// connection closed beyond it, so a slow body frees its request slot and connection.
    #[serde(default = "default_body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    /// Connection limits and timeouts (`[http.connections]`).
    #[serde(default)]
    pub connections: crate::http::ConnectionsConfig,
    /// The listener's address as clients reach it (scheme, host, optional port and path
    /// prefix), e.g. `https://bridge.example.com`: absolute links the bridge hands out
    /// (`@odata.nextLink`) start with it. Absent: links are relative (`/EntityEvent?…`), never
    /// built from the request's `Host` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_base_url: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen_addr: default_http_listen(),
            public_base_url: None,
            tls: None,
            body_read_timeout_ms: default_body_read_timeout_ms(),
            connections: crate::http::ConnectionsConfig::default(),
        }
    }
}

fn default_body_read_timeout_ms() -> u64 {
    60_000
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

/// The admin listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address and port of the admin endpoints (`/metrics`, `/healthz`, `/readyz`, `/feeds`).
    /// Loopback by default; any other address needs `tokens`.
    #[serde(default = "default_admin_listen")]
    pub listen_addr: SocketAddr,
    /// Bearer tokens of the admin endpoints, by reference (`{ env = "…" }` or `{ file = "…" }`;
    /// several allow rotation). Required when `listen_addr` is not a loopback address. When set,
    /// every request needs one (401 without), except the orchestrator probes `/healthz` and
    /// `/readyz` and, with `metrics_without_token`, `/metrics`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<crate::secret::SecretRef>,
    /// Serve `/metrics` without a token, for a scraper that cannot send one. Off: Prometheus
    /// sends a token (`authorization` in its scrape config, see deploy/prometheus).
    #[serde(default)]
    pub metrics_without_token: bool,
    /// Largest page of `GET /dead-letters/{connector}` in payload bytes (a page ends early,
    /// with a `next` link, once it holds this much; a single larger dead letter is still
    /// served alone). 1024–268435456.
    #[serde(default = "default_dead_letters_max_page_bytes")]
    pub dead_letters_max_page_bytes: usize,
    /// Timeout of each sink's readiness probe behind `/readyz`.
    #[serde(default = "default_ready_timeout_ms")]
    pub ready_timeout_ms: u64,
    /// Time a request's body may take to arrive once its headers are read (408 and the
    /// connection closed beyond it).
    #[serde(default = "default_admin_body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    /// Connection limits and timeouts (`[admin.connections]`).
    #[serde(default = "crate::http::ConnectionsConfig::admin")]
    pub connections: crate::http::ConnectionsConfig,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen_addr: default_admin_listen(),
            tokens: Vec::new(),
            metrics_without_token: false,
            dead_letters_max_page_bytes: default_dead_letters_max_page_bytes(),
            ready_timeout_ms: default_ready_timeout_ms(),
            body_read_timeout_ms: default_admin_body_read_timeout_ms(),
            connections: crate::http::ConnectionsConfig::admin(),
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}

fn default_dead_letters_max_page_bytes() -> usize {
    4 << 20
}

fn default_admin_body_read_timeout_ms() -> u64 {
    10_000
}

fn default_ready_timeout_ms() -> u64 {
    3_000
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `entity_bridge=debug,rdkafka=warn`. `RUST_LOG` wins.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `text` for humans, `json` for log shippers.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// One connector: a source wired to a sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Where events come from.
    pub source: SourceConfig,
    /// Where events go.
    pub sink: SinkConfig,
    /// Backoff between retries of pull-based connectors (ignored by the webhook source, whose
    /// producers retry on 429 / 503).
    #[serde(default)]
    pub retry: RetryConfig,
    /// Whether this connector's readiness gates `/readyz` (`gate`, the default: not ready ⇒
    /// 503, the instance leaves its load balancer) or is only reported in the `/readyz` body and
    /// `entity_bridge_connector_state` (`report`): e.g. an egress connector running next to
    /// webhook ingress, so that a consumer outage does not take the ingress out of service.
    #[serde(default)]
    pub readiness: Readiness,
    /// Duplicate suppression by `EntityEventSequence` per feed (`[dedupe]`): an event its feed
    /// already delivered is acknowledged but not published again. Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe: Option<DedupeConfig>,
    /// Feeds (`EntityEventSource` labels, plus "no label") whose sequence this connector tracks
    /// and deduplicates; events of further feeds are published unchecked and counted under the
    /// feed `_other`. Bounds memory and metric series whatever labels producers send.
    #[serde(default = "crate::layers::feeds::default_max_tracked_feeds")]
    pub max_tracked_feeds: usize,
    /// Hours without an event after which a tracked feed is forgotten: its series leave
    /// `/metrics`, it leaves `GET /feeds`, and its slot under `max_tracked_feeds` is free for
    /// another label (0: never). Its dedupe store rows stay until the dedupe window drops them.
    #[serde(default = "crate::layers::feeds::default_evict_idle_feeds_after_hours")]
    pub evict_idle_feeds_after_hours: u64,
    /// Record hydration (`[hydrate]`): events without `Data` get their record fetched from the
    /// producer's API before they are published. Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hydrate: Option<crate::layers::hydrate::HydrateConfig>,
}

/// A connector's source, chosen by `type`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceConfig {
    /// RESO webhook pushes received over HTTP.
    Webhook(WebhookSourceConfig),
    /// RabbitMQ queues, consumed with manual acknowledgements.
    Amqp(AmqpSourceConfig),
    /// The embedded log, read from a named cursor.
    Embedded(EmbeddedSourceConfig),
    /// Kafka topics, consumed in a consumer group (egress).
    Kafka(KafkaSourceConfig),
    /// A producer's RESO `EntityEvent` resource, polled after a durable checkpoint.
    ResoPoll(ResoPollConfig),
    /// A producer's "events after sequence id" API, polled and mapped to EntityEvents.
    EventsPoll(EventsPollConfig),
}

impl SourceConfig {
    /// What builds this source's task; `None` for a webhook source (a route on the shared
    /// listener, not a task). New pull sources add one arm here.
    pub fn builder(&self) -> Option<&dyn BuildSource> {
        match self {
            SourceConfig::Webhook(_) => None,
            SourceConfig::Amqp(a) => Some(a),
            SourceConfig::Embedded(e) => Some(e),
            SourceConfig::Kafka(k) => Some(k),
            SourceConfig::ResoPoll(p) => Some(p),
            SourceConfig::EventsPoll(p) => Some(p),
        }
    }
}

impl ConnectorConfig {
    /// The dead-letter destinations this connector configures, with their keys.
    pub fn dead_letters(&self) -> Vec<(&'static str, &DeadLetterConfig)> {
        let mut out = Vec::new();
        if let Some(d) = self.sink.dead_letter() {
            out.push(("sink.dead_letter", d));
        }
        match &self.source {
            SourceConfig::Kafka(k) => {
                out.extend(k.dead_letter.iter().map(|d| ("source.dead_letter", d)))
            }
            SourceConfig::ResoPoll(ResoPollConfig(p))
            | SourceConfig::EventsPoll(EventsPollConfig(p)) => {
                out.extend(p.dead_letter.iter().map(|d| ("source.dead_letter", d)))
            }
            _ => {}
        }
        out
    }

    /// Where a source without a dead-letter destination of its own dead-letters: the webhook
    /// sink's, or an embedded sink's log (after `app::prepare`, whose `file` is resolved).
    pub fn sink_dead_letter(&self) -> Option<DeadLetterConfig> {
        match &self.sink {
            SinkConfig::Webhook(p) => Some(p.dead_letter.clone()),
            SinkConfig::Embedded(s) => Some(DeadLetterConfig::Embedded(
                crate::embedded::dead_letter::EmbeddedDeadLetterConfig {
                    file: s.file.clone(),
                    ..Default::default()
                },
            )),
            _ => None,
        }
    }

    /// The dead-letter destination the source uses: its own, or [`Self::sink_dead_letter`].
    pub fn source_dead_letter(&self) -> Option<DeadLetterConfig> {
        let own = match &self.source {
            SourceConfig::Kafka(k) => k.dead_letter.clone(),
            SourceConfig::ResoPoll(ResoPollConfig(p))
            | SourceConfig::EventsPoll(EventsPollConfig(p)) => p.dead_letter.clone(),
            _ => return None,
        };
        own.or_else(|| self.sink_dead_letter())
    }
}

impl SinkConfig {
    /// What builds this sink. New sinks add one arm here.
    pub fn builder(&self) -> &dyn BuildSink {
        match self {
            SinkConfig::Kafka(k) => k,
            SinkConfig::Amqp(a) => a,
            SinkConfig::Embedded(e) => e,
            SinkConfig::Webhook(p) => p.as_ref(),
        }
    }

    /// The sink's own dead-letter destination, if it has one (the webhook sink's): a source
    /// without one of its own dead-letters there.
    pub fn dead_letter(&self) -> Option<&DeadLetterConfig> {
        match self {
            SinkConfig::Webhook(p) => Some(&p.dead_letter),
            _ => None,
        }
    }
}

/// A connector's sink, chosen by `type`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkConfig {
    /// Apache Kafka (or any Kafka-protocol broker).
    Kafka(KafkaSinkConfig),
    /// RabbitMQ (AMQP 0-9-1) exchange, with publisher confirms.
    Amqp(AmqpSinkConfig),
    /// The embedded durable log (SQLite under `data_dir`).
    Embedded(EmbeddedSinkConfig),
    /// A remote consumer's RESO webhook endpoint (egress: POSTs, OAuth2, rate limits).
    Webhook(Box<PushSinkConfig>),
}
