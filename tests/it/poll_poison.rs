//! Poison isolation on the poll sources: a page of 100 events in which the sink refuses one,
//! then three (a `ResourceName` outside the Data Dictionary, refused by the Kafka sink) gets
//! only the refused events dead-lettered, each with its own reason; the others reach Kafka in
//! order per key, and the checkpoint moves past the whole page.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::common::*;
use crate::producer::{poll_source, Producer};

const POISON_SETS: [&[i64]; 2] = [&[37], &[1, 50, 100]];

fn resource(sequence: i64, poison: &[i64]) -> &'static str {
    if poison.contains(&sequence) {
        "X_NotReso"
    } else {
        "Property"
    }
}

/// A poll connector reading `url` into `<prefix>.{ResourceName}`, dead letters to `dlq`.
fn connector(kind: &str, url: &str, prefix: &str, dlq: &str) -> String {
    format!(
        "[retry]\nmin_backoff_ms = 20\nmax_backoff_ms = 200\n\n{}\n[sink]\n{}",
        poll_source(kind, url, 60_000, dlq, "page_size = 100"),
        TestBridge::kafka_sink(prefix, "")
    )
}

/// Runs one poll connector over a producer holding sequences 1..=100 and checks what reached
/// the sink and the dead-letter topic.
async fn assert_isolated(kind: &str, url: &str, poison: &[i64]) {
    let prefix = unique("it-poll-poison");
    let dlq = unique("it-poll-poison-dlq");
    let bridge = TestBridge::start_connector(&connector(kind, url, &prefix, &dlq)).await;
    let checkpoint = "entity_bridge_poll_checkpoint{connector=\"it\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = metric(&bridge.metrics().await, checkpoint).unwrap_or(0.0);
        if now >= 100.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{kind}: checkpoint {now}, expected 100"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let good = 100 - poison.len();
    let topic = format!("{prefix}.Property");
    let got = tokio::task::spawn_blocking(move || consume_n(&[&topic], good))
        .await
        .unwrap();
    let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for m in &got {
        let sequence: i64 = header(m, "EntityEventSequence").unwrap().parse().unwrap();
        let key = String::from_utf8(rdkafka::Message::key(m).unwrap().to_vec()).unwrap();
        by_key.entry(key).or_default().push(sequence);
    }
    for (key, seqs) in &by_key {
        let k: i64 = key[1..].parse().unwrap();
        let expected: Vec<i64> = (1..=100)
            .filter(|s| s % 3 == k && !poison.contains(s))
            .collect();
        assert_eq!(
            seqs, &expected,
            "{kind} {key}: every good event once, in order"
        );
    }
    assert_eq!(by_key.values().map(Vec::len).sum::<usize>(), good);

    let n = poison.len();
    let dead = tokio::task::spawn_blocking(move || consume_n(&[&dlq], n))
        .await
        .unwrap();
    let mut dead_seqs: Vec<i64> = dead
        .iter()
        .map(|m| {
            assert_eq!(
                header(m, "dead_letter_reason").as_deref(),
                Some("rejected"),
                "{kind}"
            );
            let detail = header(m, "dead_letter_detail").unwrap_or_default();
            assert!(detail.contains("ResourceName"), "{kind}: {detail}");
            header(m, "EntityEventSequence").unwrap().parse().unwrap()
        })
        .collect();
    dead_seqs.sort();
    assert_eq!(dead_seqs, poison, "{kind}: only the refused events");
    assert!(bridge.stop().await);
}

/// Regression guard for issue 13's poison bullet on the poll sources (both share the pump):
/// one poison event, then three, in a page of 100.
#[tokio::test(flavor = "multi_thread")]
async fn a_poison_event_in_a_polled_page_is_dead_lettered_alone() {
    require_kafka();
    for poison in POISON_SETS {
        let reso = Producer::start(100, None).await;
        reso.state.events.lock().unwrap().extend((1..=100).map(|s| {
            json!({
                "EntityEventSequence": s,
                "ResourceName": resource(s, poison),
                "ResourceRecordKey": format!("K{}", s % 3),
                "Data": {"ListPrice": 100000 + s},
            })
        }));
        let url = format!("{}/odata/EntityEvent", reso.base);
        assert_isolated("reso_poll", &url, poison).await;

        let api = Producer::start(100, None).await;
        api.state
            .api_events
            .lock()
            .unwrap()
            .extend((1..=100).map(|s| {
                let id = format!("K{}", s % 3);
                json!({
                    "id": format!("e{s}"), "sequenceId": s,
                    "eventType": format!("{}/updated", resource(s, poison)),
                    "resourceType": resource(s, poison), "resourceId": id,
                    "resource": {"id": id, "price": s},
                    "createdAt": "2026-12-06T09:00:00.000Z",
                })
            }));
        let url = format!("{}/events/query", api.base);
        assert_isolated("events_poll", &url, poison).await;
    }
}
