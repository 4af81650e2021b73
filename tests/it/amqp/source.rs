//! AMQP source → Kafka sink: acks follow the sink, failures are redelivered, poison reaches the
//! dead-letter queue, and consumption resumes after the broker drops the connection.

use lapin::types::FieldTable;
use rdkafka::message::Message as _;

use super::*;

fn event(sequence: i64, resource: &str) -> String {
    format!(
        r#"{{"EntityEventSequence": {sequence}, "ResourceName": "{resource}", "ResourceRecordKey": "K{sequence}"}}"#
    )
}

/// A connector file: AMQP source on `queue` (+ `source_extra`), then a `[sink]` section.
fn connector(rabbit: &Rabbit, queue: &str, source_extra: &str, sink: &str) -> String {
    format!(
        "[retry]\nmin_backoff_ms = 100\nmax_backoff_ms = 400\n\n\
         [source]\ntype = \"amqp\"\n{}\nqueues = [\"{queue}\"]\nlinger_ms = 20\n{source_extra}\n\n\
         [sink]\n{sink}\n",
        rabbit.url_line
    )
}

const DELIVERED: &str = "entity_bridge_pump_events_total{connector=\"it\",outcome=\"delivered\"}";

/// Waits until the pump delivered `n` events (so the bridge created the topic; a reader
/// subscribed to a missing topic may not see it appear for minutes), then reads them.
async fn delivered_to_kafka(
    bridge: &TestBridge,
    topic: String,
    n: usize,
) -> Vec<rdkafka::message::OwnedMessage> {
    wait_metric(bridge, DELIVERED, n as f64).await;
    tokio::task::spawn_blocking(move || consume_n(&[&topic], n))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn acks_only_after_the_sink_and_resumes_after_connection_loss() {
    require_kafka();
    let mut rabbit = Rabbit::new().await;
    let queue = rabbit.queue("it-src");
    rabbit.declare_queue(&queue, FieldTable::default()).await;
    for sequence in 1..=3 {
        rabbit
            .publish(
                &queue,
                event(sequence, "Property").as_bytes(),
                Some("feed-9"),
            )
            .await;
    }
    let prefix = unique("it-amqp-src");
    let name = unique("it-src-conn");
    let source = format!("connection_name = \"{name}\"\nreconnect_min_backoff_ms = 200\n");
    let bridge = TestBridge::start_connector(&connector(
        &rabbit,
        &queue,
        &source,
        &TestBridge::kafka_sink(&prefix, ""),
    ))
    .await;

    let topic = format!("{prefix}.Property");
    // The pump counts a batch delivered only after the sink's Ok, and acks after that.
    let got = delivered_to_kafka(&bridge, topic.clone(), 3).await;
    let mut sequences: Vec<String> = got
        .iter()
        .map(|m| header(m, "EntityEventSequence").unwrap())
        .collect();
    sequences.sort();
    assert_eq!(sequences, ["1", "2", "3"]);
    let first = got.iter().find(|m| m.key() == Some(b"K1")).unwrap();
    assert_eq!(
        std::str::from_utf8(first.payload().unwrap()).unwrap(),
        event(1, "Property"),
        "body bytes passed through"
    );
    assert_eq!(
        header(first, "EntityEventSource").as_deref(),
        Some("feed-9")
    );

    // The broker drops the source's connection; it reconnects and consumes on.
    tokio::task::spawn_blocking(move || close_connection_named(&name))
        .await
        .unwrap();
    let opened = "entity_bridge_amqp_connections_total{connector=\"it\",outcome=\"opened\"}";
    wait_metric(&bridge, opened, 2.0).await;
    rabbit
        .publish(&queue, event(4, "Property").as_bytes(), None)
        .await;
    let got = delivered_to_kafka(&bridge, topic, 4).await;
    assert!(
        got.iter().any(|m| m.key() == Some(b"K4")),
        "resumed after reconnect"
    );
    assert!(bridge.stop().await);
    // Everything was acked: nothing comes back once the bridge let go.
    rabbit.wait_ready_count(&queue, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_sink_leaves_the_delivery_unacked_and_it_is_redelivered() {
    require_kafka();
    let mut rabbit = Rabbit::new().await;
    let queue = rabbit.queue("it-src-fail");
    rabbit.declare_queue(&queue, FieldTable::default()).await;
    rabbit
        .publish(&queue, event(7, "Property").as_bytes(), None)
        .await;

    // Nothing listens on 127.0.0.1:1: every Kafka delivery fails after 1 s.
    let broken =
        "type = \"kafka\"\nbootstrap_servers = \"127.0.0.1:1\"\ndelivery_timeout_ms = 1000\n";
    let name = unique("it-src-fail-conn");
    let source = format!("connection_name = \"{name}\"\nreconnect_min_backoff_ms = 200\n");
    let bridge = TestBridge::start_connector(&connector(&rabbit, &queue, &source, broken)).await;
    wait_metric(
        &bridge,
        "entity_bridge_pump_events_total{connector=\"it\",outcome=\"retried\"}",
        2.0,
    )
    .await;
    // Retried in place: the delivery stays unacknowledged with the bridge (so nothing behind it
    // overtakes it), never nacked back to the queue.
    let redelivered = "entity_bridge_amqp_redelivered_total{connector=\"it\"}";
    assert_eq!(metric(&bridge.metrics().await, redelivered), None);
    assert_eq!(
        rabbit.ready_count(&queue).await,
        Some(0),
        "held, not requeued"
    );

    // Drop the connection while the batch is with the failing sink: its delivery tag dies with
    // the channel, the settle is skipped (not sent on the new channel), the broker redelivers.
    tokio::task::spawn_blocking(move || close_connection_named(&name))
        .await
        .unwrap();
    let opened = "entity_bridge_amqp_connections_total{connector=\"it\",outcome=\"opened\"}";
    wait_metric(&bridge, opened, 2.0).await;
    wait_metric(&bridge, redelivered, 1.0).await;
    let metrics = bridge.metrics().await;
    assert_eq!(metric(&metrics, DELIVERED), None, "{metrics}");
    bridge.stop().await;

    // Never acked: after the bridge let go it is back in the queue, marked redelivered.
    rabbit.wait_ready_count(&queue, 1).await;
    let m = rabbit.get(&queue).await.unwrap();
    assert!(m.redelivered);
    assert_eq!(m.data, event(7, "Property").as_bytes());

    // Not lost: put it back and a bridge with a working sink delivers it.
    rabbit.publish(&queue, &m.data, None).await;
    let prefix = unique("it-amqp-redo");
    let bridge = TestBridge::start_connector(&connector(
        &rabbit,
        &queue,
        "",
        &TestBridge::kafka_sink(&prefix, ""),
    ))
    .await;
    let got = delivered_to_kafka(&bridge, format!("{prefix}.Property"), 1).await;
    assert_eq!(got[0].key(), Some(&b"K7"[..]));
    assert!(bridge.stop().await);
    rabbit.wait_ready_count(&queue, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_messages_reach_the_dead_letter_queue() {
    require_kafka();
    let mut rabbit = Rabbit::new().await;
    let queue = rabbit.queue("it-src-poison");
    let dlx = rabbit.exchange("it-dlx");
    let dlq = rabbit.queue("it-dlq");
    // The source declares the whole topology: the dead-letter exchange, its queue, the work
    // queue pointing at it.
    let topology = format!(
        "max_batch = 1\n\
         [[source.topology.exchanges]]\nname = \"{dlx}\"\ntype = \"fanout\"\n\
         [[source.topology.queues]]\nname = \"{dlq}\"\n\
         [[source.topology.queues]]\nname = \"{queue}\"\ndead_letter_exchange = \"{dlx}\"\n\
         [[source.topology.bindings]]\nqueue = \"{dlq}\"\nexchange = \"{dlx}\"\n"
    );
    let prefix = unique("it-amqp-poison");
    let listings = format!("{prefix}.listings");
    let sink = TestBridge::kafka_sink(
        &prefix,
        &format!("unknown_resource = \"reject\"\n[sink.topics]\nProperty = \"{listings}\"\n"),
    );
    let bridge = TestBridge::start_connector(&connector(&rabbit, &queue, &topology, &sink)).await;
    rabbit.wait_ready_count(&queue, 0).await; // declared by the bridge

    rabbit.publish(&queue, b"this is not JSON", None).await;
    rabbit
        .publish(&queue, event(2, "Showing").as_bytes(), None)
        .await;
    rabbit
        .publish(&queue, event(3, "Property").as_bytes(), None)
        .await;

    let got = delivered_to_kafka(&bridge, listings, 1).await;
    assert_eq!(got[0].key(), Some(&b"K3"[..]));
    rabbit.wait_ready_count(&dlq, 2).await;
    let mut dead = Vec::new();
    while let Some(m) = rabbit.get(&dlq).await {
        assert!(
            amqp_header(&m, "x-death").is_some(),
            "dead-lettered by the broker"
        );
        dead.push(String::from_utf8(m.data.clone()).unwrap());
    }
    dead.sort();
    let mut expected = [event(2, "Showing"), "this is not JSON".to_owned()];
    expected.sort();
    assert_eq!(dead, expected);

    let metrics = bridge.metrics().await;
    for (outcome, n) in [("unparseable", 1.0), ("rejected", 1.0)] {
        let series = format!(
            "entity_bridge_dead_lettered_events_total{{connector=\"it\",outcome=\"{outcome}\"}}"
        );
        assert_eq!(metric(&metrics, &series), Some(n), "{metrics}");
    }
    assert!(bridge.stop().await);
    rabbit.wait_ready_count(&queue, 0).await;
}

/// Regression: one poison message nacked its whole batch without requeue (lost when the queue
/// has no dead-letter exchange). Now only the poison messages are rejected; their neighbours
/// reach the sink, in order per key.
#[tokio::test(flavor = "multi_thread")]
async fn a_poison_message_does_not_take_its_batch_with_it() {
    require_kafka();
    for poison in [vec![37i64], vec![1, 50, 100]] {
        let mut rabbit = Rabbit::new().await;
        let queue = rabbit.queue("it-src-isolate");
        let dlx = rabbit.exchange("it-dlx");
        let dlq = rabbit.queue("it-dlq");
        let topology = format!(
            "[[source.topology.exchanges]]\nname = \"{dlx}\"\ntype = \"fanout\"\n\
             [[source.topology.queues]]\nname = \"{dlq}\"\n\
             [[source.topology.queues]]\nname = \"{queue}\"\ndead_letter_exchange = \"{dlx}\"\n\
             [[source.topology.bindings]]\nqueue = \"{dlq}\"\nexchange = \"{dlx}\"\n"
        );
        let prefix = unique("it-amqp-isolate");
        let topic = format!("{prefix}.Property");
        // A long linger so the 100 messages form one batch.
        let text = connector(
            &rabbit,
            &queue,
            &topology,
            &TestBridge::kafka_sink(&prefix, ""),
        )
        .replace("linger_ms = 20", "linger_ms = 1500");
        let bridge = TestBridge::start_connector(&text).await;
        rabbit.wait_ready_count(&queue, 0).await;
        for s in 1..=100i64 {
            // Not a Data Dictionary resource: the Kafka sink refuses it (400 on a webhook).
            let resource = if poison.contains(&s) {
                "X_NotReso"
            } else {
                "Property"
            };
            let body = format!(
                r#"{{"EntityEventSequence":{s},"ResourceName":"{resource}","ResourceRecordKey":"k{}"}}"#,
                s % 3
            );
            rabbit.publish(&queue, body.as_bytes(), None).await;
        }
        let good = 100 - poison.len();
        let got = delivered_to_kafka(&bridge, topic, good).await;
        let mut by_key: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
        for m in &got {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            by_key
                .entry(v["ResourceRecordKey"].as_str().unwrap().to_owned())
                .or_default()
                .push(v["EntityEventSequence"].as_i64().unwrap());
        }
        for (key, seqs) in &by_key {
            let k: i64 = key[1..].parse().unwrap();
            let expected: Vec<i64> = (1..=100)
                .filter(|s| s % 3 == k && !poison.contains(s))
                .collect();
            assert_eq!(seqs, &expected, "{key}: every good message once, in order");
        }
        rabbit.wait_ready_count(&dlq, poison.len() as u32).await;
        let mut dead = Vec::new();
        while let Some(m) = rabbit.get(&dlq).await {
            let v: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
            dead.push(v["EntityEventSequence"].as_i64().unwrap());
        }
        dead.sort();
        assert_eq!(dead, poison, "only the poison messages are dead-lettered");
        let metrics = bridge.metrics().await;
        let series =
            "entity_bridge_dead_lettered_events_total{connector=\"it\",outcome=\"rejected\"}";
        assert_eq!(
            metric(&metrics, series),
            Some(poison.len() as f64),
            "{metrics}"
        );
        assert!(bridge.stop().await);
        rabbit.wait_ready_count(&queue, 0).await;
    }
}
