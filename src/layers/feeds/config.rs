//! The `[dedupe]` table of a connector and its limits: which store remembers delivered
//! sequences, over which window, and what a conflicting event gets.

use serde::{Deserialize, Serialize};

/// Duplicate suppression for one connector (`[dedupe]`). Absent: every event is published,
/// duplicates included (sequence monitoring still runs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// Where delivered sequences are remembered (`[dedupe.store]`). `embedded` (the default):
    /// a SQLite file `dedupe/<connector>.db` under `data_dir`, for one bridge process. Several
    /// replicas behind one load balancer need a shared store.
    #[serde(default)]
    pub store: DedupeStoreConfig,
    /// Delivered sequences remembered per feed: the newest this many. An older sequence sent
    /// again is published again (and counted as a regression).
    #[serde(default = "default_window_events")]
    pub window_events: u64,
    /// Delivered sequences are forgotten after this many hours (0: only `window_events`
    /// bounds the window).
    #[serde(default = "default_window_age_hours")]
    pub window_age_hours: u64,
    /// What happens to an event whose `EntityEventSequence` its feed already delivered with a
    /// different `ResourceName` or `ResourceRecordKey` (a producer that broke the sequence's
    /// immutability). Every conflict is counted (`entity_bridge_feed_conflicts_total`) and
    /// logged at WARN.
    #[serde(default)]
    pub on_conflict: OnConflict,
    /// With a shared store: how long a send waits while another process publishes some of its
    /// sequences before it is refused as overloaded (a push gets 429 + `Retry-After`; a pull
    /// batch is retried).
    #[serde(default = "default_max_claim_wait_ms")]
    pub max_claim_wait_ms: u64,
}

/// Where delivered sequences are remembered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DedupeStoreConfig {
    /// A SQLite file under `data_dir` (`dedupe/<connector>.db`): survives restarts, seen by
    /// this process only.
    #[default]
    Embedded,
    /// A PostgreSQL table shared by every replica of the connector (several bridge processes
    /// behind one load balancer).
    Postgres(super::postgres::PostgresStoreConfig),
}

/// The `on_conflict` policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    /// Publish the event (nothing is lost) under its own `message_id`; the sequence stays with
    /// the record delivered first.
    #[default]
    Publish,
    /// Refuse it: a push gets 409 naming `/value/N/EntityEventSequence` and nothing of it is
    /// published; a pull source dead-letters that event alone (reason `rejected`).
    Reject,
    /// Acknowledge it without publishing, like a duplicate.
    Skip,
}

/// The most feeds a connector tracks (sequence monitoring and duplicate suppression); events of
/// further feeds are published unchecked and counted under the feed label `_other`.
pub const DEFAULT_MAX_TRACKED_FEEDS: usize = 64;
/// Upper bound of `max_tracked_feeds` (each feed is a set of metric series and a window).
pub const MAX_TRACKED_FEEDS_LIMIT: usize = 10_000;
/// Upper bound of `window_events` per feed.
pub const MAX_WINDOW_EVENTS: u64 = 100_000_000;
/// Upper bound of `window_age_hours` (ten years).
pub const MAX_WINDOW_AGE_HOURS: u64 = 24 * 3_660;

fn default_window_events() -> u64 {
    1_000_000
}

fn default_max_claim_wait_ms() -> u64 {
    10_000
}

fn default_window_age_hours() -> u64 {
    168
}

pub(crate) fn default_max_tracked_feeds() -> usize {
    DEFAULT_MAX_TRACKED_FEEDS
}

pub(crate) fn default_evict_idle_feeds_after_hours() -> u64 {
    168
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig {
            store: DedupeStoreConfig::default(),
            window_events: default_window_events(),
            window_age_hours: default_window_age_hours(),
            on_conflict: OnConflict::default(),
            max_claim_wait_ms: default_max_claim_wait_ms(),
        }
    }
}

impl DedupeConfig {
    /// Semantic checks; `Err((key, detail))`, the key relative to `[dedupe]`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(1..=MAX_WINDOW_EVENTS).contains(&self.window_events) {
            return Err((
                "window_events".into(),
                format!("must be between 1 and {MAX_WINDOW_EVENTS}"),
            ));
        }
        if self.window_age_hours > MAX_WINDOW_AGE_HOURS {
            return Err((
                "window_age_hours".into(),
                format!("must be at most {MAX_WINDOW_AGE_HOURS} (0 = no age limit)"),
            ));
        }
        if let DedupeStoreConfig::Postgres(p) = &self.store {
            p.validate().map_err(|(k, d)| (format!("store.{k}"), d))?;
        }
        if !(1..=crate::http::MAX_TIMEOUT_MS).contains(&self.max_claim_wait_ms) {
            return Err((
                "max_claim_wait_ms".into(),
                "must be between 1 and 86400000 (one day)".into(),
            ));
        }
        Ok(())
    }
}

/// Checks `evict_idle_feeds_after_hours` (0: never).
pub fn validate_evict_idle_feeds_after_hours(value: u64) -> Result<(), String> {
    if value > MAX_WINDOW_AGE_HOURS {
        return Err(format!(
            "must be at most {MAX_WINDOW_AGE_HOURS} (0 = never)"
        ));
    }
    Ok(())
}

/// Checks `max_tracked_feeds`.
pub fn validate_max_tracked_feeds(value: usize) -> Result<(), String> {
    if !(1..=MAX_TRACKED_FEEDS_LIMIT).contains(&value) {
        return Err(format!("must be between 1 and {MAX_TRACKED_FEEDS_LIMIT}"));
    }
    Ok(())
}
