//! A Kafka source left without partitions while its topics have lag (issue 26, item 16): seen
//! with tansu, the group coordinator handed the bridge an empty assignment after a restart and
//! never rebalanced; the bridge looked ready while events waited. Provoked here with a second
//! member of the group that takes the only partition (first in member-id order, so the range
//! assignor gives it the partition) and never consumes it: the bridge must report not ready,
//! rejoin the group, and deliver once the partition is free.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::common::*;
use crate::egress::{create_topic, event, produce};

/// A member of `group` that holds what it is assigned and never commits; it leaves the group
/// when `stop` is set. Sends the partitions it holds each time they change.
fn squatter(
    group: &str,
    topic: &str,
    stop: Arc<AtomicBool>,
    held: mpsc::Sender<usize>,
) -> std::thread::JoinHandle<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("group.id", group)
        // Member ids start with the client id: this one sorts before `entity-bridge.*`.
        .set("client.id", "aaa-squatter")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "7000")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    std::thread::spawn(move || {
        let mut last = usize::MAX;
        while !stop.load(Ordering::SeqCst) {
            let _ = consumer.poll(Duration::from_millis(100));
            let now = consumer.assignment().map(|a| a.count()).unwrap_or(0);
            if now != last {
                last = now;
                let _ = held.send(now);
            }
        }
        consumer.unsubscribe();
        // Dropping closes the consumer: it leaves the group.
    })
}

async fn ready_status(admin: &str) -> (u16, String) {
    let answer = reqwest::get(format!("{admin}/readyz")).await.unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_without_partitions_while_lag_waits_is_not_ready_and_rejoins() {
    require_kafka();
    let topic = unique("it-rejoin");
    let group = unique("it-rejoin-group");
    create_topic(&topic, 1).await;
    let records: Vec<(String, i64, String)> = (1..=3)
        .map(|s| (format!("K{s}"), s, event(&format!("K{s}"), s, 0)))
        .collect();
    produce(&topic, &records, None).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (held_tx, held) = mpsc::channel();
    let squatting = squatter(&group, &topic, stop.clone(), held_tx);
    let got = held.recv_timeout(Duration::from_secs(30)).unwrap();
    let got = if got == 0 {
        held.recv_timeout(Duration::from_secs(30)).unwrap()
    } else {
        got
    };
    assert_eq!(got, 1, "the squatter holds the partition");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let bridge = TestBridge::start_connector(&format!(
        "[source]\ntype = \"kafka\"\nbootstrap_servers = \"{}\"\ngroup_id = \"{group}\"\n\
         topics = [\"{topic}\"]\ncommit_interval_ms = 200\nstatistics_interval_ms = 500\n\
         unassigned_rejoin_after_ms = 12000\n\
         [source.librdkafka]\n\"max.poll.interval.ms\" = \"7000\"\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\
         [sink]\ntype = \"embedded\"\nreplay_tokens = [{{ file = {:?} }}]\n\
         [retry]\nmin_backoff_ms = 2000\nmax_backoff_ms = 4000\n",
        kafka(),
        dir.path().join("token").display().to_string()
    ))
    .await;

    // The bridge holds nothing, the lag waits: within the bound and a few checks it says so
    // and rejoins.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = ready_status(&bridge.admin).await;
        if status == 503 && body.contains("no partition assigned") {
            break;
        }
        assert!(Instant::now() < deadline, "never reported: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = bridge.metrics().await;
    let rejoins = metric(
        &metrics,
        "entity_bridge_consumer_rejoins_total{connector=\"it\"}",
    );
    assert!(rejoins.unwrap_or(0.0) >= 1.0, "{metrics}");

    // The rejoin rebalanced the group: the squatter's partition was revoked. Once that
    // rebalance is over, the squatter leaves; the bridge, a member again, takes the partition
    // (if it did not get it in that rebalance already) and delivers every event. (Leaving in the
    // middle of a rebalance is what leaves a tansu group stuck for good, the very fault behind
    // this issue.)
    let revoked = held.recv_timeout(Duration::from_secs(60));
    assert_eq!(revoked, Ok(0), "the squatter sees the rejoin's rebalance");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    squatting.join().unwrap();
    let base = bridge.webhook.trim_end_matches("/webhooks/it").to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) =
            crate::embedded::get_json(&format!("{base}/EntityEvent?$top=10"), Some(TOKEN)).await;
        assert_eq!(status, 200, "{body}");
        if body["value"].as_array().unwrap().len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "not delivered: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready_status(&bridge.admin).await.0 != 200 {
        assert!(Instant::now() < deadline, "ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(bridge.stop().await);
}
