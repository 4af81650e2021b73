//! Duplicate suppression's bookkeeping for the feeds layer: claims inside this process, the
//! store round (look up, claim across processes, wait while another replica publishes), and
//! giving claims back when a send fails or its caller goes away.
//!
//! Every wait is bounded by `max_claim_wait_ms` (then the batch is refused as overloaded: 429
//! on a push, a retry on a pull source). A store that fails is skipped for
//! [`STORE_BREAK`] afterwards, so a database that is down costs one timeout, not one per push.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::config::OnConflict;
use super::store::{Identity, SeenStore};
use crate::connector::SinkError;
use crate::metrics::Metrics;
use crate::runtime::retry::Backoff;

/// A (feed, sequence) pair.
pub(super) type Key = (Arc<str>, i64);
/// Events (sequence, identity) grouped by feed.
pub(super) type ByFeed = [(Arc<str>, Vec<(i64, Identity)>)];
type Claims = HashMap<Key, CancellationToken>;

/// How long the store is bypassed after it failed (events published unchecked meanwhile,
/// counted as `entity_bridge_dedupe_store_errors_total{outcome="bypassed"}`).
pub const STORE_BREAK: Duration = Duration::from_secs(5);

/// Duplicate suppression: the store, the policy and the claims of this process.
pub struct Dedupe {
    pub(super) store: Arc<dyn SeenStore>,
    pub(super) on_conflict: OnConflict,
    claims: Arc<Mutex<Claims>>,
    max_claim_wait: Duration,
    /// Until when the store is bypassed after a failure.
    broken_until: Mutex<Option<Instant>>,
}

fn overloaded(what: &str) -> SinkError {
    SinkError::Overloaded {
        reason: format!("sequences of this batch are being published by {what}"),
    }
}

impl Dedupe {
    /// Suppression over `store`, handling conflicts by `on_conflict`; a send waits at most
    /// `max_claim_wait` for sequences another send is publishing.
    pub fn new(
        store: Arc<dyn SeenStore>,
        on_conflict: OnConflict,
        max_claim_wait: Duration,
    ) -> Dedupe {
        Dedupe {
            store,
            on_conflict,
            claims: Arc::default(),
            max_claim_wait,
            broken_until: Mutex::new(None),
        }
    }

    /// Claims `keys` (distinct) in this process, waiting while another send holds any of
    /// them, at most `max_claim_wait`.
    pub(super) async fn claim_local(&self, keys: Vec<Key>) -> Result<LocalClaim, SinkError> {
        let deadline = tokio::time::Instant::now() + self.max_claim_wait;
        loop {
            let busy: Vec<CancellationToken> = {
                let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
                let busy: Vec<_> = keys.iter().filter_map(|k| claims.get(k).cloned()).collect();
                if busy.is_empty() {
                    let settled = CancellationToken::new();
                    for key in &keys {
                        claims.insert(key.clone(), settled.clone());
                    }
                    return Ok(LocalClaim {
                        claims: self.claims.clone(),
                        keys,
                        settled,
                    });
                }
                busy
            };
            for other in busy {
                if tokio::time::timeout_at(deadline, other.cancelled())
                    .await
                    .is_err()
                {
                    return Err(overloaded("another push"));
                }
            }
        }
    }

    fn bypassed(&self) -> bool {
        let broken = self.broken_until.lock().unwrap_or_else(|p| p.into_inner());
        broken.is_some_and(|until| Instant::now() < until)
    }

    fn broke(
        &self,
        connector: &str,
        metrics: &Metrics,
        outcome: &str,
        error: impl std::fmt::Display,
    ) {
        *self.broken_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + STORE_BREAK);
        metrics.dedupe_store_error(connector, outcome);
        tracing::warn!(%connector, %error, %outcome, bypass_ms = STORE_BREAK.as_millis() as u64, "dedupe store failed; publishing unchecked meanwhile");
    }

    /// Looks the batch's events up in the store and claims the undelivered ones there. While
    /// another process publishes some of them, gives back what it claimed and tries again
    /// (jittered backoff, so two replicas wanting each other's sequences cannot deadlock); past
    /// `max_claim_wait` the batch is refused as overloaded. A store that fails (or is being
    /// bypassed after a failure) is counted and skipped: the events are published unchecked.
    pub(super) async fn claim_stored(
        &self,
        lookups: &ByFeed,
        connector: &str,
        metrics: &Metrics,
    ) -> Result<StoredClaim, SinkError> {
        let started = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        loop {
            let mut claim = StoredClaim {
                store: self.store.clone(),
                delivered: HashMap::new(),
                claimed: Vec::new(),
            };
            if self.bypassed() {
                metrics.dedupe_store_error(connector, "bypassed");
                return Ok(claim);
            }
            let mut busy = 0;
            for (feed, events) in lookups {
                let sequences = || events.iter().map(|(s, _)| *s);
                match self.store.claim(feed, events).await {
                    Ok(found) => {
                        busy += found.busy.len();
                        let mine: Vec<i64> = sequences()
                            .filter(|s| !found.delivered.contains_key(s) && !found.busy.contains(s))
                            .collect();
                        claim.claimed.push((feed.clone(), mine));
                        let delivered = found.delivered.into_iter();
                        claim
                            .delivered
                            .extend(delivered.map(|(s, id)| ((feed.clone(), s), id)));
                    }
                    Err(e) => {
                        // The claim may have been written before the error (a client-side
                        // timeout): release them all; release only touches this process's own.
                        claim.claimed.push((feed.clone(), sequences().collect()));
                        self.broke(connector, metrics, "lookup", e);
                        break;
                    }
                }
            }
            if busy == 0 {
                return Ok(claim);
            }
            claim.release(connector, metrics).await;
            if started.elapsed() >= self.max_claim_wait {
                return Err(overloaded("another process"));
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// Marks `marks` delivered (the sink confirmed them), which ends their claims; claims the
    /// store could not mark are released. A failed mark is counted: those events may be
    /// published again if resent.
    pub(super) async fn mark(
        &self,
        mut claim: StoredClaim,
        marks: &ByFeed,
        connector: &str,
        metrics: &Metrics,
    ) {
        if self.bypassed() {
            claim.release(connector, metrics).await;
            return;
        }
        for (feed, events) in marks {
            match self.store.mark(feed, events).await {
                // Marked rows are no longer claims; forget them feed by feed, so that a send
                // dropped half-way still releases the rest.
                Ok(()) => claim.claimed.retain(|(f, _)| f != feed),
                Err(e) => {
                    self.broke(connector, metrics, "mark", e);
                    break;
                }
            }
        }
        claim.release(connector, metrics).await;
    }
}

/// Pairs a send of this process is publishing; released (and waiters woken) when dropped.
pub(super) struct LocalClaim {
    claims: Arc<Mutex<Claims>>,
    keys: Vec<Key>,
    settled: CancellationToken,
}

impl Drop for LocalClaim {
    fn drop(&mut self) {
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        for key in &self.keys {
            claims.remove(key);
        }
        self.settled.cancel();
    }
}

/// What the store knows of a batch, and the sequences claimed in it for this send. Settled by
/// [`Dedupe::mark`] or [`StoredClaim::release`]; dropped unsettled (the caller went away), it
/// releases what is left in the background.
pub(super) struct StoredClaim {
    store: Arc<dyn SeenStore>,
    /// Sequences delivered before, with their identities.
    pub(super) delivered: HashMap<Key, Identity>,
    claimed: Vec<(Arc<str>, Vec<i64>)>,
}

impl StoredClaim {
    /// Gives the claims back (the send failed); the sequences stay undelivered. Feed by feed,
    /// each forgotten only once released, so a drop half-way releases the rest.
    pub(super) async fn release(mut self, connector: &str, metrics: &Metrics) {
        while let Some((feed, sequences)) = self.claimed.first() {
            if !sequences.is_empty() {
                if let Err(e) = self.store.release(feed, sequences).await {
                    // The claims expire after their lease; until then other replicas wait.
                    metrics.dedupe_store_error(connector, "release");
                    tracing::warn!(%connector, error = %e, "dedupe store could not release claims; they expire after their lease");
                }
            }
            self.claimed.remove(0);
        }
    }
}

impl Drop for StoredClaim {
    fn drop(&mut self) {
        let claimed = std::mem::take(&mut self.claimed);
        if claimed.iter().all(|(_, s)| s.is_empty()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        runtime.spawn(async move {
            for (feed, sequences) in claimed {
                let _ = store.release(&feed, &sequences).await;
            }
        });
    }
}
