//! Sequence monitoring per feed: the high-water mark, gaps, regressions, duplicates, conflicts
//! and the time of the last event of each producer stream of a connector.
//!
//! A feed is (connector, `EntityEventSource` label or none). Gaps are normal — producers
//! compact their logs — so they are counted, never refused; how confirmations out of the
//! feed's order (Kafka lanes, concurrent pushes) are told from gaps and regressions is
//! [`super::order`]. Only what the sink confirmed moves a feed (plus the duplicates
//! acknowledged without publishing), so the numbers describe what reached the bus. The number
//! of feeds is capped (`max_tracked_feeds`): a producer choosing labels cannot grow memory or
//! metric series without bound; events of feeds past the cap are counted under `_other`. A
//! feed idle for `evict_idle_feeds_after_hours` is forgotten (its series removed, its slot
//! freed): producers that retire labels do not fill the cap for good, and a retired feed's
//! stall alert ends. Its dedupe store rows stay until the window drops them, so a returning
//! feed is still deduplicated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::order::{FeedOrder, Stream};
use crate::metrics::{FeedCounts, Metrics};

/// The `feed` label value of events without an `EntityEventSource` label.
pub const NO_LABEL: &str = "_none";
/// The `feed` label value of events of feeds past `max_tracked_feeds`.
pub const OTHER: &str = "_other";

/// A connector's feeds.
pub struct FeedMonitor {
    connector: String,
    max_tracked: usize,
    idle_eviction: Option<Duration>,
    metrics: Metrics,
    tracked: Mutex<Tracked>,
}

/// How often gaps past their reorder window are counted and idle feeds looked for
/// ([`FeedMonitor::sweep`], on a timer: never on the send path).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Tracked {
    feeds: HashMap<Arc<str>, FeedState>,
    other: FeedCounts,
    /// Whether the cap was reported (again after a feed was forgotten).
    capped: bool,
    /// Feeds forgotten for being idle, since the process started.
    evicted: u64,
}

/// The monitor's settings, for the bookkeeping under its lock.
struct Limits<'a> {
    connector: &'a str,
    max: usize,
    idle_eviction: Option<Duration>,
    metrics: &'a Metrics,
}

impl Tracked {
    /// Admits `feed` if the cap leaves room (its activity is now either way); says so once
    /// when there is none.
    fn admit(&mut self, feed: &str, now: SystemTime, limits: &Limits<'_>) -> bool {
        if let Some(state) = self.feeds.get_mut(feed) {
            // A send in flight keeps its feed from being forgotten before it is recorded.
            state.active_at = state.active_at.max(now);
            return true;
        }
        if self.feeds.len() >= limits.max {
            if !self.capped {
                self.capped = true;
                tracing::warn!(connector = %limits.connector, max_tracked_feeds = limits.max, "feed cap reached: events of further EntityEventSource labels are published unchecked and counted as feed _other");
            }
            return false;
        }
        let state = FeedState {
            active_at: now,
            ..FeedState::default()
        };
        self.feeds.insert(Arc::from(feed), state);
        limits
            .metrics
            .feeds_tracked(limits.connector, self.feeds.len());
        true
    }

    /// Forgets every feed without activity (admission or event) for `idle_eviction`.
    fn evict_idle(&mut self, now: SystemTime, limits: &Limits<'_>) {
        let Some(idle) = limits.idle_eviction else {
            return;
        };
        let before = self.feeds.len();
        self.feeds.retain(|feed, state| {
            // A clock set back counts as no time passed.
            let quiet = now.duration_since(state.active_at).unwrap_or_default();
            let keep = quiet < idle;
            if !keep {
                tracing::info!(connector = %limits.connector, feed = %label(feed), idle_hours = quiet.as_secs() / 3_600, "feed forgotten after being idle (evict_idle_feeds_after_hours)");
                limits.metrics.feed_forgotten(limits.connector, &label(feed));
            }
            keep
        });
        let evicted = before - self.feeds.len();
        if evicted > 0 {
            self.evicted += evicted as u64;
            self.capped = false; // report the cap again if it is reached again
            limits
                .metrics
                .feeds_tracked(limits.connector, self.feeds.len());
        }
    }
}

#[derive(Clone)]
struct FeedState {
    order: FeedOrder,
    last_event: Option<SystemTime>,
    /// The feed's last activity: its admission or its last event.
    active_at: SystemTime,
    totals: FeedCounts,
}

impl Default for FeedState {
    fn default() -> Self {
        FeedState {
            order: FeedOrder::default(),
            last_event: None,
            active_at: UNIX_EPOCH,
            totals: FeedCounts::default(),
        }
    }
}

/// One feed as the admin view shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FeedView {
    /// The `EntityEventSource` label; `null` for events sent without one.
    pub source: Option<String>,
    /// Highest sequence published (`null` before the first).
    pub high_water_mark: Option<i64>,
    /// When the feed's last event arrived (RFC 3339), published or duplicate.
    pub last_event_at: Option<String>,
    /// Events published since the process started.
    pub events: u64,
    /// Duplicates acknowledged without publishing.
    pub duplicates: u64,
    /// Conflicts (same sequence, other record).
    pub conflicts: u64,
    /// Published events below the high-water mark that were not known duplicates.
    pub regressions: u64,
    /// Sequence numbers skipped between consecutive published events.
    pub gap_sequences: u64,
}

/// A connector's feeds as the admin view shows them.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectorFeeds {
    /// Whether duplicates are suppressed (`[dedupe]` configured).
    pub dedupe: bool,
    /// The cap on tracked feeds.
    pub max_tracked_feeds: usize,
    /// Tracked feeds, by label (no label first).
    pub feeds: Vec<FeedView>,
    /// Events of feeds past the cap (published unchecked).
    pub untracked_events: u64,
    /// Feeds forgotten after `evict_idle_feeds_after_hours` without an event, since the
    /// process started.
    pub evicted_feeds: u64,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl FeedMonitor {
    /// No feeds yet; at most `max_tracked` will be tracked, and a feed without activity for
    /// `idle_eviction` is forgotten (`None`: never).
    pub fn new(
        connector: &str,
        max_tracked: usize,
        idle_eviction: Option<Duration>,
        metrics: Metrics,
    ) -> FeedMonitor {
        metrics.feeds_tracked(connector, 0);
        FeedMonitor {
            connector: connector.to_owned(),
            max_tracked,
            idle_eviction,
            metrics,
            tracked: Mutex::new(Tracked::default()),
        }
    }

    fn limits(&self) -> Limits<'_> {
        Limits {
            connector: &self.connector,
            max: self.max_tracked,
            idle_eviction: self.idle_eviction,
            metrics: &self.metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        // Bookkeeping only (no panics inside the lock), so a poisoned lock is still sound.
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the gaps whose reorder window passed and forgets the feeds idle for
    /// `idle_eviction` (called every [`SWEEP_INTERVAL`]).
    pub fn sweep(&self) {
        self.sweep_at(SystemTime::now());
    }

    fn sweep_at(&self, now: SystemTime) {
        let mut t = self.lock();
        // Gaps whose reorder window passed while the feed sent nothing more.
        for (feed, state) in t.feeds.iter_mut() {
            let gaps = state.order.settle(now);
            if gaps > 0 {
                state.totals.gap_sequences += gaps;
                let counts = FeedCounts {
                    gap_sequences: gaps,
                    ..FeedCounts::default()
                };
                self.observed(feed, state, counts);
            }
        }
        t.evict_idle(now, &self.limits());
    }

    /// Whether `feed` (`""` for no label) is tracked: it already is, or the cap leaves room and
    /// it is admitted now.
    pub fn admit(&self, feed: &str) -> bool {
        (self.lock()).admit(feed, SystemTime::now(), &self.limits())
    }

    /// Resumes a feed from its store (start-up): admits it and sets its high-water mark.
    pub fn resume(&self, feed: &str, high_water_mark: i64) {
        if !self.admit(feed) {
            return;
        }
        let mut t = self.lock();
        if let Some(state) = t.feeds.get_mut(feed) {
            state.order.resume(high_water_mark);
            let counts = FeedCounts::default();
            let label = label(feed);
            self.metrics.feed_observed(
                &self.connector,
                &label,
                counts,
                Some(high_water_mark),
                None,
            );
        }
    }

    /// Records what one send did to `feed` (admitted if the cap leaves room): the sequences
    /// published, in order, and the duplicates and conflicts met. `feed` is `""` for no label.
    pub fn record(&self, feed: &str, published: &[i64], duplicates: u64, conflicts: u64) {
        self.record_stream(feed, &None, published, duplicates, conflicts);
    }

    /// [`Self::record`] for events that came in order from `stream`.
    pub fn record_stream(
        &self,
        feed: &str,
        stream: &Stream,
        published: &[i64],
        duplicates: u64,
        conflicts: u64,
    ) {
        let now = SystemTime::now();
        self.record_at(feed, stream, published, duplicates, conflicts, now);
    }

    fn record_at(
        &self,
        feed: &str,
        stream: &Stream,
        published: &[i64],
        duplicates: u64,
        conflicts: u64,
        now: SystemTime,
    ) {
        let mut t = self.lock();
        t.admit(feed, now, &self.limits());
        let Some(state) = t.feeds.get_mut(feed) else {
            t.other.events += published.len() as u64;
            t.other.duplicates += duplicates;
            t.other.conflicts += conflicts;
            let counts = FeedCounts {
                events: published.len() as u64,
                duplicates,
                conflicts,
                ..FeedCounts::default()
            };
            self.metrics
                .feed_observed(&self.connector, OTHER, counts, None, None);
            return;
        };
        let mut counts = FeedCounts {
            events: published.len() as u64,
            duplicates,
            conflicts,
            ..FeedCounts::default()
        };
        let order = state.order.observe(stream, published, now);
        counts.regressions = order.regressions;
        counts.gap_sequences = order.gap_sequences;
        if !published.is_empty() || duplicates > 0 || conflicts > 0 {
            state.last_event = Some(now);
            state.active_at = now;
        }
        let totals = &mut state.totals;
        totals.events += counts.events;
        totals.duplicates += counts.duplicates;
        totals.conflicts += counts.conflicts;
        totals.regressions += counts.regressions;
        totals.gap_sequences += counts.gap_sequences;
        self.observed(feed, state, counts);
    }

    /// Adds `counts` to a tracked feed's series, with its mark and last event time.
    fn observed(&self, feed: &str, state: &FeedState, counts: FeedCounts) {
        self.metrics.feed_observed(
            &self.connector,
            &label(feed),
            counts,
            state.order.high_water_mark(),
            state.last_event.map(unix),
        );
    }

    /// The admin view of this connector's feeds.
    pub fn view(&self, dedupe: bool) -> ConnectorFeeds {
        let t = self.lock();
        let mut feeds: Vec<FeedView> = t
            .feeds
            .iter()
            .map(|(feed, s)| FeedView {
                source: (!feed.is_empty()).then(|| feed.to_string()),
                high_water_mark: s.order.high_water_mark(),
                last_event_at: s
                    .last_event
                    .map(|at| humantime::format_rfc3339_seconds(at).to_string()),
                events: s.totals.events,
                duplicates: s.totals.duplicates,
                conflicts: s.totals.conflicts,
                regressions: s.totals.regressions,
                gap_sequences: s.totals.gap_sequences,
            })
            .collect();
        feeds.sort_by(|a, b| a.source.cmp(&b.source));
        ConnectorFeeds {
            dedupe,
            max_tracked_feeds: self.max_tracked,
            feeds,
            untracked_events: t.other.events,
            evicted_feeds: t.evicted,
        }
    }
}

/// The `feed` label of a tracked feed: its `EntityEventSource` label, `_none` without one. A
/// label starting with `_` gets one more (`_other` → `__other`), so no producer can write into
/// the series of `_none` or `_other`.
fn label(feed: &str) -> std::borrow::Cow<'_, str> {
    if feed.is_empty() {
        NO_LABEL.into()
    } else if feed.starts_with('_') {
        format!("_{feed}").into()
    } else {
        feed.into()
    }
}

#[cfg(test)]
#[path = "monitor_tests.rs"]
mod tests;
