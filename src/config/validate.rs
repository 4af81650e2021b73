//! Semantic checks that serde cannot express: ranges, cross-field and cross-connector rules,
//! and the masked copy `check` prints. Every error names the file and key to fix.

use std::collections::BTreeMap;

use super::{Config, ConfigError, SinkConfig, SourceConfig};
use crate::poll::{EventsPollConfig, ResoPollConfig};

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
            match &mut connector.source {
                SourceConfig::Kafka(k) => *k = k.masked(),
                SourceConfig::ResoPoll(ResoPollConfig(p))
                | SourceConfig::EventsPoll(EventsPollConfig(p)) => *p = p.masked(),
                _ => {}
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
        // Durations from config are added to `Instant::now()`: bounded, never an overflow.
        for (key, ms) in [
            ("http.body_read_timeout_ms", self.http.body_read_timeout_ms),
            (
                "admin.body_read_timeout_ms",
                self.admin.body_read_timeout_ms,
            ),
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
        if !(1024..=(256 << 20)).contains(&self.admin.dead_letters_max_page_bytes) {
            return Err(listener(
                "admin.dead_letters_max_page_bytes".into(),
                "must be between 1024 and 268435456".into(),
            ));
        }
        if !self.admin.listen_addr.ip().is_loopback() && self.admin.tokens.is_empty() {
            return Err(listener(
                "admin.tokens".into(),
                format!(
                    "are required when admin.listen_addr ({}) is not a loopback address: the \
                     admin listener shows every connector's feeds and metrics (give it \
                     `tokens = [{{ env = \"ENTITY_BRIDGE_ADMIN_TOKEN\" }}]`, or listen on \
                     127.0.0.1)",
                    self.admin.listen_addr
                ),
            ));
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
            connector
                .retry
                .validate()
                .map_err(|(k, d)| invalid(&format!("retry.{k}"), d))?;
            if let Some(dedupe) = &connector.dedupe {
                dedupe
                    .validate()
                    .map_err(|(k, d)| invalid(&format!("dedupe.{k}"), d))?;
            }
            if let Some(hydrate) = &connector.hydrate {
                hydrate
                    .validate()
                    .map_err(|(k, d)| invalid(&format!("hydrate.{k}"), d))?;
            }
            crate::layers::feeds::validate_max_tracked_feeds(connector.max_tracked_feeds)
                .map_err(|d| invalid("max_tracked_feeds", d))?;
            crate::layers::feeds::validate_evict_idle_feeds_after_hours(
                connector.evict_idle_feeds_after_hours,
            )
            .map_err(|d| invalid("evict_idle_feeds_after_hours", d))?;
            let unaged = connector
                .dedupe
                .as_ref()
                .is_some_and(|d| d.window_age_hours == 0);
            if unaged && connector.evict_idle_feeds_after_hours > 0 {
                // Forgotten feeds free their slot for new labels, and without an age limit
                // their store rows would stay for ever: the store would grow with every label.
                return Err(invalid(
                    "dedupe.window_age_hours",
                    "0 (no age limit) needs evict_idle_feeds_after_hours = 0: the store rows of \
                     forgotten feeds would otherwise never be dropped"
                        .into(),
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
                    dead_letter_required(k.dead_letter.is_some(), &connector.sink)
                        .map_err(|(k, d)| invalid(&k, d))?;
                }
                SourceConfig::ResoPoll(ResoPollConfig(p))
                | SourceConfig::EventsPoll(EventsPollConfig(p)) => {
                    let reso = matches!(connector.source, SourceConfig::ResoPoll(_));
                    p.validate(reso)
                        .map_err(|(k, d)| invalid(&format!("source.{k}"), d))?;
                    dead_letter_required(p.dead_letter.is_some(), &connector.sink)
                        .map_err(|(k, d)| invalid(&k, d))?;
                }
            }
            for (key, dead_letter) in connector.dead_letters() {
                if let crate::dead_letter::DeadLetterConfig::Embedded(e) = dead_letter {
                    embedded_dead_letter(self, name, connector, e.file.as_deref())
                        .map_err(|(k, d)| invalid(&format!("{key}.{k}"), d))?;
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
        super::logs::validate_logs(self).map_err(|(name, key, detail)| ConfigError::Invalid {
            file: file_of(&name),
            key,
            detail,
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

/// A source that dead-letters needs a destination: its own, its webhook sink's, or its
/// embedded sink's log.
fn dead_letter_required(own: bool, sink: &SinkConfig) -> Result<(), (String, String)> {
    if own || matches!(sink, SinkConfig::Webhook(_) | SinkConfig::Embedded(_)) {
        return Ok(());
    }
    Err((
        "source.dead_letter".into(),
        "is required unless the sink is a webhook sink (whose dead_letter is used) or an \
         embedded sink (dead letters then go to its log)"
            .into(),
    ))
}

/// An embedded dead-letter destination names the log of an embedded sink of this bridge (the
/// connector's own when `file` is absent), whose retention then applies.
fn embedded_dead_letter(
    config: &Config,
    name: &str,
    connector: &super::ConnectorConfig,
    file: Option<&std::path::Path>,
) -> Result<(), (String, String)> {
    let data_dir = &config.data_dir;
    let target = match (file, &connector.sink) {
        (Some(f), _) => data_dir.join(f),
        (None, SinkConfig::Embedded(s)) => s.path(data_dir, name),
        (None, _) => {
            return Err((
                "file".into(),
                "is required unless the connector's sink is embedded (then its log is used)".into(),
            ))
        }
    };
    let written = config
        .connectors
        .iter()
        .any(|(n, c)| matches!(&c.sink, SinkConfig::Embedded(s) if s.path(data_dir, n) == target));
    if written {
        return Ok(());
    }
    Err((
        "file".into(),
        format!(
            "`{}` is not the log of an embedded sink of this bridge: dead letters go to a log \
             an embedded sink writes, whose retention keeps them bounded",
            file.map(|f| f.display().to_string()).unwrap_or_default()
        ),
    ))
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
