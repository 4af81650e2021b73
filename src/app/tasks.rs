//! Builds a pull connector's task: once at start-up, where a build error stops the bridge
//! before it binds a port, and again for every restart by the connector's supervisor.
//!
//! New pull source types add one arm to [`build_task`]; webhook sources have no task (their
//! listener is the process's).

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::AppError;
use crate::config::{ConnectorConfig, SinkConfig, SourceConfig};
use crate::connector::{Sink, Source};
use crate::metrics::Metrics;
use crate::pump::Pump;
use crate::runtime::{Health, Rebuild, Run};

/// Everything a connector's task is built from; cloned into its supervisor's [`Rebuild`].
#[derive(Clone)]
pub struct TaskContext {
    /// The connector's name.
    pub name: String,
    /// Its configuration (secrets are references, resolved at each build).
    pub config: ConnectorConfig,
    /// Its sink, shared by every instance of the task.
    pub sink: Arc<dyn Sink>,
    /// Process metrics.
    pub metrics: Metrics,
    /// The connector's health.
    pub health: Health,
    /// `shutdown_timeout_ms`: bounds the Kafka source's drain.
    pub shutdown_timeout: Duration,
}

fn pump(ctx: &TaskContext, source: Box<dyn Source>, cancel: CancellationToken) -> Run {
    ctx.health.set_probe(source.probe());
    let pump = Pump {
        connector: ctx.name.clone(),
        source,
        sink: ctx.sink.clone(),
        retry: ctx.config.retry.clone(),
        metrics: ctx.metrics.clone(),
        health: ctx.health.clone(),
    };
    pump.run(cancel).boxed()
}

/// Builds the connector's task to run until `cancel`; `None` for a webhook source.
pub async fn build_task(
    ctx: &TaskContext,
    cancel: CancellationToken,
) -> Result<Option<Run>, AppError> {
    let name = &ctx.name;
    let run = match &ctx.config.source {
        SourceConfig::Webhook(_) => return Ok(None),
        SourceConfig::Kafka(k) => {
            // Validation guarantees a dead letter: the source's own or the webhook sink's.
            let dead_letter = match (&k.dead_letter, &ctx.config.sink) {
                (Some(own), _) => own,
                (None, SinkConfig::Webhook(p)) => &p.dead_letter,
                (None, _) => unreachable!("validated: source.dead_letter is required"),
            };
            let source = k
                .build(
                    name,
                    ctx.sink.clone(),
                    dead_letter,
                    ctx.config.retry.clone(),
                    ctx.metrics.clone(),
                    ctx.health.clone(),
                    ctx.shutdown_timeout,
                )
                .map_err(|source| AppError::KafkaSource {
                    connector: name.clone(),
                    source,
                })?;
            tracing::info!(connector = %name, topics = ?k.topics, group = %k.group(name), "kafka source connector ready");
            source.run(cancel).boxed()
        }
        SourceConfig::Amqp(a) => {
            let source = a
                .build(name, ctx.metrics.clone())
                .map_err(|source| AppError::Amqp {
                    connector: name.clone(),
                    source,
                })?;
            tracing::info!(connector = %name, queues = a.queues.len(), "AMQP source connector ready");
            pump(ctx, Box::new(source), cancel)
        }
        SourceConfig::Embedded(e) => {
            let source = e
                .build(name, ctx.metrics.clone())
                .await
                .map_err(AppError::Embedded)?;
            pump(ctx, Box::new(source), cancel)
        }
    };
    Ok(Some(run))
}

/// What the supervisor calls to restart the task: the same build, errors as text.
pub fn rebuild(ctx: TaskContext) -> Rebuild {
    Box::new(move |cancel| {
        let ctx = ctx.clone();
        async move {
            match build_task(&ctx, cancel).await {
                Ok(Some(run)) => Ok(run),
                Ok(None) => Err("a webhook connector has no task".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        }
        .boxed()
    })
}
