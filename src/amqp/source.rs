//! The AMQP source: consumes queues and settles each delivery only after the sink decided.
//!
//! One channel consumes every configured queue with a `basic.qos` prefetch. A batch is the
//! first delivery plus whatever else arrives within `linger_ms`, up to `max_batch`. The pump
//! settles it: `Delivered` → `basic.ack`, `Retry` → `basic.nack` with requeue (the pump has
//! already waited its backoff), `Poison` → `basic.nack` without requeue, so the queue's
//! dead-letter exchange (if any) receives it.
//!
//! Each message body must be one EntityEvent (see [`super::delivery`]); a body that fails
//! validation can never succeed, so it is dead-lettered at once and counted.
//!
//! Delivery tags belong to the channel that delivered them. After a connection or channel
//! loss the broker requeues every unacknowledged delivery, so settling a batch from a dead
//! channel is skipped (the batch comes back, at-least-once), never sent on the new channel.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::join_all;
use futures::stream::{BoxStream, SelectAll, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::time::Instant;

use super::config::AmqpSourceConfig;
use super::connection::{open_channel, AmqpBuildError, AmqpConnection, Live};
use super::delivery::to_message;
use crate::connector::{Outcome, Probe, Source, SourceBatch, SourceError};
use crate::event::ParseOptions;
use crate::metrics::Metrics;

/// Bound on settling one batch (acks are not confirmed by the broker; this guards a stuck socket).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

type Deliveries = SelectAll<BoxStream<'static, (Arc<str>, lapin::Result<Delivery>)>>;

/// The channel currently consuming, and the connection generation it belongs to.
struct Consuming {
    generation: u64,
    channel: Channel,
    deliveries: Deliveries,
}

/// Consumes EntityEvents from RabbitMQ queues.
pub struct AmqpSource {
    connector: String,
    connection: AmqpConnection,
    queues: Vec<Arc<str>>,
    prefetch_count: u16,
    max_batch: usize,
    linger: Duration,
    intake: Intake,
    consuming: Option<Consuming>,
    /// The channel the batch now with the pump came from.
    outstanding: Option<Channel>,
}

/// Turns deliveries into batch entries (kept apart so it can be borrowed while the
/// non-`Sync` delivery stream is borrowed mutably).
struct Intake {
    connector: String,
    parse: ParseOptions,
    metrics: Metrics,
}

impl AmqpSourceConfig {
    /// Builds the source and starts connecting in the background (needs a tokio runtime).
    pub fn build(&self, connector: &str, metrics: Metrics) -> Result<AmqpSource, AmqpBuildError> {
        let connection =
            AmqpConnection::start(connector, self.connection(connector), metrics.clone())?;
        Ok(AmqpSource {
            connector: connector.to_owned(),
            connection,
            queues: self.queues.iter().map(|q| Arc::from(q.as_str())).collect(),
            prefetch_count: self.prefetch_count,
            max_batch: self.max_batch,
            linger: Duration::from_millis(self.linger_ms),
            intake: Intake {
                connector: connector.to_owned(),
                parse: ParseOptions {
                    coerce_numeric_record_key: self.coerce_numeric_record_key,
                    max_events: 1,
                    max_depth: self.max_json_depth,
                    refuse_rendered_annotations: false,
                },
                metrics,
            },
            consuming: None,
            outstanding: None,
        })
    }
}

impl AmqpSource {
    /// The consuming channel, (re)started on the current connection when needed.
    async fn consuming(&mut self) -> Result<&mut Consuming, SourceError> {
        let current = self.connection.current().map(|l| l.generation);
        let healthy = self
            .consuming
            .as_ref()
            .is_some_and(|c| Some(c.generation) == current && c.channel.status().connected());
        if !healthy {
            self.consuming = None;
            let live =
                self.connection.wait_connected().await.ok_or_else(|| {
                    SourceError::Unavailable("connection supervisor stopped".into())
                })?;
            let channel = open_channel(&live)
                .await
                .map_err(SourceError::Unavailable)?;
            channel
                .basic_qos(self.prefetch_count, BasicQosOptions::default())
                .await
                .map_err(|e| SourceError::Unavailable(format!("basic.qos failed: {e}")))?;
            let mut deliveries: Deliveries = SelectAll::new();
            for (i, queue) in self.queues.iter().enumerate() {
                let tag = format!("entity-bridge.{}.{i}", self.connector);
                let consumer = channel
                    .basic_consume(
                        queue,
                        &tag,
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| {
                        SourceError::Unavailable(format!("cannot consume queue `{queue}`: {e}"))
                    })?;
                let queue = queue.clone();
                deliveries.push(consumer.map(move |d| (queue.clone(), d)).boxed());
            }
            tracing::info!(connector = %self.connector, queues = self.queues.len(), generation = live.generation, "consuming from RabbitMQ");
            self.consuming = Some(Consuming {
                generation: live.generation,
                channel,
                deliveries,
            });
        }
        Ok(self.consuming.as_mut().expect("set above"))
    }
}

impl Intake {
    /// Dead-letters a delivery that can never become a message.
    async fn reject_invalid(&self, channel: &Channel, queue: &str, tag: u64, reason: &str) {
        self.metrics
            .dead_lettered(&self.connector, "unparseable", 1);
        tracing::warn!(connector = %self.connector, %queue, delivery_tag = tag, %reason, "invalid message; dead-lettering it");
        let nack = BasicNackOptions {
            multiple: false,
            requeue: false,
        };
        if let Err(e) = channel.basic_nack(tag, nack).await {
            tracing::warn!(connector = %self.connector, %queue, delivery_tag = tag, error = %e, "could not nack; the broker will redeliver it");
        }
    }

    /// Adds a delivery to `batch`, or dead-letters it.
    async fn take(
        &self,
        channel: &Channel,
        batch: &mut SourceBatch,
        queue: Arc<str>,
        delivery: Delivery,
    ) {
        let Delivery {
            delivery_tag: tag,
            redelivered,
            properties,
            data,
            ..
        } = delivery;
        if redelivered {
            self.metrics.amqp_redelivered(&self.connector, 1);
        }
        match to_message(
            &queue,
            tag,
            properties.headers().as_ref(),
            Bytes::from(data),
            self.parse,
        ) {
            Ok(message) => {
                batch.messages.push(message);
                batch.receipts.push(tag);
            }
            Err(reason) => self.reject_invalid(channel, &queue, tag, &reason).await,
        }
    }
}

/// What waiting for a delivery produced.
enum Next {
    Delivery(Arc<str>, Box<Delivery>),
    /// The channel or connection is gone; deliveries taken from it are void.
    Lost(String),
    /// The linger deadline passed.
    Timeout,
}

async fn next_delivery(
    consuming: &mut Consuming,
    lost: &mut tokio::sync::watch::Receiver<Option<Live>>,
    deadline: Option<Instant>,
) -> Next {
    let generation = consuming.generation;
    let linger = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        next = consuming.deliveries.next() => match next {
            Some((queue, Ok(delivery))) => Next::Delivery(queue, Box::new(delivery)),
            Some((queue, Err(e))) => Next::Lost(format!("consumer of `{queue}` failed: {e}")),
            None => Next::Lost("the broker cancelled the consumers".into()),
        },
        _ = lost.wait_for(|s| s.as_ref().map(|l| l.generation) != Some(generation)) => {
            Next::Lost("the RabbitMQ connection was lost".into())
        }
        _ = linger => Next::Timeout,
    }
}

#[async_trait]
impl Source for AmqpSource {
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        self.outstanding = None;
        let mut lost = self.connection.watch();
        loop {
            let consuming = self.consuming().await?;
            let channel = consuming.channel.clone();
            let mut batch = SourceBatch::default();
            let mut deadline = None;
            let lost_reason = loop {
                if batch.messages.len() >= self.max_batch {
                    break None;
                }
                let consuming = self.consuming.as_mut().expect("consuming");
                match next_delivery(consuming, &mut lost, deadline).await {
                    Next::Delivery(queue, delivery) => {
                        self.intake
                            .take(&channel, &mut batch, queue, *delivery)
                            .await;
                        if deadline.is_none() && !batch.messages.is_empty() {
                            deadline = Some(Instant::now() + self.linger);
                        }
                    }
                    Next::Timeout => break None,
                    Next::Lost(reason) => break Some(reason),
                }
            };
            if let Some(reason) = lost_reason {
                // Whatever was taken is void: the broker requeues it with the dead channel.
                self.consuming = None;
                tracing::warn!(connector = %self.connector, %reason, discarded = batch.messages.len(), "consumer channel lost; resuming on the next connection");
                return Err(SourceError::Unavailable(reason));
            }
            if !batch.messages.is_empty() {
                self.outstanding = Some(channel);
                return Ok(Some(batch));
            }
        }
    }

    async fn settle(&mut self, batch: SourceBatch, outcome: Outcome) -> Result<(), SourceError> {
        let Some(channel) = self.outstanding.take() else {
            return if batch.receipts.is_empty() {
                Ok(())
            } else {
                Err(SourceError::Unavailable(
                    "no outstanding batch to settle".into(),
                ))
            };
        };
        if !channel.status().connected() {
            return Err(SourceError::Unavailable(
                "the channel of this batch is closed; the broker redelivers it".into(),
            ));
        }
        // (tag, requeue?) per delivery: `None` acknowledges it.
        let poison: std::collections::HashSet<usize> = match &outcome {
            Outcome::Partly { poison } => poison.iter().map(|(i, _)| *i).collect(),
            _ => Default::default(),
        };
        let mut settles: Vec<(u64, Option<bool>)> = batch
            .receipts
            .iter()
            .enumerate()
            .map(|(i, &tag)| {
                let action = match &outcome {
                    Outcome::Delivered => None,
                    Outcome::Retry => Some(true),
                    Outcome::Poison { .. } => Some(false),
                    Outcome::Partly { .. } => poison.contains(&i).then_some(false),
                };
                (tag, action)
            })
            .collect();
        settles.sort_unstable_by_key(|(tag, _)| *tag);
        settles.dedup_by_key(|(tag, _)| *tag);
        let dead = settles.iter().filter(|(_, a)| *a == Some(false)).count();
        let settled = settles.iter().map(|&(tag, action)| {
            let channel = channel.clone();
            async move {
                match action {
                    None => channel.basic_ack(tag, BasicAckOptions::default()).await,
                    Some(requeue) => {
                        let options = BasicNackOptions {
                            multiple: false,
                            requeue,
                        };
                        channel.basic_nack(tag, options).await
                    }
                }
            }
        });
        let results = tokio::time::timeout(SETTLE_TIMEOUT, join_all(settled))
            .await
            .map_err(|_| SourceError::Unavailable("settling timed out".into()))?;
        if dead > 0 {
            self.intake
                .metrics
                .dead_lettered(&self.connector, "rejected", dead as u64);
            let reason = match &outcome {
                Outcome::Poison { reason } => reason.as_str(),
                Outcome::Partly { poison } => poison.first().map_or("", |(_, r)| r.as_str()),
                _ => "",
            };
            tracing::warn!(connector = %self.connector, events = dead, %reason, "poison deliveries rejected without requeue (to the queue's dead-letter exchange)");
        }
        match results.into_iter().find_map(Result::err) {
            None => Ok(()),
            Some(e) => {
                self.consuming = None;
                Err(SourceError::Unavailable(format!(
                    "settling failed ({e}); the broker redelivers what was not settled"
                )))
            }
        }
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        self.outstanding = None;
        if let Some(consuming) = self.consuming.take() {
            if consuming.channel.status().connected() {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    consuming.channel.close(200, "entity-bridge shutting down"),
                )
                .await;
            }
        }
        self.connection.close(Duration::from_secs(5)).await;
        Ok(())
    }

    /// Void once the channel it came from closed: the broker has requeued its deliveries.
    fn is_held(&self) -> bool {
        (self.outstanding.as_ref()).is_none_or(|channel| channel.status().connected())
    }

    /// Connected while the supervised RabbitMQ connection is open (it reconnects by itself).
    fn probe(&self) -> Option<Probe> {
        let state = self.connection.watch();
        let endpoint = self.connection.endpoint().to_owned();
        Some(Arc::new(move || {
            if state.borrow().as_ref().is_some_and(Live::is_connected) {
                Ok(())
            } else {
                Err(format!("not connected to RabbitMQ at {endpoint}"))
            }
        }))
    }
}

#[async_trait]
impl crate::runtime::build::BuildSource for AmqpSourceConfig {
    async fn build_task(
        &self,
        ctx: &crate::runtime::build::BuildContext,
        sink: Arc<dyn crate::connector::Sink>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<crate::runtime::Run, crate::runtime::build::BuildError> {
        let source = self
            .build(&ctx.connector, ctx.metrics.clone())
            .map_err(crate::runtime::build::BuildError::source)?;
        tracing::info!(connector = %ctx.connector, queues = self.queues.len(), "AMQP source connector ready");
        Ok(crate::runtime::pump::Pump::task(
            Box::new(source),
            sink,
            ctx,
            cancel,
        ))
    }
}
