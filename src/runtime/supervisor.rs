//! A connector's supervisor: runs its task, and when the task fails, panics or ends on its own,
//! logs that once at ERROR, counts it, reports the connector stopped and starts a fresh task
//! after a backoff, forever, until shutdown.
//!
//! A restart rebuilds the task from its configuration ([`Rebuild`]): a new source with new
//! connections, so a client that broke for good is discarded rather than retried. What the old
//! task had not acknowledged upstream is redelivered to the new one (at least once): sources
//! acknowledge only what the sink confirmed. The sink is shared across restarts; sinks heal
//! their own clients.
//!
//! The task runs in its own tokio task so that a panic is caught by its `JoinHandle` instead of
//! taking the supervisor down with it.

use std::any::Any;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::health::{Health, Part};
use crate::connector::SourceError;
use crate::metrics::Metrics;
use crate::runtime::retry::RetryConfig;

/// A connector's running task: ends at shutdown (`Ok`) or when its source failed for good.
pub type Run = BoxFuture<'static, Result<(), SourceError>>;

/// Builds a fresh task for a restart, to run until the token is cancelled. An `Err` (the source
/// cannot be built now, e.g. its store cannot be opened) is retried with the same backoff.
pub type Rebuild =
    Box<dyn FnMut(CancellationToken) -> BoxFuture<'static, Result<Run, String>> + Send>;

/// A task that ran at least this long was healthy: the next failure starts the backoff afresh.
pub const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Supervises one connector until `cancel` fires: runs `first`, then whatever `rebuild` makes
/// after each stop. The returned handle ends once the task in flight at shutdown has drained.
pub fn supervise(
    health: Health,
    retry: RetryConfig,
    metrics: Metrics,
    first: Run,
    rebuild: Rebuild,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(supervise_loop(
        health, retry, metrics, first, rebuild, cancel,
    ))
}

/// Why a task stopped: the `outcome` label of the restart counter, and a description.
fn stopped(
    result: Result<Result<(), SourceError>, tokio::task::JoinError>,
) -> (&'static str, String) {
    match result {
        Ok(Ok(())) => ("ended", "the task ended on its own".to_owned()),
        Ok(Err(e)) => ("failed", e.to_string()),
        Err(e) if e.is_panic() => (
            "panicked",
            format!("panicked: {}", panic_message(&*e.into_panic())),
        ),
        Err(e) => ("failed", e.to_string()),
    }
}

/// The text of a panic payload (`panic!` with a literal or a format string), else a placeholder.
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

async fn supervise_loop(
    health: Health,
    retry: RetryConfig,
    metrics: Metrics,
    first: Run,
    mut rebuild: Rebuild,
    cancel: CancellationToken,
) {
    let connector = health.connector().to_owned();
    let mut backoff = retry.backoff();
    let mut run = first;
    loop {
        health.ok(Part::Task);
        let started = Instant::now();
        let result = tokio::spawn(run).await;
        // The probe belonged to the source that just stopped; the rebuilt one installs its own.
        health.set_probe(None);
        if cancel.is_cancelled() {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(%connector, error = %e, "connector had stopped"),
                Err(e) => {
                    tracing::warn!(%connector, error = %e, "connector task failed while stopping")
                }
            }
            return;
        }
        let (mut outcome, mut error) = stopped(result);
        if started.elapsed() >= HEALTHY_RUN {
            backoff = retry.backoff();
        }
        health.failed(Part::Task, &error);
        run = loop {
            let delay = backoff
                .next()
                .unwrap_or(Duration::from_millis(retry.max_backoff_ms));
            tracing::error!(%connector, outcome, error = %error, restart_in_ms = delay.as_millis() as u64, "connector task stopped; restarting it");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            metrics.connector_restart(&connector, outcome);
            match rebuild(cancel.clone()).await {
                Ok(run) => {
                    tracing::info!(%connector, "connector task restarted");
                    break run;
                }
                Err(e) => {
                    // Logged with the next delay, at the top of this loop.
                    outcome = "failed";
                    error = format!("cannot restart: {e}");
                    health.failed(Part::Task, &error);
                }
            }
        };
    }
}

#[cfg(test)]
#[path = "supervisor_tests.rs"]
mod tests;
