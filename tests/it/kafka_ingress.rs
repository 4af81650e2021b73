//! webhook → Kafka against the real Kafka-protocol broker: what a producer sees, what lands.

use std::io::Write;
use std::time::{Duration, Instant};

use rdkafka::message::Message as _;

use crate::common::*;

/// The producer guide's example, with odd spacing to prove bytes are not re-serialized.
const GUIDE_BATCH: &str = r#"{
  "@reso.context": "urn:reso:metadata:2.0:resource:entityevent",
  "value": [
    {"EntityEventSequence": 1101,   "ResourceName": "Property", "ResourceRecordKey": "235021",
     "Data": {"ListingKey": "235021", "ListPrice": 450000.00, "City": "Caf\u00e9 Town", "Vendor_X": [1, 2]}},
    { "EntityEventSequence":1111,"ResourceName":"Media","ResourceRecordKey":"ABC123","Data":{"ResourceRecordID":"ABC123","OriginatingSystemName":"YourSystemName","Media":[{"MediaURL":"https://x/1.jpg","Order":1}]} }
  ]
}"#;

fn event_slices(body: &str) -> Vec<&str> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let n = v["value"].as_array().unwrap().len();
    // Locate each event object's exact text: from its `{` to the matching `}`.
    let mut out = Vec::new();
    let start = body.find('[').unwrap() + 1;
    let bytes = body.as_bytes();
    let (mut depth, mut begin, mut in_str, mut esc) = (0, 0, false, false);
    for (i, &b) in bytes.iter().enumerate().skip(start) {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' => {
                if depth == 0 {
                    begin = i;
                }
                depth += 1;
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    out.push(&body[begin..=i]);
                }
            }
            _ => {}
        }
        if out.len() == n {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_lands_with_topic_key_headers_and_exact_bytes() {
    require_kafka();
    let prefix = unique("it-batch");
    let bridge = TestBridge::start("", &TestBridge::kafka_sink(&prefix, "")).await;
    let response = bridge
        .post_with(GUIDE_BATCH, |r| {
            r.header("EntityEventSource", "IDX Feed 123")
        })
        .await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({ "accepted": 2 }));

    let expected = event_slices(GUIDE_BATCH);
    let property_topic = format!("{prefix}.Property");
    let media_topic = format!("{prefix}.Media");
    let got = tokio::task::spawn_blocking(move || consume_n(&[&property_topic, &media_topic], 2))
        .await
        .unwrap();
    for (m, (topic_suffix, key, seq, raw)) in got.iter().zip([
        ("Property", "235021", "1101", expected[0]),
        ("Media", "ABC123", "1111", expected[1]),
    ]) {
        let m = if m.topic().ends_with(topic_suffix) {
            m
        } else {
            got.iter()
                .find(|x| x.topic().ends_with(topic_suffix))
                .unwrap()
        };
        assert_eq!(m.topic(), format!("{prefix}.{topic_suffix}"));
        assert_eq!(m.key().unwrap(), key.as_bytes());
        assert_eq!(std::str::from_utf8(m.payload().unwrap()).unwrap(), raw);
        assert_eq!(header(m, "EntityEventSequence").as_deref(), Some(seq));
        assert_eq!(header(m, "ResourceName").as_deref(), Some(topic_suffix));
        assert_eq!(
            header(m, "EntityEventSource").as_deref(),
            Some("IDX Feed 123")
        );
        assert_eq!(
            header(m, "content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            header(m, "message_id"),
            Some(format!("it/IDX Feed 123/{seq}")),
            "the idempotency key is unique per connector and feed"
        );
    }

    let metrics = bridge.metrics().await;
    let published = "entity_bridge_events_published_total{connector=\"it\",resource=\"Property\"}";
    assert_eq!(metric(&metrics, published), Some(1.0), "{metrics}");
    let ok = "entity_bridge_http_requests_total{connector=\"it\",status=\"200\"}";
    assert_eq!(metric(&metrics, ok), Some(1.0));
    assert!(bridge.stop().await, "clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_single_valued_push_and_source_in_topic_template() {
    require_kafka();
    let prefix = unique("it-gzip");
    let sink = TestBridge::kafka_sink(&prefix, "")
        .replace("{ResourceName}\"", "{EntityEventSource}.{ResourceName}\"");
    let bridge = TestBridge::start("", &sink).await;
    let single = r#"{"@reso.context":"urn:reso:metadata:2.0:resource:entityevent","EntityEventSequence":1101,"ResourceName":"Showing","ResourceRecordKey":"235021","EventTypes":["Showing.Created"]}"#;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(single.as_bytes()).unwrap();
    let compressed = gz.finish().unwrap();
    let response = reqwest::Client::new()
        .post(&bridge.webhook)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header("EntityEventSource", "feed/7")
        .body(compressed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let topic = format!("{prefix}.feed_7.Showing");
    let got = tokio::task::spawn_blocking(move || consume_n(&[&topic], 1))
        .await
        .unwrap();
    assert_eq!(
        std::str::from_utf8(got[0].payload().unwrap()).unwrap(),
        r#"{"EntityEventSequence":1101,"ResourceName":"Showing","ResourceRecordKey":"235021","EventTypes":["Showing.Created"]}"#
    );
}

/// Pushes a marker with the same record key (so the same partition) after the rejected
/// requests, and checks it is the first message in the topic: nothing before it was published.
async fn assert_nothing_published_before_marker(bridge: &TestBridge, topic: String) {
    let marker = r#"{"value":[{"EntityEventSequence":999,"ResourceName":"Property","ResourceRecordKey":"K1","Marker":true}]}"#;
    assert_eq!(bridge.post(marker).await.status(), 200);
    let got = tokio::task::spawn_blocking(move || consume_n(&[&topic], 1))
        .await
        .unwrap();
    let first = std::str::from_utf8(got[0].payload().unwrap()).unwrap();
    assert!(
        first.contains("\"Marker\":true"),
        "unexpected first message {first}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_requests_publish_nothing() {
    require_kafka();
    let prefix = unique("it-reject");
    let bridge = TestBridge::start("", &TestBridge::kafka_sink(&prefix, "")).await;
    let valid_then_invalid = r#"{"value":[
        {"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"K1"},
        {"EntityEventSequence":2,"ResourceName":"Property","ResourceRecordKey":"K1"},
        {"EntityEventSequence":3,"ResourceName":"Property","ResourceRecordKey":"K1"},
        {"EntityEventSequence":4,"ResourceName":"Property","ResourceRecordKey":17}]}"#;

    let wrong_token = reqwest::Client::new()
        .post(&bridge.webhook)
        .bearer_auth("not-the-token")
        .header("content-type", "application/json")
        .body(valid_then_invalid.replace("17", "\"K1\""))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_token.status(), 401);
    assert!(wrong_token.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));

    let invalid = bridge.post(valid_then_invalid).await;
    assert_eq!(invalid.status(), 400);
    assert_eq!(
        invalid.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = invalid.json().await.unwrap();
    assert_eq!(
        problem["errors"][0]["pointer"],
        "/value/3/ResourceRecordKey"
    );

    let not_json = reqwest::Client::new()
        .post(&bridge.webhook)
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body(valid_then_invalid.replace("17", "\"K1\""))
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 415);

    assert_nothing_published_before_marker(&bridge, format!("{prefix}.Property")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_resource_policy_reject_is_400_and_publishes_nothing() {
    require_kafka();
    let prefix = unique("it-policy");
    let topic = format!("{prefix}.listings");
    let sink = TestBridge::kafka_sink(
        &prefix,
        &format!("unknown_resource = \"reject\"\n[sink.topics]\nProperty = \"{topic}\"\n"),
    );
    let bridge = TestBridge::start("", &sink).await;
    let mixed = r#"{"value":[
        {"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"K1"},
        {"EntityEventSequence":2,"ResourceName":"Showing","ResourceRecordKey":"K1"}]}"#;
    let response = bridge.post(mixed).await;
    assert_eq!(response.status(), 400);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/value/1/ResourceName");
    assert_nothing_published_before_marker(&bridge, topic).await;
}

/// Regression: one push with 200 distinct ResourceNames created 200 topics.
#[tokio::test(flavor = "multi_thread")]
async fn resource_names_outside_the_data_dictionary_are_400_and_create_no_topic() {
    require_kafka();
    let prefix = unique("it-names");
    let bridge = TestBridge::start("", &TestBridge::kafka_sink(&prefix, "")).await;
    let many: Vec<String> = (0..200)
        .map(|i| {
            format!(r#"{{"EntityEventSequence":{},"ResourceName":"Topic{i}","ResourceRecordKey":"K1"}}"#, i + 1)
        })
        .collect();
    let body = format!(
        r#"{{"value":[{{"EntityEventSequence":500,"ResourceName":"Property","ResourceRecordKey":"K1"}},{}]}}"#,
        many.join(",")
    );
    let response = bridge.post(&body).await;
    assert_eq!(response.status(), 400);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/value/1/ResourceName");
    let detail = problem["errors"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("Topic0") && detail.contains("extra_resource_names"),
        "{detail}"
    );
    // A name with a control character is refused by the parser, whatever the sink.
    let control = r#"{"value":[{"EntityEventSequence":1,"ResourceName":"Prop\u0007erty","ResourceRecordKey":"K1"}]}"#;
    let response = bridge.post(control).await;
    assert_eq!(response.status(), 400);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/value/0/ResourceName");

    assert_nothing_published_before_marker(&bridge, format!("{prefix}.Property")).await;
    assert_eq!(
        topics_with_prefix(&prefix),
        vec![format!("{prefix}.Property")]
    );
    bridge.stop().await;

    // Vendor resources are named in extra_resource_names; `any` is capped in distinct names.
    let prefix = unique("it-names-any");
    let sink = TestBridge::kafka_sink(
        &prefix,
        "resource_names = \"any\"\nmax_resource_names = 2\n",
    );
    let bridge = TestBridge::start("", &sink).await;
    let two = r#"{"value":[{"EntityEventSequence":1,"ResourceName":"X_One","ResourceRecordKey":"K1"},{"EntityEventSequence":2,"ResourceName":"X_Two","ResourceRecordKey":"K1"}]}"#;
    assert_eq!(bridge.post(two).await.status(), 200);
    let third = r#"{"value":[{"EntityEventSequence":3,"ResourceName":"X_Three","ResourceRecordKey":"K1"}]}"#;
    let response = bridge.post(third).await;
    assert_eq!(response.status(), 400);
    let problem: serde_json::Value = response.json().await.unwrap();
    let detail = problem["errors"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("max_resource_names = 2"), "{detail}");
    assert_eq!(
        bridge.post(two).await.status(),
        200,
        "known names still pass"
    );
    let mut topics = topics_with_prefix(&prefix);
    topics.sort();
    assert_eq!(
        topics,
        vec![format!("{prefix}.X_One"), format!("{prefix}.X_Two")]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn body_limit_is_413() {
    require_kafka();
    let prefix = unique("it-limit");
    let bridge = TestBridge::start(
        "max_body_bytes = 200\nmax_in_flight_bytes = 1000",
        &TestBridge::kafka_sink(&prefix, ""),
    )
    .await;
    let big = format!(
        r#"{{"value":[{{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"K1","Data":"{}"}}]}}"#,
        "x".repeat(300)
    );
    let response = bridge.post(&big).await;
    assert_eq!(response.status(), 413);
    assert_nothing_published_before_marker(&bridge, format!("{prefix}.Property")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_broker_is_503_with_retry_after_never_200() {
    // Port 1 on loopback: nothing listens, connections are refused.
    let sink =
        "type = \"kafka\"\nbootstrap_servers = \"127.0.0.1:1\"\ndelivery_timeout_ms = 1500\n";
    let bridge = TestBridge::start("unavailable_retry_after_seconds = 7", sink).await;
    let started = Instant::now();
    let response = bridge.post(GUIDE_BATCH).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "7");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded: {:?}",
        started.elapsed()
    );
    let ready = reqwest::get(format!("{}/readyz", bridge.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_topic_that_cannot_be_created_is_503_within_delivery_timeout() {
    require_kafka();
    let prefix = unique("it-nocreate");
    let sink = TestBridge::kafka_sink(&prefix, "create_topics = false\ndelivery_timeout_ms = 2000");
    let bridge = TestBridge::start("", &sink).await;
    let started = Instant::now();
    let response = bridge.post(GUIDE_BATCH).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "bounded: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn overload_is_429_with_retry_after() {
    require_kafka();
    let prefix = unique("it-overload");
    let bridge = TestBridge::start(
        "max_in_flight_requests = 1\noverload_retry_after_seconds = 3",
        &TestBridge::kafka_sink(&prefix, ""),
    )
    .await;
    // Hold the only request slot: headers sent, body still coming.
    let slow = start_slow_push(&bridge, 1000, b"{\"value\":[").await;
    let response = bridge.post(GUIDE_BATCH).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3");
    drop(slow);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints() {
    require_kafka();
    let prefix = unique("it-admin");
    let bridge = TestBridge::start("", &TestBridge::kafka_sink(&prefix, "")).await;
    let health = reqwest::get(format!("{}/healthz", bridge.admin))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(format!("{}/readyz", bridge.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["connectors"]["it"], "ready");
    let metrics = bridge.metrics().await;
    assert_eq!(
        metric(&metrics, "entity_bridge_sink_ready{connector=\"it\"}"),
        Some(1.0)
    );
    // The webhook port does not serve admin paths.
    let not_here = reqwest::get(bridge.webhook.replace("/webhooks/it", "/metrics"))
        .await
        .unwrap();
    assert_eq!(not_here.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_finishes_in_flight_push_then_stops_accepting() {
    require_kafka();
    let prefix = unique("it-drain");
    let bridge = TestBridge::start("", &TestBridge::kafka_sink(&prefix, "")).await;
    let body = r#"{"value":[{"EntityEventSequence":5,"ResourceName":"Property","ResourceRecordKey":"D1"}]}"#;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut slow = start_slow_push(&bridge, body.len(), &body.as_bytes()[..10]).await;
    let webhook = bridge.webhook.clone();
    let stopping = tokio::spawn(bridge.stop());
    // New connections are refused once the listener has stopped accepting.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::Client::new().post(&webhook).send().await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "listener kept accepting during shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The push already in flight still gets its real answer.
    slow.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("{\"accepted\":1}"), "{answer}");
    assert!(stopping.await.unwrap(), "clean shutdown");
    let topic = format!("{prefix}.Property");
    let got = tokio::task::spawn_blocking(move || consume_n(&[&topic], 1))
        .await
        .unwrap();
    assert_eq!(got[0].key().unwrap(), b"D1");
}

/// Opens a push whose body is still arriving (`content_length` announced, `first` sent) and
/// waits until the bridge counts it in flight.
async fn start_slow_push(
    bridge: &TestBridge,
    content_length: usize,
    first: &[u8],
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = bridge
        .webhook
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /webhooks/it HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\nconnection: close\r\ncontent-length: {content_length}\r\n\r\n"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(first).await.unwrap();
    let series = "entity_bridge_requests_in_flight{connector=\"it\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&bridge.metrics().await, series) != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "slow request never became in-flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    slow
}
