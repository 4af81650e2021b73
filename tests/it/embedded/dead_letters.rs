//! A pull feed into the embedded log needs no broker for its dead letters (issue 26, item 14):
//! without `[source.dead_letter]` they go to a table of the sink's own log, and the admin
//! listener lists them. Before, such a connector was refused: `source.dead_letter` had to be
//! Kafka or RabbitMQ.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{get_json, Setup};
use crate::producer::Producer;

fn connector(setup: &Setup, producer: &Producer, dead_letter: &str) -> String {
    format!(
        "[source]\ntype = \"reso_poll\"\nurl = \"{}/odata/EntityEvent\"\nidle_interval_ms = 100\n\
         {dead_letter}\n[sink]\ntype = \"embedded\"\nreplay_tokens = [{{ file = {:?} }}]\n",
        producer.base,
        setup.path("token").display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_feed_dead_letters_into_its_own_log_without_a_broker() {
    let producer = Producer::start(100, None).await;
    producer.add_reso(1..=2);
    // Sequence 3 has no ResourceRecordKey: not an EntityEvent, dead-lettered alone.
    (producer.state.events.lock().unwrap())
        .push(json!({"EntityEventSequence": 3, "ResourceName": "Property"}));
    producer.add_reso(4..=4);
    let setup = Setup::new(&[]);
    setup.write_connector("feed", &connector(&setup, &producer, ""));
    let bridge = setup.start().await;

    // The feed moves past the bad event: 1, 2 and 4 are in the log.
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let (status, body) = bridge.replay("?$top=10").await;
        assert_eq!(status, 200, "{body}");
        let events = body["value"].as_array().unwrap().clone();
        if events.len() == 3 || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sequences: Vec<i64> = (events.iter())
        .map(|e| {
            e["@EntityBridge.SourceEntityEventSequence"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(sequences, [1, 2, 4]);

    // The admin listener lists the dead letter with its reason and exact bytes.
    let url = format!("{}/dead-letters/feed", bridge.admin);
    let (status, page) = get_json(&url, None).await;
    assert_eq!(status, 200, "{page}");
    let value = page["value"].as_array().unwrap();
    assert_eq!(value.len(), 1, "{page}");
    let dead = &value[0];
    assert_eq!(dead["reason"], "unparseable");
    assert!(
        dead["detail"]
            .as_str()
            .unwrap()
            .contains("ResourceRecordKey"),
        "{dead}"
    );
    assert_eq!(dead["EntityEventSequence"], 3);
    let payload: Value = serde_json::from_str(dead["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        payload,
        json!({"EntityEventSequence": 3, "ResourceName": "Property"})
    );
    assert_eq!(page["next"], Value::Null);
    // Paging: nothing after it; bad parameters are named.
    let after = format!("{url}?after={}", dead["id"]);
    let (_, rest) = get_json(&after, None).await;
    assert_eq!(rest["value"], json!([]));
    let (status, problem) = get_json(&format!("{url}?limit=5000"), None).await;
    assert_eq!(status, 400);
    assert!(problem.to_string().contains("`limit`"), "{problem}");
    let (status, _) = get_json(&format!("{}/dead-letters/nobody", bridge.admin), None).await;
    assert_eq!(status, 404);
    let metrics = bridge.metrics().await;
    assert!(
        metrics.contains(
            "entity_bridge_dead_lettered_events_total{connector=\"feed\",outcome=\"unparseable\"} 1"
        ),
        "{metrics}"
    );
    bridge.stop().await;
}

#[test]
fn an_embedded_dead_letter_log_must_be_one_a_sink_writes() {
    let producer_base = "http://127.0.0.1:9";
    let setup = Setup::new(&[]);
    let text = format!(
        "[source]\ntype = \"reso_poll\"\nurl = \"{producer_base}/odata/EntityEvent\"\n\
         [source.dead_letter]\ntype = \"embedded\"\nfile = \"elsewhere.db\"\n\
         [sink]\ntype = \"embedded\"\nreplay_tokens = [{{ file = {:?} }}]\n",
        setup.path("token").display().to_string()
    );
    setup.write_connector("feed", &text);
    let error = entity_bridge::config::load(&[setup.dir.path().to_owned()])
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("`source.dead_letter.file`") && error.contains("elsewhere.db"),
        "{error}"
    );
    // Naming the sink's own log is the same as naming none.
    setup.write_connector("feed", &text.replace("elsewhere.db", "feed.db"));
    entity_bridge::config::load(&[setup.dir.path().to_owned()]).unwrap();
}
