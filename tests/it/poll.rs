//! Poll sources against a real local producer ([`crate::producer`]): a RESO `EntityEvent`
//! resource into Kafka (OAuth2, `@odata.nextLink`, 429 + `Retry-After`, a page that breaks off
//! halfway, an invalid event dead-lettered alone), an events-after-sequence API into RabbitMQ
//! (mapping, unknown types, deletes, full and short pages), and a restart in the middle of a
//! feed into the embedded log (nothing lost, nothing twice).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Message as _;
use serde_json::{json, Value};

use crate::amqp::Rabbit;
use crate::common::*;
use crate::embedded::Setup;
use crate::producer::{poll_source, Misbehave, Producer};
use crate::receiver::OAuthPeer;

const CLIENT_SECRET: &str = "cs-7f3a9c1e5b-secret";
/// base64 of `bridge-client:cs-7f3a9c1e5b-secret`.
const CLIENT_BASIC: &str = "YnJpZGdlLWNsaWVudDpjcy03ZjNhOWMxZTViLXNlY3JldA==";

/// Waits until `series` in the bridge's metrics reaches `value`.
async fn wait_metric_at_least(admin: &str, series: &str, value: f64, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let text = reqwest::get(format!("{admin}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let now = metric(&text, series).unwrap_or(0.0);
        if now >= value {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {now}, expected at least {value}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reso_poll_into_kafka_pages_politely_and_dead_letters_only_the_bad_event() {
    require_kafka();
    let peer = Arc::new(OAuthPeer {
        issued: Mutex::new(Vec::new()),
        revoked: Mutex::new(Vec::new()),
        lifetimes: vec![Duration::from_secs(3600)],
        client_basic: CLIENT_BASIC.into(),
    });
    let (token_url, _token_task) = peer.start_token_endpoint().await;
    let producer = Producer::start(3, Some(peer.clone())).await;
    producer.add_reso(1..=4);
    // Sequence 5 lacks its ResourceRecordKey: dead-lettered alone.
    producer
        .state
        .events
        .lock()
        .unwrap()
        .push(json!({"EntityEventSequence": 5, "ResourceName": "Property"}));
    producer.add_reso(6..=8);
    // The first request is throttled for a second; the second page breaks off halfway.
    producer.script(&[
        Misbehave::Throttle(1),
        Misbehave::Pass,
        Misbehave::BreakHalfway,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
    let prefix = unique("it-poll");
    let dlq = unique("it-poll-dlq");
    let bridge = TestBridge::start_connector(&format!(
        r#"
[source]
type = "reso_poll"
url = "{base}/odata/EntityEvent"
page_size = 100
idle_interval_ms = 200
auth = {{ type = "oauth2", token_url = "{token_url}", client_id = "bridge-client", client_secret = {{ file = {secret:?} }} }}
[source.limits]
requests_per_second = 50
[source.dead_letter]
type = "kafka"
bootstrap_servers = "{kafka}"
topic = "{dlq}"

[sink]
{sink}
"#,
        base = producer.base,
        secret = secret.display().to_string(),
        kafka = kafka(),
        sink = TestBridge::kafka_sink(&prefix, "").trim_start(),
    ))
    .await;
    let series = "entity_bridge_poll_checkpoint{connector=\"it\"}";
    wait_metric_at_least(&bridge.admin, series, 8.0, Duration::from_secs(30)).await;

    let topic = format!("{prefix}.Property");
    let seen = tokio::task::spawn_blocking(move || consume_n(&[&topic], 7))
        .await
        .unwrap();
    let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for m in &seen {
        let event: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        by_key
            .entry(key)
            .or_default()
            .push(event["EntityEventSequence"].as_i64().unwrap());
    }
    let expected: BTreeMap<String, Vec<i64>> = [
        ("K0".to_owned(), vec![3, 6]),
        ("K1".to_owned(), vec![1, 4, 7]),
        ("K2".to_owned(), vec![2, 8]),
    ]
    .into();
    assert_eq!(by_key, expected, "every valid event once, in order per key");
    let dead = tokio::task::spawn_blocking(move || consume_n(&[&dlq], 1))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0], "dead_letter_reason").as_deref(),
        Some("unparseable")
    );
    let reason = header(&dead[0], "dead_letter_detail").unwrap();
    assert!(reason.contains("/ResourceRecordKey"), "{reason}");

    let requests = producer.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.2).collect();
    assert_eq!(statuses[0], 429, "{requests:?}");
    // Retry-After: 1 was honoured before asking again.
    assert!(
        requests[1].0 - requests[0].0 >= Duration::from_millis(950),
        "{requests:?}"
    );
    assert!(
        requests[1].1.contains("$filter=EntityEventSequence gt 0"),
        "{requests:?}"
    );
    assert!(
        requests.iter().any(|r| r.1.contains("$skiptoken=3")),
        "nextLink followed: {requests:?}"
    );
    assert_eq!(
        peer.issued.lock().unwrap().len(),
        1,
        "one token for the whole feed"
    );
    let gzipped = producer
        .state
        .gzipped_pages
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        gzipped >= 3,
        "pages asked for and read gzip-compressed: {gzipped}"
    );
    let metrics = bridge.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "entity_bridge_producer_requests_total{connector=\"it\",role=\"poll\",status=\"429\"}"
        ),
        Some(1.0)
    );
    assert!(
        metric(&metrics, "entity_bridge_producer_requests_total{connector=\"it\",role=\"poll\",status=\"error\"}")
            .unwrap_or(0.0)
            >= 1.0,
        "the broken page was counted and retried"
    );
    assert_eq!(
        metric(
            &metrics,
            "entity_bridge_poll_events_total{connector=\"it\",outcome=\"invalid\"}"
        ),
        Some(1.0)
    );
    assert!(bridge.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn events_poll_into_rabbitmq_maps_events_passes_new_types_and_marks_deletes() {
    let mut rabbit = Rabbit::new().await;
    let exchange = rabbit.exchange("it-poll-x");
    let queue = rabbit.queue("it-poll-q");
    let dead_exchange = rabbit.exchange("it-poll-dlx");
    let producer = Producer::start(100, None).await;
    {
        let mut events = producer.state.api_events.lock().unwrap();
        let mut add = |seq: i64, kind: &str, id: &str, resource: Value| {
            events.push(json!({
                "id": format!("e{seq}"), "sequenceId": seq, "eventType": kind,
                "resourceType": kind.split('/').next().unwrap(), "resourceId": id,
                "resource": resource, "previousValues": {"title": "before"},
                "createdAt": "2020-11-27T12:30:02.000Z",
            }));
        };
        add(
            101,
            "listing/created",
            "L1",
            json!({"id": "L1", "title": "Bike"}),
        );
        add(
            102,
            "listing/updated",
            "L1",
            json!({"id": "L1", "title": "Red bike"}),
        );
        add(105, "shipment/created", "S1", json!({"id": "S1"}));
        add(106, "listing/deleted", "L1", Value::Null);
        add(109, "user/created", "U1", json!({"id": "U1"}));
    }
    let dead_letter_url = format!(
        "{} }}",
        rabbit
            .url_line
            .replacen("url_file = ", "url = { file = ", 1)
    );
    let bridge = TestBridge::start_connector(&format!(
        r#"
[source]
type = "events_poll"
url = "{base}/events/query"
page_size = 2
idle_interval_ms = 60000
start = 100
[source.limits]
requests_per_second = 50
[source.dead_letter]
type = "amqp"
{dead_letter_url}
exchange = "{dead_exchange}"

[sink]
type = "amqp"
{url_line}
exchange = "{exchange}"
routing_key_template = "flex.{{ResourceName}}"
resource_names = "any"
[[sink.topology.queues]]
name = "{queue}"
[[sink.topology.bindings]]
queue = "{queue}"
exchange = "{exchange}"
routing_key = "flex.#"
"#,
        base = producer.base,
        url_line = rabbit.url_line,
    ))
    .await;
    rabbit.wait_ready_count(&queue, 5).await;
    let mut got = Vec::new();
    while let Some(m) = rabbit.get(&queue).await {
        got.push(serde_json::from_slice::<Value>(&m.delivery.data).unwrap());
    }
    let sequences: Vec<i64> = got
        .iter()
        .map(|e| e["EntityEventSequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences, vec![101, 102, 105, 106, 109]);
    assert_eq!(got[1]["ResourceName"], "listing");
    assert_eq!(got[1]["ResourceRecordKey"], "L1");
    assert_eq!(got[1]["EntityEventType"], "listing/updated");
    assert_eq!(got[1]["Data"]["title"], "Red bike");
    assert_eq!(
        got[1]["@EntityBridge.OriginalEvent"]["previousValues"]["title"], "before",
        "the producer's event is kept whole"
    );
    assert_eq!(
        got[2]["EntityEventType"], "shipment/created",
        "a type nobody listed passes"
    );
    assert_eq!(got[3]["@EntityBridge.Deleted"], true);
    assert!(got[3].get("Data").is_none());

    // Pages of 2, 2 and 1: the short page means caught up, so no request for a while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let requests = producer.requests();
    let queries: Vec<&str> = requests.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(
        queries,
        vec![
            "/events/query?startAfterSequenceId=100&perPage=2",
            "/events/query?startAfterSequenceId=102&perPage=2",
            "/events/query?startAfterSequenceId=106&perPage=2",
        ]
    );
    assert!(bridge.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_in_the_middle_of_a_feed_resumes_from_the_checkpoint() {
    require_kafka();
    let producer = Producer::start(5, None).await;
    producer.add_reso(1..=40);
    let setup = Setup::new(&[]);
    let connector = format!(
        r#"
[source]
type = "reso_poll"
url = "{base}/odata/EntityEvent"
page_size = 5
idle_interval_ms = 200
[source.limits]
requests_per_second = 4
[source.dead_letter]
type = "kafka"
bootstrap_servers = "{kafka}"
topic = "{dlq}"

[sink]
type = "embedded"
replay_tokens = [{{ file = {token:?} }}]
"#,
        base = producer.base,
        kafka = kafka(),
        dlq = unique("it-poll-restart-dlq"),
        token = setup.path("token").display().to_string(),
    );
    setup.write_connector("feed", &connector);
    let series = "entity_bridge_poll_checkpoint{connector=\"feed\"}";
    let bridge = setup.start().await;
    let reached = wait_metric_at_least(&bridge.admin, series, 10.0, Duration::from_secs(30)).await;
    assert!(
        reached < 40.0,
        "stopped in the middle of the feed ({reached})"
    );
    bridge.stop().await;
    let stored: Value = serde_json::from_slice(
        &std::fs::read(setup.path("data/poll/feed.checkpoint.json")).unwrap(),
    )
    .unwrap();
    let checkpoint = stored["sequence"].as_i64().unwrap();
    assert!((10..40).contains(&checkpoint), "{stored}");

    let first_requests = producer.requests().len();
    let bridge = setup.start().await;
    wait_metric_at_least(&bridge.admin, series, 40.0, Duration::from_secs(60)).await;
    let resumed = &producer.requests()[first_requests];
    assert!(
        resumed
            .1
            .contains(&format!("EntityEventSequence gt {checkpoint}")),
        "resumed after the checkpoint: {resumed:?}"
    );
    let (status, body) = bridge.replay("?$count=true&$top=100").await;
    assert_eq!(status, 200);
    let sequences: Vec<i64> = body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["@EntityBridge.SourceEntityEventSequence"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        sequences,
        (1..=40).collect::<Vec<_>>(),
        "nothing lost, nothing twice"
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hydration_fills_data_turns_gone_records_into_tombstones_and_dead_letters_failures() {
    require_kafka();
    let producer = Producer::start(100, None).await;
    {
        let mut events = producer.state.events.lock().unwrap();
        let thin = |s: i64, key: &str| json!({"EntityEventSequence": s, "ResourceName": "Property", "ResourceRecordKey": key});
        events.push(thin(1, "K1"));
        events.push(thin(2, "K2"));
        events.push(thin(3, "K1"));
        // A URL a producer names elsewhere is never fetched: the template is used instead.
        let mut foreign = thin(4, "K'5");
        foreign["ResourceRecordUrl"] = json!("http://169.254.169.254/latest/meta-data");
        events.push(foreign);
        events.push(thin(5, "K9"));
        events.push(json!({"EntityEventSequence": 6, "ResourceName": "Property",
            "ResourceRecordKey": "K0", "Data": {"inline": true}}));
    }
    {
        let mut records = producer.state.records.lock().unwrap();
        records.insert(
            "Property('K1')".into(),
            json!({"ListingKey": "K1", "ListPrice": 1}),
        );
        records.insert(
            "Property('K''5')".into(),
            json!({"ListingKey": "K'5", "ListPrice": 5}),
        );
        records.insert("Property('K9')".into(), json!("fail"));
    }
    producer
        .state
        .record_script
        .lock()
        .unwrap()
        .push_back(Misbehave::Throttle(1));
    let prefix = unique("it-hydrate");
    let dlq = unique("it-hydrate-dlq");
    let source = poll_source(
        "reso_poll",
        &format!("{}/odata/EntityEvent", producer.base),
        60_000,
        &dlq,
        "",
    );
    let bridge = TestBridge::start_connector(&format!(
        r#"
{source}
[sink]
{sink}

[retry]
min_backoff_ms = 20
max_backoff_ms = 100

[hydrate]
url_template = "{base}/odata/{{ResourceName}}('{{ResourceRecordKey}}')"
max_attempts = 3
[hydrate.limits]
requests_per_second = 100
"#,
        base = producer.base,
        sink = TestBridge::kafka_sink(&prefix, "").trim_start(),
    ))
    .await;
    let series = "entity_bridge_poll_checkpoint{connector=\"it\"}";
    wait_metric_at_least(&bridge.admin, series, 6.0, Duration::from_secs(30)).await;

    let topic = format!("{prefix}.Property");
    let seen = tokio::task::spawn_blocking(move || consume_n(&[&topic], 5))
        .await
        .unwrap();
    let mut by_sequence = BTreeMap::new();
    for m in &seen {
        let sequence: i64 = header(m, "EntityEventSequence").unwrap().parse().unwrap();
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        let value = m
            .payload()
            .map(|p| serde_json::from_slice::<Value>(p).unwrap());
        by_sequence.insert(sequence, (key, value));
    }
    assert_eq!(
        by_sequence.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 6],
        "5 failed and was dead-lettered"
    );
    assert_eq!(by_sequence[&1].1.as_ref().unwrap()["Data"]["ListPrice"], 1);
    assert_eq!(by_sequence[&3].1.as_ref().unwrap()["Data"]["ListPrice"], 1);
    assert_eq!(by_sequence[&4].1.as_ref().unwrap()["Data"]["ListPrice"], 5);
    assert_eq!(
        by_sequence[&6].1.as_ref().unwrap()["Data"],
        json!({"inline": true})
    );
    assert_eq!(
        by_sequence[&2],
        ("K2".to_owned(), None),
        "a tombstone for the gone record"
    );

    let dead = tokio::task::spawn_blocking(move || consume_n(&[&dlq], 1))
        .await
        .unwrap();
    assert_eq!(
        header(&dead[0], "EntityEventSequence").as_deref(),
        Some("5")
    );
    assert_eq!(
        header(&dead[0], "dead_letter_reason").as_deref(),
        Some("rejected")
    );

    let asked = producer.state.record_requests.lock().unwrap().clone();
    assert_eq!(asked[0].1, 429, "{asked:?}");
    assert_eq!(
        asked.iter().filter(|(e, _)| e == "Property('K9')").count(),
        3,
        "max_attempts: {asked:?}"
    );
    assert!(
        asked
            .iter()
            .any(|(e, s)| e == "Property('K''5')" && *s == 200),
        "{asked:?}"
    );
    let metrics = bridge.metrics().await;
    // Counted per event, once: the pump sends the events around the failed one again (and
    // the 429 made the first send fail), which does not count them again.
    for (outcome, events) in [("fetched", 3.0), ("gone", 1.0), ("failed", 1.0)] {
        let series =
            format!("entity_bridge_hydration_total{{connector=\"it\",outcome=\"{outcome}\"}}");
        let n = metric(&metrics, &series).unwrap_or(0.0);
        assert_eq!(n, events, "{outcome}");
    }
    assert_eq!(
        metric(&metrics, "entity_bridge_producer_requests_total{connector=\"it\",role=\"hydrate\",status=\"429\"}"),
        Some(1.0)
    );
    assert!(bridge.stop().await);
}

/// Hydration on webhook ingress into the embedded log: thin pushes are stored with their
/// records, a gone record as a delete-marked event, and a record that cannot be fetched makes
/// the push a 503 (the producer retries it), with nothing of it stored.
#[tokio::test(flavor = "multi_thread")]
async fn hydrated_pushes_into_the_embedded_log_store_records_and_deletes() {
    let producer = Producer::start(100, None).await;
    {
        let mut records = producer.state.records.lock().unwrap();
        records.insert(
            "Property('A')".into(),
            json!({"ListingKey": "A", "ListPrice": 7}),
        );
        records.insert("Property('F')".into(), json!("fail"));
    }
    let sink = format!(
        "type = \"embedded\"\n\n[retry]\nmin_backoff_ms = 10\nmax_backoff_ms = 20\n\n\
         [hydrate]\nurl_template = \"{}/odata/{{ResourceName}}('{{ResourceRecordKey}}')\"\nmax_attempts = 2\n",
        producer.base
    );
    let bridge = TestBridge::start("", &sink).await;
    let push = |events: &str| format!(r#"{{"value":[{events}]}}"#);
    let r = bridge
        .post(&push(
            r#"{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"A"},
               {"EntityEventSequence":2,"ResourceName":"Property","ResourceRecordKey":"B"}"#,
        ))
        .await;
    assert_eq!(r.status(), 200);
    let r = bridge
        .post(&push(
            r#"{"EntityEventSequence":3,"ResourceName":"Property","ResourceRecordKey":"F"}"#,
        ))
        .await;
    assert_eq!(
        r.status(),
        503,
        "a record that cannot be fetched: retry later"
    );
    let base = bridge.webhook.trim_end_matches("/webhooks/it");
    let (status, body) = crate::embedded::get_json(
        &format!("{base}/EntityEvent?$top=10"),
        Some(crate::common::TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let events = body["value"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{body}");
    assert_eq!(events[0]["Data"]["ListPrice"], 7);
    assert_eq!(events[1]["@EntityBridge.Deleted"], true);
    assert!(events[1].get("Data").is_none());
    assert!(bridge.stop().await);
}

/// `start = "latest"` asks for the newest event once and delivers only what follows it.
#[tokio::test(flavor = "multi_thread")]
async fn a_feed_started_at_latest_skips_what_the_producer_already_had() {
    require_kafka();
    let producer = Producer::start(100, None).await;
    producer.add_reso(1..=10);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let bridge = TestBridge::start_connector(&format!(
        r#"
[source]
type = "reso_poll"
url = "{base}/odata/EntityEvent"
start = "latest"
idle_interval_ms = 100
[source.limits]
requests_per_second = 50
[source.dead_letter]
type = "kafka"
bootstrap_servers = "{kafka}"
topic = "{dlq}"

[sink]
type = "embedded"
replay_tokens = [{{ file = {token:?} }}]
"#,
        base = producer.base,
        kafka = kafka(),
        dlq = unique("it-poll-latest-dlq"),
        token = token.display().to_string(),
    ))
    .await;
    let series = "entity_bridge_poll_checkpoint{connector=\"it\"}";
    wait_metric_at_least(&bridge.admin, series, 10.0, Duration::from_secs(30)).await;
    producer.add_reso(11..=13);
    wait_metric_at_least(&bridge.admin, series, 13.0, Duration::from_secs(30)).await;
    let base = bridge.webhook.trim_end_matches("/webhooks/it");
    let (status, body) =
        crate::embedded::get_json(&format!("{base}/EntityEvent?$top=100"), Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let sequences: Vec<i64> = body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["@EntityBridge.SourceEntityEventSequence"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(sequences, vec![11, 12, 13]);
    let first = &producer.requests()[0].1;
    assert!(
        first.contains("$orderby=EntityEventSequence desc"),
        "{first}"
    );
    assert!(bridge.stop().await);
}

/// Regression (review): while the record API failed for every record, a pull source
/// dead-lettered the whole page event by event. An outage is now retried in place: nothing is
/// dead-lettered, and the page is delivered whole once the API is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_api_outage_is_retried_not_dead_lettered() {
    require_kafka();
    let producer = Producer::start(100, None).await;
    {
        let mut events = producer.state.events.lock().unwrap();
        let mut records = producer.state.records.lock().unwrap();
        for s in 1..=3 {
            events.push(json!({"EntityEventSequence": s, "ResourceName": "Property", "ResourceRecordKey": format!("R{s}")}));
            records.insert(format!("Property('R{s}')"), json!("fail"));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let dlq = unique("it-hydrate-outage-dlq");
    let source = poll_source(
        "reso_poll",
        &format!("{}/odata/EntityEvent", producer.base),
        100,
        &dlq,
        "",
    );
    let bridge = TestBridge::start_connector(&format!(
        r#"
{source}
[sink]
type = "embedded"
replay_tokens = [{{ file = {token:?} }}]

[retry]
min_backoff_ms = 20
max_backoff_ms = 50

[hydrate]
url_template = "{base}/odata/{{ResourceName}}('{{ResourceRecordKey}}')"
max_attempts = 2
[hydrate.limits]
requests_per_second = 1000
"#,
        base = producer.base,
        token = token.display().to_string(),
    ))
    .await;
    // Three sends of three failing records: every record asked three times.
    let errors =
        "entity_bridge_producer_requests_total{connector=\"it\",role=\"hydrate\",status=\"500\"}";
    wait_metric_at_least(&bridge.admin, errors, 9.0, Duration::from_secs(30)).await;
    let failed = "entity_bridge_hydration_total{connector=\"it\",outcome=\"failed\"}";
    assert_eq!(
        metric(&bridge.metrics().await, failed).unwrap_or(0.0),
        0.0,
        "an outage refuses no event for good"
    );
    let checkpoint = "entity_bridge_poll_checkpoint{connector=\"it\"}";
    assert_eq!(
        metric(&bridge.metrics().await, checkpoint).unwrap_or(0.0),
        0.0
    );
    {
        let mut records = producer.state.records.lock().unwrap();
        for s in 1..=3 {
            records.insert(
                format!("Property('R{s}')"),
                json!({"ListingKey": format!("R{s}")}),
            );
        }
    }
    wait_metric_at_least(&bridge.admin, checkpoint, 3.0, Duration::from_secs(30)).await;
    let base = bridge.webhook.trim_end_matches("/webhooks/it");
    let (_, body) =
        crate::embedded::get_json(&format!("{base}/EntityEvent?$top=10"), Some(TOKEN)).await;
    let keys: Vec<&str> = body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Data"]["ListingKey"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        vec!["R1", "R2", "R3"],
        "delivered whole, with records"
    );
    let dead = tokio::task::spawn_blocking(move || {
        consume_until(&[&dlq], Duration::from_secs(2), |s| !s.is_empty())
    })
    .await
    .unwrap();
    assert!(dead.is_empty(), "nothing dead-lettered during the outage");
    assert!(bridge.stop().await);
}
