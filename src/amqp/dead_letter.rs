//! Dead letters to a RabbitMQ exchange: persistent messages, `mandatory`, publisher confirms.
//!
//! Dead letters are rare, so this keeps one lazily opened connection + confirm-mode channel and
//! reopens it after any failure (the caller retries the write with backoff). Optionally it
//! declares a durable queue bound to the exchange, so a fresh broker keeps the dead letters
//! instead of returning them as unroutable (which fails the write: nothing is silently dropped).

use std::time::Duration;

use futures::future::join_all;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};

use super::{ExchangeType, DEFAULT_URL};
use crate::dead_letter::{headers, DeadLetterError, DeadLetterInfo, DeadLetterWriter, DeadRecord};
use crate::secret::{Secret, SecretError, SecretRef};

/// A RabbitMQ exchange for dead letters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpDeadLetterConfig {
    /// The AMQP URL (`amqp://user:password@host:5672/vhost`) by reference, since it holds a
    /// password. Unset: `amqp://guest:guest@127.0.0.1:5672/%2f`.
    #[serde(default)]
    pub url: Option<SecretRef>,
    /// The exchange dead letters are published to.
    pub exchange: String,
    /// Its type, when the bridge declares it.
    #[serde(default = "default_exchange_type")]
    pub exchange_type: ExchangeType,
    /// Declare the exchange (durable) when connecting.
    #[serde(default = "default_true")]
    pub declare_exchange: bool,
    /// Routing key of every dead letter.
    #[serde(default = "default_routing_key")]
    pub routing_key: String,
    /// A durable queue to declare and bind to the exchange with `routing_key`, if any.
    #[serde(default)]
    pub queue: Option<String>,
    /// Bound on connecting and declaring.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Bound on waiting for the publisher confirms of one write.
    #[serde(default = "default_confirm_timeout_ms")]
    pub confirm_timeout_ms: u64,
}

fn default_exchange_type() -> ExchangeType {
    ExchangeType::Fanout
}
fn default_true() -> bool {
    true
}
fn default_routing_key() -> String {
    "dead-letter".into()
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_confirm_timeout_ms() -> u64 {
    15_000
}

fn short(key: &str, value: &str) -> Result<(), (String, String)> {
    if value.is_empty() || value.len() > 255 {
        return Err((key.into(), "must be 1 to 255 bytes".into()));
    }
    Ok(())
}

impl AmqpDeadLetterConfig {
    /// Semantic checks; `Err((key, detail))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        short("exchange", &self.exchange)?;
        if self.exchange.starts_with("amq.") && self.declare_exchange {
            return Err((
                "declare_exchange".into(),
                "amq.* exchanges cannot be declared; set declare_exchange = false".into(),
            ));
        }
        if self.routing_key.len() > 255 {
            return Err(("routing_key".into(), "must be at most 255 bytes".into()));
        }
        if let Some(queue) = &self.queue {
            short("queue", queue)?;
        }
        if !(100..=600_000).contains(&self.connect_timeout_ms)
            || !(100..=3_600_000).contains(&self.confirm_timeout_ms)
        {
            return Err((
                "connect_timeout_ms".into(),
                "connect_timeout_ms and confirm_timeout_ms must be between 100 and 600000".into(),
            ));
        }
        Ok(())
    }

    /// Resolves the URL reference (no network yet).
    pub fn build(&self) -> Result<AmqpDeadLetter, SecretError> {
        let url = match &self.url {
            Some(r) => r.resolve()?,
            None => Secret::new(DEFAULT_URL),
        };
        Ok(AmqpDeadLetter {
            url,
            config: self.clone(),
            channel: tokio::sync::Mutex::new(None),
        })
    }
}

/// Writes dead letters to a RabbitMQ exchange.
pub struct AmqpDeadLetter {
    url: Secret,
    config: AmqpDeadLetterConfig,
    channel: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

impl AmqpDeadLetter {
    /// The exchange, for logs.
    pub fn exchange(&self) -> &str {
        &self.config.exchange
    }

    fn unavailable(&self, reason: impl Into<String>) -> DeadLetterError {
        DeadLetterError::Unavailable {
            destination: self.config.exchange.clone(),
            reason: reason.into(),
        }
    }

    async fn open(&self) -> Result<(Connection, Channel), lapin::Error> {
        let properties = ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio)
            .with_connection_name("entity-bridge.dead-letter".into());
        let connection = Connection::connect(self.url.expose(), properties).await?;
        let channel = connection.create_channel().await?;
        let c = &self.config;
        if c.declare_exchange {
            let options = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(
                    &c.exchange,
                    c.exchange_type.kind(),
                    options,
                    FieldTable::default(),
                )
                .await?;
        }
        if let Some(queue) = &c.queue {
            let options = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(queue, options, FieldTable::default())
                .await?;
            channel
                .queue_bind(
                    queue,
                    &c.exchange,
                    &c.routing_key,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok((connection, channel))
    }

    async fn channel(&self) -> Result<Channel, DeadLetterError> {
        let mut slot = self.channel.lock().await;
        if let Some((connection, channel)) = slot.as_ref() {
            if connection.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        *slot = None;
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        // lapin errors do not contain the URL; the URL itself is never logged.
        let (connection, channel) = tokio::time::timeout(timeout, self.open())
            .await
            .map_err(|_| self.unavailable("connecting to RabbitMQ timed out"))?
            .map_err(|e| self.unavailable(format!("cannot connect or declare: {e}")))?;
        *slot = Some((connection, channel.clone()));
        Ok(channel)
    }

    /// Forgets the channel after a failure so the next write reconnects.
    async fn discard(&self) {
        self.channel.lock().await.take();
    }

    /// Publishes every record and waits until the broker confirmed all of them.
    pub async fn write(
        &self,
        records: &[DeadRecord<'_>],
        info: &DeadLetterInfo<'_>,
        connector: &str,
    ) -> Result<(), DeadLetterError> {
        let result = self.publish(records, info, connector).await;
        if result.is_err() {
            self.discard().await;
        }
        result
    }

    async fn publish(
        &self,
        records: &[DeadRecord<'_>],
        info: &DeadLetterInfo<'_>,
        connector: &str,
    ) -> Result<(), DeadLetterError> {
        let channel = self.channel().await?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let mut confirms = Vec::with_capacity(records.len());
        for record in records {
            let mut table = FieldTable::default();
            for (key, value) in headers(record, info, connector) {
                table.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
            }
            if let Some(key) = record.key {
                let key = String::from_utf8_lossy(key).into_owned();
                table.insert(
                    "ResourceRecordKey".into(),
                    AMQPValue::LongString(key.into()),
                );
            }
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_app_id("entity-bridge".into())
                .with_headers(table);
            let confirm = channel
                .basic_publish(
                    &self.config.exchange,
                    &self.config.routing_key,
                    options,
                    record.payload,
                    properties,
                )
                .await
                .map_err(|e| self.unavailable(format!("publish failed: {e}")))?;
            confirms.push(confirm);
        }
        let timeout = Duration::from_millis(self.config.confirm_timeout_ms);
        let confirmations = tokio::time::timeout(timeout, join_all(confirms))
            .await
            .map_err(|_| self.unavailable("publisher confirms timed out"))?;
        for confirmation in confirmations {
            match confirmation {
                Ok(Confirmation::Ack(None)) => {}
                Ok(Confirmation::Ack(Some(_))) => {
                    return Err(self.unavailable(format!(
                    "returned as unroutable: no queue is bound for routing key `{}` (set `queue`)",
                    self.config.routing_key
                )))
                }
                Ok(Confirmation::Nack(_)) => return Err(self.unavailable("the broker nacked")),
                Ok(Confirmation::NotRequested) => {
                    return Err(self.unavailable("channel is not in confirm mode"))
                }
                Err(e) => return Err(self.unavailable(format!("channel lost: {e}"))),
            }
        }
        Ok(())
    }

    /// Closes the connection (shutdown).
    pub async fn close(&self, timeout: Duration) {
        let slot = self.channel.lock().await.take();
        if let Some((connection, _)) = slot {
            let _ = tokio::time::timeout(timeout, connection.close(200, "shutdown")).await;
        }
    }
}

#[async_trait::async_trait]
impl DeadLetterWriter for AmqpDeadLetter {
    async fn write(
        &self,
        records: &[DeadRecord<'_>],
        info: &DeadLetterInfo<'_>,
        connector: &str,
    ) -> Result<(), DeadLetterError> {
        AmqpDeadLetter::write(self, records, info, connector).await
    }

    /// Closes the connection (every write was confirmed before it returned).
    async fn flush(&self, timeout: Duration) -> Result<(), DeadLetterError> {
        self.close(timeout).await;
        Ok(())
    }

    fn destination(&self) -> &str {
        self.exchange()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c: AmqpDeadLetterConfig = toml::from_str("exchange = \"reso.dlx\"").unwrap();
        c.validate().unwrap();
        assert_eq!(c.exchange_type, ExchangeType::Fanout);
        assert!(c.url.is_none());
        let bad: AmqpDeadLetterConfig = toml::from_str("exchange = \"amq.fanout\"").unwrap();
        assert_eq!(bad.validate().unwrap_err().0, "declare_exchange");
    }
}
