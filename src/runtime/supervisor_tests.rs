//! The supervisor with scripted tasks and paused time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::FutureExt;

use super::*;
use crate::runtime::{Readiness, State};

fn retry() -> RetryConfig {
    RetryConfig {
        min_backoff_ms: 1_000,
        max_backoff_ms: 8_000,
    }
}

/// A task that runs until cancelled.
fn healthy(cancel: CancellationToken) -> Run {
    async move {
        cancel.cancelled().await;
        Ok(())
    }
    .boxed()
}

fn restarts(metrics: &Metrics, outcome: &str) -> u64 {
    let text = metrics.encode();
    let wanted =
        format!("entity_bridge_connector_restarts_total{{connector=\"c\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .map_or(0, |v| v.parse().unwrap())
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicked_task_is_reported_stopped_counted_and_restarted() {
    let metrics = Metrics::new();
    let health = Health::new("c", Readiness::Gate, metrics.clone());
    let cancel = CancellationToken::new();
    let builds = Arc::new(AtomicUsize::new(0));
    let counted = builds.clone();
    let first: Run = async { panic!("lane exploded") }.boxed();
    let rebuild: Rebuild = Box::new(move |cancel| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move { Ok(healthy(cancel)) }.boxed()
    });
    let handle = supervise(
        health.clone(),
        retry(),
        metrics.clone(),
        first,
        rebuild,
        cancel.clone(),
    );
    settle().await;
    let snap = health.snapshot();
    assert_eq!(snap.state, State::Stopped, "{snap:?}");
    assert!(!snap.ready);
    assert!(
        snap.problems[0].contains("panicked: lane exploded"),
        "{snap:?}"
    );

    // The first wait is drawn from [0, min_backoff_ms].
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    settle().await;
    assert_eq!(builds.load(Ordering::SeqCst), 1);
    assert_eq!(restarts(&metrics, "panicked"), 1);
    assert_eq!(health.state(), State::Running);
    assert_eq!(
        health.snapshot().last_error.as_deref(),
        Some("task: panicked: lane exploded")
    );
    cancel.cancel();
    handle.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn failures_and_early_ends_restart_with_growing_backoff_until_shutdown() {
    let metrics = Metrics::new();
    let health = Health::new("c", Readiness::Gate, metrics.clone());
    let cancel = CancellationToken::new();
    let builds = Arc::new(AtomicUsize::new(0));
    let counted = builds.clone();
    let first: Run = async { Err(SourceError::Fatal("queue is gone".into())) }.boxed();
    // Every rebuild fails once, then builds a task that ends at once.
    let rebuild: Rebuild = Box::new(move |_| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if n.is_multiple_of(2) {
                Err("store cannot be opened".to_owned())
            } else {
                Ok(async { Ok(()) }.boxed())
            }
        }
        .boxed()
    });
    let handle = supervise(
        health.clone(),
        retry(),
        metrics.clone(),
        first,
        rebuild,
        cancel.clone(),
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    settle().await;
    let builds_in_a_minute = builds.load(Ordering::SeqCst);
    // Caps grow 1, 2, 4, 8, 8, ... s and waits are drawn below them: at least 9 tries (every
    // wait at its cap), a few dozen at most, never a busy loop.
    assert!(
        (9..=60).contains(&builds_in_a_minute),
        "{builds_in_a_minute}"
    );
    assert!(restarts(&metrics, "failed") >= 2);
    assert!(restarts(&metrics, "ended") >= 1);
    assert_eq!(health.state(), State::Stopped);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(1), handle)
        .await
        .expect("shutdown ends the supervisor during a backoff")
        .unwrap();
    assert_eq!(builds.load(Ordering::SeqCst), builds_in_a_minute);
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_the_task_to_drain_and_does_not_restart_it() {
    let metrics = Metrics::new();
    let health = Health::new("c", Readiness::Gate, metrics.clone());
    let cancel = CancellationToken::new();
    let drained = Arc::new(AtomicUsize::new(0));
    let flag = drained.clone();
    let token = cancel.clone();
    let first: Run = async move {
        token.cancelled().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        flag.store(1, Ordering::SeqCst);
        Ok(())
    }
    .boxed();
    let rebuild: Rebuild = Box::new(|_| async { panic!("never rebuilt") }.boxed());
    let handle = supervise(
        health.clone(),
        retry(),
        metrics.clone(),
        first,
        rebuild,
        cancel.clone(),
    );
    settle().await;
    cancel.cancel();
    handle.await.unwrap();
    assert_eq!(drained.load(Ordering::SeqCst), 1);
    assert_eq!(health.state(), State::Running);
    assert_eq!(restarts(&metrics, "ended"), 0);
}
