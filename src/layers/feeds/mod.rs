//! Feeds: the producer streams inside a connector, and what the bridge knows about their
//! sequences.
//!
//! A feed is (connector, `EntityEventSource` label or none). RCP-27 makes
//! `EntityEventSequence` monotonic and immutable per producer, with gaps, and delivery here is
//! at-least-once, so duplicates arrive (producer retries after 429 / 503 / timeouts,
//! rebalances, crashes). Every connector's sink is wrapped in the [`Feeds`] layer, which tracks
//! each feed's sequence ([`monitor`]) and, with `[dedupe]`, acknowledges an event its feed
//! already delivered without publishing it again ([`layer`], [`store`]).

mod config;
mod dedupe;
mod layer;
pub mod monitor;
pub mod order;
mod postgres;
mod postgres_config;
mod postgres_tls;
pub mod store;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use config::{default_evict_idle_feeds_after_hours, default_max_tracked_feeds};
pub use config::{
    validate_evict_idle_feeds_after_hours, validate_max_tracked_feeds, DedupeConfig,
    DedupeStoreConfig, OnConflict, DEFAULT_MAX_TRACKED_FEEDS,
};
pub use dedupe::Dedupe;
pub use layer::{identity, Feeds};
pub use monitor::{ConnectorFeeds, FeedMonitor, FeedView};
pub use postgres::{PostgresSeen, PostgresStoreConfig};
pub use postgres_tls::PostgresTls;
pub use store::{Claimed, EmbeddedSeen, SeenStore, SeenStoreError, Window};

use crate::connector::Sink;
use crate::metrics::Metrics;

/// A connector's sink wrapped in the feeds layer, and what the admin view needs of it.
pub struct Wrapped {
    /// The layer, to be used as the connector's sink.
    pub sink: Arc<dyn Sink>,
    /// The connector's feeds.
    pub monitor: Arc<FeedMonitor>,
    /// Whether duplicates are suppressed.
    pub dedupe: bool,
}

/// How many feeds a connector tracks, and for how long an idle one (the connector's
/// `max_tracked_feeds` and `evict_idle_feeds_after_hours`).
#[derive(Debug, Clone, Copy)]
pub struct Tracking {
    /// At most this many feeds.
    pub max_tracked_feeds: usize,
    /// A feed without an event for this many hours is forgotten (0: never).
    pub evict_idle_feeds_after_hours: u64,
    /// Write the dedupe marks before a send is answered, not after: for pull sources, which
    /// move their checkpoint or offset on the answer, so a crash after it can never leave a
    /// delivered page unmarked (asked for again, it is suppressed). A webhook push is answered
    /// first (the marks stay off its latency).
    pub mark_before_answer: bool,
}

/// The embedded store's file of `connector` under `data_dir`.
pub fn embedded_store_path(data_dir: &Path, connector: &str) -> std::path::PathBuf {
    data_dir.join("dedupe").join(format!("{connector}.db"))
}

/// Wraps `inner`, the sink of `connector`: opens the dedupe store when `dedupe` is set and
/// resumes each remembered feed's high-water mark from it.
pub async fn wrap(
    connector: &str,
    dedupe: Option<&DedupeConfig>,
    tracking: Tracking,
    data_dir: &Path,
    inner: Arc<dyn Sink>,
    metrics: Metrics,
) -> Result<Wrapped, SeenStoreError> {
    let idle = (tracking.evict_idle_feeds_after_hours > 0)
        .then(|| Duration::from_secs(tracking.evict_idle_feeds_after_hours * 3_600));
    let monitor = Arc::new(FeedMonitor::new(
        connector,
        tracking.max_tracked_feeds,
        idle,
        metrics.clone(),
    ));
    {
        // Gaps are counted and quiet feeds forgotten even when no event arrives at all; the
        // task ends with the monitor.
        let weak = Arc::downgrade(&monitor);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(monitor::SWEEP_INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            every.tick().await; // the first tick is immediate
            loop {
                every.tick().await;
                match weak.upgrade() {
                    Some(monitor) => monitor.sweep(),
                    None => return,
                }
            }
        });
    }
    let dedupe = match dedupe {
        None => None,
        Some(config) => {
            let window = Window {
                events: config.window_events,
                max_age: (config.window_age_hours > 0)
                    .then(|| Duration::from_secs(config.window_age_hours * 3_600)),
            };
            let store: Arc<dyn SeenStore> = match &config.store {
                DedupeStoreConfig::Embedded => Arc::new(EmbeddedSeen::open(
                    &embedded_store_path(data_dir, connector),
                    window,
                )?),
                DedupeStoreConfig::Postgres(p) => {
                    Arc::new(PostgresSeen::open(p, connector, window)?)
                }
            };
            match store.high_water_marks().await {
                Ok(marks) => {
                    for (feed, high_water_mark) in marks {
                        monitor.resume(&feed, high_water_mark);
                    }
                }
                // A shared database that is down at start-up: suppression fails open until it
                // answers (counted per lookup); the marks come back with the next events.
                Err(e) => {
                    tracing::warn!(%connector, error = %e, "dedupe store unreachable at start-up; high-water marks start empty");
                }
            }
            Some(Dedupe::new(
                store,
                config.on_conflict,
                Duration::from_millis(config.max_claim_wait_ms),
            ))
        }
    };
    let enabled = dedupe.is_some();
    let mut feeds = Feeds::new(connector, inner, monitor.clone(), dedupe, metrics);
    if tracking.mark_before_answer {
        feeds = feeds.marking_before_answer();
    }
    let sink = Arc::new(feeds);
    Ok(Wrapped {
        sink,
        monitor,
        dedupe: enabled,
    })
}

/// Longest event id (AMQP's `message_id` is a short string of at most 255 bytes).
const MAX_EVENT_ID_BYTES: usize = 255;

/// The downstream idempotency key of an event, unique per connector, feed and event:
/// `<connector>/<EntityEventSource>/<EntityEventSequence>`, with an empty middle part for
/// events without a label (`quickstart//1101`; a label is never empty) and `sha256-<32 hex>`
/// of the label when the id would pass 255 bytes. A conflict published under
/// `on_conflict = "publish"` (its sequence was delivered for another record) gets
/// `~<16 hex>` of its identity after the sequence (`quickstart//1101~1f2e…`), so it does not
/// share the id of the event it conflicts with. Connector names hold no `/`, and the sequence
/// follows the last `/`, so the parts read back unambiguously. Carried as the AMQP
/// `message_id` and the Kafka header `message_id`.
pub fn event_id(
    connector: &str,
    source_label: Option<&str>,
    sequence: i64,
    conflict: Option<i64>,
) -> String {
    let label = source_label.unwrap_or("");
    let suffix = match conflict {
        Some(identity) => format!("~{identity:016x}"),
        None => String::new(),
    };
    let id = format!("{connector}/{label}/{sequence}{suffix}");
    if id.len() <= MAX_EVENT_ID_BYTES {
        return id;
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(label.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{connector}/sha256-{hex}/{sequence}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::event_id;

    #[test]
    fn event_ids_are_unique_per_connector_and_feed_and_bounded() {
        assert_eq!(
            event_id("mls", Some("IDX Feed 123"), 1101, None),
            "mls/IDX Feed 123/1101"
        );
        assert_eq!(event_id("mls", None, 7, None), "mls//7");
        assert_ne!(event_id("a", None, 7, None), event_id("b", None, 7, None));
        assert_ne!(
            event_id("a", None, 7, None),
            event_id("a", Some("default"), 7, None)
        );
        let long = "x".repeat(300);
        let id = event_id("mls", Some(&long), 42, None);
        assert!(id.len() <= 255 && id.starts_with("mls/sha256-") && id.ends_with("/42"));
        assert_eq!(id, event_id("mls", Some(&long), 42, None), "deterministic");
        let conflict = event_id("mls", None, 7, Some(0x1f2e));
        assert_eq!(conflict, "mls//7~0000000000001f2e");
        assert_ne!(conflict, event_id("mls", None, 7, Some(-1)));
        let long_conflict = event_id("mls", Some(&long), 42, Some(-1));
        assert!(long_conflict.len() <= 255 && long_conflict.ends_with("/42~ffffffffffffffff"));
    }
}
