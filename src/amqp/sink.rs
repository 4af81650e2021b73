//! The AMQP sink: one persistent message per EntityEvent, confirmed by the broker.
//!
//! A batch is routed and size-checked completely before anything is published (a rejected
//! event leaves the push unpublished). Then every message is published `mandatory` on a
//! channel in confirm mode and all the publisher confirms are awaited together: `send` is `Ok`
//! only when the broker acked every message and returned none as unroutable (unless
//! `on_unroutable = "ignore"`). A nack, a returned message, a lost channel or a confirm timeout
//! fail the batch as unavailable (503 + Retry-After to a webhook producer; the pump retries).
//!
//! `message_id` is deterministic and unique per connector and feed, so consumers can
//! de-duplicate redeliveries and producer retries: [`crate::layers::feeds::event_id`].

use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};

use super::config::{AmqpSinkConfig, OnUnroutable, MAX_SHORT_STRING};
use super::connection::{open_channel, AmqpBuildError, AmqpConnection};
use crate::connector::{count_by_resource, Message, RejectKind, Sink, SinkError};
use crate::layers::feeds::event_id;
use crate::metrics::Metrics;
use crate::resources::ResourcePolicy;
use crate::routing::TopicTemplate;

/// AMQP `delivery_mode` of a persistent message.
const PERSISTENT: u8 = 2;

/// Publishes batches of EntityEvents to a RabbitMQ exchange.
pub struct AmqpSink {
    connector: String,
    connection: AmqpConnection,
    /// The confirm-mode channel and the connection generation it belongs to.
    channel: tokio::sync::Mutex<Option<(u64, Channel)>>,
    exchange: String,
    template: TopicTemplate,
    resources: ResourcePolicy,
    on_unroutable: OnUnroutable,
    confirm_timeout: Duration,
    max_message_bytes: usize,
    metrics: Metrics,
}

impl AmqpSinkConfig {
    /// Builds the sink and starts connecting in the background (needs a tokio runtime).
    pub fn build(&self, connector: &str, metrics: Metrics) -> Result<AmqpSink, AmqpBuildError> {
        let template = TopicTemplate::parse(&self.routing_key_template)?;
        let connection =
            AmqpConnection::start(connector, self.connection(connector), metrics.clone())?;
        Ok(AmqpSink {
            connector: connector.to_owned(),
            connection,
            channel: tokio::sync::Mutex::new(None),
            exchange: self.exchange.clone(),
            template,
            resources: ResourcePolicy::new(
                self.resource_names,
                &self.extra_resource_names,
                self.max_resource_names,
            ),
            on_unroutable: self.on_unroutable,
            confirm_timeout: Duration::from_millis(self.confirm_timeout_ms),
            max_message_bytes: self.max_message_bytes,
            metrics,
        })
    }
}

/// How a publish failed: returned messages leave the channel usable, anything else does not.
enum Failure {
    Returned(SinkError),
    Channel(SinkError),
}

fn unavailable(reason: impl Into<String>) -> SinkError {
    SinkError::Unavailable {
        reason: reason.into(),
    }
}

/// The AMQP properties every published event carries: persistent, JSON, a stable `message_id`
/// and the routing facts as headers. Public so the benchmark's ceiling sends the same messages.
pub fn properties(connector: &str, m: &Message) -> BasicProperties {
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    let mut headers = FieldTable::default();
    headers.insert(
        "EntityEventSequence".into(),
        AMQPValue::LongLongInt(m.sequence),
    );
    headers.insert("ResourceName".into(), text(&m.resource_name));
    headers.insert("ResourceRecordKey".into(), text(&m.record_key));
    if let Some(source) = &m.source_label {
        headers.insert("EntityEventSource".into(), text(source));
    }
    BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type("application/json".into())
        .with_message_id(
            event_id(connector, m.source_label.as_deref(), m.sequence, m.conflict).into(),
        )
        .with_app_id("entity-bridge".into())
        .with_headers(headers)
}

impl AmqpSink {
    /// The routing key of every message; fails on the first that cannot be published at all.
    fn route_all(&self, batch: &[Message]) -> Result<Vec<String>, SinkError> {
        batch
            .iter()
            .enumerate()
            .map(|(index, m)| {
                if m.payload.len() > self.max_message_bytes {
                    return Err(SinkError::Rejected {
                        index,
                        field: None,
                        detail: format!(
                            "event is {} bytes; the AMQP sink accepts at most {} per event",
                            m.payload.len(),
                            self.max_message_bytes
                        ),
                        kind: RejectKind::TooLarge,
                    });
                }
                self.resources
                    .check(&m.resource_name)
                    .map_err(|detail| SinkError::Rejected {
                        index,
                        field: Some("ResourceName"),
                        detail,
                        kind: RejectKind::Unroutable,
                    })?;
                let key = self
                    .template
                    .render(&m.resource_name, m.source_label.as_deref());
                if key.len() > MAX_SHORT_STRING {
                    return Err(SinkError::Rejected {
                        index,
                        field: None,
                        detail: format!(
                            "the routing key would be {} bytes; AMQP allows at most 255",
                            key.len()
                        ),
                        kind: RejectKind::Unroutable,
                    });
                }
                Ok(key)
            })
            .collect()
    }

    /// The confirm-mode channel of the current connection, opened on first use after a
    /// (re)connect or after the previous channel was closed (e.g. by a broker error).
    async fn channel(&self) -> Result<Channel, SinkError> {
        let mut slot = self.channel.lock().await;
        let live = self
            .connection
            .current()
            .ok_or_else(|| unavailable("not connected to RabbitMQ (reconnecting)"))?;
        if let Some((generation, channel)) = slot.as_ref() {
            if *generation == live.generation && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        let channel = open_channel(&live).await.map_err(unavailable)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| unavailable(format!("cannot enable publisher confirms: {e}")))?;
        *slot = Some((live.generation, channel.clone()));
        Ok(channel)
    }

    /// Forgets the channel so the next batch opens a fresh one (dropping closes it).
    async fn discard_channel(&self, failed: &Channel) {
        let mut slot = self.channel.lock().await;
        if slot.as_ref().is_some_and(|(_, c)| c.id() == failed.id()) {
            *slot = None;
        }
    }

    async fn publish_all(&self, batch: &[Message], keys: &[String]) -> Result<(), SinkError> {
        let channel = self.channel().await?;
        match self.publish_on(&channel, batch, keys).await {
            Ok(()) => Ok(()),
            Err(Failure::Returned(e)) => Err(e),
            Err(Failure::Channel(e)) => {
                // Late confirms or a closed channel: the next batch starts on a fresh one.
                self.discard_channel(&channel).await;
                Err(e)
            }
        }
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        batch: &[Message],
        keys: &[String],
    ) -> Result<(), Failure> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let mut confirms = Vec::with_capacity(batch.len());
        for (m, key) in batch.iter().zip(keys) {
            let confirm = channel
                .basic_publish(
                    &self.exchange,
                    key,
                    options,
                    &m.payload,
                    properties(&self.connector, m),
                )
                .await
                .map_err(|e| Failure::Channel(unavailable(format!("publish failed: {e}"))))?;
            confirms.push(confirm);
        }
        let confirmations = tokio::time::timeout(self.confirm_timeout, join_all(confirms))
            .await
            .map_err(|_| Failure::Channel(unavailable("publisher confirms timed out")))?;
        let (mut nacked, mut returned) = (0usize, Vec::new());
        for (index, confirmation) in confirmations.into_iter().enumerate() {
            match confirmation {
                Ok(Confirmation::Ack(None)) => {}
                Ok(Confirmation::Ack(Some(_))) => returned.push(index),
                Ok(Confirmation::Nack(_)) => nacked += 1,
                Ok(Confirmation::NotRequested) => {
                    return Err(Failure::Channel(unavailable(
                        "channel is not in confirm mode",
                    )))
                }
                Err(e) => {
                    return Err(Failure::Channel(unavailable(format!(
                        "channel lost before confirm: {e}"
                    ))))
                }
            }
        }
        if nacked > 0 {
            return Err(Failure::Channel(unavailable(format!(
                "the broker nacked {nacked} of {} messages",
                batch.len()
            ))));
        }
        if returned.is_empty() {
            return Ok(());
        }
        let returned_batch: Vec<Message> = returned.iter().map(|&i| batch[i].clone()).collect();
        count_by_resource(&returned_batch, |resource, n| {
            self.metrics.amqp_returned(&self.connector, resource, n)
        });
        let first_key = &keys[returned[0]];
        match self.on_unroutable {
            OnUnroutable::Fail => Err(Failure::Returned(unavailable(format!(
                "{} message(s) returned as unroutable: no queue is bound to exchange `{}` for routing key `{first_key}`",
                returned.len(),
                self.exchange
            )))),
            OnUnroutable::Ignore => {
                tracing::warn!(connector = %self.connector, exchange = %self.exchange, routing_key = %first_key, returned = returned.len(), "unroutable messages dropped by the broker (on_unroutable = \"ignore\")");
                Ok(())
            }
        }
    }
}

#[async_trait]
impl Sink for AmqpSink {
    async fn send(&self, batch: &[Message]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let result = match self.route_all(batch) {
            // The whole exchange with the broker (channel, publishes, confirms) is bounded: on a
            // connection that is silently dead (a partition, before heartbeats notice) opening a
            // channel never completes, and a push must still get its 503 in time.
            Ok(keys) => {
                match tokio::time::timeout(self.confirm_timeout, self.publish_all(batch, &keys))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => {
                        // The channel may have late confirms coming: start the next batch on
                        // a fresh one.
                        *self.channel.lock().await = None;
                        Err(unavailable(
                            "RabbitMQ did not answer within confirm_timeout_ms",
                        ))
                    }
                }
            }
            Err(e) => Err(e),
        };
        result
    }

    async fn ready(&self) -> Result<(), SinkError> {
        match self.connection.current() {
            Some(live) if live.is_connected() => Ok(()),
            _ => Err(unavailable(format!(
                "not connected to RabbitMQ at {}",
                self.connection.endpoint()
            ))),
        }
    }

    async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        let started = Instant::now();
        let channel = self.channel.lock().await.take();
        let mut result = Ok(());
        if let Some((_, channel)) = channel {
            if channel.status().connected() {
                match tokio::time::timeout(timeout, channel.wait_for_confirms()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => result = Err(unavailable(format!("confirms lost: {e}"))),
                    Err(_) => result = Err(unavailable("outstanding confirms timed out")),
                }
                let _ = channel.close(200, "entity-bridge shutting down").await;
            }
        }
        let left = timeout.saturating_sub(started.elapsed());
        self.connection
            .close(left.max(Duration::from_millis(100)))
            .await;
        result
    }
}

#[async_trait]
impl crate::runtime::build::BuildSink for AmqpSinkConfig {
    async fn build_sink(
        &self,
        ctx: &crate::runtime::build::BuildContext,
    ) -> Result<std::sync::Arc<dyn Sink>, crate::runtime::build::BuildError> {
        let sink = self
            .build(&ctx.connector, ctx.metrics.clone())
            .map_err(crate::runtime::build::BuildError::sink)?;
        Ok(std::sync::Arc::new(sink))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;

    #[test]
    fn properties_are_persistent_json_with_headers() {
        let m = Message {
            delete: false,
            conflict: None,
            sequence: 1101,
            resource_name: "Property".into(),
            record_key: "235021".into(),
            source_label: Some(Arc::from("feed")),
            payload: Bytes::from_static(b"{}"),
            origin: None,
        };
        let p = properties("mls", &m);
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "mls/feed/1101");
        let headers = p.headers().as_ref().unwrap().inner();
        assert_eq!(headers["EntityEventSequence"], AMQPValue::LongLongInt(1101));
        assert_eq!(
            headers["EntityEventSource"],
            AMQPValue::LongString("feed".into())
        );
    }
}
