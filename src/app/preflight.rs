//! The checks that need more than the configuration's text, run by `check` and by `run` alike
//! before anything is built, so that `check` refuses exactly what `run` would refuse, with the
//! same message: every secret reference resolved, every broker client's settings parsed,
//! every token endpoint's keys and client secrets, a reader for every replay resource, and a
//! route table without collisions. Nothing here opens a connection, a file for writing or a
//! port. What only the environment decides at start-up (a port in use, a broker down, a
//! database that refuses) is not a configuration error and is not checked.

use crate::config::{Config, ConfigError, ConnectorConfig, SinkConfig, SourceConfig};
use crate::dead_letter::DeadLetterConfig;
use crate::secret::SecretRef;

/// Runs every check; the error names the file (`file_of(connector)`) and key to fix.
pub fn preflight(config: &Config, file_of: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    let mut admin = Vec::new();
    if let Ok(value) = serde_json::to_value(&config.admin) {
        walk(&value, "admin".into(), &mut admin);
    }
    for (key, reference) in admin {
        reference.resolve().map_err(|e| ConfigError::Invalid {
            file: "bridge.toml".into(),
            key,
            detail: e.to_string(),
        })?;
    }
    for (name, connector) in &config.connectors {
        let invalid = |(key, detail): (String, String)| ConfigError::Invalid {
            file: file_of(name),
            key,
            detail,
        };
        for (key, reference) in secret_refs(connector) {
            reference
                .resolve()
                .map_err(|e| invalid((key, e.to_string())))?;
        }
        clients(name, connector).map_err(invalid)?;
    }
    super::replay::check_readers(config).map_err(|(name, key, detail)| ConfigError::Invalid {
        file: file_of(&name),
        key,
        detail,
    })?;
    super::routes::check(config).map_err(|(name, key, detail)| ConfigError::Invalid {
        file: file_of(&name),
        key,
        detail,
    })
}

/// Every secret reference of a connector with its dotted key (`source.tokens[0]`). Found in the
/// serialized configuration, where a [`SecretRef`] is the only object with the single member
/// `env` or `file`, so a reference added to any part later is checked without a change here.
pub fn secret_refs(connector: &ConnectorConfig) -> Vec<(String, SecretRef)> {
    let mut found = Vec::new();
    if let Ok(value) = serde_json::to_value(connector) {
        walk(&value, String::new(), &mut found);
    }
    found
}

fn walk(value: &serde_json::Value, key: String, found: &mut Vec<(String, SecretRef)>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let single = map.len() == 1
                && map
                    .iter()
                    .all(|(k, v)| matches!(k.as_str(), "env" | "file") && v.is_string());
            if single {
                if let Ok(reference) = serde_json::from_value::<SecretRef>(value.clone()) {
                    found.push((key, reference));
                    return;
                }
            }
            for (k, v) in map {
                let key = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                walk(v, key, found);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, format!("{key}[{i}]"), found);
            }
        }
        _ => {}
    }
}

/// The key an AMQP URL comes from (`url_env` wins when both are set, which `check` refuses).
fn url_key(part: &str, file: bool) -> String {
    format!("{part}.{}", if file { "url_file" } else { "url_env" })
}

/// The settings handed to broker clients and the token endpoint, checked as their builders
/// will read them: librdkafka options, AMQP URLs, signing keys and client secrets.
fn clients(name: &str, connector: &ConnectorConfig) -> Result<(), (String, String)> {
    let kafka = |key: &str, cc: Result<rdkafka::ClientConfig, crate::kafka::KafkaBuildError>| {
        cc.map_err(|e| e.to_string())
            .and_then(|cc| {
                cc.create_native_config()
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .map_err(|d| (key.to_owned(), d))
    };
    let amqp = |key: String, url: Option<&SecretRef>| {
        (crate::amqp::check_url(url).map(|_| ())).map_err(|e| (key, e.to_string()))
    };
    match &connector.sink {
        SinkConfig::Kafka(k) => kafka("sink.librdkafka", k.client_config(name))?,
        SinkConfig::Amqp(a) => amqp(
            url_key("sink", a.url_file.is_some()),
            a.connection(name).url.as_ref(),
        )?,
        SinkConfig::Embedded(_) | SinkConfig::Webhook(_) => {}
    }
    match &connector.source {
        SourceConfig::Kafka(k) => kafka("source.librdkafka", k.client_config(name))?,
        SourceConfig::Amqp(a) => amqp(
            url_key("source", a.url_file.is_some()),
            a.connection(name).url.as_ref(),
        )?,
        SourceConfig::Webhook(w) => {
            if let Some(t) = &w.token_endpoint {
                // Its errors start with the key: `token_endpoint.signing_key: …`.
                crate::http::token::check_endpoint(name, t).map_err(|e| {
                    let text = e.to_string();
                    match text.split_once(": ") {
                        Some((key, detail)) => (format!("source.{key}"), detail.to_owned()),
                        None => ("source.token_endpoint".to_owned(), text),
                    }
                })?;
            }
        }
        SourceConfig::Embedded(_) | SourceConfig::ResoPoll(_) | SourceConfig::EventsPoll(_) => {}
    }
    for (key, dead_letter) in connector.dead_letters() {
        match dead_letter {
            DeadLetterConfig::Kafka(k) => {
                kafka(&format!("{key}.librdkafka"), k.client_config(name))?
            }
            DeadLetterConfig::Amqp(a) => amqp(format!("{key}.url"), a.url.as_ref())?,
            // Which log it names is checked with the configuration (`config::validate`).
            DeadLetterConfig::Embedded(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of reference is found with its key, and the embedded log's `file` (a path,
    /// not a secret) is not mistaken for one.
    #[test]
    fn secret_references_are_found_wherever_they_are() {
        let text = r#"
            [source]
            type = "webhook"
            tokens = [{ env = "A" }, { file = "/run/b" }]
            [source.token_endpoint]
            signing_key = { env = "C" }
            [[source.token_endpoint.clients]]
            client_id = "x"
            client_secret = { env = "D" }
            [sink]
            type = "embedded"
            file = "log.db"
            replay_tokens = [{ env = "E" }]
        "#;
        let connector: ConnectorConfig = toml::from_str(text).unwrap();
        let found: Vec<(String, SecretRef)> = secret_refs(&connector);
        let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "sink.replay_tokens[0]",
                "source.token_endpoint.clients[0].client_secret",
                "source.token_endpoint.signing_key",
                "source.tokens[0]",
                "source.tokens[1]",
            ]
        );
        assert_eq!(found[4].1, SecretRef::File("/run/b".into()));
    }
}
