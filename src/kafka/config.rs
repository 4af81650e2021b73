//! Configuration of the Kafka sink.
//!
//! The defaults are the safe ones: `acks=all` with the idempotent producer, topics created on
//! first use, and a delivery timeout short enough that a producer waiting for its HTTP answer
//! gets a 503 instead of librdkafka's default five minutes of silent retrying.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::topics::TopicTemplate;
use crate::secret::SecretRef;

/// librdkafka keys the bridge sets itself; overriding them would break the delivery contract.
pub const RESERVED_LIBRDKAFKA_KEYS: &[&str] = &[
    "bootstrap.servers",
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "message.timeout.ms",
    "delivery.timeout.ms",
];

/// Inline librdkafka values whose key contains one of these are masked in `check` output.
const SENSITIVE_KEY_PARTS: &[&str] = &["password", "secret", "key", "token", "jaas"];

/// Publishes each EntityEvent as one Kafka record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Comma-separated `host:port` list of brokers (librdkafka `bootstrap.servers`).
    #[serde(default = "default_bootstrap")]
    pub bootstrap_servers: String,
    /// Topic name template. Placeholders: `{ResourceName}`, `{EntityEventSource}` (empty when the
    /// push had no `EntityEventSource` header). Characters illegal in topic names become `_`.
    #[serde(default = "default_topic_template")]
    pub topic_template: String,
    /// Explicit ResourceName → topic map; takes precedence over the template.
    #[serde(default)]
    pub topics: BTreeMap<String, String>,
    /// What to do with a ResourceName that is not in `topics` (only consulted when `topics` is
    /// not empty): `template` (use `topic_template`), `default_topic` (use `default_topic`), or
    /// `reject` (answer 400 naming the event; nothing of the push is published).
    #[serde(default)]
    pub unknown_resource: UnknownResource,
    /// The topic for unknown ResourceNames under `unknown_resource = "default_topic"`.
    #[serde(default)]
    pub default_topic: Option<String>,
    /// Which ResourceNames may get a topic from `topic_template`: `reso` (the RESO Data
    /// Dictionary resources plus `extra_resource_names`) or `any` (every well-formed name, up to
    /// `max_resource_names` distinct ones). Others are refused with 400 naming the ResourceName.
    #[serde(default)]
    pub resource_names: crate::resources::AcceptResources,
    /// ResourceNames accepted besides the RESO Data Dictionary's (vendor resources).
    #[serde(default)]
    pub extra_resource_names: Vec<String>,
    /// Under `resource_names = "any"`: most distinct ResourceNames routed (so topics created).
    #[serde(default = "default_max_resource_names")]
    pub max_resource_names: usize,
    /// With `{EntityEventSource}` in `topic_template` (a label the producer chooses): most
    /// distinct topics derived; a push that would derive another is refused with 400.
    #[serde(default = "default_max_derived_topics")]
    pub max_derived_topics: usize,
    /// How a deleted record (an events API's deleted resource, a record hydration found gone)
    /// is written: `tombstone` (key = ResourceRecordKey, no value, the usual headers: compacted
    /// topics drop the record; the Kafka source reads it back as a delete) or `event` (the
    /// delete-marked event as the value).
    #[serde(default)]
    pub deletes: Deletes,
    /// Create missing topics through the Kafka admin API on first use. Turn off for clusters
    /// that forbid it; a missing topic then fails pushes with 503 after `delivery_timeout_ms`.
    #[serde(default = "default_true")]
    pub create_topics: bool,
    /// Partitions of topics the bridge creates.
    #[serde(default = "default_partitions")]
    pub topic_partitions: i32,
    /// Replication factor of topics the bridge creates. Absent: the broker's own
    /// `default.replication.factor` (Kafka 2.4+, KIP-464), so a production cluster's policy
    /// applies; see `docs/delivery.md` for the `min.insync.replicas` that `acks=all` needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_replication_factor: Option<i32>,
    /// How long a batch may wait for all its delivery reports (and topic creation) before the
    /// push is answered 503. Maps to librdkafka `message.timeout.ms`.
    #[serde(default = "default_delivery_timeout_ms")]
    pub delivery_timeout_ms: u64,
    /// Extra librdkafka producer options, passed through as-is (e.g. `compression.type`,
    /// `linger.ms`, `security.protocol`). Keys that would break the delivery contract are refused.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
    /// librdkafka options whose values are secrets, by reference, e.g.
    /// `{ "sasl.password" = { env = "KAFKA_PASSWORD" } }`.
    #[serde(default)]
    pub librdkafka_secrets: BTreeMap<String, SecretRef>,
}

/// Routing policy for ResourceNames missing from an explicit `topics` map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownResource {
    /// Route through `topic_template`.
    #[default]
    Template,
    /// Route to `default_topic`.
    DefaultTopic,
    /// Reject the push with 400.
    Reject,
}

/// How the Kafka sink writes a deleted record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Deletes {
    /// A record with the key and no value.
    #[default]
    Tombstone,
    /// The delete-marked event as the value.
    Event,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        KafkaSinkConfig {
            bootstrap_servers: default_bootstrap(),
            topic_template: default_topic_template(),
            topics: BTreeMap::new(),
            unknown_resource: UnknownResource::default(),
            default_topic: None,
            resource_names: crate::resources::AcceptResources::default(),
            extra_resource_names: Vec::new(),
            max_resource_names: default_max_resource_names(),
            max_derived_topics: default_max_derived_topics(),
            deletes: Deletes::default(),
            create_topics: true,
            topic_partitions: default_partitions(),
            topic_replication_factor: None,
            delivery_timeout_ms: default_delivery_timeout_ms(),
            librdkafka: BTreeMap::new(),
            librdkafka_secrets: BTreeMap::new(),
        }
    }
}

fn default_max_resource_names() -> usize {
    crate::resources::DEFAULT_MAX_RESOURCE_NAMES
}
fn default_max_derived_topics() -> usize {
    256
}
fn default_bootstrap() -> String {
    "127.0.0.1:9092".into()
}
fn default_topic_template() -> String {
    "reso.{ResourceName}".into()
}
fn default_true() -> bool {
    true
}
fn default_partitions() -> i32 {
    3
}
/// The replication factor to ask for: the configured one, or the broker's default (`-1`).
pub fn replication(factor: Option<i32>) -> rdkafka::admin::TopicReplication<'static> {
    rdkafka::admin::TopicReplication::Fixed(factor.unwrap_or(-1))
}
fn default_delivery_timeout_ms() -> u64 {
    15_000
}

impl KafkaSinkConfig {
    /// Semantic checks; `Err((key, detail))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(("bootstrap_servers".into(), "must not be empty".into()));
        }
        TopicTemplate::parse(&self.topic_template)
            .map_err(|e| ("topic_template".to_owned(), e.to_string()))?;
        crate::resources::validate(&self.extra_resource_names, self.max_resource_names)?;
        if self.max_derived_topics == 0 {
            return Err(("max_derived_topics".into(), "must be at least 1".into()));
        }
        for (resource, topic) in &self.topics {
            super::topics::check_topic_name(topic)
                .map_err(|e| (format!("topics.{resource}"), e))?;
        }
        match (&self.unknown_resource, &self.default_topic) {
            (UnknownResource::DefaultTopic, None) => {
                return Err((
                    "default_topic".into(),
                    "is required when unknown_resource = \"default_topic\"".into(),
                ))
            }
            (_, Some(topic)) => super::topics::check_topic_name(topic)
                .map_err(|e| ("default_topic".to_owned(), e))?,
            _ => {}
        }
        if self.topic_partitions < 1 {
            return Err(("topic_partitions".into(), "must be at least 1".into()));
        }
        if self.topic_replication_factor.is_some_and(|f| f < 1) {
            return Err((
                "topic_replication_factor".into(),
                "must be at least 1".into(),
            ));
        }
        if !(100..=3_600_000).contains(&self.delivery_timeout_ms) {
            return Err((
                "delivery_timeout_ms".into(),
                "must be between 100 and 3600000".into(),
            ));
        }
        for key in self.librdkafka.keys().chain(self.librdkafka_secrets.keys()) {
            if RESERVED_LIBRDKAFKA_KEYS.contains(&key.as_str()) {
                return Err((
                    format!("librdkafka.\"{key}\""),
                    "is set by the bridge (use bootstrap_servers / delivery_timeout_ms)".into(),
                ));
            }
        }
        Ok(())
    }

    /// A copy safe to print: inline librdkafka values with sensitive-looking keys are masked.
    pub fn masked(&self) -> Self {
        let mut copy = self.clone();
        for (key, value) in copy.librdkafka.iter_mut() {
            if SENSITIVE_KEY_PARTS.iter().any(|p| key.contains(p)) {
                *value = "***".into();
            }
        }
        copy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: created topics had replication factor 1 unless configured; now the broker's
    /// `default.replication.factor` (`-1` in CreateTopics, KIP-464).
    #[test]
    fn created_topics_use_the_brokers_replication_by_default() {
        let default = KafkaSinkConfig::default();
        assert_eq!(default.topic_replication_factor, None);
        assert!(matches!(
            replication(default.topic_replication_factor),
            rdkafka::admin::TopicReplication::Fixed(-1)
        ));
        assert!(matches!(
            replication(Some(3)),
            rdkafka::admin::TopicReplication::Fixed(3)
        ));
    }

    #[test]
    fn defaults_are_valid() {
        KafkaSinkConfig::default().validate().unwrap();
    }

    #[test]
    fn reserved_keys_and_bad_topics_are_refused() {
        let mut c = KafkaSinkConfig::default();
        c.librdkafka.insert("acks".into(), "1".into());
        assert_eq!(c.validate().unwrap_err().0, "librdkafka.\"acks\"");

        let mut c = KafkaSinkConfig::default();
        c.topics.insert("Property".into(), "bad topic!".into());
        assert_eq!(c.validate().unwrap_err().0, "topics.Property");

        let c = KafkaSinkConfig {
            unknown_resource: UnknownResource::DefaultTopic,
            ..KafkaSinkConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "default_topic");
    }

    #[test]
    fn sensitive_inline_values_are_masked() {
        let mut c = KafkaSinkConfig::default();
        c.librdkafka
            .insert("sasl.password".into(), "hunter2".into());
        c.librdkafka.insert("linger.ms".into(), "5".into());
        let m = c.masked();
        assert_eq!(m.librdkafka["sasl.password"], "***");
        assert_eq!(m.librdkafka["linger.ms"], "5");
    }
}
