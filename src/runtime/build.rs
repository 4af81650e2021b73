//! How every part of a connector is built: one trait for sinks, one for pull sources, and one
//! context they all receive, so adding a bus means implementing a trait in its own folder and
//! naming it once in the `[sink]` / `[source]` enums of `config` — nothing in `app`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::connector::Sink;
use crate::dead_letter::DeadLetterConfig;
use crate::metrics::Metrics;
use crate::runtime::retry::RetryConfig;
use crate::runtime::{Health, Run};

/// What every source and sink of a connector is built with.
#[derive(Clone)]
pub struct BuildContext {
    /// The connector's name (logs, metrics, client ids).
    pub connector: String,
    /// Process metrics.
    pub metrics: Metrics,
    /// The connector's health: sources report their connection and deliveries to it.
    pub health: Health,
    /// Cancelled first at shutdown: sinks cut retry waits short.
    pub stop: CancellationToken,
    /// `shutdown_timeout_ms`: bounds a source's drain at shutdown.
    pub shutdown_timeout: Duration,
    /// The connector's `[retry]` backoff.
    pub retry: RetryConfig,
    /// The sink's dead-letter destination, for a source without one of its own (a Kafka
    /// source feeding a webhook sink dead-letters where the sink does; a pull source feeding
    /// an embedded sink, into that log).
    pub sink_dead_letter: Option<DeadLetterConfig>,
    /// `data_dir`: where sources keep local state (a poll source's checkpoint).
    pub data_dir: std::path::PathBuf,
}

/// Why a part could not be built. The cause names the key or the client that failed.
#[derive(Debug, thiserror::Error)]
#[error("{part}: {source}")]
pub struct BuildError {
    /// `sink` or `source`.
    pub part: &'static str,
    /// Why.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl BuildError {
    /// A sink that could not be built.
    pub fn sink(source: impl std::error::Error + Send + Sync + 'static) -> BuildError {
        BuildError {
            part: "sink",
            source: Box::new(source),
        }
    }

    /// A source that could not be built.
    pub fn source(source: impl std::error::Error + Send + Sync + 'static) -> BuildError {
        BuildError {
            part: "source",
            source: Box::new(source),
        }
    }
}

/// A sink's configuration, able to build the sink.
#[async_trait]
pub trait BuildSink: Send + Sync {
    /// Builds the sink (clients are created; the network is not required yet).
    async fn build_sink(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>, BuildError>;
}

/// A pull source's configuration, able to build the connector's task: the source and what
/// drives it (a [`crate::runtime::pump::Pump`], or the source's own driver), feeding `sink` until
/// `cancel`. Built once at start-up and again for every restart by the supervisor.
#[async_trait]
pub trait BuildSource: Send + Sync {
    /// Builds the task.
    async fn build_task(
        &self,
        ctx: &BuildContext,
        sink: Arc<dyn Sink>,
        cancel: CancellationToken,
    ) -> Result<Run, BuildError>;
}
