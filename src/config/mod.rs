//! The bridge's configuration: structs that are the documentation, and their validation.
//!
//! Every struct here denies unknown keys and documents each field; durations carry their unit
//! in the name. Loading and layering (defaults < `bridge.toml` < `connectors/*.toml` < env)
//! lives in [`load`]; semantic checks that serde cannot express live in [`Config::validate`].

mod load;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use load::{load, ConfigSources};

use crate::amqp::{AmqpSinkConfig, AmqpSourceConfig};
use crate::embedded::{EmbeddedSinkConfig, EmbeddedSourceConfig};
use crate::http::WebhookSourceConfig;
use crate::kafka::KafkaSinkConfig;
use crate::kafka::KafkaSourceConfig;
use crate::pump::RetryConfig;
use crate::push::PushSinkConfig;

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
    /// Time a push's body may take to arrive once its headers are read (408 and the connection
    /// closed beyond it, so a slow body frees its request slot).
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
    /// Address and port of the admin endpoints (`/metrics`, `/healthz`, `/readyz`).
    #[serde(default = "default_admin_listen")]
    pub listen_addr: SocketAddr,
    /// Timeout of each sink's readiness probe behind `/readyz`.
    #[serde(default = "default_ready_timeout_ms")]
    pub ready_timeout_ms: u64,
    /// Connection limits and timeouts (`[admin.connections]`).
    #[serde(default = "crate::http::ConnectionsConfig::admin")]
    pub connections: crate::http::ConnectionsConfig,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen_addr: default_admin_listen(),
            ready_timeout_ms: default_ready_timeout_ms(),
            connections: crate::http::ConnectionsConfig::admin(),
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8081))
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

/// A configuration error, naming the file and key where it can be fixed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read or parsed, or a key has the wrong type or is unknown.
    #[error("{0}")]
    Figment(Box<figment::Error>),
    /// A value is well-formed but not acceptable.
    #[error("{file}: `{key}`: {detail}")]
    Invalid {
        /// The file to fix (or `environment` / `defaults`).
        file: String,
        /// The dotted key inside that file.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// A path given on the command line does not exist or is unreadable.
    #[error("{path}: {detail}")]
    Path {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError::Figment(Box::new(redact(e)))
    }
}

/// The same errors without the values they quote: a string in the wrong place is often a
/// secret written inline (`token = "…"`), and TOML syntax errors quote the offending line. The
/// file, key and what was expected stay, which is what the operator needs to fix it.
fn redact(error: figment::Error) -> figment::Error {
    use figment::error::{Actual, Kind};
    let hide = |actual: Actual| match actual {
        Actual::Str(_) => Actual::Other("a string (value not shown)".into()),
        Actual::Bytes(_) => Actual::Other("bytes (value not shown)".into()),
        Actual::Char(_) => Actual::Other("a character (value not shown)".into()),
        other => other,
    };
    // Newest first; `chain` puts an error in front of the ones before it.
    let mut errors: Vec<figment::Error> = error.into_iter().collect();
    for e in &mut errors {
        e.kind = match std::mem::replace(&mut e.kind, Kind::Message(String::new())) {
            Kind::InvalidType(actual, expected) => Kind::InvalidType(hide(actual), expected),
            Kind::InvalidValue(actual, expected) => Kind::InvalidValue(hide(actual), expected),
            Kind::Unsupported(actual) => Kind::Unsupported(hide(actual)),
            Kind::UnsupportedKey(actual, need) => Kind::UnsupportedKey(hide(actual), need),
            Kind::Message(message) => Kind::Message(without_source_lines(&message)),
            other => other,
        };
    }
    let mut rebuilt = errors
        .pop()
        .expect("a figment error holds at least one error");
    while let Some(newer) = errors.pop() {
        rebuilt = rebuilt.chain(newer);
    }
    rebuilt
}

/// Drops the quoted source lines of a TOML parse error (`3 | token = s3cr3t`, `  |  ^`).
fn without_source_lines(message: &str) -> String {
    message
        .lines()
        .filter(|line| {
            let t = line.trim_start();
            let digits = t.trim_start_matches(|c: char| c.is_ascii_digit());
            !digits.trim_start().starts_with('|')
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `public_base_url`: an absolute http(s) URL without query, fragment or credentials.
fn check_public_base_url(base: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(base).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an absolute http:// or https:// URL".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    Ok(())
}

/// Connector names become metric labels, env-var segments and default URL paths.
fn valid_connector_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name.len() <= 64
}

impl Config {
    /// A copy safe to print: secrets are references already; inline values that look secret
    /// (e.g. a `sasl.password` passed through to librdkafka) are replaced by `***`.
    pub fn masked(&self) -> Config {
        let mut copy = self.clone();
        for connector in copy.connectors.values_mut() {
            match &mut connector.sink {
                SinkConfig::Kafka(k) => *k = k.masked(),
                // The AMQP URL is only ever a reference (url_env / url_file): nothing to mask.
                SinkConfig::Amqp(_) => {}
                // Replay tokens are references only.
                SinkConfig::Embedded(_) => {}
                SinkConfig::Webhook(p) => **p = p.masked(),
            }
            if let SourceConfig::Kafka(k) = &mut connector.source {
                *k = k.masked();
            }
        }
        copy
    }

    /// Checks what serde cannot: names, paths, templates, cross-field rules.
    /// `file_of` maps a connector name to the file that defined it, for error messages.
    pub fn validate(&self, file_of: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let listener = |key: String, detail: String| ConfigError::Invalid {
            file: "bridge.toml".into(),
            key,
            detail,
        };
        for (section, connections) in [
            ("http", &self.http.connections),
            ("admin", &self.admin.connections),
        ] {
            connections
                .validate()
                .map_err(|(k, d)| listener(format!("{section}.connections.{k}"), d))?;
        }
        if !(1..=crate::http::MAX_TIMEOUT_MS).contains(&self.http.body_read_timeout_ms) {
            return Err(listener(
                "http.body_read_timeout_ms".into(),
                "must be between 1 and 86400000 (one day)".into(),
            ));
        }
        // Durations from config are added to `Instant::now()`: bounded, never an overflow.
        for (key, ms) in [
            ("shutdown_timeout_ms", self.shutdown_timeout_ms),
            ("admin.ready_timeout_ms", self.admin.ready_timeout_ms),
        ] {
            if !(1..=crate::http::MAX_TIMEOUT_MS).contains(&ms) {
                return Err(listener(
                    key.into(),
                    "must be between 1 and 86400000 (one day)".into(),
                ));
            }
        }
        if let Some(base) = &self.http.public_base_url {
            check_public_base_url(base).map_err(|d| listener("http.public_base_url".into(), d))?;
        }
        let mut paths = BTreeMap::new();
        for (name, connector) in &self.connectors {
            let invalid = |key: &str, detail: String| ConfigError::Invalid {
                file: file_of(name),
                key: key.to_owned(),
                detail,
            };
            if !valid_connector_name(name) {
                return Err(invalid(
                    "(file name)",
                    format!("connector name `{name}` must match [a-z0-9][a-z0-9_-]{{0,63}}"),
                ));
            }
            match &connector.source {
                SourceConfig::Webhook(w) => {
                    w.validate()
                        .map_err(|(k, d)| invalid(&format!("source.{k}"), d))?;
                    let path = w.route_path(name);
                    if let Some(other) = paths.insert(path.clone(), name.clone()) {
                        return Err(invalid(
                            "source.path",
                            format!("path `{path}` is also used by connector `{other}`"),
                        ));
                    }
                }
                SourceConfig::Amqp(a) => {
                    a.validate()
                        .map_err(|(k, d)| invalid(&format!("source.{k}"), d))?;
                }
                SourceConfig::Embedded(e) => {
                    e.validate()
                        .map_err(|(k, d)| invalid(&format!("source.{k}"), d))?;
                }
                SourceConfig::Kafka(k) => {
                    k.validate()
                        .map_err(|(k, d)| invalid(&format!("source.{k}"), d))?;
                    let sink_has_one = matches!(connector.sink, SinkConfig::Webhook(_));
                    if k.dead_letter.is_none() && !sink_has_one {
                        return Err(invalid(
                            "source.dead_letter",
                            "is required unless the sink is a webhook sink (whose dead_letter is used)".into(),
                        ));
                    }
                }
            }
            match &connector.sink {
                SinkConfig::Kafka(k) => {
                    k.validate()
                        .map_err(|(k, d)| invalid(&format!("sink.{k}"), d))?;
                }
                SinkConfig::Amqp(a) => {
                    a.validate()
                        .map_err(|(k, d)| invalid(&format!("sink.{k}"), d))?;
                }
                SinkConfig::Embedded(e) => {
                    e.validate()
                        .map_err(|(k, d)| invalid(&format!("sink.{k}"), d))?;
                }
                SinkConfig::Webhook(p) => {
                    p.validate()
                        .map_err(|(k, d)| invalid(&format!("sink.{k}"), d))?;
                }
            }
        }
        crate::embedded::validate_logs(self).map_err(|(name, key, detail)| {
            ConfigError::Invalid {
                file: file_of(&name),
                key,
                detail,
            }
        })?;
        // Reads the certificate and key now, so `check` and start-up fail on a bad pair.
        if let Some(tls) = &self.http.tls {
            tls.server_config().map_err(|e| ConfigError::Invalid {
                file: "bridge.toml".into(),
                key: "http.tls".into(),
                detail: e.to_string(),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `shutdown_timeout_ms = 18446744073709551615` passed `check` and panicked the
    /// process at shutdown (`Instant + Duration` overflow).
    #[test]
    fn timeouts_from_config_are_bounded() {
        let mut config = Config::default();
        config.validate(&|_| String::new()).unwrap();
        config.shutdown_timeout_ms = u64::MAX;
        match config.validate(&|_| String::new()).unwrap_err() {
            ConfigError::Invalid { key, .. } => assert_eq!(key, "shutdown_timeout_ms"),
            other => panic!("{other}"),
        }
        config.shutdown_timeout_ms = 30_000;
        config.admin.ready_timeout_ms = 0;
        assert!(config.validate(&|_| String::new()).is_err());
        config.admin.ready_timeout_ms = 3_000;
        config.http.public_base_url = Some("https://user:pw@bridge.example.com".into());
        assert!(config.validate(&|_| String::new()).is_err());
        config.http.public_base_url = Some("https://bridge.example.com/reso".into());
        config.validate(&|_| String::new()).unwrap();
    }

    #[test]
    fn connector_names() {
        for ok in ["mls", "mls_1", "a-b", "0x"] {
            assert!(valid_connector_name(ok), "{ok}");
        }
        for bad in ["", "Mls", "_x", "a b", "a.b", &"x".repeat(65)] {
            assert!(!valid_connector_name(bad), "{bad}");
        }
    }
}
