//! A network partition between the bridge and its Kafka-protocol broker (a TCP proxy the test
//! cuts, in front of a broker of the test's own): pushes during the partition are refused, never
//! acknowledged, and once the network is back the sink delivers again, having replaced a
//! producer that the partition left fenced.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::proxy::OwnBroker;

fn push_body(sequence: u64) -> String {
    format!(
        r#"{{"@reso.context":"urn:reso:metadata:2.0:resource:entityevent","value":[{{"EntityEventSequence":{sequence},"ResourceName":"Property","ResourceRecordKey":"P{}"}}]}}"#,
        sequence % 7
    )
}

/// Regression: after a 15 s partition the idempotent producer was fenced (`ProducerFenced`);
/// every push got 503 from then on (448 in 30 s, none succeeded) while `/readyz` said ready.
#[tokio::test(flavor = "multi_thread")]
async fn the_kafka_sink_heals_after_a_network_partition() {
    let broker = OwnBroker::start().await;
    let prefix = unique("it-partition");
    let sink = format!(
        "type = \"kafka\"\nbootstrap_servers = \"{}\"\ntopic_template = \"{prefix}.{{ResourceName}}\"\n\
         topic_partitions = 1\ndelivery_timeout_ms = 5000\n",
        broker.proxy.addr
    );
    let bridge = std::sync::Arc::new(TestBridge::start("", &sink).await);
    let mut accepted = Vec::new();
    assert_eq!(bridge.post(&push_body(1)).await.status(), 200);
    accepted.push(1);

    broker.proxy.cut();
    let cut = Instant::now();
    let mut during = tokio::task::JoinSet::new();
    let mut sequence = 1;
    while cut.elapsed() < Duration::from_secs(15) {
        sequence += 1;
        let (bridge, body) = (bridge.clone(), push_body(sequence));
        during.spawn(async move { bridge.post(&body).await.status().as_u16() });
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ready = reqwest::get(format!("{}/readyz", bridge.admin))
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        503,
        "not ready while the broker is unreachable"
    );
    let answers = during.join_all().await;
    assert!(
        answers.iter().all(|s| *s == 503 || *s == 429),
        "never 200 while the broker is unreachable: {answers:?}"
    );
    broker.proxy.restore();

    // Back within 30 s, and staying back.
    let restored = Instant::now();
    let mut refused = 0;
    loop {
        sequence += 1;
        let response = bridge.post(&push_body(sequence)).await;
        match response.status().as_u16() {
            200 => {
                accepted.push(sequence);
                break;
            }
            _ => refused += 1,
        }
        assert!(
            restored.elapsed() < Duration::from_secs(30),
            "pushes still refused 30 s after the partition ended ({refused} refused)"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for _ in 0..5 {
        sequence += 1;
        assert_eq!(bridge.post(&push_body(sequence)).await.status(), 200);
        accepted.push(sequence);
    }
    let ready = reqwest::get(format!("{}/readyz", bridge.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    // The producer the partition left stuck was replaced (without that, every push stayed
    // 503), once the broker answered again rather than during the partition.
    let rebuilds = metric(
        &bridge.metrics().await,
        "entity_bridge_kafka_client_rebuilds_total{connector=\"it\",outcome=\"rebuilt\"}",
    );
    assert_eq!(
        rebuilds,
        Some(1.0),
        "{refused} pushes refused after the partition"
    );

    // Every acknowledged event is on the broker.
    let topic = format!("{prefix}.Property");
    let bootstrap = broker.proxy.addr.to_string();
    let sequences_of = |got: &[rdkafka::message::OwnedMessage]| -> BTreeSet<u64> {
        got.iter()
            .filter_map(|m| header(m, "EntityEventSequence")?.parse().ok())
            .collect()
    };
    let want: BTreeSet<u64> = accepted.iter().copied().collect();
    let got = tokio::task::spawn_blocking(move || {
        consume_from(&bootstrap, &[&topic], Duration::from_secs(30), |got| {
            sequences_of(got).is_superset(&want)
        })
    })
    .await
    .unwrap();
    let sequences = sequences_of(&got);
    for s in &accepted {
        assert!(
            sequences.contains(s),
            "acknowledged event {s} is missing: {sequences:?}"
        );
    }
}
