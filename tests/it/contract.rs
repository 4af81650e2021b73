//! The sink contract, checked on every real sink against its real peer: `Ok` only once every
//! event is durable (readable from the bus the moment `send` returns), `Rejected` naming the
//! right index with nothing published, and an unreachable bus or a full queue mapped to
//! `Unavailable` / `Overloaded` — the classification every source relies on (503 vs 429 vs
//! 400 on the webhook, retry in place vs dead-letter on pull connectors).

use std::time::{Duration, Instant};

use bytes::Bytes;

use entity_bridge::amqp::AmqpSinkConfig;
use entity_bridge::connector::{Message, RejectKind, Sink, SinkError, Source};
use entity_bridge::embedded::{EmbeddedSinkConfig, EmbeddedSourceConfig};
use entity_bridge::kafka::KafkaSinkConfig;
use entity_bridge::metrics::Metrics;
use entity_bridge::push::PushSinkConfig;
use tokio_util::sync::CancellationToken;

use crate::amqp::Rabbit;
use crate::common::*;
use crate::receiver::Receiver;

fn message(sequence: i64, resource: &str) -> Message {
    let key = format!("C{sequence}");
    Message {
        delete: false,
        conflict: None,
        sequence,
        resource_name: resource.into(),
        payload: Bytes::from(format!(
            r#"{{"EntityEventSequence":{sequence},"ResourceName":"{resource}","ResourceRecordKey":"{key}"}}"#
        )),
        record_key: key,
        source_label: None,
        origin: None,
    }
}

fn batch(resources: &[&str]) -> Vec<Message> {
    (1..).zip(resources).map(|(s, r)| message(s, r)).collect()
}

/// `Rejected` at `index`, refused before anything was handed over.
fn assert_rejected_at(result: Result<(), SinkError>, index: usize) {
    match result {
        Err(SinkError::Rejected {
            index: got,
            field,
            kind,
            ..
        }) => {
            assert_eq!(got, index, "the index of the refused event");
            assert_eq!(field, Some("ResourceName"));
            assert_eq!(kind, RejectKind::Unroutable);
        }
        other => panic!("expected Rejected at {index}, got {other:?}"),
    }
}

/// `Unavailable` within `bound`.
async fn assert_unavailable_within(sink: &dyn Sink, bound: Duration) {
    let started = Instant::now();
    let result = sink.send(&batch(&["Property"])).await;
    assert!(
        matches!(result, Err(SinkError::Unavailable { .. })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < bound,
        "answered in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_sink() {
    require_kafka();
    let prefix = unique("it-contract");
    let config = |bootstrap: &str, extra: &str| -> KafkaSinkConfig {
        toml::from_str(&format!(
            "bootstrap_servers = \"{bootstrap}\"\ntopic_template = \"{prefix}.{{ResourceName}}\"\n\
             topic_partitions = 1\ndelivery_timeout_ms = 2000\n{extra}"
        ))
        .unwrap()
    };
    let sink = config(&kafka(), "")
        .build("contract", Metrics::new())
        .unwrap();
    // Ok = durable: every event is on the broker when send returns.
    sink.send(&batch(&["Property", "Property", "Property"]))
        .await
        .unwrap();
    let topic = format!("{prefix}.Property");
    let got = tokio::task::spawn_blocking(move || {
        consume_until(&[&topic], Duration::from_secs(10), |s| s.len() >= 3)
    })
    .await
    .unwrap();
    assert_eq!(got.len(), 3);
    // Rejected names the index; nothing of the batch is published.
    let bad = batch(&["Property", "Media", "NotAResource", "Property"]);
    assert_rejected_at(sink.send(&bad).await, 2);
    assert!(
        topics_with_prefix(&format!("{prefix}.Media")).is_empty(),
        "nothing published"
    );
    // A full producer queue is Overloaded (429), not Unavailable.
    let tiny = config(
        &kafka(),
        "[librdkafka]\n\"queue.buffering.max.messages\" = \"1\"\n\"linger.ms\" = \"1000\"",
    );
    let tiny = tiny.build("contract", Metrics::new()).unwrap();
    let result = tiny.send(&batch(&["Property"; 5])).await;
    assert!(
        matches!(result, Err(SinkError::Overloaded { .. })),
        "{result:?}"
    );
    // No broker: Unavailable within the delivery timeout.
    let down = config("127.0.0.1:1", "")
        .build("contract", Metrics::new())
        .unwrap();
    assert_unavailable_within(&down, Duration::from_secs(6)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn amqp_sink() {
    let mut rabbit = Rabbit::new().await;
    let exchange = rabbit.exchange("it-contract-x");
    let queue = rabbit.queue("it-contract-q");
    let config: AmqpSinkConfig = toml::from_str(&format!(
        "{}\nexchange = \"{exchange}\"\nconfirm_timeout_ms = 2000\n\
         routing_key_template = \"{{ResourceName}}\"\n\
         [[topology.queues]]\nname = \"{queue}\"\n\
         [[topology.bindings]]\nqueue = \"{queue}\"\nexchange = \"{exchange}\"\nrouting_key = \"Property\"\n",
        rabbit.url_line
    ))
    .unwrap();
    let sink = config.build("contract", Metrics::new()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink.ready().await.is_err() {
        assert!(Instant::now() < deadline, "the AMQP sink never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ok = confirmed: in the queue when send returns, no polling.
    sink.send(&batch(&["Property", "Property", "Property"]))
        .await
        .unwrap();
    assert_eq!(rabbit.ready_count(&queue).await, Some(3));
    let bad = batch(&["Property", "NotAResource", "Property"]);
    assert_rejected_at(sink.send(&bad).await, 1);
    assert_eq!(
        rabbit.ready_count(&queue).await,
        Some(3),
        "nothing published"
    );
    // No broker: Unavailable at once (the connection is supervised in the background).
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("url");
    std::fs::write(&url, "amqp://guest:guest@127.0.0.1:1/%2f\n").unwrap();
    let down: AmqpSinkConfig = toml::from_str(&format!(
        "url_file = {:?}\nexchange = \"{exchange}\"\n",
        url.display().to_string()
    ))
    .unwrap();
    let down = down.build("contract", Metrics::new()).unwrap();
    assert_unavailable_within(&down, Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_sink() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("contract.db");
    let config: EmbeddedSinkConfig =
        toml::from_str(&format!("file = {:?}\n", file.display().to_string())).unwrap();
    let sink = config.build("contract", Metrics::new()).await.unwrap();
    // Ok = committed: a reader opened afterwards sees every event.
    sink.send(&batch(&["Property", "Media", "Property"]))
        .await
        .unwrap();
    let reader: EmbeddedSourceConfig =
        toml::from_str(&format!("file = {:?}\n", file.display().to_string())).unwrap();
    let mut reader = reader
        .build("contract-reader", Metrics::new())
        .await
        .unwrap();
    let got = reader.next_batch().await.unwrap().unwrap();
    let sequences: Vec<i64> = got.messages.iter().map(|m| m.sequence).collect();
    assert_eq!(sequences, [1, 2, 3]);
    // A full log is Unavailable (503), never Ok, and keeps nothing of the batch.
    let full: EmbeddedSinkConfig = toml::from_str(&format!(
        "file = {:?}\nmax_file_bytes = 65536\n",
        dir.path().join("full.db").display().to_string()
    ))
    .unwrap();
    let full = full.build("contract-full", Metrics::new()).await.unwrap();
    let mut big = batch(&["Property", "Property"]);
    big[1].payload = Bytes::from(format!(
        r#"{{"EntityEventSequence":2,"ResourceName":"Property","ResourceRecordKey":"C2","Data":"{}"}}"#,
        "x".repeat(200_000)
    ));
    let result = full.send(&big).await;
    assert!(
        matches!(result, Err(SinkError::Unavailable { .. })),
        "{result:?}"
    );
    let reader: EmbeddedSourceConfig = toml::from_str(&format!(
        "file = {:?}\n",
        dir.path().join("full.db").display().to_string()
    ))
    .unwrap();
    let mut reader = reader
        .build("contract-reader", Metrics::new())
        .await
        .unwrap();
    let nothing = tokio::time::timeout(Duration::from_millis(300), reader.next_batch()).await;
    assert!(
        nothing.is_err(),
        "the refused batch left nothing in the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_sink() {
    require_kafka();
    let receiver = Receiver::accepting().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "contract-token\n").unwrap();
    let config: PushSinkConfig = toml::from_str(&format!(
        "url = \"{}\"\nauth = {{ type = \"token\", token = {{ file = {:?} }} }}\n\
         [dead_letter]\ntype = \"kafka\"\nbootstrap_servers = \"{}\"\ntopic = \"{}\"\n",
        receiver.url,
        token.display().to_string(),
        kafka(),
        unique("it-contract-dlq")
    ))
    .unwrap();
    let stop = CancellationToken::new();
    let sink = config
        .build("contract", Metrics::new(), stop.clone())
        .unwrap();
    // Ok = the consumer answered 2xx for every event.
    sink.send(&batch(&["Property", "Media"])).await.unwrap();
    assert_eq!(receiver.delivered().len(), 2);
    // At shutdown a send still retrying gives up as Unavailable: the source redelivers later.
    let down = Receiver::start(Box::new(|_, _, _| (503, vec![]))).await;
    let mut config = config;
    config.url = down.url.clone();
    let sink = config
        .build("contract", Metrics::new(), stop.clone())
        .unwrap();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        stopper.cancel();
    });
    assert_unavailable_within(&sink, Duration::from_secs(5)).await;
}
