//! The one retry engine: how long to wait before trying again, and when to stop.
//!
//! Every retry loop of the bridge draws its waits from here — the pump and the Kafka lanes
//! retrying a batch in place, the webhook sink retrying a POST, every dead-letter write, the
//! connector supervisor restarting a task, the AMQP connection reconnecting — so they share one
//! behaviour:
//!
//! - **Exponential backoff with full jitter**: the n-th wait is drawn uniformly from
//!   `[0, min(max, min·2ⁿ)]` (AWS's "full jitter"), so retrying clients spread out instead of
//!   hammering a recovering peer in lockstep. [`Backoff::next_cap`] is the current cap itself:
//!   the least a peer's `Retry-After` pause lasts, so `Retry-After: 0` still backs off.
//! - **A peer's `Retry-After` wins** over the backoff when it asks for longer.
//! - **A retry budget** ([`Budget`]): how long one item may keep failing before it is given up
//!   (the webhook sink's `max_retry_duration_ms`). Time spent waiting because the peer asked
//!   for it (`Retry-After`, rate limits) does not count.
//!
//! What is retryable stays with each protocol (HTTP status codes, librdkafka and AMQP errors):
//! see [`crate::connector::Retriable`] and `outbound::answer::classify`.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Backoff between retries of a failing sink or source, and between restarts of a connector.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Cap of the first wait; each retry doubles the cap up to `max_backoff_ms`. The wait is
    /// drawn uniformly from zero to the cap (full jitter).
    #[serde(default = "default_min_backoff_ms")]
    pub min_backoff_ms: u64,
    /// Largest cap (the exponential growth stops here).
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            min_backoff_ms: default_min_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

fn default_min_backoff_ms() -> u64 {
    200
}
fn default_max_backoff_ms() -> u64 {
    30_000
}

impl RetryConfig {
    /// Semantic checks; `Err((key, detail))`. A zero wait would turn every retry loop (and the
    /// supervisor's restarts) into a busy loop.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(1..=crate::http::MAX_TIMEOUT_MS).contains(&self.min_backoff_ms) {
            return Err((
                "min_backoff_ms".into(),
                "must be between 1 and 86400000 (one day)".into(),
            ));
        }
        if !(self.min_backoff_ms..=crate::http::MAX_TIMEOUT_MS).contains(&self.max_backoff_ms) {
            return Err((
                "max_backoff_ms".into(),
                "must be at least min_backoff_ms and at most 86400000 (one day)".into(),
            ));
        }
        Ok(())
    }

    /// A fresh backoff sequence.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.min_backoff_ms),
            Duration::from_millis(self.max_backoff_ms),
        )
    }
}

/// Exponential backoff with full jitter. Also an endless iterator of waits.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    cap: Option<Duration>,
}

impl Backoff {
    /// Caps start at `min` and double up to `max` (at least `min`).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            cap: None,
        }
    }

    /// The next cap itself, without jitter.
    pub fn next_cap(&mut self) -> Duration {
        let cap = match self.cap {
            None => self.min,
            Some(cap) => cap.saturating_mul(2).min(self.max),
        };
        self.cap = Some(cap);
        cap
    }

    /// The next wait: uniform in `[0, next cap]`.
    pub fn next_delay(&mut self) -> Duration {
        full_jitter(self.next_cap())
    }

    /// Starts over from `min` (after a success).
    pub fn reset(&mut self) {
        self.cap = None;
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

/// A duration drawn uniformly from `[0, cap]`.
pub fn full_jitter(cap: Duration) -> Duration {
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// The wait after a failure: the peer's `Retry-After` when it asks for longer than the backoff,
/// else the backoff's next wait.
pub fn wait_after(backoff: &mut Backoff, retry_after: Option<Duration>) -> Duration {
    let delay = backoff.next_delay();
    retry_after.map_or(delay, |asked| asked.max(delay))
}

/// How long one item (a batch, a POST) has been failing, not counting the time spent waiting
/// because the peer asked for it; and whether that exceeds its allowance.
#[derive(Debug, Clone)]
pub struct Budget {
    max_failing: Duration,
    failing_since: Option<Instant>,
    waited: Duration,
}

impl Budget {
    /// An item may keep failing for `max_failing`.
    pub fn new(max_failing: Duration) -> Budget {
        Budget {
            max_failing,
            failing_since: None,
            waited: Duration::ZERO,
        }
    }

    /// Time spent waiting for the peer (its `Retry-After`, rate limits): not failing time.
    /// Counted only once the item has started failing.
    pub fn waited(&mut self, wait: Duration) {
        if self.failing_since.is_some() {
            self.waited += wait;
        }
    }

    /// Records a failure; `true` once the item has been failing for longer than allowed.
    pub fn failed(&mut self) -> bool {
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        since.elapsed().saturating_sub(self.waited) >= self.max_failing
    }
}

/// Sleeps `delay` unless `cancel` fires first; `false` when cancelled.
pub async fn pause(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Runs `attempt` until it succeeds, waiting the backoff between failures (each logged at WARN
/// with `what`); `None` when `cancel` fires first. For writes that must not be given up, such
/// as a dead letter: the item they hold would otherwise be lost.
pub async fn until_ok<T, E: Display, F: Future<Output = Result<T, E>>>(
    mut backoff: Backoff,
    cancel: &CancellationToken,
    what: &str,
    connector: &str,
    mut attempt: impl FnMut() -> F,
) -> Option<T> {
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(%connector, error = %e, delay_ms = delay.as_millis() as u64, "{what} failed; retrying");
                if !pause(delay, cancel).await {
                    return None;
                }
            }
        }
    }
}

/// `now + wait`, saturating at a far-future instant (about 30 years) instead of panicking on
/// overflow: waits come from remote answers and configuration.
pub fn saturating_deadline(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

/// The furthest any deadline is set.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;
