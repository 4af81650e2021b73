//! The raw Kafka ceilings: a plain rdkafka producer and consumer doing the bridge's work.
//!
//! The producer uses the bridge's own settings (`acks=all`, idempotence, `linger.ms=5`) and the
//! sink's own record headers (`entity_bridge::kafka::headers`), and keeps the same number of
//! batches in flight as the HTTP producers do, so the only difference left is the bridge itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use entity_bridge::connector::Message;
use entity_bridge::kafka::headers;

use crate::gen;
use crate::stats::Figures;

/// A producer configured like the bridge's Kafka sink (its defaults).
pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
}

/// A producer writing one record per record batch, for topics that egress will consume:
/// tansu 0.6 (the test broker) returns nothing for a fetch that starts inside a multi-record
/// batch, which stalls a consumer that pauses and resumes a partition. Apache Kafka does not
/// need this; it only makes the benchmark runnable against tansu.
pub fn single_record_producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .set("message.timeout.ms", "120000")
        .create()
        .expect("producer")
}

/// Creates `topic` with `partitions` partitions.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .expect("create topic");
    for r in results {
        r.expect("topic created");
    }
}

/// Where the ceiling writes.
pub enum Topics {
    /// Every event to one topic (egress fills).
    One(String),
    /// One topic per ResourceName, `<prefix>.<ResourceName>`: the layout the bridge's
    /// `{ResourceName}` topic template gives, so both sides spread over the same partitions.
    PerResource(String),
}

impl Topics {
    /// The topic names, with the resource each one takes (`None`: every resource).
    pub fn names(&self) -> Vec<(Option<&'static str>, String)> {
        match self {
            Topics::One(topic) => vec![(None, topic.clone())],
            Topics::PerResource(prefix) => gen::RESOURCES
                .iter()
                .map(|r| (Some(*r), format!("{prefix}.{r}")))
                .collect(),
        }
    }
}

/// Produces `batches` with `concurrency` batches in flight, awaiting every report.
pub async fn produce(
    producer: &FutureProducer,
    topics: &Topics,
    batches: &[Vec<Message>],
    concurrency: usize,
) -> Figures {
    let names = topics.names();
    let topic_of = |resource: &str| -> &str {
        let found = names.iter().find(|(r, _)| r.is_none_or(|r| r == resource));
        &found.expect("a topic for every generated resource").1
    };
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let next = next.clone();
        async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(batch) = batches.get(i) else { break };
                let mut pending = Vec::with_capacity(batch.len());
                for m in batch {
                    let record = FutureRecord::to(topic_of(&m.resource_name))
                        .key(m.record_key.as_bytes())
                        .payload(&m.payload[..])
                        .headers(headers("bench", m));
                    pending.push(
                        producer
                            .send_result(record)
                            .map_err(|(e, _)| e)
                            .expect("enqueue"),
                    );
                }
                for r in join_all(pending).await {
                    r.expect("delivery future").expect("delivered");
                }
            }
        }
    });
    join_all(workers).await;
    Figures::of_messages(batches, started)
}

/// Reads `expected` records of `topic` from the beginning with a plain consumer.
pub fn consume(bootstrap: &str, topic: &str, expected: u64) -> Figures {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-ceiling-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let (mut events, mut bytes) = (0u64, 0u64);
    let mut started = None;
    // Gives up only after a stretch without a record (a busy machine is slow, not stuck).
    let mut last_progress = Instant::now();
    while events < expected && last_progress.elapsed() < crate::STALL {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            started.get_or_insert_with(Instant::now);
            last_progress = Instant::now();
            events += 1;
            bytes += m.payload_len() as u64;
        }
    }
    assert_eq!(events, expected, "ceiling consumer read everything");
    Figures {
        events,
        bytes,
        elapsed: started.map(|s| s.elapsed()).unwrap_or_default(),
        latencies: Vec::new(),
    }
}
