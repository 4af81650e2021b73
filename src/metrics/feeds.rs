//! Feeds: each producer stream's sequence (high-water mark, gaps, regressions, last event) and
//! what duplicate suppression did with it.
//!
//! The `feed` label is the `EntityEventSource` label a producer sent (`_none` without one),
//! capped per connector by `max_tracked_feeds`; events of further feeds are counted under
//! `_other` and have no sequence gauges. A feed idle for `evict_idle_feeds_after_hours` loses
//! its series.

use prometheus::{IntCounterVec, IntGaugeVec};

use super::catalog::Recording;
use super::Metrics;

/// The families written by the feeds layer.
pub(super) struct FeedMetrics {
    events: IntCounterVec,
    duplicates: IntCounterVec,
    conflicts: IntCounterVec,
    regressions: IntCounterVec,
    gap_sequences: IntCounterVec,
    high_water_mark: IntGaugeVec,
    last_event: IntGaugeVec,
    tracked: IntGaugeVec,
    evicted: IntCounterVec,
    store_errors: IntCounterVec,
}

impl FeedMetrics {
    pub(super) fn register(registry: &Recording) -> FeedMetrics {
        let counter =
            |name: &str, help: &str, labels: &[&str]| registry.counter(name, help, labels);
        let gauge = |name: &str, help: &str, labels: &[&str]| registry.gauge(name, help, labels);
        let feed = &["connector", "feed"];
        FeedMetrics {
            events: counter(
                "entity_bridge_feed_events_total",
                "Events of a feed the sink confirmed (published; duplicates not included), by connector and feed (EntityEventSource label, _none, _other beyond max_tracked_feeds).",
                feed,
            ),
            duplicates: counter(
                "entity_bridge_feed_duplicates_total",
                "Events acknowledged without being published again because their feed already delivered their EntityEventSequence ([dedupe]), by connector and feed.",
                feed,
            ),
            conflicts: counter(
                "entity_bridge_feed_conflicts_total",
                "Events whose EntityEventSequence their feed already delivered with another ResourceName or ResourceRecordKey, by connector and feed (handled by on_conflict).",
                feed,
            ),
            regressions: counter(
                "entity_bridge_feed_regressions_total",
                "Published events that went back in their feed's order (below the high-water mark and not a late gap filler; on a Kafka source below their own partition's mark) and were not known duplicates, by connector and feed.",
                feed,
            ),
            gap_sequences: counter(
                "entity_bridge_feed_gap_sequences_total",
                "Sequence numbers skipped between consecutive published events of a feed, counted when they have not arrived 30 s after the high-water mark passed them (informational: producers compact their logs), by connector and feed.",
                feed,
            ),
            high_water_mark: gauge(
                "entity_bridge_feed_high_water_mark",
                "Highest EntityEventSequence a feed has published, by connector and feed.",
                feed,
            ),
            last_event: gauge(
                "entity_bridge_feed_last_event_timestamp_seconds",
                "Unix time of the last event a feed published or acknowledged as a duplicate, by connector and feed.",
                feed,
            ),
            tracked: gauge(
                "entity_bridge_feeds_tracked",
                "Feeds a connector tracks (at most max_tracked_feeds).",
                &["connector"],
            ),
            evicted: counter(
                "entity_bridge_feeds_evicted_total",
                "Feeds a connector forgot after evict_idle_feeds_after_hours without an event (their series removed, their slot under max_tracked_feeds freed).",
                &["connector"],
            ),
            store_errors: counter(
                "entity_bridge_dedupe_store_errors_total",
                "Failed operations of a connector's dedupe store: lookup (events then published unchecked), mark (delivered events not remembered), release (claims left to expire), and bypassed (a send that skipped the store for 5 s after a failure). Duplicates possible, never loss.",
                &["connector", "outcome"],
            ),
        }
    }
}

/// What one send did to one feed (see [`Metrics::feed_observed`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FeedCounts {
    /// Events published.
    pub events: u64,
    /// Duplicates acknowledged without publishing.
    pub duplicates: u64,
    /// Conflicts met.
    pub conflicts: u64,
    /// Published events below the high-water mark.
    pub regressions: u64,
    /// Sequence numbers skipped.
    pub gap_sequences: u64,
}

impl Metrics {
    /// Adds one send's counts to `feed` of `connector`; sets its high-water mark and last event
    /// time when given (tracked feeds).
    pub fn feed_observed(
        &self,
        connector: &str,
        feed: &str,
        counts: FeedCounts,
        high_water_mark: Option<i64>,
        last_event_unix: Option<i64>,
    ) {
        let m = &self.0.feeds;
        let labels = [connector, feed];
        for (family, n) in [
            (&m.events, counts.events),
            (&m.duplicates, counts.duplicates),
            (&m.conflicts, counts.conflicts),
            (&m.regressions, counts.regressions),
            (&m.gap_sequences, counts.gap_sequences),
        ] {
            // Touch every family so each tracked feed shows all its series from the first event.
            family.with_label_values(&labels).inc_by(n);
        }
        if let Some(hwm) = high_water_mark {
            m.high_water_mark.with_label_values(&labels).set(hwm);
        }
        if let Some(at) = last_event_unix {
            m.last_event.with_label_values(&labels).set(at);
        }
    }

    /// Removes the series of a feed `connector` forgot (idle), and counts it.
    pub fn feed_forgotten(&self, connector: &str, feed: &str) {
        let m = &self.0.feeds;
        let labels = [connector, feed];
        for family in [
            &m.events,
            &m.duplicates,
            &m.conflicts,
            &m.regressions,
            &m.gap_sequences,
        ] {
            // Absent series (never touched) are fine to skip.
            let _ = family.remove_label_values(&labels);
        }
        for family in [&m.high_water_mark, &m.last_event] {
            let _ = family.remove_label_values(&labels);
        }
        m.evicted.with_label_values(&[connector]).inc();
    }

    /// Sets how many feeds `connector` tracks.
    pub fn feeds_tracked(&self, connector: &str, tracked: usize) {
        let tracked = i64::try_from(tracked).unwrap_or(i64::MAX);
        let m = &self.0.feeds;
        m.tracked.with_label_values(&[connector]).set(tracked);
        // Shown at 0 from the start, so an increase is visible from the first eviction.
        m.evicted.with_label_values(&[connector]);
    }

    /// Counts a failed dedupe store operation (`lookup`, `mark`, `release`), or a send that
    /// bypassed the store after a failure (`bypassed`).
    pub fn dedupe_store_error(&self, connector: &str, outcome: &str) {
        self.0
            .feeds
            .store_errors
            .with_label_values(&[connector, outcome])
            .inc();
    }
}
