//! Duplicate suppression on RabbitMQ paths: a push answered 503 leaves its events unseen, and
//! an AMQP source feeding Kafka publishes each (feed, sequence) once.

use lapin::types::FieldTable;
use rdkafka::message::Message as _;

use super::*;
use crate::dedupe::push;

fn event(sequence: i64) -> String {
    format!(
        r#"{{"EntityEventSequence": {sequence}, "ResourceName": "Property", "ResourceRecordKey": "K{sequence}"}}"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_answered_503_leaves_its_events_unseen_and_the_retry_publishes_them() {
    let mut rabbit = Rabbit::new().await;
    let exchange = rabbit.exchange("it-dd-x");
    let queue = rabbit.queue("it-dd-q");
    // The queue exists but is not bound yet: the broker returns every message (mandatory), and
    // with on_unroutable = "fail" the push is answered 503.
    let sink = format!(
        "type = \"amqp\"\n{}\nexchange = \"{exchange}\"\ndeclare_exchange = true\nconfirm_timeout_ms = 5000\n\
         routing_key_template = \"mls.{{ResourceName}}\"\n\
         [[sink.topology.queues]]\nname = \"{queue}\"\n\n[dedupe]\n",
        rabbit.url_line
    );
    let bridge = TestBridge::start("", &sink).await;
    wait_ready(&bridge, 200).await; // connected, topology declared
    let refused = bridge.post(&push(1..=5)).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));

    rabbit.bind(&queue, &exchange, "mls.Property").await;
    let retried = bridge.post(&push(1..=5)).await;
    assert_eq!(retried.status(), 200);
    let body: serde_json::Value = retried.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({ "accepted": 5, "duplicates": 0 }),
        "a 503 marked nothing as delivered"
    );
    assert_eq!(rabbit.ready_count(&queue).await, Some(5));

    let again = bridge.post(&push(3..=7)).await;
    let body: serde_json::Value = again.json().await.unwrap();
    assert_eq!(body, serde_json::json!({ "accepted": 5, "duplicates": 3 }));
    assert_eq!(
        rabbit.ready_count(&queue).await,
        Some(7),
        "only 6 and 7 added"
    );
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        while let Some(m) = rabbit.get(&queue).await {
            ids.push(m.properties.message_id().as_ref().unwrap().to_string());
        }
        ids
    };
    assert_eq!(
        ids[0], "it//1",
        "message ids name the connector and the (empty) label"
    );
    assert!(bridge.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_amqp_source_publishes_each_sequence_of_a_feed_once() {
    require_kafka();
    let mut rabbit = Rabbit::new().await;
    let queue = rabbit.queue("it-dd-src");
    rabbit.declare_queue(&queue, FieldTable::default()).await;
    // A feed replayed in part (11..=20 twice), and another feed reusing the same sequences.
    for sequence in (1..=20).chain(11..=30) {
        rabbit
            .publish(&queue, event(sequence).as_bytes(), Some("feed-a"))
            .await;
    }
    for sequence in 1..=5 {
        rabbit
            .publish(&queue, event(sequence).as_bytes(), Some("feed-b"))
            .await;
    }
    let prefix = unique("it-dd-amqp");
    let connector = format!(
        "[retry]\nmin_backoff_ms = 100\nmax_backoff_ms = 400\n\n\
         [source]\ntype = \"amqp\"\n{}\nqueues = [\"{queue}\"]\nlinger_ms = 20\n\n\
         [sink]\n{}\n[dedupe]\n",
        rabbit.url_line,
        TestBridge::kafka_sink(&prefix, "")
    );
    let bridge = TestBridge::start_connector(&connector).await;
    let duplicates = "entity_bridge_feed_duplicates_total{connector=\"it\",feed=\"feed-a\"}";
    wait_metric(&bridge, duplicates, 10.0).await;
    rabbit.wait_ready_count(&queue, 0).await;
    let topic = format!("{prefix}.Property");
    let records = tokio::task::spawn_blocking(move || {
        // Read for a while past the expected count: a duplicate would arrive within it.
        consume_until(&[&topic], Duration::from_secs(8), |_| false)
    })
    .await
    .unwrap();
    let mut a: Vec<i64> = Vec::new();
    let mut b: Vec<i64> = Vec::new();
    for m in &records {
        let sequence: i64 = header(m, "EntityEventSequence").unwrap().parse().unwrap();
        match header(m, "EntityEventSource").as_deref() {
            Some("feed-a") => a.push(sequence),
            Some("feed-b") => b.push(sequence),
            other => panic!("unexpected feed {other:?}"),
        }
        assert!(m.payload().is_some());
    }
    a.sort();
    assert_eq!(
        a,
        (1..=30).collect::<Vec<_>>(),
        "feed-a: each sequence once"
    );
    b.sort();
    assert_eq!(b, (1..=5).collect::<Vec<_>>(), "feed-b is its own feed");

    let feeds = bridge.feeds().await;
    let it = &feeds["connectors"]["it"];
    assert_eq!(it["dedupe"], true);
    let feed_a = it["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["source"] == "feed-a")
        .expect("feed-a tracked")
        .clone();
    assert_eq!(feed_a["high_water_mark"], 30);
    assert_eq!(feed_a["duplicates"], 10);
    assert_eq!(feed_a["events"], 30);
    assert!(bridge.stop().await);
}
