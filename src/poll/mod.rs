//! Poll sources: for producers that offer only pull. `reso_poll` reads a remote RESO
//! `EntityEvent` resource (`$filter=EntityEventSequence gt <checkpoint>`, ascending, paged);
//! `events_poll` reads an "events after sequence id" API and maps its events to EntityEvents.
//! Both feed any sink through the pump, with a durable checkpoint in the data directory.

mod checkpoint;
mod config;
pub mod events;
mod page;
mod source;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use checkpoint::{checkpoint_path, Checkpoint, CheckpointError};
pub use config::{EventMapping, PollLimitsConfig, PollSourceConfig, PollStart, MAX_PAGE_SIZE};
pub use page::{parse_reso_page, Invalid, Page, PageError};
pub use source::{Api, PollParts, PollSource};

use crate::connector::Sink;
use crate::event::ParseOptions;
use crate::outbound::LimitsConfig;
use crate::runtime::build::{BuildContext, BuildError, BuildSource};
use crate::runtime::Run;

/// `type = "reso_poll"`: a remote RESO `EntityEvent` resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ResoPollConfig(pub PollSourceConfig);

/// `type = "events_poll"`: an events-after-sequence-id API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventsPollConfig(pub PollSourceConfig);

/// Why a poll source could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PollBuildError {
    /// The URL is not one.
    #[error("url: {0}")]
    Url(String),
    /// The producer client could not be built.
    #[error(transparent)]
    Client(#[from] crate::outbound::get::GetClientBuildError),
    /// The dead-letter writer could not be built.
    #[error("dead_letter: {0}")]
    DeadLetter(#[from] crate::dead_letter::DeadLetterBuildError),
    /// No dead letter: validation requires one, so only an unvalidated configuration gets here.
    #[error(
        "no dead_letter: set source.dead_letter (or use a webhook sink, whose dead letter is used)"
    )]
    NoDeadLetter,
    /// The checkpoint cannot be read.
    #[error("{0}")]
    Open(String),
}

async fn build(
    c: &PollSourceConfig,
    api: Api,
    ctx: &BuildContext,
    sink: Arc<dyn Sink>,
    cancel: tokio_util::sync::CancellationToken,
) -> Result<Run, PollBuildError> {
    let url = reqwest::Url::parse(&c.url).map_err(|e| PollBuildError::Url(e.to_string()))?;
    let client = crate::outbound::get::GetClient::build(
        crate::outbound::get::GetClientConfig {
            connector: &ctx.connector,
            role: "poll",
            auth: c.auth.as_ref(),
            limits: LimitsConfig {
                requests_per_second: Some(c.limits.requests_per_second),
                events_per_second: None,
                max_concurrent_requests: 1,
            },
            max_retry_after: Duration::from_secs(c.limits.max_retry_after_seconds),
            timeout: Duration::from_millis(c.request_timeout_ms),
            max_body_bytes: c.max_page_bytes,
        },
        ctx.metrics.clone(),
    )?;
    let dead_letter = (c.dead_letter.as_ref())
        .or(ctx.sink_dead_letter.as_ref())
        .ok_or(PollBuildError::NoDeadLetter)?
        .build(&ctx.connector, ctx.metrics.clone())?;
    let parts = PollParts {
        connector: ctx.connector.clone(),
        api,
        checkpoint: Checkpoint::new(checkpoint_path(&ctx.data_dir, &ctx.connector), &c.url),
        url,
        query: c.query.clone(),
        page_size: c.page_size,
        idle: Duration::from_millis(c.idle_interval_ms),
        start: c.start,
        parse: ParseOptions {
            coerce_numeric_record_key: false,
            max_events: 1,
            max_depth: c.max_json_depth,
            // Another bridge's replay resource carries its annotations.
            refuse_rendered_annotations: false,
        },
        client,
        dead_letter: Arc::new(dead_letter),
        metrics: ctx.metrics.clone(),
        health: ctx.health.clone(),
    };
    let source = PollSource::open(parts)
        .await
        .map_err(|e| PollBuildError::Open(e.to_string()))?;
    Ok(crate::runtime::pump::Pump::task(
        Box::new(source),
        sink,
        ctx,
        cancel,
    ))
}

#[async_trait::async_trait]
impl BuildSource for ResoPollConfig {
    async fn build_task(
        &self,
        ctx: &BuildContext,
        sink: Arc<dyn Sink>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<Run, BuildError> {
        build(&self.0, Api::Reso, ctx, sink, cancel)
            .await
            .map_err(BuildError::source)
    }
}

#[async_trait::async_trait]
impl BuildSource for EventsPollConfig {
    async fn build_task(
        &self,
        ctx: &BuildContext,
        sink: Arc<dyn Sink>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<Run, BuildError> {
        let mapping = self.0.mapping.clone().unwrap_or_default();
        build(&self.0, Api::Events(Box::new(mapping)), ctx, sink, cancel)
            .await
            .map_err(BuildError::source)
    }
}
