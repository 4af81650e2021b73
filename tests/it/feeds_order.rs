//! Sequence monitoring on a Kafka source: one feed spread over three partitions is confirmed
//! lane by lane, out of the feed's order, and that makes neither regressions nor gaps; a
//! number the producer skipped is a gap, and a partition whose sequence goes back is a
//! regression.

use std::time::Duration;

use crate::common::*;
use crate::egress::{create_topic, event, produce, Egress};
use crate::receiver::Receiver;

/// Regression: every lane that confirmed a batch after another lane had published higher
/// sequences counted its events as regressions, so `EntityBridgeFeedRegressions` fired on
/// any multi-partition egress connector whose producer was perfectly in order.
#[tokio::test(flavor = "multi_thread")]
async fn lanes_confirming_out_of_the_feeds_order_are_not_regressions() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    // Each POST takes a few milliseconds, so the three lanes overtake each other.
    let receiver = Receiver::start(Box::new(|_, _, _| {
        std::thread::sleep(Duration::from_millis(5));
        (200, vec![])
    }))
    .await;
    let mut egress = Egress::new("it-feeds-order", &receiver.url, &dir);
    egress.sink_extra = "max_events = 10".into();
    create_topic(&egress.topic, 3).await;
    // The producer skipped 150: one gap, and no other.
    let events: Vec<(String, i64, String)> = (1..=300)
        .filter(|s| *s != 150)
        .map(|s| {
            let key = format!("k{}", s % 10);
            let e = event(&key, s, 10);
            (key, s, e)
        })
        .collect();
    produce(&egress.topic, &events, Some("IDX")).await;
    let bridge = TestBridge::start_connector(&egress.toml()).await;
    receiver.wait_delivered(299, Duration::from_secs(60)).await;
    let in_order = |requests: &[crate::receiver::Received]| {
        let mut last = 0;
        requests
            .iter()
            .flat_map(|r| r.keys())
            .all(|(_, s)| std::mem::replace(&mut last, s) < s)
    };
    assert!(
        !in_order(&receiver.requests()),
        "the lanes did overtake each other (else this test proves nothing)"
    );
    // Gaps count once their reorder window (30 s) has passed: wait for the one.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let feeds = loop {
        let feeds = bridge.feeds().await;
        if feeds["connectors"]["it"]["feeds"][0]["gap_sequences"] != 0 {
            break feeds;
        }
        assert!(std::time::Instant::now() < deadline, "{feeds}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let feed = &feeds["connectors"]["it"]["feeds"][0];
    assert_eq!(feed["source"], "IDX");
    assert_eq!(feed["events"], 299);
    assert_eq!(feed["high_water_mark"], 300);
    assert_eq!(feed["regressions"], 0, "{feeds}");
    assert_eq!(
        feed["gap_sequences"], 1,
        "only 150: numbers a lagging lane brought later are not gaps: {feeds}"
    );

    // The producer starts over (a reset log): every partition goes back.
    let reset: Vec<(String, i64, String)> = (1..=30)
        .map(|s| {
            let key = format!("k{}", s % 10);
            let e = event(&key, s, 10);
            (key, s, e)
        })
        .collect();
    produce(&egress.topic, &reset, Some("IDX")).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let feeds = bridge.feeds().await;
        let feed = &feeds["connectors"]["it"]["feeds"][0];
        if feed["events"] == 329 {
            assert_eq!(feed["regressions"], 30, "{feeds}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{feeds}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = bridge.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "entity_bridge_feed_regressions_total{connector=\"it\",feed=\"IDX\"}"
        ),
        Some(30.0)
    );
    assert!(bridge.stop().await);
}
