//! Configuration of the Kafka source (egress: Kafka → webhook, or any other sink).
//!
//! The bridge owns the offset discipline: auto-commit and auto offset store are off and
//! refused as overrides, because an offset may only be stored once its event was delivered or
//! dead-lettered (delivery contract, rule 2).

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;
use serde::{Deserialize, Serialize};

use super::sink::KafkaBuildError;
use crate::dead_letter::DeadLetterConfig;
use crate::secret::SecretRef;

/// librdkafka consumer keys the bridge sets itself.
pub const RESERVED_CONSUMER_KEYS: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "statistics.interval.ms",
];

/// `session.timeout.ms` unless the `librdkafka` table sets it: how long a crashed member keeps
/// its partitions before the group hands them to the others.
pub const DEFAULT_SESSION_TIMEOUT_MS: u64 = 10_000;
/// `heartbeat.interval.ms` unless the `librdkafka` table sets it (a third of the session).
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 3_000;

/// Consumes EntityEvent records (as written by the Kafka sink) in a consumer group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Comma-separated `host:port` list of brokers (librdkafka `bootstrap.servers`).
    #[serde(default = "default_bootstrap")]
    pub bootstrap_servers: String,
    /// Consumer group; processes sharing it split the partitions. Default `entity-bridge.<connector>`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Static group membership (KIP-345, librdkafka `group.instance.id`): a name unique to this
    /// process within the group and stable across its restarts (a StatefulSet pod name). A
    /// member restarted under the same name gets its partitions back at once, without a
    /// rebalance. Unset (default): dynamic membership. A static member does not leave the group
    /// when it stops, so one that goes away for good holds its partitions until
    /// `session.timeout.ms`.
    #[serde(default)]
    pub group_instance_id: Option<String>,
    /// Topics to consume; an entry starting with `^` is a regular expression matched against
    /// every topic of the cluster (e.g. `"^reso\\..*"`), newly created topics included.
    pub topics: Vec<String>,
    /// Where a group with no committed offset starts: `earliest` (everything retained) or `latest`.
    #[serde(default)]
    pub auto_offset_reset: OffsetReset,
    /// How often offsets of delivered events are committed (also on revoke and at shutdown).
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// How often librdkafka statistics (and so the consumer-lag metric) are refreshed; 0 = off.
    #[serde(default = "default_statistics_interval_ms")]
    pub statistics_interval_ms: u64,
    /// Events read ahead per partition before fetching that partition pauses.
    #[serde(default = "default_max_buffered_events_per_partition")]
    pub max_buffered_events_per_partition: usize,
    /// Deepest nesting of objects and arrays in a record's event (the event object is level 1);
    /// a deeper record is dead-lettered as unparseable.
    #[serde(default = "crate::event::default_max_json_depth")]
    pub max_json_depth: usize,
    /// Extra librdkafka consumer options, passed through (e.g. `session.timeout.ms`,
    /// `partition.assignment.strategy`, `security.protocol`).
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
    /// librdkafka options whose values are secrets, by reference.
    #[serde(default)]
    pub librdkafka_secrets: BTreeMap<String, SecretRef>,
    /// How long the source may hold no partition while partitions of its topics have lag that
    /// nobody consumes (the group's committed offsets do not move) before it reports not ready
    /// and rejoins the group (a coordinator can leave a member with an empty assignment). `0`
    /// turns the check off. At least twice `session.timeout.ms` (a rejoin's rebalance can wait
    /// that long for a member gone without leaving). Absent: 60000, or twice
    /// `session.timeout.ms` when that is longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unassigned_rejoin_after_ms: Option<u64>,
    /// Where records that are not EntityEvents go. Defaults to the webhook sink's
    /// `dead_letter`; required when the sink has none.
    #[serde(default)]
    pub dead_letter: Option<DeadLetterConfig>,
}

/// Start position of a group without committed offsets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsetReset {
    /// The oldest retained record.
    #[default]
    Earliest,
    /// Only records produced from now on.
    Latest,
}

fn default_bootstrap() -> String {
    "127.0.0.1:9092".into()
}
fn default_commit_interval_ms() -> u64 {
    5_000
}
fn default_statistics_interval_ms() -> u64 {
    5_000
}
/// `unassigned_rejoin_after_ms` unless the session timeout asks for more.
pub const DEFAULT_UNASSIGNED_REJOIN_AFTER_MS: u64 = 60_000;
fn default_max_buffered_events_per_partition() -> usize {
    10_000
}

impl KafkaSourceConfig {
    /// The session timeout the consumer runs with (`librdkafka` override, or the bridge's).
    pub fn session_timeout_ms(&self) -> u64 {
        (self.librdkafka.get("session.timeout.ms"))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(DEFAULT_SESSION_TIMEOUT_MS)
    }

    /// `unassigned_rejoin_after_ms` in effect: `None` when off.
    pub fn unassigned_rejoin_after(&self) -> Option<std::time::Duration> {
        let ms = self.unassigned_rejoin_after_ms.unwrap_or_else(|| {
            DEFAULT_UNASSIGNED_REJOIN_AFTER_MS.max(self.session_timeout_ms().saturating_mul(2))
        });
        (ms > 0).then(|| std::time::Duration::from_millis(ms))
    }

    /// The consumer group of connector `connector`.
    pub fn group(&self, connector: &str) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("entity-bridge.{connector}"))
    }

    /// Semantic checks; `Err((key, detail))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(1..=crate::event::MAX_JSON_DEPTH_CEILING).contains(&self.max_json_depth) {
            return Err((
                "max_json_depth".into(),
                crate::event::MAX_JSON_DEPTH_RANGE.into(),
            ));
        }
        if self.bootstrap_servers.trim().is_empty() {
            return Err(("bootstrap_servers".into(), "must not be empty".into()));
        }
        if self
            .group_id
            .as_deref()
            .is_some_and(|g| g.trim().is_empty())
        {
            return Err(("group_id".into(), "must not be empty".into()));
        }
        if let Some(instance) = &self.group_instance_id {
            let valid = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
            if instance.is_empty() || instance.len() > 249 || !instance.chars().all(valid) {
                return Err((
                    "group_instance_id".into(),
                    "must be 1 to 249 characters of A-Z, a-z, 0-9, '.', '_', '-'".into(),
                ));
            }
        }
        if let Some(bound) = self.unassigned_rejoin_after_ms.filter(|b| *b != 0) {
            // A rejoin starts a rebalance the coordinator may hold for a session timeout (a
            // member gone without leaving): a shorter bound would rejoin again before it ends.
            let least = self.session_timeout_ms().saturating_mul(2).max(1_000);
            if !(least..=crate::http::MAX_TIMEOUT_MS).contains(&bound) {
                return Err((
                    "unassigned_rejoin_after_ms".into(),
                    format!(
                        "must be 0 (off) or between twice session.timeout.ms ({least}) and \
                         86400000"
                    ),
                ));
            }
        }
        if self.topics.is_empty() {
            return Err((
                "topics".into(),
                "name at least one topic or `^regex`".into(),
            ));
        }
        for (i, topic) in self.topics.iter().enumerate() {
            if topic.starts_with('^') {
                if topic.len() < 2 {
                    return Err((format!("topics[{i}]"), "empty regular expression".into()));
                }
                if let Err(e) = regex::Regex::new(topic) {
                    return Err((
                        format!("topics[{i}]"),
                        format!("not a regular expression: {e}"),
                    ));
                }
            } else {
                super::topics::check_topic_name(topic).map_err(|e| (format!("topics[{i}]"), e))?;
            }
        }
        if self.commit_interval_ms < 10 {
            return Err(("commit_interval_ms".into(), "must be at least 10".into()));
        }
        if self.max_buffered_events_per_partition == 0 {
            return Err((
                "max_buffered_events_per_partition".into(),
                "must be at least 1".into(),
            ));
        }
        for key in self.librdkafka.keys().chain(self.librdkafka_secrets.keys()) {
            if RESERVED_CONSUMER_KEYS.contains(&key.as_str()) {
                return Err((
                    format!("librdkafka.\"{key}\""),
                    "is set by the bridge (see the [source] keys)".into(),
                ));
            }
        }
        if let Some(dl) = &self.dead_letter {
            dl.validate()
                .map_err(|(k, d)| (format!("dead_letter.{k}"), d))?;
        }
        Ok(())
    }

    /// A copy safe to print.
    pub fn masked(&self) -> Self {
        let mut copy = self.clone();
        let sink_like = super::KafkaSinkConfig {
            librdkafka: self.librdkafka.clone(),
            ..super::KafkaSinkConfig::default()
        };
        copy.librdkafka = sink_like.masked().librdkafka;
        copy.dead_letter = self.dead_letter.as_ref().map(DeadLetterConfig::masked);
        copy
    }

    /// The librdkafka consumer configuration, secrets resolved.
    pub fn client_config(&self, connector: &str) -> Result<ClientConfig, KafkaBuildError> {
        let mut cc = ClientConfig::new();
        cc.set("client.id", format!("entity-bridge.{connector}"));
        // A member that crashed holds its partitions until its session times out (librdkafka's
        // default is 45 s); a clean leave hands them over at once either way. Overridable.
        cc.set("session.timeout.ms", DEFAULT_SESSION_TIMEOUT_MS.to_string())
            .set(
                "heartbeat.interval.ms",
                DEFAULT_HEARTBEAT_INTERVAL_MS.to_string(),
            );
        if let Some(instance) = &self.group_instance_id {
            cc.set("group.instance.id", instance);
        }
        super::sink::apply_passthrough(&mut cc, &self.librdkafka, &self.librdkafka_secrets)?;
        // Set last: the offset discipline is not negotiable.
        cc.set("bootstrap.servers", &self.bootstrap_servers)
            .set("group.id", self.group(connector))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match self.auto_offset_reset {
                    OffsetReset::Earliest => "earliest",
                    OffsetReset::Latest => "latest",
                },
            );
        if self.statistics_interval_ms > 0 {
            cc.set(
                "statistics.interval.ms",
                self.statistics_interval_ms.to_string(),
            );
        }
        Ok(cc)
    }
}

/// No dead-letter destination: validation requires one (the source's own, or its webhook
/// sink's), so only a configuration that skipped validation gets here.
#[derive(Debug, thiserror::Error)]
#[error(
    "no dead_letter: set source.dead_letter (or use a webhook sink, whose dead letter is used)"
)]
struct NoDeadLetter;

#[async_trait::async_trait]
impl crate::runtime::build::BuildSource for KafkaSourceConfig {
    async fn build_task(
        &self,
        ctx: &crate::runtime::build::BuildContext,
        sink: std::sync::Arc<dyn crate::connector::Sink>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<crate::runtime::Run, crate::runtime::build::BuildError> {
        use futures::FutureExt;
        let dead_letter = (self.dead_letter.as_ref())
            .or(ctx.sink_dead_letter.as_ref())
            .ok_or_else(|| crate::runtime::build::BuildError::source(NoDeadLetter))?;
        let source = self
            .build(
                &ctx.connector,
                sink,
                dead_letter,
                ctx.retry.clone(),
                ctx.metrics.clone(),
                ctx.health.clone(),
                ctx.shutdown_timeout,
            )
            .map_err(crate::runtime::build::BuildError::source)?;
        tracing::info!(connector = %ctx.connector, topics = ?self.topics, group = %self.group(&ctx.connector), "kafka source connector ready");
        Ok(source.run(cancel).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(text: &str) -> KafkaSourceConfig {
        toml::from_str(text).unwrap()
    }

    /// The rejoin bound follows the session timeout unless set, and a set one shorter than
    /// twice the session is refused (a session of 45 s once made the default refuse to start).
    #[test]
    fn the_rejoin_bound_outlasts_two_sessions() {
        let c = parse(r#"topics = ["t"]"#);
        assert_eq!(c.unassigned_rejoin_after(), Some(Duration::from_secs(60)));
        let long = parse("topics = [\"t\"]\n[librdkafka]\n\"session.timeout.ms\" = \"45000\"");
        long.validate().unwrap();
        assert_eq!(
            long.unassigned_rejoin_after(),
            Some(Duration::from_secs(90))
        );
        let short = parse("topics = [\"t\"]\nunassigned_rejoin_after_ms = 15000");
        assert_eq!(
            short.validate().unwrap_err().0,
            "unassigned_rejoin_after_ms"
        );
        let off = parse("topics = [\"t\"]\nunassigned_rejoin_after_ms = 0");
        off.validate().unwrap();
        assert_eq!(off.unassigned_rejoin_after(), None);
        let pattern = parse(r#"topics = ["^reso.(unclosed"]"#);
        assert_eq!(pattern.validate().unwrap_err().0, "topics[0]");
    }

    #[test]
    fn defaults_and_offset_discipline() {
        let c = parse(r#"topics = ["reso.Property", "^reso\\..*"]"#);
        c.validate().unwrap();
        assert_eq!(c.group("mls"), "entity-bridge.mls");
        let cc = c.client_config("mls").unwrap();
        assert_eq!(cc.get("enable.auto.commit"), Some("false"));
        assert_eq!(cc.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(cc.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(cc.get("session.timeout.ms"), Some("10000"));
        assert_eq!(cc.get("heartbeat.interval.ms"), Some("3000"));
        assert_eq!(cc.get("group.instance.id"), None);
    }

    #[test]
    fn fast_takeover_settings_can_be_tuned() {
        let mut c = parse("topics = [\"t\"]\ngroup_instance_id = \"bridge-0\"");
        c.validate().unwrap();
        c.librdkafka
            .insert("session.timeout.ms".into(), "30000".into());
        let cc = c.client_config("mls").unwrap();
        assert_eq!(cc.get("group.instance.id"), Some("bridge-0"));
        assert_eq!(
            cc.get("session.timeout.ms"),
            Some("30000"),
            "the table wins"
        );
        for bad in ["", "pod 0", &"x".repeat(250)] {
            c.group_instance_id = Some(bad.to_owned());
            assert_eq!(c.validate().unwrap_err().0, "group_instance_id", "{bad:?}");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let c = parse(r#"topics = []"#);
        assert_eq!(c.validate().unwrap_err().0, "topics");
        let c = parse(r#"topics = ["ok", "bad topic"]"#);
        assert_eq!(c.validate().unwrap_err().0, "topics[1]");
        let mut c = parse(r#"topics = ["ok"]"#);
        c.librdkafka
            .insert("enable.auto.commit".into(), "true".into());
        assert_eq!(
            c.validate().unwrap_err().0,
            "librdkafka.\"enable.auto.commit\""
        );
    }
}
