//! Egress against the real Kafka-protocol broker and real local HTTP consumers: Kafka source →
//! webhook sink. Each test uses its own topics and consumer group.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::common::*;
use crate::receiver::{Received, Receiver};

const PUSH_TOKEN: &str = "egress-token-81d7e0";

/// Creates `topic` with `partitions` partitions (tansu does not auto-create).
pub async fn create_topic(topic: &str, partitions: i32) {
    create_topic_on(&kafka(), topic, partitions).await
}

/// [`create_topic`] on the broker at `bootstrap`.
pub async fn create_topic_on(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .expect("create topic");
    for r in results {
        r.expect("topic created");
    }
}

/// A raw event with odd spacing (to prove bytes are passed through) and `pad` bytes of data.
pub fn event(key: &str, seq: i64, pad: usize) -> String {
    format!(
        r#"{{"EntityEventSequence": {seq},  "ResourceName":"Property","ResourceRecordKey":"{key}","Data":{{"Pad":"{}"}}}}"#,
        "x".repeat(pad)
    )
}

/// Produces records the way the Kafka sink writes them (key, headers, raw value).
///
/// One record per record batch: tansu 0.6 (memory storage) answers a fetch whose offset lies
/// *inside* a multi-record batch with no data, so a consumer restarting from a committed offset
/// in the middle of a batch would stall there. Apache Kafka returns the enclosing batch.
pub async fn produce(topic: &str, records: &[(String, i64, String)], label: Option<&str>) {
    produce_on(&kafka(), topic, records, label).await
}

/// [`produce`] to the broker at `bootstrap`.
pub async fn produce_on(
    bootstrap: &str,
    topic: &str,
    records: &[(String, i64, String)],
    label: Option<&str>,
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    let sends = records.iter().map(|(key, seq, raw)| {
        let seq = seq.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "EntityEventSequence",
                value: Some(seq.as_bytes()),
            })
            .insert(Header {
                key: "ResourceName",
                value: Some("Property".as_bytes()),
            });
        if let Some(label) = label {
            headers = headers.insert(Header {
                key: "EntityEventSource",
                value: Some(label.as_bytes()),
            });
        }
        let record = FutureRecord::to(topic)
            .key(key.as_str())
            .payload(raw.as_str())
            .headers(headers);
        producer.send(record, Duration::from_secs(15))
    });
    for r in futures::future::join_all(sends).await {
        r.expect("produced");
    }
}

/// Events `seq` 1..=per_key for each of `keys` keys, interleaved, with varying sizes.
pub fn keyed_events(prefix: &str, keys: usize, per_key: i64) -> Vec<(String, i64, String)> {
    let mut out = Vec::new();
    for seq in 1..=per_key {
        for k in 0..keys {
            let key = format!("{prefix}-{k}");
            let pad = (k * 37 + seq as usize * 53) % 300;
            out.push((key.clone(), seq, event(&key, seq, pad)));
        }
    }
    out
}

/// Everything a connector needs; `sink_extra` lands in `[sink]`, `source_extra` in `[source]`.
pub struct Egress {
    pub topic: String,
    pub group: String,
    pub dlq: String,
    pub url: String,
    pub token_file: std::path::PathBuf,
    pub source_extra: String,
    pub sink_extra: String,
}

impl Egress {
    pub fn new(prefix: &str, url: &str, dir: &tempfile::TempDir) -> Egress {
        let token_file = dir.path().join("push-token");
        std::fs::write(&token_file, format!("{PUSH_TOKEN}\n")).unwrap();
        Egress {
            topic: unique(prefix),
            group: unique(&format!("{prefix}-group")),
            dlq: unique(&format!("{prefix}-dlq")),
            url: url.to_owned(),
            token_file,
            source_extra: String::new(),
            sink_extra: String::new(),
        }
    }

    pub fn toml(&self) -> String {
        format!(
            r#"
[source]
type = "kafka"
bootstrap_servers = "{kafka}"
group_id = "{group}"
topics = ["{topic}"]
commit_interval_ms = 200
statistics_interval_ms = 500
{source_extra}

[sink]
type = "webhook"
url = "{url}"
linger_ms = 20
auth = {{ type = "token", token = {{ file = {token:?} }} }}
{sink_extra}

[sink.retry]
min_backoff_ms = 20
max_backoff_ms = 200

[sink.dead_letter]
type = "kafka"
bootstrap_servers = "{kafka}"
topic = "{dlq}"
"#,
            kafka = kafka(),
            group = self.group,
            topic = self.topic,
            source_extra = self.source_extra,
            url = self.url,
            token = self.token_file.display().to_string(),
            sink_extra = self.sink_extra,
            dlq = self.dlq,
        )
    }
}

/// Per key, the sequences in arrival order, from 2xx-answered requests.
pub fn sequences_by_key(requests: &[Received]) -> BTreeMap<String, Vec<i64>> {
    let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in requests.iter().filter(|r| r.status == 200) {
        for (key, seq) in r.keys() {
            by_key.entry(key).or_default().push(seq);
        }
    }
    by_key
}

/// The sum of the group's committed offsets over the partitions of `topic`.
fn committed_sum(group: &str, topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

async fn wait_metric(bridge: &TestBridge, series: &str, want: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let text = bridge.metrics().await;
        if metric(&text, series) == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn delivers_everything_in_key_order_within_batch_limits() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::accepting().await;
    let mut egress = Egress::new("it-egress-order", &receiver.url, &dir);
    // Subscribe by regex (the topic name is unique, so the pattern matches only it).
    egress.sink_extra = "max_events = 7\nmax_bytes = 2000".into();
    create_topic(&egress.topic, 3).await;
    let events = keyed_events("key", 20, 15);
    produce(&egress.topic, &events, Some("Feed A")).await;
    let toml = egress.toml().replace(
        &format!("topics = [\"{}\"]", egress.topic),
        &format!("topics = [\"^{}$\"]", egress.topic),
    );
    let bridge = TestBridge::start_connector(&toml).await;
    receiver
        .wait_delivered(events.len(), Duration::from_secs(60))
        .await;

    let requests = receiver.requests();
    let raw: Vec<&str> = events.iter().map(|(_, _, r)| r.as_str()).collect();
    let mut total = 0;
    for r in &requests {
        let n = r.events().len();
        total += n;
        assert!((1..=7).contains(&n), "max_events: {n}");
        assert!(r.body.len() <= 2000, "max_bytes: {}", r.body.len());
        let body = std::str::from_utf8(&r.body).unwrap();
        assert!(
            body.starts_with(
                r#"{"@reso.context":"urn:reso:metadata:2.0:resource:entityevent","value":["#
            ),
            "{body}"
        );
        // Events are the raw bytes as produced, not re-serialized.
        for (key, seq) in r.keys() {
            let expected = event_raw(&raw, &key, seq);
            assert!(body.contains(expected), "raw event bytes kept");
        }
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {PUSH_TOKEN}").as_str())
        );
        assert_eq!(r.header("entityeventsource"), Some("Feed A"));
        assert!(
            r.header("user-agent")
                .unwrap()
                .starts_with("entity-bridge/"),
            "{:?}",
            r.header("user-agent")
        );
    }
    assert_eq!(total, events.len(), "no duplicates in a clean run");
    for (key, seqs) in sequences_by_key(&requests) {
        assert_eq!(seqs, (1..=15).collect::<Vec<_>>(), "order of {key}");
    }
    // Some POSTs were cut by max_bytes rather than max_events (event sizes vary).
    assert!(requests
        .iter()
        .any(|r| r.events().len() < 7 && r.body.len() > 1500));

    let series =
        "entity_bridge_push_events_delivered_total{connector=\"it\",resource=\"Property\"}";
    assert_eq!(
        metric(&bridge.metrics().await, series),
        Some(events.len() as f64)
    );
    wait_metric(
        &bridge,
        "entity_bridge_consumer_lag{connector=\"it\"}",
        0.0,
        Duration::from_secs(20),
    )
    .await;
    let text = bridge.metrics().await;
    assert!(
        text.contains("entity_bridge_push_requests_total{connector=\"it\",status=\"2xx\"}"),
        "{text}"
    );
    assert!(
        text.contains("entity_bridge_push_batch_events_count{connector=\"it\"}"),
        "{text}"
    );
    assert!(
        text.contains("entity_bridge_push_request_duration_seconds_count"),
        "{text}"
    );

    assert!(bridge.stop().await, "clean shutdown");
    // Everything delivered is committed: a restart would not redeliver.
    let (group, topic) = (egress.group.clone(), egress.topic.clone());
    let committed = tokio::task::spawn_blocking(move || committed_sum(&group, &topic, 3))
        .await
        .unwrap();
    // The topic is new, so the offsets of its partitions add up to the events produced.
    assert_eq!(
        committed,
        events.len() as i64,
        "every delivered event committed"
    );
}

fn event_raw<'a>(raw: &[&'a str], key: &str, seq: i64) -> &'a str {
    let needle = format!(
        r#""EntityEventSequence": {seq},  "ResourceName":"Property","ResourceRecordKey":"{key}""#
    );
    raw.iter()
        .find(|r| r.contains(&needle))
        .expect("known event")
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_seconds_pauses_the_whole_endpoint() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(Box::new(|n, _, _| {
        if n == 0 {
            (429, vec![("retry-after", "2".to_owned())])
        } else {
            (200, vec![])
        }
    }))
    .await;
    let mut egress = Egress::new("it-egress-429", &receiver.url, &dir);
    // Two partitions: the pause must hold the other partition's lane too.
    egress.sink_extra = "max_events = 5\n[sink.limits]\nmax_concurrent_requests = 1".into();
    create_topic(&egress.topic, 2).await;
    let events = keyed_events("k", 6, 4);
    produce(&egress.topic, &events, None).await;
    let bridge = TestBridge::start_connector(&egress.toml()).await;
    receiver
        .wait_delivered(events.len(), Duration::from_secs(60))
        .await;
    let requests = receiver.requests();
    let throttled_at = requests[0].answered_at;
    assert_eq!(requests[0].status, 429);
    for r in &requests[1..] {
        assert!(
            r.at.duration_since(throttled_at) >= Duration::from_secs(2),
            "a request came {:?} after the 429",
            r.at.duration_since(throttled_at)
        );
    }
    // The refused batch was retried as is: its events arrive in order, none lost.
    assert!(
        requests[1..]
            .iter()
            .any(|r| r.status == 200 && r.body == requests[0].body),
        "the refused batch is retried as is"
    );
    let text = bridge.metrics().await;
    assert_eq!(
        metric(
            &text,
            "entity_bridge_push_throttled_total{connector=\"it\",status=\"429\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "entity_bridge_push_retry_after_seconds_sum{connector=\"it\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert!(bridge.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_http_date_is_honoured() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let until = Arc::new(std::sync::Mutex::new(None::<SystemTime>));
    let until_in_script = until.clone();
    let receiver = Receiver::start(Box::new(move |n, _, _| {
        if n == 0 {
            let at = SystemTime::now() + Duration::from_secs(3);
            // HTTP-dates have whole seconds: the pause ends at the formatted second.
            let text = httpdate::fmt_http_date(at);
            *until_in_script.lock().unwrap() = Some(httpdate::parse_http_date(&text).unwrap());
            (503, vec![("retry-after", text)])
        } else {
            (200, vec![])
        }
    }))
    .await;
    let egress = Egress::new("it-egress-date", &receiver.url, &dir);
    create_topic(&egress.topic, 1).await;
    let events = keyed_events("d", 3, 2);
    produce(&egress.topic, &events, None).await;
    let bridge = TestBridge::start_connector(&egress.toml()).await;
    receiver
        .wait_delivered(events.len(), Duration::from_secs(60))
        .await;
    let until = until.lock().unwrap().unwrap();
    let requests = receiver.requests();
    assert_eq!(requests[0].status, 503);
    for r in &requests[1..] {
        assert!(
            r.wall >= until,
            "request at {:?}, before the Retry-After date {:?}",
            r.wall,
            until
        );
    }
    assert!(bridge.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_zero_still_backs_off_exponentially() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    // Regression: `Retry-After: 0` was honoured literally, about 35 POSTs a second forever.
    let receiver = Receiver::start(Box::new(|n, _, _| {
        if n < 6 {
            (429, vec![("retry-after", "0".to_owned())])
        } else {
            (200, vec![])
        }
    }))
    .await;
    let egress = Egress::new("it-egress-ra0", &receiver.url, &dir);
    create_topic(&egress.topic, 1).await;
    let events = keyed_events("z", 1, 2);
    produce(&egress.topic, &events, None).await;
    let bridge = TestBridge::start_connector(&egress.toml()).await;
    receiver
        .wait_delivered(events.len(), Duration::from_secs(60))
        .await;
    let requests = receiver.requests();
    // The backoff of the test connector doubles from 20 ms to 200 ms.
    let floors = [20u64, 40, 80, 160, 200, 200];
    for (pair, floor) in requests.windows(2).zip(floors) {
        let gap = pair[1].at.duration_since(pair[0].answered_at);
        assert!(
            gap >= Duration::from_millis(floor - 3),
            "a retry came {gap:?} after a `Retry-After: 0`, under the {floor} ms backoff"
        );
    }
    assert!(bridge.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn request_rate_stays_within_the_limit() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::accepting().await;
    let mut egress = Egress::new("it-egress-rate", &receiver.url, &dir);
    egress.sink_extra =
        "max_events = 1\n[sink.limits]\nrequests_per_second = 10\nmax_concurrent_requests = 8"
            .into();
    create_topic(&egress.topic, 4).await;
    let events = keyed_events("r", 8, 4);
    produce(&egress.topic, &events, None).await;
    let bridge = TestBridge::start_connector(&egress.toml()).await;
    receiver
        .wait_delivered(events.len(), Duration::from_secs(60))
        .await;
    let arrivals: Vec<Instant> = receiver.requests().iter().map(|r| r.at).collect();
    assert_eq!(arrivals.len(), 32);
    // Tolerance: the limiter spaces requests 100 ms apart (no burst), so any 1 s window holds
    // at most 10 + 1 (window edges) requests, and the overall rate is at most 10/s + 5 %.
    let span = arrivals[arrivals.len() - 1]
        .duration_since(arrivals[0])
        .as_secs_f64();
    let rate = (arrivals.len() - 1) as f64 / span;
    assert!(rate <= 10.5, "measured {rate:.2} requests/s");
    for (i, start) in arrivals.iter().enumerate() {
        let in_window = arrivals[i..]
            .iter()
            .take_while(|a| a.duration_since(*start) < Duration::from_secs(1))
            .count();
        assert!(in_window <= 11, "{in_window} requests within one second");
    }
    assert!(
        rate >= 7.0,
        "the limit is not needlessly strict: {rate:.2}/s"
    );
    assert!(bridge.stop().await);
}
