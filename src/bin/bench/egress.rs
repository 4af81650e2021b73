//! Egress scenarios: Kafka → bridge (child process) → a local HTTP receiver answering 200 at
//! once; the ceiling is a plain rdkafka consumer reading the same topic.
//!
//! `backlog` runs the same path over a large backlog of small events and samples the bridge's
//! RSS while it drains, to show memory is bounded by the read-ahead, not by the backlog.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::child::BridgeChild;
use crate::gen::{self, GenConfig, Rng};
use crate::stats::{Figures, Row};
use crate::{ingress, kafka_ceiling, Opts};

#[derive(Default)]
struct Received {
    events: AtomicU64,
    bytes: AtomicU64,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
}

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    value: Vec<&'a RawValue>,
}

async fn receive(State(r): State<Arc<Received>>, body: bytes::Bytes) -> &'static str {
    let now = Instant::now();
    r.first.lock().unwrap().get_or_insert(now);
    if let Ok(p) = serde_json::from_slice::<Payload<'_>>(&body) {
        let bytes: u64 = p.value.iter().map(|v| v.get().len() as u64).sum();
        r.bytes.fetch_add(bytes, Ordering::Relaxed);
        r.events.fetch_add(p.value.len() as u64, Ordering::Relaxed);
    }
    *r.last.lock().unwrap() = Some(Instant::now());
    "{}"
}

/// Starts the receiver on loopback; returns its URL and counters.
async fn receiver() -> (String, Arc<Received>) {
    let received = Arc::new(Received::default());
    let app = Router::new()
        .route("/webhooks/reso", post(receive))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/webhooks/reso"), received)
}

/// Produces `events` events (of `property_bytes`) into a fresh topic; returns its name.
async fn fill_topic(opts: &Opts, prefix: &str, events: u64, property_bytes: usize) -> String {
    let topic = format!("{prefix}.egress");
    kafka_ceiling::create_topic(&opts.kafka, &topic, opts.partitions).await;
    let config = GenConfig {
        property_bytes,
        ..GenConfig::default()
    };
    let producer = kafka_ceiling::single_record_producer(&opts.kafka);
    let mut rng = Rng::new(opts.seed);
    let chunk = 10_000u64;
    let mut seq = 1u64;
    while seq <= events {
        let n = (events - seq + 1).min(chunk);
        let batches: Vec<Vec<gen::Event>> = (seq..seq + n)
            .map(|s| gen::event(&mut rng, &config, s))
            .collect::<Vec<_>>()
            .chunks(opts.batch.max(1))
            .map(|c| c.to_vec())
            .collect();
        let topics = kafka_ceiling::Topics::One(topic.clone());
        let messages = ingress::messages(&batches);
        kafka_ceiling::produce(&producer, &topics, &messages, opts.concurrency).await;
        seq += n;
    }
    topic
}

fn write_config(dir: &std::path::Path, opts: &Opts, topic: &str, url: &str, group: &str) {
    std::fs::write(dir.join("token"), "bench-receiver-token").unwrap();
    std::fs::write(
        dir.join("bridge.toml"),
        "[http]\nlisten_addr = \"127.0.0.1:0\"\n[admin]\nlisten_addr = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("connectors")).unwrap();
    let connector = format!(
        "[source]\ntype = \"kafka\"\nbootstrap_servers = \"{kafka}\"\ngroup_id = \"{group}\"\n\
         topics = [\"{topic}\"]\nauto_offset_reset = \"earliest\"\n\n\
         max_buffered_events_per_partition = {buffered}\n\n\
         [sink]\ntype = \"webhook\"\nurl = \"{url}\"\nmax_events = {batch}\n\n\
         [sink.auth]\ntype = \"token\"\ntoken = {{ file = {token:?} }}\n\n\
         [sink.limits]\nmax_concurrent_requests = {concurrency}\n\n\
         [sink.dead_letter]\ntype = \"kafka\"\nbootstrap_servers = \"{kafka}\"\ntopic = \"{topic}.dlq\"\n",
        kafka = opts.kafka,
        batch = opts.batch,
        concurrency = opts.concurrency.max(opts.partitions as usize),
        token = dir.join("token").display().to_string(),
        buffered = opts.read_ahead,
    );
    std::fs::write(dir.join("connectors/bench.toml"), connector).unwrap();
}

/// Runs the bridge over `topic` until the receiver got `events`; samples RSS meanwhile.
async fn drain(
    opts: &Opts,
    topic: &str,
    events: u64,
    run_id: &str,
) -> (Figures, f64, Vec<(u64, f64)>) {
    let (url, received) = receiver().await;
    let dir = crate::ScratchDir::new(&format!("{run_id}-egress"));
    write_config(
        dir.path(),
        opts,
        topic,
        &url,
        &format!("bench-bridge-{run_id}"),
    );
    let child = BridgeChild::start(dir.path(), opts);
    // A deadline on progress, not on the whole run: a busy machine is slow, a stuck one still
    // fails.
    let mut progress = (0, Instant::now());
    let mut samples = Vec::new();
    while received.events.load(Ordering::Relaxed) < events {
        let now = received.events.load(Ordering::Relaxed);
        if now > progress.0 {
            progress = (now, Instant::now());
        }
        assert!(
            progress.1.elapsed() < crate::STALL,
            "egress made no progress for {:?} ({now} of {events} events)",
            crate::STALL
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        samples.push((now, child.rss_mib().0));
    }
    let (_, peak) = child.rss_mib();
    child.stop();
    let first = received.first.lock().unwrap().expect("requests arrived");
    let last = received.last.lock().unwrap().expect("requests arrived");
    let figures = Figures {
        events: received.events.load(Ordering::Relaxed),
        bytes: received.bytes.load(Ordering::Relaxed),
        elapsed: last - first,
        latencies: Vec::new(),
    };
    (figures, peak, samples)
}

/// Scenario 3: egress throughput vs a plain consumer.
pub async fn run(opts: &Opts) -> Row {
    let run_id = crate::run_id();
    let topic = fill_topic(
        opts,
        &format!("bench-{run_id}"),
        opts.events,
        opts.property_bytes,
    )
    .await;
    let (bridge, peak, _) = drain(opts, &topic, opts.events, &run_id).await;
    let ceiling = {
        let (kafka, topic, events) = (opts.kafka.clone(), topic.clone(), opts.events);
        tokio::task::spawn_blocking(move || kafka_ceiling::consume(&kafka, &topic, events))
            .await
            .unwrap()
    };
    Row {
        scenario: "egress kafka → http".into(),
        bridge,
        ceiling,
        ceiling_name: "rdkafka consumer",
        peak_rss_mib: peak,
        note: String::new(),
    }
}

/// Scenario 5b: RSS while draining a large backlog of small events.
pub async fn backlog(opts: &Opts) -> Row {
    let run_id = crate::run_id();
    let events = opts.backlog;
    let topic = fill_topic(opts, &format!("bench-{run_id}"), events, 512).await;
    let (bridge, peak, samples) = drain(opts, &topic, events, &run_id).await;
    let at = |fraction: f64| {
        samples
            .iter()
            .find(|(n, _)| *n as f64 >= events as f64 * fraction)
            .map(|(_, rss)| *rss)
            .unwrap_or(0.0)
    };
    let ceiling = {
        let (kafka, topic) = (opts.kafka.clone(), topic.clone());
        tokio::task::spawn_blocking(move || kafka_ceiling::consume(&kafka, &topic, events))
            .await
            .unwrap()
    };
    Row {
        scenario: format!("egress backlog {events} small events"),
        bridge,
        ceiling,
        ceiling_name: "rdkafka consumer",
        peak_rss_mib: peak,
        note: format!(
            "RSS MiB at 10% / 50% / 90% drained: {:.1} / {:.1} / {:.1}",
            at(0.1),
            at(0.5),
            at(0.9)
        ),
    }
}
