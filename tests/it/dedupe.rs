//! Duplicate suppression and sequence tracking per feed (`[dedupe]`, `/feeds`), webhook →
//! Kafka and webhook → embedded log: resent and overlapping pushes, concurrent pushes, and a
//! restart.

use std::time::Duration;

use crate::common::*;
use crate::embedded::Setup;

/// A multi-valued push of Property events with `sequences` (keys cycle over seven records).
pub(crate) fn push(sequences: impl Iterator<Item = i64>) -> String {
    let events: Vec<String> = sequences
        .map(|s| {
            format!(
                r#"{{"EntityEventSequence": {s}, "ResourceName": "Property", "ResourceRecordKey": "K{}"}}"#,
                s % 7
            )
        })
        .collect();
    format!(
        r#"{{"@reso.context": "urn:reso:metadata:2.0:resource:entityevent", "value": [{}]}}"#,
        events.join(",")
    )
}

async fn post_feed(bridge: &TestBridge, body: &str) -> serde_json::Value {
    let r = bridge
        .post_with(body, |r| r.header("EntityEventSource", "IDX Feed 123"))
        .await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// The sequences of every record of `topic`: read until `expected` arrived, then 5 s more
/// (a duplicate would show up there).
pub(crate) async fn records(topic: String, expected: usize) -> Vec<i64> {
    let seen = tokio::task::spawn_blocking(move || {
        let enough = consume_until(&[&topic], Duration::from_secs(30), |s| s.len() >= expected);
        // Keep reading a little: a duplicate would show up here.
        let more = consume_until(&[&topic], Duration::from_secs(5), |s| s.len() > expected);
        assert!(more.len() >= enough.len());
        more
    })
    .await
    .unwrap();
    seen.iter()
        .map(|m| header(m, "EntityEventSequence").unwrap().parse().unwrap())
        .collect()
}

/// The issue's reproduction: a batch of 50 sent twice, then three overlapping batches — 110
/// distinct sequences used to make 293 Kafka records.
#[tokio::test(flavor = "multi_thread")]
async fn resent_and_overlapping_pushes_publish_each_sequence_once() {
    require_kafka();
    let prefix = unique("it-dedupe");
    let sink = format!("{}\n[dedupe]\n", TestBridge::kafka_sink(&prefix, ""));
    let bridge = TestBridge::start("", &sink).await;
    let mut duplicates = Vec::new();
    for range in [1..=50, 1..=50, 30..=80, 60..=100, 90..=110] {
        let body = post_feed(&bridge, &push(range.clone())).await;
        assert_eq!(body["accepted"], range.count());
        duplicates.push(body["duplicates"].as_u64().unwrap());
    }
    assert_eq!(duplicates, vec![0, 50, 21, 21, 11]);

    let mut sequences = records(format!("{prefix}.Property"), 110).await;
    sequences.sort();
    assert_eq!(
        sequences,
        (1..=110).collect::<Vec<_>>(),
        "each sequence once"
    );

    let feeds = bridge.feeds().await;
    let feed = &feeds["connectors"]["it"]["feeds"][0];
    assert_eq!(feed["source"], "IDX Feed 123");
    assert_eq!(feed["high_water_mark"], 110);
    assert_eq!(feed["events"], 110);
    assert_eq!(feed["duplicates"], 103);
    assert_eq!(feed["regressions"], 0);
    assert!(feed["last_event_at"].is_string());
    assert_eq!(feeds["connectors"]["it"]["evicted_feeds"], 0);
    let metrics = bridge.metrics().await;
    for (series, value) in [
        (
            "entity_bridge_feed_duplicates_total{connector=\"it\",feed=\"IDX Feed 123\"}",
            103.0,
        ),
        (
            "entity_bridge_feed_high_water_mark{connector=\"it\",feed=\"IDX Feed 123\"}",
            110.0,
        ),
        (
            "entity_bridge_events_published_total{connector=\"it\",resource=\"Property\"}",
            110.0,
        ),
        ("entity_bridge_feeds_evicted_total{connector=\"it\"}", 0.0),
    ] {
        assert_eq!(metric(&metrics, series), Some(value), "{series}\n{metrics}");
    }
    assert!(bridge.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pushes_with_overlapping_sequences_publish_each_event_once() {
    require_kafka();
    let prefix = unique("it-dedupe-conc");
    let sink = format!("{}\n[dedupe]\n", TestBridge::kafka_sink(&prefix, ""));
    let bridge = TestBridge::start("", &sink).await;
    // Creates the topic first, so the reader below sees it.
    post_feed(&bridge, &push(std::iter::once(1))).await;
    let bodies: Vec<String> = (0..6).map(|i| push(i * 20 + 1..=i * 20 + 60)).collect();
    let answers = futures::future::join_all(bodies.iter().map(|b| post_feed(&bridge, b))).await;
    let duplicates: u64 = answers
        .iter()
        .map(|a| a["duplicates"].as_u64().unwrap())
        .sum();
    // 6 pushes × 60 events cover 1..=160; sequence 1 was published before.
    assert_eq!(
        6 * 60 - duplicates,
        159,
        "each sequence published by exactly one push"
    );

    let mut sequences = records(format!("{prefix}.Property"), 160).await;
    let total = sequences.len();
    sequences.sort();
    sequences.dedup();
    assert_eq!(total, sequences.len(), "no sequence twice on the topic");
    assert_eq!(sequences, (1..=160).collect::<Vec<_>>());
    assert!(bridge.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn delivered_sequences_and_the_high_water_mark_survive_a_restart() {
    let setup = Setup::new(&[]);
    let connector = format!(
        "{}\n[sink]\ntype = \"embedded\"\n\n[dedupe]\nwindow_events = 1000\n",
        setup.webhook_source("")
    );
    setup.write_connector("ingest", &connector);
    let bridge = setup.start().await;
    let r = bridge.post("/webhooks/ingest", &push(1..=10)).await;
    assert_eq!(r.status(), 200);
    bridge.stop().await;
    assert!(
        setup.path("data/dedupe/ingest.db").is_file(),
        "the store is under data_dir"
    );

    let bridge = setup.start().await;
    let feeds: serde_json::Value = reqwest::get(format!("{}/feeds", bridge.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        feeds["connectors"]["ingest"]["feeds"][0]["high_water_mark"], 10,
        "resumed from the store: {feeds}"
    );
    let r = bridge.post("/webhooks/ingest", &push(8..=12)).await;
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"accepted": 5, "duplicates": 3}));
    let (_, replay) = bridge.replay("?$count=true").await;
    assert_eq!(replay["@odata.count"], 12, "{replay}");
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conflicting_sequence_is_refused_with_409_when_the_policy_says_reject() {
    let setup = Setup::new(&[]);
    let connector = format!(
        "{}\n[sink]\ntype = \"embedded\"\n\n[dedupe]\non_conflict = \"reject\"\n",
        setup.webhook_source("")
    );
    setup.write_connector("ingest", &connector);
    let bridge = setup.start().await;
    assert_eq!(
        bridge.post("/webhooks/ingest", &push(1..=3)).await.status(),
        200
    );
    let reused = r#"{"value": [
        {"EntityEventSequence": 4, "ResourceName": "Property", "ResourceRecordKey": "K4"},
        {"EntityEventSequence": 2, "ResourceName": "Media", "ResourceRecordKey": "M-9"}]}"#;
    let r = bridge.post("/webhooks/ingest", reused).await;
    assert_eq!(r.status(), 409);
    let problem: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        problem["errors"][0]["pointer"], "/value/1/EntityEventSequence",
        "{problem}"
    );
    let (_, replay) = bridge.replay("?$count=true").await;
    assert_eq!(
        replay["@odata.count"], 3,
        "nothing of the push was published"
    );
    bridge.stop().await;
}

/// Regression: a conflict published under `on_conflict = "publish"` carried the `message_id`
/// of the event it conflicts with, so a consumer deduplicating by that id dropped a genuine
/// event. Now its id names its record and stays the same when it is sent again, and the record
/// delivered first keeps the sequence: sent again, it is a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn a_published_conflict_gets_its_own_stable_message_id() {
    require_kafka();
    let prefix = unique("it-dedupe-conflict");
    let sink = format!("{}\n[dedupe]\n", TestBridge::kafka_sink(&prefix, ""));
    let bridge = TestBridge::start("", &sink).await;
    let first = r#"{"value": [{"EntityEventSequence": 2, "ResourceName": "Property", "ResourceRecordKey": "K2"}]}"#;
    let reused = r#"{"value": [{"EntityEventSequence": 2, "ResourceName": "Property", "ResourceRecordKey": "K9"}]}"#;
    assert_eq!(post_feed(&bridge, first).await["duplicates"], 0);
    assert_eq!(post_feed(&bridge, reused).await["duplicates"], 0);
    assert_eq!(
        post_feed(&bridge, reused).await["duplicates"],
        0,
        "the conflict sent again is published again (under the same id)"
    );
    assert_eq!(
        post_feed(&bridge, first).await["duplicates"],
        1,
        "the record delivered first keeps the sequence"
    );
    let topic = format!("{prefix}.Property");
    let seen = tokio::task::spawn_blocking(move || {
        consume_until(&[&topic], Duration::from_secs(8), |s| s.len() > 3)
    })
    .await
    .unwrap();
    let mut ids: Vec<(String, String)> = seen
        .iter()
        .map(|m| {
            let key = String::from_utf8(rdkafka::Message::key(m).unwrap().to_vec()).unwrap();
            (key, header(m, "message_id").unwrap())
        })
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(ids[0], ("K2".into(), "it/IDX Feed 123/2".into()));
    assert!(
        ids[1].0 == "K9" && ids[1].1.starts_with("it/IDX Feed 123/2~") && ids[1].1.len() == 34,
        "{ids:?}"
    );
    assert_eq!(ids[1], ids[2], "the same id both times");
    let metrics = bridge.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "entity_bridge_feed_conflicts_total{connector=\"it\",feed=\"IDX Feed 123\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    assert!(bridge.stop().await);
}
