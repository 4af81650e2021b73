//! Network partitions between the bridge and each broker, through a TCP proxy the test cuts (in
//! front of a Kafka-protocol broker of the test's own, or of the shared RabbitMQ): pushes during
//! a partition are refused, never acknowledged; once the network is back the sinks deliver again
//! (the Kafka sink having replaced a producer the partition left stuck) and the AMQP source
//! resumes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::amqp::{wait_ready, Rabbit};
use crate::common::*;
use crate::proxy::{OwnBroker, Proxy};

fn push_body(sequence: u64) -> String {
    format!(
        r#"{{"@reso.context":"urn:reso:metadata:2.0:resource:entityevent","value":[{{"EntityEventSequence":{sequence},"ResourceName":"Property","ResourceRecordKey":"P{}"}}]}}"#,
        sequence % 7
    )
}

/// Pushes one event every 500 ms for 15 s, all in flight together; their answers, and the last
/// sequence used.
async fn push_during_cut(bridge: &Arc<TestBridge>, mut sequence: u64) -> (Vec<u16>, u64) {
    let cut = Instant::now();
    let mut during = tokio::task::JoinSet::new();
    while cut.elapsed() < Duration::from_secs(15) {
        sequence += 1;
        let (bridge, body) = (bridge.clone(), push_body(sequence));
        during.spawn(async move { bridge.post(&body).await.status().as_u16() });
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (during.join_all().await, sequence)
}

/// Pushes until one is accepted, within 30 s; how many were refused, and the accepted sequence.
async fn push_until_accepted(bridge: &TestBridge, mut sequence: u64) -> (usize, u64) {
    let restored = Instant::now();
    let mut refused = 0;
    loop {
        sequence += 1;
        if bridge.post(&push_body(sequence)).await.status() == 200 {
            return (refused, sequence);
        }
        refused += 1;
        assert!(
            restored.elapsed() < Duration::from_secs(30),
            "pushes still refused 30 s after the partition ended ({refused} refused)"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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
    let bridge = Arc::new(TestBridge::start("", &sink).await);
    let mut accepted = Vec::new();
    assert_eq!(bridge.post(&push_body(1)).await.status(), 200);
    accepted.push(1);

    broker.proxy.cut();
    let (answers, sequence) = push_during_cut(&bridge, 1).await;
    let ready = reqwest::get(format!("{}/readyz", bridge.admin))
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        503,
        "not ready while the broker is unreachable"
    );
    assert!(
        answers.iter().all(|s| *s == 503 || *s == 429),
        "never 200 while the broker is unreachable: {answers:?}"
    );
    broker.proxy.restore();
    let (refused, mut sequence) = push_until_accepted(&bridge, sequence).await;
    accepted.push(sequence);
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

/// A proxy in front of the shared RabbitMQ (cutting it cuts only this test's bridge off) and a
/// `url_file = …` line pointing through it.
async fn rabbit_proxy(dir: &tempfile::TempDir) -> (Proxy, String) {
    let mut url = reqwest::Url::parse(&amqp_url()).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5672));
    let upstream: std::net::SocketAddr = tokio::net::lookup_host(upstream)
        .await
        .unwrap()
        .next()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(listener, upstream);
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.addr.port())).unwrap();
    let file = dir.path().join("amqp-url");
    std::fs::write(&file, format!("{url}\n")).unwrap();
    (
        proxy,
        format!("url_file = {:?}", file.display().to_string()),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_amqp_sink_recovers_after_a_network_partition() {
    let mut rabbit = Rabbit::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, url_line) = rabbit_proxy(&dir).await;
    let exchange = rabbit.exchange("it-part-x");
    let queue = rabbit.queue("it-part-q");
    let sink = format!(
        "type = \"amqp\"\n{url_line}\nexchange = \"{exchange}\"\nconfirm_timeout_ms = 3000\n\
         reconnect_min_backoff_ms = 200\nreconnect_max_backoff_ms = 1000\n\
         routing_key_template = \"mls.{{ResourceName}}\"\n\
         [[sink.topology.queues]]\nname = \"{queue}\"\n\
         [[sink.topology.bindings]]\nqueue = \"{queue}\"\nexchange = \"{exchange}\"\nrouting_key = \"mls.Property\"\n"
    );
    let bridge = Arc::new(TestBridge::start("", &sink).await);
    wait_ready(&bridge, 200).await;
    assert_eq!(bridge.post(&push_body(1)).await.status(), 200);
    let mut accepted = 1;

    proxy.cut();
    let cut = Instant::now();
    let (answers, sequence) = push_during_cut(&bridge, 1).await;
    // Regression: pushes queued behind a channel open that never completed, answered only
    // after about two minutes, when heartbeats declared the connection dead.
    assert!(
        cut.elapsed() < Duration::from_secs(15 + 3 + 2),
        "every push is answered within confirm_timeout_ms: {:?}",
        cut.elapsed()
    );
    assert!(
        answers.iter().all(|s| *s == 503 || *s == 429),
        "never 200 while RabbitMQ is unreachable: {answers:?}"
    );
    proxy.restore();
    let (refused, sequence) = push_until_accepted(&bridge, sequence).await;
    accepted += 1;
    for s in sequence + 1..=sequence + 5 {
        assert_eq!(bridge.post(&push_body(s)).await.status(), 200);
        accepted += 1;
    }
    // Every acknowledged event is in the queue (unacknowledged ones may be too: duplicates,
    // never loss).
    let queued = rabbit.ready_count(&queue).await.unwrap();
    assert!(
        queued >= accepted,
        "{queued} queued, {accepted} acknowledged ({refused} refused after the partition)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_amqp_source_resumes_after_a_network_partition() {
    require_kafka();
    let mut rabbit = Rabbit::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, url_line) = rabbit_proxy(&dir).await;
    let queue = rabbit.queue("it-part-src");
    rabbit
        .declare_queue(&queue, lapin::types::FieldTable::default())
        .await;
    let prefix = unique("it-part-src");
    let connector = format!(
        "[retry]\nmin_backoff_ms = 100\nmax_backoff_ms = 400\n\n\
         [source]\ntype = \"amqp\"\n{url_line}\nqueues = [\"{queue}\"]\nlinger_ms = 20\n\
         reconnect_min_backoff_ms = 200\nreconnect_max_backoff_ms = 1000\n\n[sink]\n{}",
        TestBridge::kafka_sink(&prefix, "")
    );
    let bridge = TestBridge::start_connector(&connector).await;
    let delivered = "entity_bridge_pump_events_total{connector=\"it\",outcome=\"delivered\"}";
    rabbit
        .publish(&queue, crate::egress::event("K1", 1, 0).as_bytes(), None)
        .await;
    crate::amqp::wait_metric(&bridge, delivered, 1.0).await;

    proxy.cut();
    for s in 2..=4 {
        let raw = crate::egress::event(&format!("K{s}"), s, 0);
        rabbit.publish(&queue, raw.as_bytes(), None).await;
    }
    tokio::time::sleep(Duration::from_secs(15)).await;
    let text = bridge.metrics().await;
    assert_eq!(
        metric(&text, delivered),
        Some(1.0),
        "nothing moves while cut"
    );
    proxy.restore();
    let restored = Instant::now();
    crate::amqp::wait_metric(&bridge, delivered, 4.0).await;
    assert!(
        restored.elapsed() < Duration::from_secs(30),
        "resumed {:?} after the partition",
        restored.elapsed()
    );
    rabbit.wait_ready_count(&queue, 0).await;
    assert!(bridge.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kafka_source_resumes_after_a_network_partition() {
    use crate::egress::{create_topic_on, event, produce_on, Egress};
    let broker = OwnBroker::start().await;
    let bootstrap = broker.proxy.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let receiver = crate::receiver::Receiver::accepting().await;
    let mut egress = Egress::new("it-part-egress", &receiver.url, &dir);
    create_topic_on(&bootstrap, &egress.topic, 1).await;
    let first: Vec<_> = (1..=3)
        .map(|s| ("k".to_owned(), s, event("k", s, 4)))
        .collect();
    produce_on(&bootstrap, &egress.topic, &first, None).await;
    // The group session outlasts the partition. With a session shorter than the cut, the
    // member expires and rejoins after it; tansu 0.6 then sometimes keeps the expired member
    // as the group's leader (every JoinGroup names it, every SyncGroup answers "rebalance in
    // progress", seen in librdkafka's `cgrp` debug log), so no member is ever assigned again.
    // That is a defect of the test broker (Apache Kafka evicts the member), not a bridge
    // behaviour to assert here.
    egress.source_extra = "[source.librdkafka]\n\"session.timeout.ms\" = \"45000\"".into();
    let toml = egress.toml().replace(&kafka(), &bootstrap);
    let bridge = TestBridge::start_connector(&toml).await;
    receiver.wait_delivered(3, Duration::from_secs(60)).await;

    broker.proxy.cut();
    tokio::time::sleep(Duration::from_secs(15)).await;
    broker.proxy.restore();
    let restored = Instant::now();
    let later: Vec<_> = (4..=6)
        .map(|s| ("k".to_owned(), s, event("k", s, 4)))
        .collect();
    produce_on(&bootstrap, &egress.topic, &later, None).await;
    receiver.wait_delivered(6, Duration::from_secs(60)).await;
    assert!(
        restored.elapsed() < Duration::from_secs(30),
        "resumed {:?} after the partition",
        restored.elapsed()
    );
    assert!(bridge.stop().await);
}
