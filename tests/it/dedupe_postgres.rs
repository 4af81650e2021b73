//! The shared dedupe store on the real PostgreSQL (127.0.0.1:5432, or
//! ENTITY_BRIDGE_TEST_POSTGRES): claims between processes, and two bridge processes sharing one
//! feed behind an imaginary load balancer.

use std::sync::Arc;
use std::time::Duration;

use entity_bridge::layers::feeds::{PostgresSeen, PostgresStoreConfig, SeenStore, Window};

use crate::common::*;
use crate::dedupe::push;
use crate::egress_process::BridgeProcess;

/// PostgreSQL for tests (`deploy/dev/test.sh` makes sure one runs there; trust auth).
pub fn postgres_url() -> String {
    std::env::var("ENTITY_BRIDGE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A table of this test's own, dropped at the end (even when the test panics).
pub struct Table {
    pub name: String,
    url_file: tempfile::NamedTempFile,
}

impl Table {
    /// Fails loudly when PostgreSQL does not answer.
    pub async fn new() -> Table {
        let connected = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls),
        )
        .await;
        match connected {
            Ok(Ok((_client, connection))) => drop(connection),
            Ok(Err(e)) => panic!(
                "no PostgreSQL at {} ({e}); run the tests with `bash deploy/dev/test.sh`",
                postgres_url()
            ),
            Err(_) => panic!("PostgreSQL at {} did not answer in 10 s", postgres_url()),
        }
        let url_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(url_file.path(), format!("{}\n", postgres_url())).unwrap();
        Table {
            name: unique("it_seen").replace('-', "_"),
            url_file,
        }
    }

    fn url_ref(&self) -> String {
        format!(
            "{{ file = {:?} }}",
            self.url_file.path().display().to_string()
        )
    }

    fn config(&self, lease_ms: u64) -> PostgresStoreConfig {
        let toml = format!(
            "url = {}\ntable = \"{}\"\nclaim_lease_ms = {lease_ms}\n",
            self.url_ref(),
            self.name
        );
        toml::from_str(&toml).unwrap()
    }

    fn store(&self, lease_ms: u64) -> Arc<dyn SeenStore> {
        self.store_with(lease_ms, 1_000)
    }

    fn store_with(&self, lease_ms: u64, window_events: u64) -> Arc<dyn SeenStore> {
        let window = Window {
            events: window_events,
            max_age: None,
        };
        Arc::new(PostgresSeen::open(&self.config(lease_ms), "it", window).unwrap())
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .arg(postgres_url())
            .args(["-q", "-c", &format!("DROP TABLE IF EXISTS {}", self.name)])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_claim_sequences_so_that_one_publishes_each() {
    let table = Table::new().await;
    let (a, b) = (table.store(60_000), table.store(60_000));
    let events =
        |r: std::ops::RangeInclusive<i64>| -> Vec<(i64, i64)> { r.map(|s| (s, 7)).collect() };

    let first = a.claim("IDX", &events(1..=5)).await.unwrap();
    assert!(
        first.delivered.is_empty() && first.busy.is_empty(),
        "{first:?}"
    );
    let second = b.claim("IDX", &events(3..=8)).await.unwrap();
    let mut busy = second.busy.clone();
    busy.sort();
    assert_eq!(busy, vec![3, 4, 5], "claimed by the other replica");
    b.release("IDX", &[6, 7, 8]).await.unwrap();

    a.mark("IDX", &events(1..=5)).await.unwrap();
    let third = b.claim("IDX", &events(3..=8)).await.unwrap();
    assert!(third.busy.is_empty(), "{third:?}");
    assert_eq!(third.delivered.len(), 3, "3..=5 are delivered now");
    assert_eq!(third.delivered[&4], 7, "with their identity");

    // A released claim is free for the other replica at once.
    a.claim("IDX", &events(20..=21)).await.unwrap();
    a.release("IDX", &[20, 21]).await.unwrap();
    let free = b.claim("IDX", &events(20..=21)).await.unwrap();
    assert!(free.busy.is_empty() && free.delivered.is_empty());

    let mut marks = b.high_water_marks().await.unwrap();
    marks.sort();
    assert_eq!(marks, vec![("IDX".to_owned(), 5)]);
}

/// At start-up the monitor resumes feeds up to its cap: the recent ones first, and none
/// whose marks all left the window while the bridge was down.
#[tokio::test(flavor = "multi_thread")]
async fn high_water_marks_skip_expired_feeds_and_come_newest_first() {
    let table = Table::new().await;
    let window = Window {
        events: 1_000,
        max_age: Some(Duration::from_secs(3_600)),
    };
    let store = PostgresSeen::open(&table.config(60_000), "it", window).unwrap();
    for feed in ["retired", "older", "newer"] {
        store.claim(feed, &[(7, 1)]).await.unwrap();
        store.mark(feed, &[(7, 1)]).await.unwrap();
    }
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let set = format!(
        "UPDATE {} SET updated_at = now() - $1::bigint * interval '1 second' WHERE feed = $2",
        table.name
    );
    client
        .execute(&set, &[&7_200i64, &"retired"])
        .await
        .unwrap();
    client.execute(&set, &[&60i64, &"older"]).await.unwrap();
    let marks = store.high_water_marks().await.unwrap();
    assert_eq!(marks, vec![("newer".into(), 7), ("older".into(), 7)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_replicas_claim_is_taken_over_after_its_lease() {
    let table = Table::new().await;
    let (crashed, survivor) = (table.store(300), table.store(300));
    crashed.claim("", &[(1, 1)]).await.unwrap();
    let held = survivor.claim("", &[(1, 1)]).await.unwrap();
    assert_eq!(held.busy, vec![1], "held while the lease runs");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let taken = survivor.claim("", &[(1, 1)]).await.unwrap();
    assert!(
        taken.busy.is_empty(),
        "the expired claim is taken over: {taken:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_sequence_twice_in_a_mark_is_remembered_with_its_last_record() {
    let table = Table::new().await;
    let store = table.store(60_000);
    store.claim("", &[(5, 1), (5, 2)]).await.unwrap();
    // A conflict inside one batch under on_conflict = "publish": both copies were published.
    store.mark("", &[(5, 1), (6, 1), (5, 2)]).await.unwrap();
    let seen = store.claim("", &[(5, 0), (6, 0)]).await.unwrap();
    assert_eq!(seen.delivered.get(&5), Some(&2), "{seen:?}");
    assert_eq!(seen.delivered.get(&6), Some(&1));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_window_keeps_each_feed_bounded() {
    let table = Table::new().await;
    let store = table.store_with(60_000, 40); // pruned every 16 marks
    for chunk in (1..=400i64).collect::<Vec<_>>().chunks(10) {
        let events: Vec<(i64, i64)> = chunk.iter().map(|&s| (s, 1)).collect();
        store.claim("f", &events).await.unwrap();
        store.mark("f", &events).await.unwrap();
    }
    let all: Vec<(i64, i64)> = (1..=400).map(|s| (s, 1)).collect();
    let seen = store.claim("f", &all).await.unwrap();
    let remembered = seen.delivered.len();
    assert!(
        (40..=40 + 16).contains(&remembered),
        "the newest 40 plus at most one prune interval: {remembered}"
    );
    assert!(seen.delivered.contains_key(&400) && !seen.delivered.contains_key(&1));
    let sequences: Vec<i64> = (1..=400).collect();
    store.release("f", &sequences).await.unwrap();
}

/// Sends through the feeds layer with a sink that takes `delay` per batch.
struct Slow(Duration);

#[async_trait::async_trait]
impl entity_bridge::connector::Sink for Slow {
    async fn send(
        &self,
        _: &[entity_bridge::connector::Message],
    ) -> Result<(), entity_bridge::connector::SinkError> {
        tokio::time::sleep(self.0).await;
        Ok(())
    }
    async fn ready(&self) -> Result<(), entity_bridge::connector::SinkError> {
        Ok(())
    }
    async fn flush(&self, _: Duration) -> Result<(), entity_bridge::connector::SinkError> {
        Ok(())
    }
}

fn message(sequence: i64) -> entity_bridge::connector::Message {
    entity_bridge::connector::Message {
        delete: false,
        conflict: None,
        sequence,
        resource_name: "Property".into(),
        record_key: format!("K{sequence}"),
        source_label: None,
        payload: bytes::Bytes::from_static(b"{}"),
        origin: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_send_dropped_mid_flight_releases_its_claims_at_once() {
    let table = Table::new().await;
    let toml = format!(
        "max_claim_wait_ms = 20000\n[store]\ntype = \"postgres\"\nurl = {}\ntable = \"{}\"\n",
        table.url_ref(),
        table.name
    );
    let config: entity_bridge::layers::feeds::DedupeConfig = toml::from_str(&toml).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layer = |delay| {
        let (config, dir) = (config.clone(), dir.path().to_owned());
        async move {
            let sink = Arc::new(Slow(delay));
            let metrics = entity_bridge::metrics::Metrics::new();
            let tracking = entity_bridge::layers::feeds::Tracking {
                max_tracked_feeds: 64,
                evict_idle_feeds_after_hours: 168,
                mark_before_answer: false,
            };
            entity_bridge::layers::feeds::wrap("it", Some(&config), tracking, &dir, sink, metrics)
                .await
                .unwrap()
        }
    };
    let (stuck, other) = (
        layer(Duration::from_secs(600)).await,
        layer(Duration::ZERO).await,
    );
    let batch: Vec<_> = (1..=5).map(message).collect();
    let in_flight = {
        let (sink, batch) = (stuck.sink.clone(), batch.clone());
        tokio::spawn(async move { sink.send(&batch).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await; // claimed, now inside the sink
    in_flight.abort(); // e.g. the producer hung up
    let _ = in_flight.await;
    let started = std::time::Instant::now();
    let report = other.sink.send_report(&batch).await.unwrap();
    assert_eq!(report.duplicates, 0, "never delivered: published here");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "claims released at once, not after their lease: {:?}",
        started.elapsed()
    );
}

fn connector(table: &Table, prefix: &str, token_file: &str) -> String {
    format!(
        "[source]\ntype = \"webhook\"\ntokens = [{{ file = {token_file:?} }}]\n\n\
         [sink]\n{}\n\
         [dedupe]\nmax_claim_wait_ms = 20000\n\
         [dedupe.store]\ntype = \"postgres\"\nurl = {}\ntable = \"{}\"\n",
        TestBridge::kafka_sink(prefix, ""),
        table.url_ref(),
        table.name
    )
}

async fn post(addr: &str, body: String) -> serde_json::Value {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/webhooks/egress"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .header("EntityEventSource", "IDX Feed 123")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_bridge_processes_sharing_one_feed_publish_each_sequence_once() {
    require_kafka();
    let table = Table::new().await;
    let prefix = unique("it-dedupe-pg");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut bridges = Vec::new();
    for dir in &dirs {
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        let toml = connector(&table, &prefix, &token.display().to_string());
        bridges.push(BridgeProcess::spawn(dir.path(), &toml, &[]));
    }
    let (a, _) = bridges[0].addresses().await;
    let (b, _) = bridges[1].addresses().await;

    // A producer's retry that lands on the other replica.
    assert_eq!(post(&a, push(1..=50)).await["duplicates"], 0);
    assert_eq!(post(&b, push(1..=50)).await["duplicates"], 50);

    // Overlapping pushes on both replicas at once.
    let pushes = (0..6).map(|i| {
        let addr = if i % 2 == 0 { a.clone() } else { b.clone() };
        post_owned(addr, push(41 + i * 20..=100 + i * 20))
    });
    let answers = futures::future::join_all(pushes).await;
    let duplicates: u64 = answers
        .iter()
        .map(|a| a["duplicates"].as_u64().unwrap())
        .sum();
    // 6 × 60 events over 41..=200; 41..=50 were delivered before.
    assert_eq!(
        6 * 60 - duplicates,
        150,
        "each new sequence published by one push"
    );

    let mut sequences = crate::dedupe::records(format!("{prefix}.Property"), 200).await;
    let total = sequences.len();
    sequences.sort();
    sequences.dedup();
    assert_eq!(total, sequences.len(), "no sequence twice on the topic");
    assert_eq!(sequences, (1..=200).collect::<Vec<_>>());
    for bridge in &bridges {
        assert!(
            !bridge.output().contains("postgres://"),
            "no connection string in logs"
        );
    }
}

async fn post_owned(addr: String, body: String) -> serde_json::Value {
    post(&addr, body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_waiting_on_another_replicas_claim_gets_429_after_max_claim_wait() {
    require_kafka();
    let table = Table::new().await;
    let prefix = unique("it-dedupe-wait");
    // Another replica claimed sequence 3 and hangs on to it.
    let other = table.store(600_000);
    other.claim("", &[(3, 1)]).await.unwrap();
    let sink = format!(
        "{}\n[dedupe]\nmax_claim_wait_ms = 500\n[dedupe.store]\ntype = \"postgres\"\nurl = {}\ntable = \"{}\"\n",
        TestBridge::kafka_sink(&prefix, ""),
        table.url_ref(),
        table.name
    );
    let bridge = TestBridge::start("", &sink).await;
    let r = bridge.post(&push(1..=5)).await;
    assert_eq!(r.status(), 429, "{}", r.text().await.unwrap());
    other.release("", &[3]).await.unwrap();
    let r = bridge.post(&push(1..=5)).await;
    assert_eq!(r.status(), 200);
    assert!(bridge.stop().await);
}
