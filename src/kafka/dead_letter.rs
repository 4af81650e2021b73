//! Dead letters to a Kafka topic, with the Kafka sink's `acks=all` idempotent producer settings.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{Healing, Kind};
use crate::metrics::Metrics;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::{KafkaBuildError, KafkaSinkConfig};
use crate::dead_letter::{headers, DeadLetterError, DeadLetterInfo, DeadLetterWriter, DeadRecord};
use crate::secret::SecretRef;

/// A Kafka topic for dead letters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaDeadLetterConfig {
    /// Comma-separated `host:port` list of brokers.
    #[serde(default = "default_bootstrap")]
    pub bootstrap_servers: String,
    /// The dead-letter topic.
    pub topic: String,
    /// Create the topic through the admin API on first use.
    #[serde(default = "default_true")]
    pub create_topic: bool,
    /// Partitions of the topic when the bridge creates it.
    #[serde(default = "default_one")]
    pub topic_partitions: i32,
    /// Replication factor of the topic when the bridge creates it. Absent: the broker's
    /// `default.replication.factor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_replication_factor: Option<i32>,
    /// Bound on topic creation and on the delivery reports of one dead-letter write.
    #[serde(default = "default_delivery_timeout_ms")]
    pub delivery_timeout_ms: u64,
    /// Extra librdkafka producer options, passed through as-is.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
    /// librdkafka options whose values are secrets, by reference.
    #[serde(default)]
    pub librdkafka_secrets: BTreeMap<String, SecretRef>,
}

fn default_bootstrap() -> String {
    "127.0.0.1:9092".into()
}
fn default_true() -> bool {
    true
}
fn default_one() -> i32 {
    1
}
fn default_delivery_timeout_ms() -> u64 {
    15_000
}

impl KafkaDeadLetterConfig {
    /// The producer settings expressed as a Kafka sink config, to share its client setup.
    fn as_sink_config(&self) -> KafkaSinkConfig {
        KafkaSinkConfig {
            bootstrap_servers: self.bootstrap_servers.clone(),
            delivery_timeout_ms: self.delivery_timeout_ms,
            librdkafka: self.librdkafka.clone(),
            librdkafka_secrets: self.librdkafka_secrets.clone(),
            ..KafkaSinkConfig::default()
        }
    }

    /// Semantic checks; `Err((key, detail))`. The producer settings are the Kafka sink's, so
    /// they are checked by the sink's own rules.
    pub fn validate(&self) -> Result<(), (String, String)> {
        super::topics::check_topic_name(&self.topic).map_err(|e| ("topic".to_owned(), e))?;
        KafkaSinkConfig {
            topic_partitions: self.topic_partitions,
            topic_replication_factor: self.topic_replication_factor,
            ..self.as_sink_config()
        }
        .validate()
    }

    /// A copy safe to print (sensitive-looking inline librdkafka values masked).
    pub fn masked(&self) -> Self {
        let mut copy = self.clone();
        copy.librdkafka = self.as_sink_config().masked().librdkafka;
        copy
    }

    /// The librdkafka client configuration of the writer, secrets resolved.
    pub fn client_config(&self, connector: &str) -> Result<rdkafka::ClientConfig, KafkaBuildError> {
        self.as_sink_config().client_config(connector)
    }

    /// Builds the writer (does not contact the broker yet).
    pub fn build(
        &self,
        connector: &str,
        metrics: Metrics,
    ) -> Result<KafkaDeadLetter, KafkaBuildError> {
        let cc = self.as_sink_config().client_config(connector)?;
        let kind = {
            let cc = cc.clone();
            Kind {
                make: Box::new(move || cc.create()),
                fatal: |p: &FutureProducer| super::fatal_error(p),
                reachable: |p: &FutureProducer| super::broker_reachable(p),
            }
        };
        let stuck_after = Duration::from_millis(self.delivery_timeout_ms);
        Ok(KafkaDeadLetter {
            producer: Healing::new(connector, "dead_letter", kind, stuck_after, metrics)?,
            admin: cc.create()?,
            config: self.clone(),
            topic_ready: OnceCell::new(),
        })
    }
}

/// Writes dead letters to a Kafka topic.
pub struct KafkaDeadLetter {
    producer: Healing<FutureProducer>,
    admin: AdminClient<DefaultClientContext>,
    config: KafkaDeadLetterConfig,
    topic_ready: OnceCell<()>,
}

impl KafkaDeadLetter {
    /// The topic, for logs.
    pub fn topic(&self) -> &str {
        &self.config.topic
    }

    fn unavailable(&self, reason: impl Into<String>) -> DeadLetterError {
        DeadLetterError::Unavailable {
            destination: self.config.topic.clone(),
            reason: reason.into(),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.delivery_timeout_ms)
    }

    async fn ensure_topic(&self) -> Result<(), DeadLetterError> {
        if !self.config.create_topic {
            return Ok(());
        }
        self.topic_ready
            .get_or_try_init(|| async {
                let topic = NewTopic::new(
                    &self.config.topic,
                    self.config.topic_partitions,
                    super::replication(self.config.topic_replication_factor),
                );
                let opts = AdminOptions::new().operation_timeout(Some(self.timeout()));
                let results =
                    tokio::time::timeout(self.timeout(), self.admin.create_topics([&topic], &opts))
                        .await
                        .map_err(|_| self.unavailable("timed out creating the topic"))?
                        .map_err(|e| self.unavailable(format!("cannot create the topic: {e}")))?;
                for result in results {
                    match result {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((_, code)) => {
                            return Err(self.unavailable(format!("cannot create the topic: {code}")))
                        }
                    }
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Writes every record and waits until all are confirmed (`acks=all`). A record too large
    /// for the producer or the topic is written again without its payload (headers
    /// `dead_letter_payload_omitted` and `dead_letter_payload_bytes` say so; `original_*` say
    /// where the event still is), so it never blocks its partition.
    pub async fn write(
        &self,
        records: &[DeadRecord<'_>],
        info: &DeadLetterInfo<'_>,
        connector: &str,
    ) -> Result<(), DeadLetterError> {
        self.ensure_topic().await?;
        self.producer.heal_if_fatal();
        let result = self.write_all(records, info, connector).await;
        match &result {
            Ok(()) => self.producer.succeeded(),
            Err(DeadLetterError::Unavailable { .. }) => {
                self.producer.failed().await;
            }
        }
        result
    }

    async fn write_all(
        &self,
        records: &[DeadRecord<'_>],
        info: &DeadLetterInfo<'_>,
        connector: &str,
    ) -> Result<(), DeadLetterError> {
        let producer = self.producer.get();
        let mut pending = Vec::with_capacity(records.len());
        for record in records {
            match producer.send_result(self.record(record, info, connector, false)) {
                Ok(delivery) => pending.push((record, Some(delivery))),
                Err((e, _)) if too_large(&e) => pending.push((record, None)),
                Err((e, _)) => return Err(self.unavailable(format!("cannot enqueue: {e}"))),
            }
        }
        let guard = self.timeout() + Duration::from_secs(2);
        let producer = &*producer;
        let waits = pending.into_iter().map(|(record, delivery)| async move {
            if let Some(delivery) = delivery {
                match delivery.await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err((e, _))) if too_large(&e) => {}
                    Ok(Err((e, _))) => return Err(format!("delivery failed: {e}")),
                    Err(_) => return Err("producer shut down".to_owned()),
                }
            }
            tracing::warn!(%connector, topic = %self.config.topic, bytes = record.payload.len(), "dead letter too large for its topic; writing it without its payload");
            let slim = self.record(record, info, connector, true);
            match producer.send_result(slim) {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(format!("delivery failed: {e}")),
                    Err(_) => Err("producer shut down".to_owned()),
                },
                Err((e, _)) => Err(format!("cannot enqueue: {e}")),
            }
        });
        let reports = tokio::time::timeout(guard, join_all(waits))
            .await
            .map_err(|_| self.unavailable("delivery reports timed out"))?;
        for report in reports {
            report.map_err(|e| self.unavailable(e))?;
        }
        Ok(())
    }

    fn record<'r>(
        &'r self,
        record: &'r DeadRecord<'_>,
        info: &DeadLetterInfo<'_>,
        connector: &str,
        omit_payload: bool,
    ) -> FutureRecord<'r, [u8], [u8]> {
        let mut fields = headers(record, info, connector);
        if omit_payload {
            fields.push(("dead_letter_payload_omitted", "too_large".to_owned()));
            fields.push((
                "dead_letter_payload_bytes",
                record.payload.len().to_string(),
            ));
        }
        let mut kafka_headers = OwnedHeaders::new_with_capacity(fields.len());
        for (key, value) in &fields {
            kafka_headers = kafka_headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut fr = FutureRecord::to(&self.config.topic).headers(kafka_headers);
        if !omit_payload {
            fr = fr.payload(record.payload);
        }
        if let Some(key) = record.key {
            fr = fr.key(key);
        }
        fr
    }

    /// Waits for anything still queued in the producer, up to `timeout` (shutdown).
    pub async fn flush(&self, timeout: Duration) -> Result<(), DeadLetterError> {
        let producer = self.producer.get();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| self.unavailable(format!("flush task failed: {e}")))?
            .map_err(|e| self.unavailable(format!("flush incomplete: {e}")))
    }
}

/// Whether a produce error means the record is too large for the producer or the topic.
fn too_large(error: &rdkafka::error::KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
    )
}

#[async_trait::async_trait]
impl DeadLetterWriter for KafkaDeadLetter {
    async fn write(
        &self,
        records: &[DeadRecord<'_>],
        info: &DeadLetterInfo<'_>,
        connector: &str,
    ) -> Result<(), DeadLetterError> {
        KafkaDeadLetter::write(self, records, info, connector).await
    }

    async fn flush(&self, timeout: Duration) -> Result<(), DeadLetterError> {
        KafkaDeadLetter::flush(self, timeout).await
    }

    fn destination(&self) -> &str {
        self.topic()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_masking() {
        let mut k: KafkaDeadLetterConfig = toml::from_str("topic = \"dlq\"").unwrap();
        k.librdkafka
            .insert("sasl.password".into(), "hunter2".into());
        k.validate().unwrap();
        assert_eq!(k.masked().librdkafka["sasl.password"], "***");
        k.topic = "bad topic".into();
        assert_eq!(k.validate().unwrap_err().0, "topic");
    }
}
