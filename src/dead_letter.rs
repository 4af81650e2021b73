//! The dead-letter destination: where events go that the consumer refused for good (a 4xx), that
//! kept failing past `max_retry_duration_ms` under `on_exhausted = "dead_letter"`, that are too
//! large to ever be sent, or that a source could not even parse.
//!
//! Each event becomes one record / message with the original key and exact bytes, plus headers
//! that say why (`dead_letter_reason`, `dead_letter_detail`, `http_status`, `attempts`,
//! `connector`) and where it came from (`original_topic`, `original_partition`,
//! `original_offset`). A dead-lettered event counts as settled (its offset is stored), so the
//! write must be durable first: Kafka `acks=all` (`kafka::dead_letter`) or RabbitMQ publisher
//! confirms on persistent messages (`amqp::dead_letter`).
//!
//! A core module: the webhook sink, the Kafka source and any future source write dead letters
//! through [`DeadLetter`] and the [`DeadLetterWriter`] trait, which each bus implements in its
//! own folder; [`DeadLetterConfig`] is the one place that names them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use async_trait::async_trait;

use crate::amqp::AmqpDeadLetterConfig;
use crate::connector::{Message, Origin};
use crate::kafka::KafkaDeadLetterConfig;
use crate::metrics::Metrics;

/// Where dead letters go, chosen by `type`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeadLetterConfig {
    /// A Kafka topic.
    Kafka(KafkaDeadLetterConfig),
    /// A RabbitMQ exchange.
    Amqp(AmqpDeadLetterConfig),
    /// A table of an embedded log (no broker needed).
    Embedded(crate::embedded::dead_letter::EmbeddedDeadLetterConfig),
}

/// Why the dead-letter writer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterBuildError {
    /// The Kafka producer could not be built.
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaBuildError),
    /// The AMQP URL reference could not be read.
    #[error("url: {0}")]
    Amqp(#[from] crate::secret::SecretError),
    /// The embedded log could not be opened.
    #[error("file: {0}")]
    Embedded(#[from] crate::embedded::StoreError),
}

impl DeadLetterConfig {
    /// Semantic checks; `Err((key, detail))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            DeadLetterConfig::Kafka(k) => k.validate(),
            DeadLetterConfig::Amqp(a) => a.validate(),
            DeadLetterConfig::Embedded(e) => e.validate(),
        }
    }

    /// A copy safe to print (sensitive-looking inline librdkafka values masked).
    pub fn masked(&self) -> Self {
        match self {
            DeadLetterConfig::Kafka(k) => DeadLetterConfig::Kafka(k.masked()),
            DeadLetterConfig::Amqp(a) => DeadLetterConfig::Amqp(a.clone()),
            DeadLetterConfig::Embedded(e) => DeadLetterConfig::Embedded(e.clone()),
        }
    }

    /// Builds the writer (does not contact the broker yet).
    pub fn build(
        &self,
        connector: &str,
        metrics: Metrics,
    ) -> Result<DeadLetter, DeadLetterBuildError> {
        let writer: Box<dyn DeadLetterWriter> = match self {
            DeadLetterConfig::Kafka(k) => Box::new(k.build(connector, metrics.clone())?),
            DeadLetterConfig::Amqp(a) => Box::new(a.build()?),
            DeadLetterConfig::Embedded(e) => Box::new(e.build()?),
        };
        Ok(DeadLetter::new(connector, writer, metrics))
    }
}

/// Why a dead-letter write failed; the caller retries later.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The destination could not be reached or did not confirm the write.
    #[error("dead-letter destination `{destination}` unavailable: {reason}")]
    Unavailable {
        /// The topic or exchange.
        destination: String,
        /// What failed (no payload data).
        reason: String,
    },
}

/// One event to dead-letter, borrowed from a [`Message`] or from an unparseable record.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadRecord<'a> {
    /// The record key (ResourceRecordKey), if any.
    pub key: Option<&'a [u8]>,
    /// The exact bytes of the event (or of the unparseable record).
    pub payload: &'a [u8],
    /// `EntityEventSequence`, when known.
    pub sequence: Option<i64>,
    /// `ResourceName`, when known.
    pub resource_name: Option<&'a str>,
    /// `EntityEventSource`, when known.
    pub source_label: Option<&'a str>,
    /// Where the event was read.
    pub origin: Option<&'a Origin>,
}

impl<'a> From<&'a Message> for DeadRecord<'a> {
    fn from(m: &'a Message) -> Self {
        DeadRecord {
            key: Some(m.record_key.as_bytes()),
            payload: &m.payload,
            sequence: Some(m.sequence),
            resource_name: Some(&m.resource_name),
            source_label: m.source_label.as_deref(),
            origin: m.origin.as_ref(),
        }
    }
}

/// Why a batch is dead-lettered (the headers of every record).
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterInfo<'a> {
    /// `rejected`, `retries_exhausted`, `too_large` or `unparseable` (also the metric label).
    pub reason: &'static str,
    /// A short explanation, no payload data.
    pub detail: &'a str,
    /// The consumer's last HTTP status, if it answered.
    pub http_status: Option<u16>,
    /// POST attempts made.
    pub attempts: u32,
}

/// The headers of one dead letter, in a fixed order; absent facts are left out.
pub fn headers(
    record: &DeadRecord<'_>,
    info: &DeadLetterInfo<'_>,
    connector: &str,
) -> Vec<(&'static str, String)> {
    let fields = [
        ("dead_letter_reason", Some(info.reason.to_owned())),
        ("dead_letter_detail", Some(info.detail.to_owned())),
        ("http_status", info.http_status.map(|s| s.to_string())),
        ("attempts", Some(info.attempts.to_string())),
        ("connector", Some(connector.to_owned())),
        ("original_topic", record.origin.map(|o| o.topic.to_string())),
        (
            "original_partition",
            record.origin.map(|o| o.partition.to_string()),
        ),
        (
            "original_offset",
            record.origin.map(|o| o.offset.to_string()),
        ),
        (
            "EntityEventSequence",
            record.sequence.map(|s| s.to_string()),
        ),
        ("ResourceName", record.resource_name.map(str::to_owned)),
        ("EntityEventSource", record.source_label.map(str::to_owned)),
        ("content-type", Some("application/json".to_owned())),
    ];
    fields
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
}

/// A dead-letter destination on one bus.
#[async_trait]
pub trait DeadLetterWriter: Send + Sync {
    /// Writes every record and returns once all are durable.
    async fn write(
        &self,
        records: &[DeadRecord<'_>],
        info: &DeadLetterInfo<'_>,
        connector: &str,
    ) -> Result<(), DeadLetterError>;
    /// Waits for anything still queued, up to `timeout` (shutdown).
    async fn flush(&self, timeout: Duration) -> Result<(), DeadLetterError>;
    /// The topic or exchange, for logs.
    fn destination(&self) -> &str;
}

/// Writes dead letters to the configured destination, counting and logging each write.
pub struct DeadLetter {
    connector: String,
    writer: Box<dyn DeadLetterWriter>,
    metrics: Metrics,
}

impl DeadLetter {
    /// A dead letter over `writer` (a bus's, or a test's fake).
    pub fn new(connector: &str, writer: Box<dyn DeadLetterWriter>, metrics: Metrics) -> Self {
        DeadLetter {
            connector: connector.to_owned(),
            writer,
            metrics,
        }
    }

    /// Writes every record and waits until all are durable.
    pub async fn write(
        &self,
        records: &[DeadRecord<'_>],
        info: DeadLetterInfo<'_>,
    ) -> Result<(), DeadLetterError> {
        if records.is_empty() {
            return Ok(());
        }
        self.writer.write(records, &info, &self.connector).await?;
        let destination = self.writer.destination();
        self.metrics
            .dead_lettered(&self.connector, info.reason, records.len() as u64);
        tracing::warn!(
            connector = %self.connector,
            destination,
            reason = info.reason,
            detail = info.detail,
            http_status = info.http_status,
            attempts = info.attempts,
            events = records.len(),
            "events dead-lettered"
        );
        Ok(())
    }

    /// Waits for anything still queued, up to `timeout` (shutdown).
    pub async fn flush(&self, timeout: Duration) -> Result<(), DeadLetterError> {
        self.writer.flush(timeout).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn headers_say_why_and_where_from() {
        let origin = Origin {
            topic: Arc::from("reso.Property"),
            partition: 2,
            offset: 41,
        };
        let record = DeadRecord {
            key: Some(b"k"),
            payload: b"{}",
            sequence: Some(7),
            resource_name: Some("Property"),
            source_label: None,
            origin: Some(&origin),
        };
        let info = DeadLetterInfo {
            reason: "rejected",
            detail: "consumer answered HTTP 400",
            http_status: Some(400),
            attempts: 1,
        };
        let h = headers(&record, &info, "mls");
        let get = |k: &str| h.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("dead_letter_reason"), Some("rejected"));
        assert_eq!(get("http_status"), Some("400"));
        assert_eq!(get("attempts"), Some("1"));
        assert_eq!(get("connector"), Some("mls"));
        assert_eq!(get("original_topic"), Some("reso.Property"));
        assert_eq!(get("original_partition"), Some("2"));
        assert_eq!(get("original_offset"), Some("41"));
        assert_eq!(get("EntityEventSource"), None, "absent facts are left out");
    }
}
