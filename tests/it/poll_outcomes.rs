//! What a poll source's metrics say about a misbehaving producer (issue 26, item 13): every
//! request counted once in `entity_bridge_producer_requests_total`, under `timeout`,
//! `too_large` or `invalid_page` when its 200 was no usable page (before, such a 200 counted
//! as `200` and again as `invalid_page`, and a body that timed out or hit the cap as `200`);
//! and the events of a page repeated by a producer that ignores the filter counted `skipped`
//! (before, 0).

use std::time::Duration;

use crate::common::*;
use crate::producer::{poll_source, Misbehave, Producer};

fn requests(metrics: &str, status: &str) -> f64 {
    let series = format!(
        "entity_bridge_producer_requests_total{{connector=\"it\",role=\"poll\",status=\"{status}\"}}"
    );
    metric(metrics, &series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_request_has_one_outcome_and_repeated_old_events_count_as_skipped() {
    require_kafka();
    let producer = Producer::start(100, None).await;
    producer.add_reso(1..=3);
    // After the first page (1..=3): a 200 that is no page, a body that stalls past the
    // request timeout, one beyond max_page_bytes, then twice the old events again.
    producer.script(&[
        Misbehave::Pass,
        Misbehave::NotAPage,
        Misbehave::StallBody(3_000),
        Misbehave::Oversized(8 * 1024),
        Misbehave::IgnoreFilter,
        Misbehave::IgnoreFilter,
    ]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let source = poll_source(
        "reso_poll",
        &format!("{}/odata/EntityEvent", producer.base),
        50,
        &unique("it-poll-outcomes-dlq"),
        "request_timeout_ms = 1000\nmax_page_bytes = 4096",
    );
    let bridge = TestBridge::start_connector(&format!(
        "{source}\n[sink]\ntype = \"embedded\"\nreplay_tokens = [{{ file = {:?} }}]\n\
         [retry]\nmin_backoff_ms = 20\nmax_backoff_ms = 50\n",
        dir.path().join("token").display().to_string()
    ))
    .await;
    // Every scripted answer served, and a few normal (empty) pages after them.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while producer.requests().len() < 9 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            producer.requests()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The stalled body's request ends at its timeout. The source polls on (one request at a
    // time): metrics read before the producer's log count every request served, but the one
    // in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = bridge.metrics().await;
        let counted: f64 = ["200", "invalid_page", "timeout", "too_large", "error"]
            .iter()
            .map(|s| requests(&metrics, s))
            .sum();
        let served = producer.requests().len() as f64;
        assert!(counted <= served, "a request counted twice:\n{metrics}");
        if served - counted <= 1.0 && requests(&metrics, "timeout") >= 1.0 {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{served} requests served, {counted} counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(requests(&metrics, "invalid_page"), 1.0, "{metrics}");
    assert_eq!(requests(&metrics, "timeout"), 1.0, "{metrics}");
    assert_eq!(requests(&metrics, "too_large"), 1.0, "{metrics}");
    assert_eq!(requests(&metrics, "error"), 0.0, "{metrics}");
    let skipped = metric(
        &metrics,
        "entity_bridge_poll_events_total{connector=\"it\",outcome=\"skipped\"}",
    );
    assert_eq!(
        skipped,
        Some(6.0),
        "two repeated pages of 3 old events:\n{metrics}"
    );
    assert_eq!(
        metric(&metrics, "entity_bridge_poll_checkpoint{connector=\"it\"}"),
        Some(3.0)
    );
    assert!(bridge.stop().await);
}
