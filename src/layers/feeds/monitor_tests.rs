//! The monitor's counting, its cap and the eviction of idle feeds (with an explicit clock).

use super::*;
use crate::layers::feeds::order::REORDER_WINDOW;

#[test]
fn counts_gaps_regressions_and_the_high_water_mark() {
    let metrics = Metrics::new();
    let m = FeedMonitor::new("c", 2, None, metrics.clone());
    let t0 = SystemTime::now();
    assert!(m.admit("IDX"));
    m.record_at("IDX", &None, &[1101, 1111, 1112], 0, 0, t0);
    // Late, within the reorder window: it fills a gap, it is no regression.
    m.record_at("IDX", &None, &[1105], 2, 1, t0 + Duration::from_secs(1));
    // The other skipped numbers count once their window passed (here by the sweep).
    m.sweep_at(t0 + REORDER_WINDOW);
    // An old number after that: the producer went back.
    let later = t0 + REORDER_WINDOW + Duration::from_secs(1);
    m.record_at("IDX", &None, &[1103], 0, 0, later);
    let view = m.view(true);
    assert_eq!(
        view.feeds,
        vec![FeedView {
            source: Some("IDX".into()),
            high_water_mark: Some(1112),
            last_event_at: view.feeds[0].last_event_at.clone(),
            events: 5,
            duplicates: 2,
            conflicts: 1,
            regressions: 1,
            gap_sequences: 8,
        }]
    );
    assert!(view.feeds[0].last_event_at.is_some());
    let text = metrics.encode();
    for line in [
        "entity_bridge_feed_high_water_mark{connector=\"c\",feed=\"IDX\"} 1112",
        "entity_bridge_feed_gap_sequences_total{connector=\"c\",feed=\"IDX\"} 8",
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
    let m = FeedMonitor::new("c", 2, None, metrics.clone());
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
    assert!(text.contains("entity_bridge_feed_high_water_mark{connector=\"c\",feed=\"_none\"} 7"));
    assert!(
        !text.contains("feed=\"b\""),
        "no series for an untracked feed"
    );
}

#[test]
fn a_producer_label_cannot_write_into_the_reserved_series() {
    let metrics = Metrics::new();
    let m = FeedMonitor::new("c", 8, None, metrics.clone());
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

#[test]
fn idle_feeds_are_forgotten_and_free_their_slot() {
    let metrics = Metrics::new();
    let hour = Duration::from_secs(3_600);
    let m = FeedMonitor::new("c", 2, Some(hour), metrics.clone());
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    m.record_at("a", &None, &[10], 0, 0, t0);
    m.record_at("b", &None, &[20], 0, 0, t0);
    m.record_at("c", &None, &[30], 0, 0, t0 + hour / 2);
    assert_eq!(m.view(false).untracked_events, 1, "full, nobody idle yet");
    m.sweep_at(t0 + hour / 2);
    assert_eq!(m.view(false).evicted_feeds, 0);

    // Two hours on: `a` sent again (and stays), `b` has been idle too long.
    m.record_at("a", &None, &[11], 0, 0, t0 + 2 * hour);
    m.sweep_at(t0 + 2 * hour);
    let text = metrics.encode();
    assert!(!text.contains("feed=\"b\""), "b's series are gone:\n{text}");
    assert!(text.contains("entity_bridge_feeds_evicted_total{connector=\"c\"} 1"));
    assert!(text.contains("entity_bridge_feeds_tracked{connector=\"c\"} 1"));
    m.record_at("c", &None, &[31], 0, 0, t0 + 2 * hour);
    let view = m.view(false);
    let sources: Vec<_> = view
        .feeds
        .iter()
        .map(|f| f.source.clone().unwrap())
        .collect();
    assert_eq!(sources, vec!["a", "c"], "c took b's slot");
    assert_eq!(view.evicted_feeds, 1);
    assert_eq!(view.feeds[0].high_water_mark, Some(11), "a kept its mark");
    assert_eq!(view.feeds[0].gap_sequences, 0);
    assert!(metrics
        .encode()
        .contains("entity_bridge_feeds_tracked{connector=\"c\"} 2"));

    // Nothing arrives any more: the sweep alone forgets both.
    m.sweep_at(t0 + 4 * hour);
    let view = m.view(false);
    assert!(view.feeds.is_empty());
    assert_eq!(view.evicted_feeds, 3);
    assert!(!metrics
        .encode()
        .contains("entity_bridge_feed_high_water_mark"));
}

#[test]
fn a_feed_with_a_send_in_flight_is_not_forgotten() {
    let hour = Duration::from_secs(3_600);
    let m = FeedMonitor::new("c", 2, Some(hour), Metrics::new());
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    m.record_at("a", &None, &[10], 0, 0, t0);
    // The layer admits the feed when a send starts; the sweep runs before the send is recorded.
    assert!(m.lock().admit("a", t0 + 2 * hour, &m.limits()));
    m.sweep_at(t0 + 2 * hour);
    m.record_at("a", &None, &[11], 0, 0, t0 + 2 * hour);
    let view = m.view(false);
    assert_eq!(view.evicted_feeds, 0);
    assert_eq!(view.feeds[0].gap_sequences, 0, "its mark was kept");
}

#[test]
fn without_eviction_feeds_stay_for_the_life_of_the_process() {
    let metrics = Metrics::new();
    let m = FeedMonitor::new("c", 1, None, metrics.clone());
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    m.record_at("a", &None, &[1], 0, 0, t0);
    m.record_at(
        "b",
        &None,
        &[1],
        0,
        0,
        t0 + Duration::from_secs(1_000 * 3_600),
    );
    let view = m.view(false);
    assert_eq!(view.feeds.len(), 1);
    assert_eq!(view.untracked_events, 1);
    assert_eq!(view.evicted_feeds, 0);
}

#[test]
fn the_idle_time_is_bounded() {
    use crate::layers::feeds::validate_evict_idle_feeds_after_hours as validate;
    assert!(validate(0).is_ok(), "0: never");
    assert!(validate(87_840).is_ok());
    assert!(validate(87_841).is_err());
}

#[test]
fn a_feed_spread_over_partitions_is_judged_per_partition() {
    let metrics = Metrics::new();
    let m = FeedMonitor::new("c", 8, None, metrics.clone());
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let p = |n: i32| -> Stream { Some((Arc::from("mls.Property"), n)) };
    // Two lanes confirm interleaved stretches of one feed: nobody went back.
    m.record_at("IDX", &p(0), &[1, 3, 5], 0, 0, t0);
    m.record_at("IDX", &p(1), &[7, 8], 0, 0, t0);
    m.record_at("IDX", &p(0), &[6, 9], 0, 0, t0);
    m.record_at("IDX", &p(1), &[10], 0, 0, t0);
    let feed = m.view(false).feeds[0].clone();
    assert_eq!(feed.regressions, 0, "lanes getting ahead of each other");
    assert_eq!(feed.high_water_mark, Some(10));
    // A partition going back is a regression (a reset producer, two producers, a resend).
    m.record_at("IDX", &p(1), &[2], 0, 0, t0);
    assert_eq!(m.view(false).feeds[0].regressions, 1);
    // One stream: below the mark, once its reorder window passed, is a regression.
    m.record_at("push", &None, &[5, 9], 0, 0, t0);
    m.record_at("push", &None, &[7], 0, 0, t0 + REORDER_WINDOW);
    let push = m
        .view(false)
        .feeds
        .into_iter()
        .find(|f| f.source.as_deref() == Some("push"));
    assert_eq!(push.unwrap().regressions, 1);
}
