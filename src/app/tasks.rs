//! Builds a connector's parts from their configuration through the [`crate::runtime::build`] traits:
//! the sink once, and a pull connector's task once at start-up (where a build error stops the
//! bridge before it binds a port) and again for every restart by the connector's supervisor.

use std::sync::Arc;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::AppError;
use crate::config::ConnectorConfig;
use crate::connector::Sink;
use crate::runtime::build::BuildContext;
use crate::runtime::{Rebuild, Run};

/// Everything a connector's task is built from; cloned into its supervisor's [`Rebuild`].
#[derive(Clone)]
pub struct TaskContext {
    /// Its configuration (secrets are references, resolved at each build).
    pub config: ConnectorConfig,
    /// Its sink, shared by every instance of the task.
    pub sink: Arc<dyn Sink>,
    /// What the parts are built with.
    pub build: BuildContext,
}

/// Builds the connector's task to run until `cancel`; `None` for a webhook source.
pub async fn build_task(
    ctx: &TaskContext,
    cancel: CancellationToken,
) -> Result<Option<Run>, AppError> {
    let Some(builder) = ctx.config.source.builder() else {
        return Ok(None);
    };
    let run = builder
        .build_task(&ctx.build, ctx.sink.clone(), cancel)
        .await
        .map_err(|source| AppError::Build {
            connector: ctx.build.connector.clone(),
            source,
        })?;
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
