//! The Kafka sink: one record per EntityEvent, confirmed by `acks=all` delivery reports.
//!
//! A batch is routed completely before anything is produced (so a rejected event leaves the
//! push unpublished), missing topics are created through the admin API once, then every record
//! is enqueued at once and the delivery reports are awaited together — no per-event round trip,
//! and one wake-up per batch rather than one future per record ([`super::delivery`]).
//! The idempotent producer keeps librdkafka's internal retries free of duplicates and in order;
//! when it reports a fatal error (e.g. fenced after a network partition) it is replaced
//! ([`super::healing`]) and readiness says so until it has been.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use super::config::{Deletes, KafkaSinkConfig};
use super::delivery::{Batch, SinkContext};
use super::healing::{Healing, Kind};
use super::topics::TopicRouter;
use crate::connector::{Message, RejectKind, Sink, SinkError};
use crate::layers::feeds::event_id;
use crate::metrics::Metrics;

/// Errors building the sink (bad librdkafka options, unreadable secrets).
#[derive(Debug, thiserror::Error)]
pub enum KafkaBuildError {
    /// librdkafka refused the configuration.
    #[error("librdkafka rejected the configuration: {0}")]
    Client(#[from] KafkaError),
    /// A `librdkafka_secrets` entry could not be read.
    #[error("librdkafka_secrets.\"{key}\": {source}")]
    Secret {
        /// The librdkafka key.
        key: String,
        /// Why it could not be read.
        source: crate::secret::SecretError,
    },
    /// The topic template is invalid.
    #[error(transparent)]
    Template(#[from] super::topics::TemplateError),
}

/// Publishes batches of EntityEvents to Kafka.
pub struct KafkaSink {
    connector: String,
    producer: Healing<ThreadedProducer<SinkContext>>,
    admin: AdminClient<DefaultClientContext>,
    router: TopicRouter,
    config: KafkaSinkConfig,
    max_message_bytes: usize,
    known_topics: Mutex<HashSet<String>>,
    create_lock: tokio::sync::Mutex<()>,
}

impl KafkaSinkConfig {
    /// The librdkafka client configuration, secrets resolved.
    pub fn client_config(&self, connector: &str) -> Result<ClientConfig, KafkaBuildError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", format!("entity-bridge.{connector}"))
            .set("linger.ms", "5");
        apply_passthrough(&mut cc, &self.librdkafka, &self.librdkafka_secrets)?;
        // Set last: the delivery contract is not negotiable.
        cc.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", self.delivery_timeout_ms.to_string());
        Ok(cc)
    }

    /// Builds the sink (does not contact the broker yet).
    pub fn build(&self, connector: &str, metrics: Metrics) -> Result<KafkaSink, KafkaBuildError> {
        let cc = self.client_config(connector)?;
        let max_message_bytes = self
            .librdkafka
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let kind = {
            let cc = cc.clone();
            Kind {
                make: Box::new(move || cc.create_with_context(SinkContext)),
                fatal: fatal_error,
                reachable: broker_reachable,
            }
        };
        let stuck_after = Duration::from_millis(self.delivery_timeout_ms);
        Ok(KafkaSink {
            connector: connector.to_owned(),
            producer: Healing::new(connector, "sink", kind, stuck_after, metrics)?,
            admin: cc.create()?,
            router: TopicRouter::new(self)?,
            config: self.clone(),
            max_message_bytes,
            known_topics: Mutex::new(HashSet::new()),
            create_lock: tokio::sync::Mutex::new(()),
        })
    }
}

/// Applies raw librdkafka options and secret-valued options (resolved now) to `cc`.
pub fn apply_passthrough(
    cc: &mut ClientConfig,
    options: &std::collections::BTreeMap<String, String>,
    secrets: &std::collections::BTreeMap<String, crate::secret::SecretRef>,
) -> Result<(), KafkaBuildError> {
    for (key, value) in options {
        cc.set(key, value);
    }
    for (key, secret) in secrets {
        let value = secret.resolve().map_err(|source| KafkaBuildError::Secret {
            key: key.clone(),
            source,
        })?;
        cc.set(key, value.expose());
    }
    Ok(())
}

/// The headers every published record carries: `EntityEventSequence`, `ResourceName`,
/// `EntityEventSource` when the push had one, `message_id` (the downstream idempotency key,
/// [`event_id`]) and the content type. Public so the benchmark's
/// ceiling writes the same records.
pub fn headers(connector: &str, message: &Message) -> OwnedHeaders {
    let sequence = message.sequence.to_string();
    let id = event_id(
        connector,
        message.source_label.as_deref(),
        message.sequence,
        message.conflict,
    );
    let mut headers = OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: "EntityEventSequence",
            value: Some(sequence.as_bytes()),
        })
        .insert(Header {
            key: "ResourceName",
            value: Some(message.resource_name.as_bytes()),
        });
    if let Some(source) = &message.source_label {
        headers = headers.insert(Header {
            key: "EntityEventSource",
            value: Some(source.as_bytes()),
        });
    }
    headers
        .insert(Header {
            key: "message_id",
            value: Some(id.as_bytes()),
        })
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        })
}

/// Whether a producer's broker answers a metadata request (blocking; [`Healing`] runs it off
/// the runtime).
pub fn broker_reachable<C: rdkafka::producer::ProducerContext, P: Producer<C>>(p: &P) -> bool {
    p.client()
        .fetch_metadata(None, Duration::from_secs(2))
        .is_ok()
}

/// A producer's fatal error as text ([`Healing`] replaces a producer that has one).
pub fn fatal_error<C: rdkafka::producer::ProducerContext, P: Producer<C>>(p: &P) -> Option<String> {
    p.client()
        .fatal_error()
        .map(|(code, reason)| format!("{code}: {reason}"))
}

fn unavailable(reason: impl Into<String>) -> SinkError {
    SinkError::Unavailable {
        reason: reason.into(),
    }
}

impl KafkaSink {
    fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.config.delivery_timeout_ms)
    }

    /// Routes every message; fails on the first that cannot be published at all.
    fn route_all(&self, batch: &[Message]) -> Result<Vec<Arc<str>>, SinkError> {
        batch
            .iter()
            .enumerate()
            .map(|(index, m)| {
                if m.payload.len() + m.record_key.len() > self.max_message_bytes {
                    return Err(SinkError::Rejected {
                        index,
                        field: None,
                        detail: format!(
                            "event is {} bytes; the Kafka sink accepts at most {} per event",
                            m.payload.len() + m.record_key.len(),
                            self.max_message_bytes
                        ),
                        kind: RejectKind::TooLarge,
                    });
                }
                self.router
                    .route(&m.resource_name, m.source_label.as_deref())
                    .map_err(|detail| SinkError::Rejected {
                        index,
                        field: Some("ResourceName"),
                        detail: detail.to_string(),
                        kind: RejectKind::Unroutable,
                    })
            })
            .collect()
    }

    /// Makes sure every topic exists, creating missing ones once (single flight).
    async fn ensure_topics(&self, topics: &[Arc<str>]) -> Result<(), SinkError> {
        let unknown = |topics: &[Arc<str>]| -> BTreeSet<String> {
            let known = self.known_topics.lock().expect("topic cache lock");
            topics
                .iter()
                .filter(|t| !known.contains(&***t))
                .map(|t| t.to_string())
                .collect()
        };
        if unknown(topics).is_empty() {
            return Ok(());
        }
        let _guard = self.create_lock.lock().await;
        let missing = unknown(topics);
        if missing.is_empty() {
            return Ok(());
        }
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.config.topic_partitions,
                    super::config::replication(self.config.topic_replication_factor),
                )
            })
            .collect();
        let opts = AdminOptions::new()
            .request_timeout(Some(self.delivery_timeout()))
            .operation_timeout(Some(self.delivery_timeout()));
        let results = tokio::time::timeout(
            self.delivery_timeout(),
            self.admin.create_topics(&new_topics, &opts),
        )
        .await
        .map_err(|_| unavailable("timed out creating topics"))?
        .map_err(|e| unavailable(format!("cannot create topics: {e}")))?;
        for result in results {
            match result {
                Ok(topic) => {
                    tracing::info!(connector = %self.connector, %topic, "created topic");
                    self.known_topics.lock().expect("lock").insert(topic);
                }
                Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    self.known_topics.lock().expect("lock").insert(topic);
                }
                Err((topic, code)) => {
                    if self.topic_exists(&topic).await {
                        self.known_topics.lock().expect("lock").insert(topic);
                    } else {
                        tracing::warn!(connector = %self.connector, %topic, error = %code, "cannot create topic");
                        return Err(unavailable(format!(
                            "cannot create topic `{topic}`: {code}"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the broker's metadata lists `topic` (used when creation was refused, e.g. ACLs).
    async fn topic_exists(&self, topic: &str) -> bool {
        let producer = self.producer.get();
        let topic = topic.to_owned();
        let timeout = self.delivery_timeout();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map(|m| {
                    m.topics()
                        .iter()
                        .any(|t| t.name() == topic && t.error().is_none())
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    }

    /// Produces the batch and tells the producer's [`Healing`] how it went. Only this path
    /// judges the producer: a full queue, a refused event or a topic that cannot be created say
    /// nothing about whether it can produce.
    async fn produce_all(&self, batch: &[Message], topics: &[Arc<str>]) -> Result<(), SinkError> {
        let result = self.produce_batch(batch, topics).await;
        match &result {
            Ok(()) => self.producer.succeeded(),
            Err(SinkError::Unavailable { .. }) => {
                self.producer.failed().await;
            }
            Err(_) => {}
        }
        result
    }

    async fn produce_batch(&self, batch: &[Message], topics: &[Arc<str>]) -> Result<(), SinkError> {
        let (reports, outcome) = Batch::new(batch.len());
        let producer = self.producer.get();
        for (index, (message, topic)) in batch.iter().zip(topics).enumerate() {
            let record = BaseRecord::with_opaque_to(topic, reports.report(index))
                .key(message.record_key.as_bytes())
                .headers(headers(&self.connector, message));
            let tombstone = message.delete && self.config.deletes == Deletes::Tombstone;
            let record = if tombstone {
                record
            } else {
                record.payload(&message.payload[..])
            };
            match producer.send(record) {
                Ok(()) => {}
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(SinkError::Overloaded {
                        reason: "producer queue is full".into(),
                    })
                }
                Err((e, _)) => return Err(unavailable(format!("cannot enqueue: {e}"))),
            }
        }
        // librdkafka bounds each delivery by message.timeout.ms; the outer timeout is a guard.
        let guard = self.delivery_timeout() + Duration::from_secs(2);
        let outcome = tokio::time::timeout(guard, outcome)
            .await
            .map_err(|_| unavailable("delivery reports timed out"))?
            .map_err(|_| unavailable("producer shut down"))?;
        match outcome {
            Ok(()) => Ok(()),
            Err((index, KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge))) => {
                Err(SinkError::Rejected {
                    index,
                    field: None,
                    detail: "the broker refused the event as too large for its topic".into(),
                    kind: RejectKind::RefusedBySink,
                })
            }
            Err((_, e)) => Err(unavailable(format!("delivery failed: {e}"))),
        }
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn send(&self, batch: &[Message]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        // A producer that went fatal since the last send is replaced before it fails this one.
        self.producer.heal_if_fatal();
        let result = async {
            let topics = self.route_all(batch)?;
            if self.config.create_topics {
                self.ensure_topics(&topics).await?;
            }
            self.produce_all(batch, &topics).await
        }
        .await;
        result
    }

    async fn ready(&self) -> Result<(), SinkError> {
        if let Some(problem) = self.producer.check().await {
            return Err(unavailable(format!("{problem}; replacing the producer")));
        }
        let producer = self.producer.get();
        let timeout = Duration::from_secs(5).min(self.delivery_timeout());
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout))
            .await
            .map_err(|e| unavailable(format!("metadata task failed: {e}")))?
            .map_err(|e| unavailable(format!("broker metadata unreachable: {e}")))?;
        Ok(())
    }

    async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        let producer = self.producer.get();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| unavailable(format!("flush task failed: {e}")))?
            .map_err(|e| unavailable(format!("flush incomplete: {e}")))
    }
}

#[async_trait]
impl crate::runtime::build::BuildSink for KafkaSinkConfig {
    async fn build_sink(
        &self,
        ctx: &crate::runtime::build::BuildContext,
    ) -> Result<Arc<dyn Sink>, crate::runtime::build::BuildError> {
        let sink = self
            .build(&ctx.connector, ctx.metrics.clone())
            .map_err(crate::runtime::build::BuildError::sink)?;
        Ok(Arc::new(sink))
    }
}
