//! Embedded source → Kafka sink against the real Kafka-protocol broker: every event lands once,
//! byte-for-byte, in order per record key; the cursor persists, so a restart redelivers nothing.

use std::time::Duration;

use entity_bridge::embedded::Log;
use rdkafka::message::Message as _;

use super::*;
use crate::common::{consume_n, consume_until, header, kafka, require_kafka, unique};

const KEYS: [&str; 4] = ["A", "B", "C", "D"];

fn events(from: i64, n: i64) -> Vec<(i64, &'static str, &'static str)> {
    (from..from + n)
        .map(|s| {
            let resource = if s % 2 == 0 { "Property" } else { "Media" };
            (s, resource, KEYS[(s % 4) as usize])
        })
        .collect()
}

async fn wait_cursor(log: &std::sync::Arc<Log>, position: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if log.cursor("egress").await.unwrap() == Some(position) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cursor never reached {position}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_source_delivers_everything_to_kafka_once() {
    require_kafka();
    let prefix = unique("it-embedded");
    let setup = Setup::new(&[]);
    setup.write_connector(
        "ingest",
        &format!(
            "{}\n[sink]\ntype = \"embedded\"\n",
            setup.webhook_source("")
        ),
    );
    setup.write_connector(
        "egress",
        &format!(
            "[source]\ntype = \"embedded\"\nfile = \"ingest.db\"\nmax_batch = 7\n\n[sink]\ntype = \"kafka\"\n\
             bootstrap_servers = \"{}\"\ntopic_template = \"{prefix}.{{ResourceName}}\"\n\
             topic_partitions = 2\n\n[retry]\nmin_backoff_ms = 50\nmax_backoff_ms = 500\n",
            kafka()
        ),
    );
    let bridge = setup.start().await;
    for push in 0..3 {
        let body = payload(&events(push * 10 + 1, 10));
        assert_eq!(bridge.post("/webhooks/ingest", &body).await.status(), 200);
    }
    let log = Log::open(&setup.path("data/ingest.db")).unwrap();
    wait_cursor(&log, 30).await;

    let property = format!("{prefix}.Property");
    let media = format!("{prefix}.Media");
    let (p, m) = (property.clone(), media.clone());
    let got = tokio::task::spawn_blocking(move || consume_n(&[&p, &m], 30))
        .await
        .unwrap();
    let stored = log.read_after(0, 100).await.unwrap();
    let mut last_per_key = std::collections::HashMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for message in &got {
        let sequence: i64 = header(message, "EntityEventSequence")
            .unwrap()
            .parse()
            .unwrap();
        assert!(seen.insert(sequence), "sequence {sequence} delivered twice");
        let original = &stored[(sequence - 1) as usize];
        assert_eq!(original.sequence, sequence);
        assert_eq!(
            message.payload().unwrap(),
            &original.payload[..],
            "byte-for-byte"
        );
        assert_eq!(message.key().unwrap(), original.record_key.as_bytes());
        let previous = last_per_key.insert(original.record_key.clone(), sequence);
        assert!(
            previous.is_none_or(|p| p < sequence),
            "order per record key"
        );
    }
    assert_eq!(seen.len(), 30);
    drop(log); // so the restart really reopens the database
    bridge.stop().await;

    // After a restart the cursor continues: only the new events are delivered.
    let bridge = setup.start().await;
    let body = payload(&events(31, 5));
    assert_eq!(bridge.post("/webhooks/ingest", &body).await.status(), 200);
    let log = Log::open(&setup.path("data/ingest.db")).unwrap();
    wait_cursor(&log, 35).await;
    // Read both topics from the start until 35 events arrived and nothing more came for 2 s
    // (tansu's high watermarks are not exact, so the topics are read, not measured).
    let (p, m) = (property.clone(), media.clone());
    let all = tokio::task::spawn_blocking(move || {
        let mut last_change = (0, std::time::Instant::now());
        consume_until(&[&p, &m], Duration::from_secs(30), |seen| {
            if seen.len() != last_change.0 {
                last_change = (seen.len(), std::time::Instant::now());
            }
            seen.len() >= 35 && last_change.1.elapsed() > Duration::from_secs(2)
        })
    })
    .await
    .unwrap();
    let mut delivered: Vec<i64> = all
        .iter()
        .map(|m| header(m, "EntityEventSequence").unwrap().parse().unwrap())
        .collect();
    delivered.sort();
    assert_eq!(
        delivered,
        (1..=35).collect::<Vec<_>>(),
        "each event exactly once across the restart"
    );
    bridge.stop().await;
}

/// Regression: one poison event made the embedded source skip (dead-letter) its whole batch.
/// Now only the poison events go to the log's `dead_letters`; the rest reach Kafka in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_poison_event_does_not_take_its_batch_with_it() {
    require_kafka();
    for poison in [vec![37i64], vec![1, 50, 100]] {
        let prefix = unique("it-embedded-isolate");
        let setup = Setup::new(&[]);
        setup.write_connector(
            "ingest",
            &format!(
                "{}\n[sink]\ntype = \"embedded\"\n",
                setup.webhook_source("")
            ),
        );
        setup.write_connector(
            "egress",
            &format!(
                "[source]\ntype = \"embedded\"\nfile = \"ingest.db\"\nmax_batch = 100\n\n\
                 [sink]\ntype = \"kafka\"\nbootstrap_servers = \"{}\"\n\
                 topic_template = \"{prefix}.{{ResourceName}}\"\ntopic_partitions = 2\n\n\
                 [retry]\nmin_backoff_ms = 50\nmax_backoff_ms = 500\n",
                kafka()
            ),
        );
        // One push of 100: the embedded log takes any well-formed name, the Kafka sink only
        // the Data Dictionary's, so `X_NotReso` is poison downstream.
        let events: Vec<(i64, &str, &str)> = (1..=100)
            .map(|s| {
                let resource = if poison.contains(&s) {
                    "X_NotReso"
                } else {
                    "Property"
                };
                (s, resource, KEYS[(s % 4) as usize])
            })
            .collect();
        let bridge = setup.start().await;
        assert_eq!(
            bridge
                .post("/webhooks/ingest", &payload(&events))
                .await
                .status(),
            200
        );
        let log = Log::open(&setup.path("data/ingest.db")).unwrap();
        wait_cursor(&log, 100).await;

        let topic = format!("{prefix}.Property");
        let good = 100 - poison.len();
        let got = tokio::task::spawn_blocking(move || consume_n(&[&topic], good))
            .await
            .unwrap();
        let mut by_key: std::collections::BTreeMap<Vec<u8>, Vec<i64>> = Default::default();
        for m in &got {
            let sequence: i64 = header(m, "EntityEventSequence").unwrap().parse().unwrap();
            by_key
                .entry(m.key().unwrap().to_vec())
                .or_default()
                .push(sequence);
        }
        for (key, seqs) in &by_key {
            let expected: Vec<i64> = events
                .iter()
                .filter(|(s, r, k)| k.as_bytes() == &key[..] && *r == "Property" && *s > 0)
                .map(|(s, _, _)| *s)
                .collect();
            assert_eq!(seqs, &expected, "every good event once, in order per key");
        }
        let dead: Vec<(i64, String)> = {
            let conn = rusqlite::Connection::open(setup.path("data/ingest.db")).unwrap();
            let mut stmt = conn
                .prepare("SELECT position, reason FROM dead_letters ORDER BY position")
                .unwrap();
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            rows
        };
        assert_eq!(
            dead.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            poison,
            "only the poison events are dead-lettered (positions = sequences here)"
        );
        assert!(
            dead.iter().all(|(_, why)| why.contains("X_NotReso")),
            "{dead:?}"
        );
        // Regression: the pump recorded the publish duration a second time per batch, in its
        // own outcome words; now only the sink records it, once per send.
        let metrics = reqwest::get(format!("{}/metrics", bridge.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let count = |outcome: &str| {
            crate::common::metric(
                &metrics,
                &format!(
                    "entity_bridge_publish_duration_seconds_count{{connector=\"egress\",outcome=\"{outcome}\"}}"
                ),
            )
        };
        assert!(count("ok").is_some_and(|n| n >= 1.0), "{metrics}");
        assert!(count("rejected").is_some_and(|n| n >= 1.0), "{metrics}");
        for pump_word in ["delivered", "dead_lettered", "retried"] {
            assert_eq!(count(pump_word), None, "{metrics}");
        }
        drop(log);
        bridge.stop().await;
    }
}
