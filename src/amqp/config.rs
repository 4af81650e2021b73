//! Configuration of the AMQP (RabbitMQ) sink and source.
//!
//! The URL carries the password, so it is only ever configured by reference (`url_env` /
//! `url_file`) and never printed: `check` shows the reference, logs show `host:port/vhost`.
//! The defaults are the safe ones: a durable `topic` exchange, persistent messages, publisher
//! confirms and `mandatory` publishing with unroutable messages failing the batch.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::topology::TopologyConfig;
use crate::routing::TopicTemplate;
use crate::runtime::retry::RetryConfig;
use crate::secret::SecretRef;

/// The URL used when neither `url_env` nor `url_file` is set (a local RabbitMQ, vhost `/`).
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Longest AMQP short string (routing keys, message ids, names).
pub const MAX_SHORT_STRING: usize = 255;

/// Publishes each EntityEvent as one persistent AMQP message, confirmed by the broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSinkConfig {
    /// Environment variable holding the AMQP URL (`amqp://user:password@host:5672/vhost`).
    #[serde(default)]
    pub url_env: Option<String>,
    /// File holding the AMQP URL (trailing newline stripped). Neither set: the local default.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Connection name shown by RabbitMQ (`rabbitmqctl list_connections client_properties`);
    /// default `entity-bridge.<connector>.sink`.
    #[serde(default)]
    pub connection_name: Option<String>,
    /// Bound on opening the connection (TCP + AMQP handshake + topology declaration).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// First delay before reconnecting after a lost or failed connection.
    #[serde(default = "default_reconnect_min_backoff_ms")]
    pub reconnect_min_backoff_ms: u64,
    /// Largest delay between reconnection attempts (exponential growth with jitter stops here).
    #[serde(default = "default_reconnect_max_backoff_ms")]
    pub reconnect_max_backoff_ms: u64,
    /// Exchange every event is published to; `""` is the default exchange (routing key = queue).
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Type of `exchange` when the bridge declares it.
    #[serde(default)]
    pub exchange_type: ExchangeType,
    /// Declare `exchange` (durable) on every connect, so a fresh broker works without setup.
    #[serde(default = "default_true")]
    pub declare_exchange: bool,
    /// Routing key template. Placeholders: `{ResourceName}`, `{EntityEventSource}` (empty when
    /// the push had no `EntityEventSource` header). Keys longer than 255 bytes are rejected.
    #[serde(default = "default_routing_key_template")]
    pub routing_key_template: String,
    /// Which ResourceNames are published: `reso` (the RESO Data Dictionary resources plus
    /// `extra_resource_names`) or `any` (every well-formed name, up to `max_resource_names`
    /// distinct ones). Others are refused with 400 naming the ResourceName.
    #[serde(default)]
    pub resource_names: crate::resources::AcceptResources,
    /// ResourceNames accepted besides the RESO Data Dictionary's (vendor resources).
    #[serde(default)]
    pub extra_resource_names: Vec<String>,
    /// Under `resource_names = "any"`: most distinct ResourceNames published.
    #[serde(default = "default_max_resource_names")]
    pub max_resource_names: usize,
    /// What to do when the broker returns a message no queue is bound for (`mandatory`
    /// publishing): `fail` the batch (503 to a webhook producer) or `ignore` it (counted).
    #[serde(default)]
    pub on_unroutable: OnUnroutable,
    /// How long a batch may wait for all its publisher confirms before it fails (503).
    #[serde(default = "default_confirm_timeout_ms")]
    pub confirm_timeout_ms: u64,
    /// Largest event accepted (bytes); larger ones are rejected (413) before anything is
    /// published. RabbitMQ's own default `max_message_size` is 128 MiB.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Exchanges, queues and bindings declared on every connect.
    #[serde(default)]
    pub topology: TopologyConfig,
}

/// Consumes EntityEvents from one or more queues, acknowledging each only once it is delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSourceConfig {
    /// Environment variable holding the AMQP URL (`amqp://user:password@host:5672/vhost`).
    #[serde(default)]
    pub url_env: Option<String>,
    /// File holding the AMQP URL (trailing newline stripped). Neither set: the local default.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Connection name shown by RabbitMQ; default `entity-bridge.<connector>.source`.
    #[serde(default)]
    pub connection_name: Option<String>,
    /// Bound on opening the connection (TCP + AMQP handshake + topology declaration).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// First delay before reconnecting after a lost or failed connection.
    #[serde(default = "default_reconnect_min_backoff_ms")]
    pub reconnect_min_backoff_ms: u64,
    /// Largest delay between reconnection attempts (exponential growth with jitter stops here).
    #[serde(default = "default_reconnect_max_backoff_ms")]
    pub reconnect_max_backoff_ms: u64,
    /// Queues to consume (*required*, at least one). Each message body is one EntityEvent.
    #[serde(default)]
    pub queues: Vec<String>,
    /// Unacknowledged deliveries the broker may push per queue (`basic.qos` prefetch count).
    #[serde(default = "default_prefetch_count")]
    pub prefetch_count: u16,
    /// Most messages handed to the sink as one batch (at most `prefetch_count`).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How long a batch waits for more messages after its first one arrived.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Accept a JSON number as `ResourceRecordKey` (its text becomes the key).
    #[serde(default)]
    pub coerce_numeric_record_key: bool,
    /// Deepest nesting of objects and arrays in one message's event (the event object is level
    /// 1); a deeper message is dead-lettered as unparseable.
    #[serde(default = "crate::event::default_max_json_depth")]
    pub max_json_depth: usize,
    /// Exchanges, queues (e.g. with a dead-letter exchange) and bindings declared on connect.
    #[serde(default)]
    pub topology: TopologyConfig,
}

/// AMQP exchange types.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeType {
    /// Routing key patterns with `*` and `#`.
    #[default]
    Topic,
    /// Exact routing key match.
    Direct,
    /// Every bound queue.
    Fanout,
    /// Match on headers.
    Headers,
}

impl ExchangeType {
    /// The lapin exchange kind.
    pub fn kind(self) -> lapin::ExchangeKind {
        match self {
            ExchangeType::Topic => lapin::ExchangeKind::Topic,
            ExchangeType::Direct => lapin::ExchangeKind::Direct,
            ExchangeType::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeType::Headers => lapin::ExchangeKind::Headers,
        }
    }
}

/// Policy for messages the broker returns as unroutable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnroutable {
    /// Fail the batch as unavailable (503 + Retry-After to a webhook producer; the pump retries).
    #[default]
    Fail,
    /// Accept the batch anyway; the returned messages are counted and logged.
    Ignore,
}

fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_reconnect_min_backoff_ms() -> u64 {
    500
}
fn default_reconnect_max_backoff_ms() -> u64 {
    30_000
}
fn default_exchange() -> String {
    "reso".into()
}
fn default_true() -> bool {
    true
}
fn default_max_resource_names() -> usize {
    crate::resources::DEFAULT_MAX_RESOURCE_NAMES
}
fn default_routing_key_template() -> String {
    "{ResourceName}".into()
}
fn default_confirm_timeout_ms() -> u64 {
    15_000
}
fn default_max_message_bytes() -> usize {
    128 * 1024 * 1024
}
fn default_prefetch_count() -> u16 {
    200
}
fn default_max_batch() -> usize {
    100
}
fn default_linger_ms() -> u64 {
    20
}

/// The connection part both roles share, as validated settings.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Where the URL comes from; `None` means [`DEFAULT_URL`].
    pub url: Option<SecretRef>,
    /// Connection name shown by the broker.
    pub name: String,
    /// Bound on connecting.
    pub connect_timeout: Duration,
    /// Reconnection backoff.
    pub backoff: RetryConfig,
    /// What to declare on every connect.
    pub topology: TopologyConfig,
}

fn url_ref(env: &Option<String>, file: &Option<PathBuf>) -> Option<SecretRef> {
    match (env, file) {
        (Some(name), _) => Some(SecretRef::Env(name.clone())),
        (None, Some(path)) => Some(SecretRef::File(path.clone())),
        (None, None) => None,
    }
}

/// Checks the connection keys both roles have; `Err((key, detail))`.
fn validate_connection(
    url_env: &Option<String>,
    url_file: &Option<PathBuf>,
    connection_name: &Option<String>,
    connect_timeout_ms: u64,
    min_ms: u64,
    max_ms: u64,
) -> Result<(), (String, String)> {
    if url_env.is_some() && url_file.is_some() {
        return Err((
            "url_env".into(),
            "set only one of url_env / url_file".into(),
        ));
    }
    if url_env.as_deref().is_some_and(|v| v.trim().is_empty()) {
        return Err(("url_env".into(), "must name an environment variable".into()));
    }
    if let Some(name) = connection_name {
        if name.is_empty() || name.len() > MAX_SHORT_STRING {
            return Err(("connection_name".into(), "must be 1 to 255 bytes".into()));
        }
    }
    if !(100..=600_000).contains(&connect_timeout_ms) {
        return Err((
            "connect_timeout_ms".into(),
            "must be between 100 and 600000".into(),
        ));
    }
    if min_ms == 0 || min_ms > max_ms {
        return Err((
            "reconnect_min_backoff_ms".into(),
            "must be at least 1 and at most reconnect_max_backoff_ms".into(),
        ));
    }
    Ok(())
}

fn check_name(key: &str, name: &str) -> Result<(), (String, String)> {
    if name.len() > MAX_SHORT_STRING {
        return Err((key.into(), "must be at most 255 bytes".into()));
    }
    Ok(())
}

impl AmqpSinkConfig {
    /// Semantic checks; `Err((key, detail))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        validate_connection(
            &self.url_env,
            &self.url_file,
            &self.connection_name,
            self.connect_timeout_ms,
            self.reconnect_min_backoff_ms,
            self.reconnect_max_backoff_ms,
        )?;
        check_name("exchange", &self.exchange)?;
        if self.exchange.is_empty() && self.declare_exchange {
            return Err((
                "declare_exchange".into(),
                "must be false when exchange is \"\" (the default exchange cannot be declared)"
                    .into(),
            ));
        }
        TopicTemplate::parse(&self.routing_key_template)
            .map_err(|e| ("routing_key_template".to_owned(), e.to_string()))?;
        crate::resources::validate(&self.extra_resource_names, self.max_resource_names)?;
        if !(100..=3_600_000).contains(&self.confirm_timeout_ms) {
            return Err((
                "confirm_timeout_ms".into(),
                "must be between 100 and 3600000".into(),
            ));
        }
        if self.max_message_bytes == 0 {
            return Err(("max_message_bytes".into(), "must be at least 1".into()));
        }
        self.topology
            .validate()
            .map_err(|(k, d)| (format!("topology.{k}"), d))
    }

    /// The connection settings of this sink.
    pub fn connection(&self, connector: &str) -> ConnectionConfig {
        let mut topology = self.topology.clone();
        if self.declare_exchange {
            topology.prepend_exchange(&self.exchange, self.exchange_type);
        }
        ConnectionConfig {
            url: url_ref(&self.url_env, &self.url_file),
            name: self
                .connection_name
                .clone()
                .unwrap_or_else(|| format!("entity-bridge.{connector}.sink")),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            backoff: RetryConfig {
                min_backoff_ms: self.reconnect_min_backoff_ms,
                max_backoff_ms: self.reconnect_max_backoff_ms,
            },
            topology,
        }
    }
}

impl AmqpSourceConfig {
    /// Semantic checks; `Err((key, detail))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        validate_connection(
            &self.url_env,
            &self.url_file,
            &self.connection_name,
            self.connect_timeout_ms,
            self.reconnect_min_backoff_ms,
            self.reconnect_max_backoff_ms,
        )?;
        if self.queues.is_empty() {
            return Err(("queues".into(), "name at least one queue to consume".into()));
        }
        for (i, queue) in self.queues.iter().enumerate() {
            if queue.is_empty() || queue.len() > MAX_SHORT_STRING {
                return Err((format!("queues[{i}]"), "must be 1 to 255 bytes".into()));
            }
            if self.queues[..i].contains(queue) {
                return Err((format!("queues[{i}]"), format!("`{queue}` is listed twice")));
            }
        }
        if !(1..=crate::event::MAX_JSON_DEPTH_CEILING).contains(&self.max_json_depth) {
            return Err((
                "max_json_depth".into(),
                crate::event::MAX_JSON_DEPTH_RANGE.into(),
            ));
        }
        if self.prefetch_count == 0 {
            return Err(("prefetch_count".into(), "must be at least 1".into()));
        }
        if self.max_batch == 0 || self.max_batch > usize::from(self.prefetch_count) {
            return Err((
                "max_batch".into(),
                "must be between 1 and prefetch_count".into(),
            ));
        }
        if self.linger_ms > 60_000 {
            return Err(("linger_ms".into(), "must be at most 60000".into()));
        }
        self.topology
            .validate()
            .map_err(|(k, d)| (format!("topology.{k}"), d))
    }

    /// The connection settings of this source.
    pub fn connection(&self, connector: &str) -> ConnectionConfig {
        ConnectionConfig {
            url: url_ref(&self.url_env, &self.url_file),
            name: self
                .connection_name
                .clone()
                .unwrap_or_else(|| format!("entity-bridge.{connector}.source")),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            backoff: RetryConfig {
                min_backoff_ms: self.reconnect_min_backoff_ms,
                max_backoff_ms: self.reconnect_max_backoff_ms,
            },
            topology: self.topology.clone(),
        }
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
