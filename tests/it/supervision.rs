//! Supervised connectors against real brokers: a task that panics is restarted and loses
//! nothing, a Kafka lane that dies restarts its source, and `/readyz` follows an egress
//! connector's consumer (gating or only reporting).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use entity_bridge::amqp::AmqpSourceConfig;
use entity_bridge::connector::Source;
use entity_bridge::dead_letter::DeadLetterConfig;
use entity_bridge::kafka::KafkaSourceConfig;
use entity_bridge::metrics::Metrics;
use entity_bridge::runtime::pump::{Pump, RetryConfig};
use entity_bridge::runtime::{supervise, Health, Readiness, Rebuild, Run, State};

use crate::amqp::Rabbit;
use crate::common::*;
use crate::egress::{create_topic, event, produce, Egress};
use crate::fakes::{Act, ScriptedSink};
use crate::receiver::Receiver;

fn retry() -> RetryConfig {
    RetryConfig {
        min_backoff_ms: 100,
        max_backoff_ms: 400,
    }
}

fn restarts(metrics: &Metrics, outcome: &str) -> f64 {
    let series = format!(
        "entity_bridge_connector_restarts_total{{connector=\"sup\",outcome=\"{outcome}\"}}"
    );
    metric(&metrics.encode(), &series).unwrap_or(0.0)
}

/// A sink whose first `send` panics and that accepts everything after.
fn panicking_on_first_send() -> Arc<ScriptedSink> {
    Arc::new(ScriptedSink::new(Box::new(|n, _| {
        if n == 0 {
            Act::Panic
        } else {
            Act::Accept
        }
    })))
}

/// Supervises the task `make` builds (first run and every rebuild), as the app does.
fn supervised(
    make: Arc<dyn Fn(CancellationToken) -> Run + Send + Sync>,
    health: &Health,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let first = make(cancel.clone());
    let rebuild: Rebuild = Box::new(move |cancel| {
        let run = make(cancel);
        async move { Ok(run) }.boxed()
    });
    supervise(
        health.clone(),
        retry(),
        metrics.clone(),
        first,
        rebuild,
        cancel.clone(),
    )
}

/// Regression: a pump whose sink panicked died silently; the queue was never consumed again.
#[tokio::test(flavor = "multi_thread")]
async fn a_panicked_amqp_pump_is_restarted_and_its_batch_redelivered() {
    let mut rabbit = Rabbit::new().await;
    let queue = rabbit.queue("it-sup");
    rabbit.declare_queue(&queue, FieldTable::default()).await;
    for sequence in 1..=5 {
        rabbit
            .publish(
                &queue,
                event(&format!("K{sequence}"), sequence, 0).as_bytes(),
                None,
            )
            .await;
    }
    let config: AmqpSourceConfig = toml::from_str(&format!(
        "{}\nqueues = [\"{queue}\"]\nlinger_ms = 50\n",
        rabbit.url_line
    ))
    .unwrap();
    let metrics = Metrics::new();
    let health = Health::new("sup", Readiness::Gate, metrics.clone());
    let sink = panicking_on_first_send();
    let cancel = CancellationToken::new();
    let make = {
        let (metrics, health, sink) = (metrics.clone(), health.clone(), sink.clone());
        Arc::new(move |cancel: CancellationToken| -> Run {
            let source = config.build("sup", metrics.clone()).unwrap();
            health.set_probe(source.probe());
            let pump = Pump {
                connector: "sup".into(),
                source: Box::new(source),
                sink: sink.clone(),
                retry: retry(),
                metrics: metrics.clone(),
                health: health.clone(),
            };
            pump.run(cancel).boxed()
        })
    };
    let handle = supervised(make, &health, &metrics, &cancel);

    sink.wait_delivered(5, Duration::from_secs(30)).await;
    let mut sequences: Vec<i64> = sink.delivered().iter().map(|(_, s)| *s).collect();
    sequences.sort_unstable();
    assert_eq!(
        sequences,
        [1, 2, 3, 4, 5],
        "the panicked batch came back, once"
    );
    assert_eq!(restarts(&metrics, "panicked"), 1.0);
    let snap = health.snapshot();
    assert_eq!(snap.state, State::Running, "{snap:?}");
    assert!(
        snap.last_error
            .as_deref()
            .unwrap()
            .contains("panicked: scripted panic in send #0"),
        "{snap:?}"
    );
    rabbit.wait_ready_count(&queue, 0).await;
    cancel.cancel();
    handle.await.unwrap();
}

/// Regression: a Kafka lane whose sink panicked was never noticed; its partition's records
/// were dropped with a debug line and never delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_kafka_lane_restarts_its_source_which_redelivers() {
    require_kafka();
    let topic = unique("it-sup-lane");
    create_topic(&topic, 1).await;
    let records: Vec<_> = (1..=5)
        .map(|s| ("K".to_owned(), s, event("K", s, 10)))
        .collect();
    produce(&topic, &records, None).await;
    let config: KafkaSourceConfig = toml::from_str(&format!(
        "bootstrap_servers = \"{}\"\ngroup_id = \"{}\"\ntopics = [\"{topic}\"]\n\
         commit_interval_ms = 100\nstatistics_interval_ms = 200\n",
        kafka(),
        unique("it-sup-group")
    ))
    .unwrap();
    let dead_letter: DeadLetterConfig = toml::from_str(&format!(
        "type = \"kafka\"\nbootstrap_servers = \"{}\"\ntopic = \"{}\"\n",
        kafka(),
        unique("it-sup-dlq")
    ))
    .unwrap();
    let metrics = Metrics::new();
    let health = Health::new("sup", Readiness::Gate, metrics.clone());
    let sink = panicking_on_first_send();
    let cancel = CancellationToken::new();
    let make = {
        let (metrics, health, sink) = (metrics.clone(), health.clone(), sink.clone());
        Arc::new(move |cancel: CancellationToken| -> Run {
            let source = config
                .build(
                    "sup",
                    sink.clone(),
                    &dead_letter,
                    retry(),
                    metrics.clone(),
                    health.clone(),
                    Duration::from_secs(5),
                )
                .unwrap();
            source.run(cancel).boxed()
        })
    };
    let handle = supervised(make, &health, &metrics, &cancel);

    sink.wait_delivered(5, Duration::from_secs(60)).await;
    let sequences: Vec<i64> = sink.delivered().iter().map(|(_, s)| *s).collect();
    assert_eq!(
        sequences,
        [1, 2, 3, 4, 5],
        "in order, the lost batch redelivered"
    );
    assert_eq!(restarts(&metrics, "failed"), 1.0);
    let last = health.snapshot().last_error.unwrap();
    assert!(
        last.contains(&format!(
            "the lane of {topic} partition 0 stopped (panicked: scripted panic"
        )),
        "{last}"
    );
    cancel.cancel();
    handle.await.unwrap();
}

async fn readyz(bridge: &TestBridge) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("{}/readyz", bridge.admin))
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Polls `/readyz` until `done(status, body)`.
async fn readyz_until(
    bridge: &TestBridge,
    what: &str,
    done: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = readyz(bridge).await;
        if done(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never {what}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A consumer that answers 503 while `down` is set.
async fn flaky_consumer(down: Arc<AtomicBool>) -> Receiver {
    Receiver::start(Box::new(move |_, _, _| {
        if down.load(Ordering::SeqCst) {
            (503, vec![])
        } else {
            (200, vec![])
        }
    }))
    .await
}

/// Regression: `/readyz` answered 200 "ready" during 30 s of failed deliveries to a consumer
/// that was down.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_turns_503_while_the_consumer_is_down_and_recovers() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let down = Arc::new(AtomicBool::new(true));
    let receiver = flaky_consumer(down.clone()).await;
    let mut egress = Egress::new("it-sup-ready", &receiver.url, &dir);
    egress.sink_extra = "not_ready_after_ms = 300".into();
    create_topic(&egress.topic, 1).await;
    let records: Vec<_> = (1..=3)
        .map(|s| ("K".to_owned(), s, event("K", s, 10)))
        .collect();
    produce(&egress.topic, &records, None).await;
    let bridge = TestBridge::start_connector(&egress.toml()).await;

    let body = readyz_until(&bridge, "503", |status, _| status == 503).await;
    assert_eq!(body["status"], "not_ready");
    let summary = body["connectors"]["it"].as_str().unwrap();
    assert!(
        summary.starts_with("not ready: sink probe: consumer endpoint failing for"),
        "{summary}"
    );
    assert!(summary.ends_with("HTTP 503"), "{summary}");
    let state = &body["states"]["it"];
    assert_eq!(state["state"], "degraded", "{state}");
    assert_eq!(state["ready"], false);
    assert_eq!(state["readiness"], "gate");
    assert!(state["since"].as_str().unwrap().ends_with('Z'), "{state}");
    let text = bridge.metrics().await;
    assert_eq!(
        metric(
            &text,
            "entity_bridge_connector_state{connector=\"it\",state=\"degraded\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "entity_bridge_sink_ready{connector=\"it\"}"),
        Some(0.0)
    );

    down.store(false, Ordering::SeqCst);
    let body = readyz_until(&bridge, "200", |status, _| status == 200).await;
    assert_eq!(body["connectors"]["it"], "ready");
    assert_eq!(body["states"]["it"]["state"], "running");
    assert!(
        body["states"]["it"]["last_error"]
            .as_str()
            .unwrap()
            .contains("HTTP 503"),
        "the last error stays visible: {body}"
    );
    receiver.wait_delivered(3, Duration::from_secs(30)).await;
    assert!(bridge.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_only_connector_is_shown_degraded_but_keeps_readyz_200() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let down = Arc::new(AtomicBool::new(true));
    let receiver = flaky_consumer(down.clone()).await;
    let mut egress = Egress::new("it-sup-report", &receiver.url, &dir);
    egress.sink_extra = "not_ready_after_ms = 300".into();
    create_topic(&egress.topic, 1).await;
    produce(
        &egress.topic,
        &[("K".to_owned(), 1, event("K", 1, 10))],
        None,
    )
    .await;
    let toml = format!("readiness = \"report\"\n{}", egress.toml());
    let bridge = TestBridge::start_connector(&toml).await;

    let body = readyz_until(&bridge, "degraded", |_, body| {
        body["states"]["it"]["state"] == "degraded"
    })
    .await;
    let (status, body_after) = readyz(&bridge).await;
    assert_eq!(status, 200, "{body_after}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["states"]["it"]["readiness"], "report");
    assert!(body["connectors"]["it"]
        .as_str()
        .unwrap()
        .starts_with("not ready: "));
    down.store(false, Ordering::SeqCst);
    receiver.wait_delivered(1, Duration::from_secs(30)).await;
    readyz_until(&bridge, "running", |_, body| {
        body["states"]["it"]["state"] == "running"
    })
    .await;
    assert!(bridge.stop().await);
}

/// A source that fails for good mid-stream is rebuilt by its supervisor; the new source
/// continues from what the old one had not settled, and nothing is lost or reordered.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_fails_for_good_is_rebuilt_and_nothing_is_lost() {
    use crate::fakes::{Feed, ScriptedSource};
    use entity_bridge::connector::{Message, SourceError};
    let messages: Vec<Message> = (1..=30)
        .map(|s| Message {
            delete: false,
            conflict: None,
            sequence: s,
            resource_name: "Property".into(),
            record_key: format!("k{}", s % 3),
            source_label: None,
            payload: bytes::Bytes::new(),
            origin: None,
        })
        .collect();
    let feed = Feed::with(messages);
    let metrics = Metrics::new();
    let health = Health::new("sup", Readiness::Gate, metrics.clone());
    let sink = Arc::new(ScriptedSink::new(Box::new(|_, _| Act::Accept)));
    let instances = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let make = {
        let (metrics, health, sink, feed) =
            (metrics.clone(), health.clone(), sink.clone(), feed.clone());
        Arc::new(move |cancel: CancellationToken| -> Run {
            // The first instance fails for good on its third batch; the next ones work.
            let first = instances.fetch_add(1, Ordering::SeqCst) == 0;
            let script = Box::new(move |n| {
                (first && n == 2).then(|| SourceError::Fatal("queue deleted".into()))
            });
            let pump = Pump {
                connector: "sup".into(),
                source: Box::new(ScriptedSource::new(feed.clone(), 4, script)),
                sink: sink.clone(),
                retry: retry(),
                metrics: metrics.clone(),
                health: health.clone(),
            };
            pump.run(cancel).boxed()
        })
    };
    let cancel = CancellationToken::new();
    let handle = supervised(make, &health, &metrics, &cancel);
    sink.wait_delivered(30, Duration::from_secs(30)).await;
    let sequences: Vec<i64> = sink.delivered().iter().map(|(_, s)| *s).collect();
    assert_eq!(sequences, (1..=30).collect::<Vec<_>>());
    assert_eq!(restarts(&metrics, "failed"), 1.0);
    assert!(feed
        .settled()
        .iter()
        .all(|(_, outcome)| outcome == "delivered"));
    assert_eq!(
        health.snapshot().last_error.as_deref(),
        Some("task: source failed: queue deleted")
    );
    cancel.cancel();
    handle.await.unwrap();
}
