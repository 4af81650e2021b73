//! webhook → AMQP: what lands in a bound queue, what a producer hears when nothing is bound or
//! the broker drops the connection, and that the bridge recovers by itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::types::{AMQPValue, LongString};

use super::*;

const PROPERTY_BATCH: &str = r#"{
  "@reso.context": "urn:reso:metadata:2.0:resource:entityevent",
  "value": [
    {"EntityEventSequence": 1101,   "ResourceName": "Property", "ResourceRecordKey": "235021", "Data": {"ListPrice": 450000.00}},
    { "EntityEventSequence":1102,"ResourceName":"Property","ResourceRecordKey":"235022" }
  ]
}"#;

fn amqp_sink(rabbit: &Rabbit, exchange: &str, extra: &str) -> String {
    format!(
        "type = \"amqp\"\n{}\nexchange = \"{exchange}\"\nconfirm_timeout_ms = 5000\n{extra}\n",
        rabbit.url_line
    )
}

fn bound_queue(queue: &str, exchange: &str, routing_key: &str) -> String {
    format!(
        "[[sink.topology.queues]]\nname = \"{queue}\"\n\
         [[sink.topology.bindings]]\nqueue = \"{queue}\"\nexchange = \"{exchange}\"\nrouting_key = \"{routing_key}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_to_amqp_lands_in_bound_queue_persistent_with_headers() {
    let mut rabbit = Rabbit::new().await;
    let exchange = rabbit.exchange("it-x");
    let queue = rabbit.queue("it-q");
    let sink = amqp_sink(
        &rabbit,
        &exchange,
        &format!(
            "routing_key_template = \"mls.{{ResourceName}}\"\n{}",
            bound_queue(&queue, &exchange, "mls.Property")
        ),
    );
    let bridge = TestBridge::start("", &sink).await;
    wait_ready(&bridge, 200).await;
    let response = bridge
        .post_with(PROPERTY_BATCH, |r| {
            r.header("EntityEventSource", "IDX Feed 123")
        })
        .await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({ "accepted": 2 }));

    // 200 means confirmed: both messages are in the queue now, no polling needed.
    assert_eq!(rabbit.ready_count(&queue).await, Some(2));
    for (sequence, key, raw) in [
        (
            1101,
            "235021",
            r#"{"EntityEventSequence": 1101,   "ResourceName": "Property", "ResourceRecordKey": "235021", "Data": {"ListPrice": 450000.00}}"#,
        ),
        (
            1102,
            "235022",
            r#"{ "EntityEventSequence":1102,"ResourceName":"Property","ResourceRecordKey":"235022" }"#,
        ),
    ] {
        let m = rabbit
            .get(&queue)
            .await
            .expect("message in the bound queue");
        assert_eq!(m.exchange.as_str(), exchange);
        assert_eq!(m.routing_key.as_str(), "mls.Property");
        assert_eq!(std::str::from_utf8(&m.data).unwrap(), raw, "exact bytes");
        let p = &m.properties;
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(
            p.message_id().as_ref().map(|c| c.to_string()),
            Some(format!("it/IDX Feed 123/{sequence}")),
            "unique per connector and feed"
        );
        assert_eq!(
            amqp_header(&m, "EntityEventSequence"),
            Some(&AMQPValue::LongLongInt(sequence))
        );
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        assert_eq!(amqp_header(&m, "ResourceName"), Some(&text("Property")));
        assert_eq!(amqp_header(&m, "ResourceRecordKey"), Some(&text(key)));
        assert_eq!(
            amqp_header(&m, "EntityEventSource"),
            Some(&text("IDX Feed 123"))
        );
    }

    let metrics = bridge.metrics().await;
    let published = "entity_bridge_events_published_total{connector=\"it\",resource=\"Property\"}";
    assert_eq!(metric(&metrics, published), Some(2.0), "{metrics}");
    let opened = "entity_bridge_amqp_connections_total{connector=\"it\",outcome=\"opened\"}";
    assert_eq!(metric(&metrics, opened), Some(1.0), "{metrics}");
    assert!(!metrics.contains("guest"), "no credentials in metrics");
    assert!(bridge.stop().await, "clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn resource_names_outside_the_data_dictionary_are_400_publish_nothing() {
    let mut rabbit = Rabbit::new().await;
    let exchange = rabbit.exchange("it-x");
    let queue = rabbit.queue("it-q");
    let sink = amqp_sink(
        &rabbit,
        &exchange,
        &format!(
            "extra_resource_names = [\"X_Vendor\"]\n{}",
            bound_queue(&queue, &exchange, "#")
        ),
    );
    let bridge = TestBridge::start("", &sink).await;
    wait_ready(&bridge, 200).await;
    let mixed = r#"{"value":[
        {"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"K1"},
        {"EntityEventSequence":2,"ResourceName":"X_Vendor","ResourceRecordKey":"K1"},
        {"EntityEventSequence":3,"ResourceName":"Anything","ResourceRecordKey":"K1"}]}"#;
    let response = bridge.post(mixed).await;
    assert_eq!(response.status(), 400);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/value/2/ResourceName");
    assert_eq!(
        rabbit.ready_count(&queue).await,
        Some(0),
        "nothing published"
    );
    let allowed = mixed.replace(",\n        {\"EntityEventSequence\":3,\"ResourceName\":\"Anything\",\"ResourceRecordKey\":\"K1\"}", "");
    assert_eq!(bridge.post(&allowed).await.status(), 200, "{allowed}");
    assert_eq!(rabbit.ready_count(&queue).await, Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn unroutable_is_503_not_200_unless_ignored() {
    let mut rabbit = Rabbit::new().await;
    let exchange = rabbit.exchange("it-unbound");
    let bridge = TestBridge::start(
        "unavailable_retry_after_seconds = 4",
        &amqp_sink(&rabbit, &exchange, ""),
    )
    .await;
    wait_ready(&bridge, 200).await;
    let response = bridge.post(PROPERTY_BATCH).await;
    assert_eq!(
        response.status(),
        503,
        "no queue is bound: nothing is durable"
    );
    assert_eq!(response.headers()["retry-after"], "4");
    let metrics = bridge.metrics().await;
    let returned = "entity_bridge_amqp_returned_total{connector=\"it\",resource=\"Property\"}";
    assert_eq!(metric(&metrics, returned), Some(2.0), "{metrics}");
    // The channel survives a return: readiness stays green and the next push is judged afresh.
    assert_eq!(bridge.post(PROPERTY_BATCH).await.status(), 503);
    wait_ready(&bridge, 200).await;
    assert!(bridge.stop().await);

    let ignoring = TestBridge::start(
        "",
        &amqp_sink(&rabbit, &exchange, "on_unroutable = \"ignore\""),
    )
    .await;
    wait_ready(&ignoring, 200).await;
    assert_eq!(ignoring.post(PROPERTY_BATCH).await.status(), 200);
    assert!(ignoring.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_closing_the_connection_never_yields_200_for_unconfirmed_events() {
    let mut rabbit = Rabbit::new().await;
    let exchange = rabbit.exchange("it-drop");
    let queue = rabbit.queue("it-drop");
    let name = unique("it-sink-conn");
    let sink = amqp_sink(
        &rabbit,
        &exchange,
        &format!(
            "connection_name = \"{name}\"\nreconnect_min_backoff_ms = 1500\nreconnect_max_backoff_ms = 3000\n{}",
            bound_queue(&queue, &exchange, "#")
        ),
    );
    let bridge = Arc::new(TestBridge::start("", &sink).await);
    wait_ready(&bridge, 200).await;

    // A producer pushing one event at a time throughout; every answer is recorded.
    let answers: Arc<Mutex<Vec<(i64, u16)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let pusher = {
        let (bridge, answers, stop) = (bridge.clone(), answers.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sequence = 1;
            while !stop.load(Ordering::Relaxed) {
                let event = format!(
                    r#"{{"EntityEventSequence":{sequence},"ResourceName":"Property","ResourceRecordKey":"K{sequence}"}}"#
                );
                let status = bridge.post(&event).await.status().as_u16();
                answers.lock().unwrap().push((sequence, status));
                sequence += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let ok_count = |answers: &Mutex<Vec<(i64, u16)>>| {
        answers
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| *s == 200)
            .count()
    };
    while ok_count(&answers) < 5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    tokio::task::spawn_blocking(move || close_connection_named(&name))
        .await
        .unwrap();
    wait_ready(&bridge, 503).await;
    let during = bridge.post(PROPERTY_BATCH).await;
    assert_eq!(
        during.status(),
        503,
        "disconnected: the push cannot be durable"
    );
    assert!(during.headers().contains_key("retry-after"));

    // Recovers by itself: readiness returns and pushes succeed again.
    wait_ready(&bridge, 200).await;
    let before = ok_count(&answers);
    while ok_count(&answers) < before + 5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    pusher.await.unwrap();

    // Every event answered 200 is in the queue (503s may or may not be: at-least-once).
    let mut in_queue = std::collections::HashSet::new();
    while let Some(m) = rabbit.get(&queue).await {
        if let Some(AMQPValue::LongLongInt(sequence)) = amqp_header(&m, "EntityEventSequence") {
            in_queue.insert(*sequence);
        }
    }
    let answers = answers.lock().unwrap().clone();
    for (sequence, status) in &answers {
        assert!(
            *status == 200 || *status == 503,
            "push {sequence} answered {status}"
        );
        if *status == 200 {
            assert!(
                in_queue.contains(sequence),
                "200 for {sequence} but it is not in the queue"
            );
        }
    }
    let metrics = bridge.metrics().await;
    let lost = "entity_bridge_amqp_connections_total{connector=\"it\",outcome=\"lost\"}";
    assert_eq!(metric(&metrics, lost), Some(1.0), "{metrics}");
    let bridge = Arc::try_unwrap(bridge).ok().expect("pusher finished");
    assert!(bridge.stop().await);
}
