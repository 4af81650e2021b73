//! Per-key order through a sink outage on every pull source, with default batching and
//! prefetch: the sink fails the second batch once, and every key's events must still reach
//! it once each, in order. Real RabbitMQ, embedded log and Kafka-protocol broker; the sink is
//! scripted (a real bus cannot be made to fail one given batch).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use entity_bridge::amqp::AmqpSourceConfig;
use entity_bridge::connector::{Message, Sink, Source, SourceError};
use entity_bridge::dead_letter::DeadLetterConfig;
use entity_bridge::embedded::{EmbeddedSinkConfig, EmbeddedSourceConfig};
use entity_bridge::kafka::KafkaSourceConfig;
use entity_bridge::metrics::Metrics;
use entity_bridge::runtime::pump::{Pump, RetryConfig};
use entity_bridge::runtime::{Health, Readiness};

use crate::amqp::Rabbit;
use crate::common::*;
use crate::egress::{create_topic, event, produce};
use crate::fakes::{Act, ScriptedSink};

const KEYS: usize = 10;
const PER_KEY: i64 = 30;

/// `(key, sequence, raw event)`, keys interleaved: k0 1, k1 1, …, k9 1, k0 2, …
fn interleaved() -> Vec<(String, i64, String)> {
    let mut out = Vec::new();
    for seq in 1..=PER_KEY {
        for k in 0..KEYS {
            let key = format!("k{k}");
            out.push((key.clone(), seq, event(&key, seq, 8)));
        }
    }
    out
}

/// Fails the second send (the second batch, once), accepts everything else. (Failing the
/// third too would also fail the batch that overtook it, and hide the bug.)
fn failing_second_batch() -> Arc<ScriptedSink> {
    Arc::new(ScriptedSink::new(Box::new(|n, _| match n {
        1 => Act::Fail,
        _ => Act::Accept,
    })))
}

fn retry() -> RetryConfig {
    RetryConfig {
        min_backoff_ms: 50,
        max_backoff_ms: 200,
    }
}

fn assert_in_order(sink: &ScriptedSink) {
    assert!(
        sink.calls() >= 4,
        "the outage happened ({} sends)",
        sink.calls()
    );
    let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (key, seq) in sink.delivered() {
        by_key.entry(key).or_default().push(seq);
    }
    assert_eq!(by_key.len(), KEYS);
    for (key, seqs) in by_key {
        assert_eq!(seqs, (1..=PER_KEY).collect::<Vec<_>>(), "order of {key}");
    }
}

/// Runs a connector's task until every event reached the sink, checks their order, then stops
/// it and checks that it stopped cleanly.
async fn run_until_all_delivered(
    run: impl std::future::Future<Output = Result<(), SourceError>> + Send + 'static,
    sink: &ScriptedSink,
    cancel: CancellationToken,
) {
    let run = tokio::spawn(run);
    sink.wait_delivered(KEYS * PER_KEY as usize, Duration::from_secs(60))
        .await;
    assert_in_order(sink);
    cancel.cancel();
    run.await.unwrap().unwrap();
}

fn pump(source: Box<dyn Source>, sink: Arc<ScriptedSink>) -> Pump {
    let metrics = Metrics::new();
    Pump {
        connector: "order".into(),
        source,
        sink,
        retry: retry(),
        health: Health::new("order", Readiness::Gate, metrics.clone()),
        metrics,
    }
}

/// Regression: the failed batch was nacked with requeue while the next 100 deliveries were
/// already prefetched, and those overtook it.
#[tokio::test(flavor = "multi_thread")]
async fn amqp_keeps_per_key_order_through_a_retry() {
    let mut rabbit = Rabbit::new().await;
    let queue = rabbit.queue("it-order");
    rabbit.declare_queue(&queue, FieldTable::default()).await;
    for (_, _, raw) in interleaved() {
        rabbit.publish(&queue, raw.as_bytes(), None).await;
    }
    // Default prefetch_count (200) and max_batch (100).
    let config: AmqpSourceConfig =
        toml::from_str(&format!("{}\nqueues = [\"{queue}\"]\n", rabbit.url_line)).unwrap();
    let sink = failing_second_batch();
    let source = config.build("order", Metrics::new()).unwrap();
    let cancel = CancellationToken::new();
    let run = pump(Box::new(source), sink.clone()).run(cancel.clone());
    run_until_all_delivered(run, &sink, cancel).await;
    rabbit.wait_ready_count(&queue, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_log_keeps_per_key_order_through_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("order.db");
    let sink_config: EmbeddedSinkConfig =
        toml::from_str(&format!("file = {:?}\n", file.display().to_string())).unwrap();
    let log = sink_config.build("order-in", Metrics::new()).await.unwrap();
    let messages: Vec<Message> = interleaved()
        .into_iter()
        .map(|(key, sequence, raw)| Message {
            delete: false,
            conflict: None,
            sequence,
            resource_name: "Property".into(),
            record_key: key,
            source_label: None,
            payload: Bytes::from(raw),
            origin: None,
        })
        .collect();
    log.send(&messages).await.unwrap();
    let source_config: EmbeddedSourceConfig = toml::from_str(&format!(
        "file = {:?}\nmax_batch = 100\n",
        file.display().to_string()
    ))
    .unwrap();
    let source = source_config.build("order", Metrics::new()).await.unwrap();
    let sink = failing_second_batch();
    let cancel = CancellationToken::new();
    let run = pump(Box::new(source), sink.clone()).run(cancel.clone());
    run_until_all_delivered(run, &sink, cancel).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_keeps_per_key_order_through_a_retry() {
    require_kafka();
    let topic = unique("it-order");
    create_topic(&topic, 3).await;
    produce(&topic, &interleaved(), None).await;
    let config: KafkaSourceConfig = toml::from_str(&format!(
        "bootstrap_servers = \"{}\"\ngroup_id = \"{}\"\ntopics = [\"{topic}\"]\n",
        kafka(),
        unique("it-order-group")
    ))
    .unwrap();
    let dead_letter: DeadLetterConfig = toml::from_str(&format!(
        "type = \"kafka\"\nbootstrap_servers = \"{}\"\ntopic = \"{}\"\n",
        kafka(),
        unique("it-order-dlq")
    ))
    .unwrap();
    let metrics = Metrics::new();
    let sink = failing_second_batch();
    let source = config
        .build(
            "order",
            sink.clone(),
            &dead_letter,
            retry(),
            metrics.clone(),
            Health::new("order", Readiness::Gate, metrics),
            Duration::from_secs(5),
        )
        .unwrap();
    let cancel = CancellationToken::new();
    run_until_all_delivered(source.run(cancel.clone()), &sink, cancel).await;
}
