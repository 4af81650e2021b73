//! Sequence monitoring per feed: the high-water mark, gaps, regressions, duplicates, conflicts
//! and the time of the last event of each producer stream of a connector.
//!
//! A feed is (connector, `EntityEventSource` label or none). Gaps are normal — producers
//! compact their logs — so they are counted, never refused. Only what the sink confirmed moves
//! a feed (plus the duplicates acknowledged without publishing), so the numbers describe what
//! reached the bus. The number of feeds is capped (`max_tracked_feeds`): a producer choosing
//! labels cannot grow memory or metric series without bound; events of feeds past the cap are
//! counted under `_other`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::metrics::{FeedCounts, Metrics};

/// The `feed` label value of events without an `EntityEventSource` label.
pub const NO_LABEL: &str = "_none";
/// The `feed` label value of events of feeds past `max_tracked_feeds`.
pub const OTHER: &str = "_other";

/// A connector's feeds.
pub struct FeedMonitor {
    connector: String,
    max_tracked: usize,
    metrics: Metrics,
    tracked: Mutex<Tracked>,
}

#[derive(Default)]
struct Tracked {
    feeds: HashMap<Arc<str>, FeedState>,
    other: FeedCounts,
    /// Whether the cap was reported (once per process).
    capped: bool,
}

impl Tracked {
    /// Admits `feed` if the cap leaves room; says so once when it does not.
    fn admit(&mut self, feed: &str, max: usize, connector: &str, metrics: &Metrics) -> bool {
        if self.feeds.contains_key(feed) {
            return true;
        }
        if self.feeds.len() >= max {
            if !self.capped {
                self.capped = true;
                tracing::warn!(%connector, max_tracked_feeds = max, "feed cap reached: events of further EntityEventSource labels are published unchecked and counted as feed _other");
            }
            return false;
        }
        self.feeds.insert(Arc::from(feed), FeedState::default());
        metrics.feeds_tracked(connector, self.feeds.len());
        true
    }
}

#[derive(Default, Clone)]
struct FeedState {
    high_water_mark: Option<i64>,
    last_event: Option<SystemTime>,
    totals: FeedCounts,
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
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl FeedMonitor {
    /// No feeds yet; at most `max_tracked` will be tracked.
    pub fn new(connector: &str, max_tracked: usize, metrics: Metrics) -> FeedMonitor {
        metrics.feeds_tracked(connector, 0);
        FeedMonitor {
            connector: connector.to_owned(),
            max_tracked,
            metrics,
            tracked: Mutex::new(Tracked::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        // Bookkeeping only (no panics inside the lock), so a poisoned lock is still sound.
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `feed` (`""` for no label) is tracked: it already is, or the cap leaves room and
    /// it is admitted now.
    pub fn admit(&self, feed: &str) -> bool {
        (self.lock()).admit(feed, self.max_tracked, &self.connector, &self.metrics)
    }

    /// Resumes a feed from its store (start-up): admits it and sets its high-water mark.
    pub fn resume(&self, feed: &str, high_water_mark: i64) {
        if !self.admit(feed) {
            return;
        }
        let mut t = self.lock();
        if let Some(state) = t.feeds.get_mut(feed) {
            state.high_water_mark = Some(high_water_mark);
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
        let now = SystemTime::now();
        let mut t = self.lock();
        t.admit(feed, self.max_tracked, &self.connector, &self.metrics);
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
        for &sequence in published {
            match state.high_water_mark {
                Some(hwm) if sequence > hwm => {
                    // Both positive, so the difference fits.
                    counts.gap_sequences += (sequence - hwm - 1) as u64;
                    state.high_water_mark = Some(sequence);
                }
                Some(hwm) if sequence < hwm => counts.regressions += 1,
                Some(_) => {}
                None => state.high_water_mark = Some(sequence),
            }
        }
        if !published.is_empty() || duplicates > 0 || conflicts > 0 {
            state.last_event = Some(now);
        }
        let totals = &mut state.totals;
        totals.events += counts.events;
        totals.duplicates += counts.duplicates;
        totals.conflicts += counts.conflicts;
        totals.regressions += counts.regressions;
        totals.gap_sequences += counts.gap_sequences;
        self.metrics.feed_observed(
            &self.connector,
            &label(feed),
            counts,
            state.high_water_mark,
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
                high_water_mark: s.high_water_mark,
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
mod tests {
    use super::*;

    #[test]
    fn counts_gaps_regressions_and_the_high_water_mark() {
        let metrics = Metrics::new();
        let m = FeedMonitor::new("c", 2, metrics.clone());
        assert!(m.admit("IDX"));
        m.record("IDX", &[1101, 1111, 1112], 0, 0);
        m.record("IDX", &[1105], 2, 1);
        let view = m.view(true);
        assert_eq!(
            view.feeds,
            vec![FeedView {
                source: Some("IDX".into()),
                high_water_mark: Some(1112),
                last_event_at: view.feeds[0].last_event_at.clone(),
                events: 4,
                duplicates: 2,
                conflicts: 1,
                regressions: 1,
                gap_sequences: 9,
            }]
        );
        assert!(view.feeds[0].last_event_at.is_some());
        let text = metrics.encode();
        for line in [
            "entity_bridge_feed_high_water_mark{connector=\"c\",feed=\"IDX\"} 1112",
            "entity_bridge_feed_gap_sequences_total{connector=\"c\",feed=\"IDX\"} 9",
            "entity_bridge_feed_regressions_total{connector=\"c\",feed=\"IDX\"} 1",
            "entity_bridge_feed_duplicates_total{connector=\"c\",feed=\"IDX\"} 2",
            "entity_bridge_feeds_tracked{connector=\"c\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn feeds_past_the_cap_are_counted_as_other() {
        let metrics = Metrics::new();
        let m = FeedMonitor::new("c", 2, metrics.clone());
        assert!(m.admit(""));
        assert!(m.admit("a"));
        assert!(!m.admit("b"), "the cap is reached");
        assert!(m.admit("a"), "a tracked feed stays tracked");
        m.record("b", &[1, 2], 0, 0);
        m.record("", &[7], 0, 0);
        let view = m.view(false);
        assert_eq!(view.untracked_events, 2);
        assert_eq!(view.feeds.len(), 2);
        assert_eq!(view.feeds[0].source, None, "no label first");
        let text = metrics.encode();
        assert!(text.contains("entity_bridge_feed_events_total{connector=\"c\",feed=\"_other\"} 2"));
        assert!(
            text.contains("entity_bridge_feed_high_water_mark{connector=\"c\",feed=\"_none\"} 7")
        );
        assert!(
            !text.contains("feed=\"b\""),
            "no series for an untracked feed"
        );
    }

    #[test]
    fn a_producer_label_cannot_write_into_the_reserved_series() {
        let metrics = Metrics::new();
        let m = FeedMonitor::new("c", 8, metrics.clone());
        m.record("_other", &[5], 0, 0);
        m.record("_none", &[6], 0, 0);
        let text = metrics.encode();
        let hwm = |feed: &str, v: i64| {
            format!("entity_bridge_feed_high_water_mark{{connector=\"c\",feed=\"{feed}\"}} {v}")
        };
        assert!(text.contains(&hwm("__other", 5)), "{text}");
        assert!(text.contains(&hwm("__none", 6)), "{text}");
        assert!(!text.contains("feed=\"_other\""), "{text}");
        let view = m.view(false);
        assert_eq!(
            view.feeds[0].source.as_deref(),
            Some("_none"),
            "shown as sent"
        );
    }
}
