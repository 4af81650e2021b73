//! A Kafka producer that is replaced when it can no longer produce.
//!
//! librdkafka's idempotent producer can end up unable to produce for good:
//!
//! - a **fatal error** (`ProducerFenced`, `InvalidProducerEpoch`, …) makes the client instance
//!   unusable, by design;
//! - after a **network partition** it may never recover without one: its in-flight requests
//!   timed out, it bumped its epoch locally, and once the broker is back every produce is
//!   answered with a sequence error, which it answers with another bump, forever (seen with a
//!   15 s partition: every push 503 for good while metadata requests succeeded).
//!
//! Retrying cannot help; only a new client can. The Kafka sink and the Kafka dead-letter writer
//! therefore hold their producer through [`Healing`] and report every send. A producer is
//! replaced when it reports a fatal error, or when it has failed every send for
//! `stuck_after` while its broker answers a metadata request (so a broker outage does not
//! cause replacements, and the replacement comes within a send of the network's return).
//! Replacements are at most one per [`MIN_REBUILD_INTERVAL`]; the old producer is dropped off
//! the async runtime.
//!
//! Nothing acknowledged is lost or duplicated by the swap: the sends that failed were answered
//! as failed (503 to a producer, a retry for a pull source), and the next attempt goes through
//! the new producer, whose idempotence starts afresh.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaResult;

use crate::metrics::Metrics;

/// Fastest succession of replacements (and of broker checks while failing).
pub const MIN_REBUILD_INTERVAL: Duration = Duration::from_secs(1);

type Make<P> = Box<dyn Fn() -> KafkaResult<P> + Send + Sync>;

/// How to build and inspect a producer.
pub struct Kind<P> {
    /// Creates a new producer.
    pub make: Make<P>,
    /// Its fatal error, if any.
    pub fatal: fn(&P) -> Option<String>,
    /// Whether its broker answers (a blocking metadata request, run off the runtime).
    pub reachable: fn(&P) -> bool,
}

#[derive(Default)]
struct Tracking {
    failing_since: Option<Instant>,
    last_rebuild: Option<Instant>,
    last_check: Option<Instant>,
}

/// The current producer and how to make the next one.
///
/// Its locks guard only bookkeeping that cannot panic (swapping an `Arc`, reading and writing
/// timestamps), so they are never poisoned: the `expect`s on them state that invariant.
pub struct Healing<P> {
    connector: String,
    role: &'static str,
    current: RwLock<Arc<P>>,
    kind: Kind<P>,
    stuck_after: Duration,
    failing: AtomicBool,
    tracking: Mutex<Tracking>,
    checking: tokio::sync::Mutex<()>,
    metrics: Metrics,
}

impl<P: Send + Sync + 'static> Healing<P> {
    /// Builds the first producer. `role` (`sink`, `dead_letter`) names the client in logs;
    /// `stuck_after` is how long it may fail every send before the broker is checked.
    pub fn new(
        connector: &str,
        role: &'static str,
        kind: Kind<P>,
        stuck_after: Duration,
        metrics: Metrics,
    ) -> KafkaResult<Healing<P>> {
        let first = (kind.make)()?;
        Ok(Healing {
            connector: connector.to_owned(),
            role,
            current: RwLock::new(Arc::new(first)),
            kind,
            stuck_after,
            failing: AtomicBool::new(false),
            tracking: Mutex::default(),
            checking: tokio::sync::Mutex::new(()),
            metrics,
        })
    }

    /// The producer to use now.
    pub fn get(&self) -> Arc<P> {
        self.current.read().expect("producer lock").clone()
    }

    /// Why the current producer cannot be used, if it cannot: a fatal error, or failing every
    /// send for `stuck_after` (readiness reports it until the producer was replaced).
    pub fn problem(&self) -> Option<String> {
        if let Some(fatal) = (self.kind.fatal)(&self.get()) {
            return Some(format!("producer fatal error: {fatal}"));
        }
        let since = self.tracking.lock().expect("tracking lock").failing_since?;
        let failing = since.elapsed();
        (failing >= self.stuck_after)
            .then(|| format!("every send failed for {:.1} s", failing.as_secs_f64()))
    }

    /// A produce succeeded. One atomic load unless produces were failing.
    pub fn succeeded(&self) {
        if self.failing.load(Ordering::Acquire) {
            // Flag and timestamp change together, under the lock, so a concurrent `failed`
            // cannot leave a timestamp behind that no later success clears.
            let mut t = self.tracking.lock().expect("tracking lock");
            t.failing_since = None;
            self.failing.store(false, Ordering::Release);
        }
    }

    /// A send failed as unavailable: replaces the producer when it is fatal, or stuck while
    /// its broker answers. Returns whether a new producer is in place.
    pub async fn failed(&self) -> bool {
        let since = {
            let mut t = self.tracking.lock().expect("tracking lock");
            self.failing.store(true, Ordering::Release);
            *t.failing_since.get_or_insert_with(Instant::now)
        };
        if let Some(fatal) = (self.kind.fatal)(&self.get()) {
            return self.replace(&format!("fatal error: {fatal}"));
        }
        if since.elapsed() < self.stuck_after {
            return false;
        }
        self.replace_if_broker_answers(since).await
    }

    /// The readiness probe's view: `None` when the producer can be used. A fatal producer is
    /// replaced at once; a stuck one is replaced when its broker answers, so an instance that
    /// went unready during an outage is ready again once the broker is back, even if no
    /// produce comes to notice it.
    pub async fn check(&self) -> Option<String> {
        self.heal_if_fatal();
        let problem = self.problem()?;
        let since = self.tracking.lock().expect("tracking lock").failing_since;
        match since {
            Some(since) if self.replace_if_broker_answers(since).await => None,
            _ => Some(problem),
        }
    }

    async fn replace_if_broker_answers(&self, since: Instant) -> bool {
        // One broker check at a time, at most one per interval.
        let Ok(_checking) = self.checking.try_lock() else {
            return false;
        };
        {
            let mut t = self.tracking.lock().expect("tracking lock");
            if t.last_check
                .is_some_and(|at| at.elapsed() < MIN_REBUILD_INTERVAL)
            {
                return false;
            }
            t.last_check = Some(Instant::now());
        }
        let producer = self.get();
        let reachable = self.kind.reachable;
        let up = tokio::task::spawn_blocking(move || reachable(&producer))
            .await
            .unwrap_or(false);
        up && self.replace(&format!(
            "every send failed for {:.1} s while the broker answers",
            since.elapsed().as_secs_f64()
        ))
    }

    /// Replaces the producer at once if it reports a fatal error (before a send, in readiness).
    pub fn heal_if_fatal(&self) -> bool {
        match (self.kind.fatal)(&self.get()) {
            Some(fatal) => self.replace(&format!("fatal error: {fatal}")),
            None => false,
        }
    }

    fn replace(&self, why: &str) -> bool {
        let mut t = self.tracking.lock().expect("tracking lock");
        if t.last_rebuild
            .is_some_and(|at| at.elapsed() < MIN_REBUILD_INTERVAL)
        {
            return false;
        }
        t.last_rebuild = Some(Instant::now());
        // Creating a client is quick (no network); doing it under the lock means two callers
        // never both replace the producer.
        match (self.kind.make)() {
            Ok(new) => {
                let old = std::mem::replace(
                    &mut *self.current.write().expect("producer lock"),
                    Arc::new(new),
                );
                // The new producer gets its own `stuck_after` before it is judged.
                t.failing_since = None;
                self.failing.store(false, Ordering::Release);
                drop(t);
                self.metrics
                    .kafka_client_rebuilt(&self.connector, "rebuilt");
                tracing::error!(connector = %self.connector, client = self.role, reason = why, "kafka producer cannot produce; replaced it with a new one");
                // Dropping a producer may wait for librdkafka's threads: not on the runtime.
                // Sends in flight still hold it; the last reference is dropped here once they
                // let go (or after a minute, whatever they do).
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    drop(old);
                });
                true
            }
            Err(e) => {
                drop(t);
                self.metrics.kafka_client_rebuilt(&self.connector, "failed");
                tracing::error!(connector = %self.connector, client = self.role, reason = why, error = %e, "kafka producer cannot produce and could not be replaced; trying again at the next failure");
                false
            }
        }
    }
}

#[cfg(test)]
#[path = "healing_tests.rs"]
mod tests;
