//! Duplicate suppression's bookkeeping for the feeds layer: claims inside this process, the
//! store round (look up, claim across processes, wait while another replica publishes), and
//! giving claims back when a send fails or its caller goes away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::config::OnConflict;
use super::store::{Identity, SeenStore};
use crate::connector::SinkError;
use crate::metrics::Metrics;
use crate::retry::Backoff;

/// A (feed, sequence) pair.
pub(super) type Key = (Arc<str>, i64);
/// Events (sequence, identity) grouped by feed.
pub(super) type ByFeed = [(Arc<str>, Vec<(i64, Identity)>)];
type Claims = HashMap<Key, CancellationToken>;

/// Duplicate suppression: the store, the policy and the claims of this process.
pub struct Dedupe {
    pub(super) store: Arc<dyn SeenStore>,
    pub(super) on_conflict: OnConflict,
    claims: Arc<Mutex<Claims>>,
    max_claim_wait: Duration,
}

impl Dedupe {
    /// Suppression over `store`, handling conflicts by `on_conflict`; a send waits at most
    /// `max_claim_wait` for sequences another process is publishing.
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
        }
    }

    /// Claims `keys` (distinct) in this process, waiting while another send holds any of them.
    pub(super) async fn claim_local(&self, keys: Vec<Key>) -> LocalClaim {
        loop {
            let busy: Vec<CancellationToken> = {
                let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
                let busy: Vec<_> = keys.iter().filter_map(|k| claims.get(k).cloned()).collect();
                if busy.is_empty() {
                    let settled = CancellationToken::new();
                    for key in &keys {
                        claims.insert(key.clone(), settled.clone());
                    }
                    return LocalClaim {
                        claims: self.claims.clone(),
                        keys,
                        settled,
                    };
                }
                busy
            };
            for other in busy {
                other.cancelled().await;
            }
        }
    }

    /// Looks the batch's events up in the store and claims the undelivered ones there. While
    /// another process publishes some of them, gives back what it claimed and tries again
    /// (jittered backoff, so two replicas wanting each other's sequences cannot deadlock); past
    /// `max_claim_wait` the batch is refused as overloaded (429 / retried). A store that fails
    /// is counted and skipped: its events are published unchecked.
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
            let mut busy = 0;
            for (feed, events) in lookups {
                match self.store.claim(feed, events).await {
                    Ok(found) => {
                        busy += found.busy.len();
                        let mine: Vec<i64> = (events.iter().map(|(s, _)| *s))
                            .filter(|s| !found.delivered.contains_key(s) && !found.busy.contains(s))
                            .collect();
                        claim.claimed.push((feed.clone(), mine));
                        let delivered = found.delivered.into_iter();
                        claim
                            .delivered
                            .extend(delivered.map(|(s, id)| ((feed.clone(), s), id)));
                    }
                    Err(e) => {
                        metrics.dedupe_store_error(connector, "lookup");
                        tracing::warn!(%connector, error = %e, "dedupe store lookup failed; publishing unchecked");
                    }
                }
            }
            if busy == 0 {
                return Ok(claim);
            }
            claim.release(connector, metrics).await;
            if started.elapsed() >= self.max_claim_wait {
                return Err(SinkError::Overloaded {
                    reason: format!(
                        "{busy} sequences of this batch are being published by another process"
                    ),
                });
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
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
/// [`StoredClaim::mark`] or [`StoredClaim::release`]; dropped unsettled (the caller went
/// away), it releases in the background.
pub(super) struct StoredClaim {
    store: Arc<dyn SeenStore>,
    /// Sequences delivered before, with their identities.
    pub(super) delivered: HashMap<Key, Identity>,
    claimed: Vec<(Arc<str>, Vec<i64>)>,
}

impl StoredClaim {
    /// Gives the claims back (the send failed); the sequences stay undelivered.
    pub(super) async fn release(mut self, connector: &str, metrics: &Metrics) {
        for (feed, sequences) in std::mem::take(&mut self.claimed) {
            if sequences.is_empty() {
                continue;
            }
            if let Err(e) = self.store.release(&feed, &sequences).await {
                // The claims expire after their lease; until then other replicas wait.
                metrics.dedupe_store_error(connector, "release");
                tracing::warn!(%connector, error = %e, "dedupe store could not release claims; they expire after their lease");
            }
        }
    }

    /// Marks `marks` delivered (the sink confirmed them), which also ends their claims. A
    /// failed mark is counted: those events may be published again if resent.
    pub(super) async fn mark(mut self, marks: &ByFeed, connector: &str, metrics: &Metrics) {
        self.claimed.clear();
        for (feed, events) in marks {
            if let Err(e) = self.store.mark(feed, events).await {
                metrics.dedupe_store_error(connector, "mark");
                tracing::warn!(%connector, error = %e, events = events.len(), "dedupe store write failed; these events may be published again if resent");
            }
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
