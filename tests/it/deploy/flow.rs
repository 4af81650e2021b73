//! The compose connectors for real: deploy/compose/{bridge,receiver} run in this process
//! against the test brokers, with only what docker would provide rewritten (service host names
//! → loopback, listener ports → 0, secrets from env → files, names made unique per run).
//! An event pushed to `webhook-to-kafka` must come out of the receiver's replay resource, and
//! both processes' `/metrics` after that traffic must pass `promtool check metrics`.

use std::path::Path;
use std::time::{Duration, Instant};

use entity_bridge::app::{self, Running};
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

use super::{promtool, read, repo};
use crate::common::{amqp_url, kafka, metric, require_amqp, require_kafka, unique};

const WEBHOOK_TOKEN: &str = "compose-webhook-token-3f1";
const RECEIVER_TOKEN: &str = "compose-receiver-token-9c2";
const ADMIN_TOKEN: &str = "compose-admin-token-5e7";

/// Copies `deploy/compose/<which>` into `dir` with `rewrite` applied to every file.
fn stage(which: &str, dir: &Path, rewrite: &dyn Fn(String) -> String) {
    let src = repo().join("deploy/compose").join(which);
    std::fs::create_dir_all(dir.join("connectors")).unwrap();
    let bridge = read(&format!("deploy/compose/{which}/bridge.toml"));
    std::fs::write(dir.join("bridge.toml"), rewrite(bridge)).unwrap();
    for entry in std::fs::read_dir(src.join("connectors")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            dir.join("connectors").join(path.file_name().unwrap()),
            rewrite(text),
        )
        .unwrap();
    }
}

async fn launch(dir: &Path) -> Running {
    let (config, _) = entity_bridge::config::load(&[dir.to_path_buf()]).expect("config loads");
    app::start(config).await.expect("bridge starts")
}

/// An admin path, with the admin token Prometheus sends.
async fn text(url: &str) -> String {
    let client = reqwest::Client::new();
    let answer = client
        .get(url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{url}");
    answer.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_connectors_carry_events_end_to_end() {
    require_kafka();
    let amqp = require_amqp().await;
    let run = unique("compose");
    let secrets = tempfile::tempdir().unwrap();
    let secret = |name: &str, value: &str| {
        let path = secrets.path().join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        format!("{:?}", path.display().to_string())
    };
    let webhook_token = secret("webhook.token", WEBHOOK_TOKEN);
    let receiver_token = secret("receiver.token", RECEIVER_TOKEN);
    let amqp_file = secret("amqp.url", &amqp_url());
    let admin_token = secret("admin.token", ADMIN_TOKEN);

    // What docker would provide differs: addresses, secrets, and shared broker state.
    let common = {
        let run = run.clone();
        move |text: String, data: &Path| {
            text.replace("\"0.0.0.0:8080\"", "\"127.0.0.1:0\"")
                .replace("\"0.0.0.0:8081\"", "\"127.0.0.1:0\"")
                .replace(
                    "data_dir = \"data\"",
                    &format!("data_dir = {:?}", data.display().to_string()),
                )
                .replace("kafka:9092", &kafka())
                .replace(
                    "{ env = \"ENTITY_BRIDGE_WEBHOOK_TOKEN\" }",
                    &format!("{{ file = {webhook_token} }}"),
                )
                .replace(
                    "{ env = \"ENTITY_BRIDGE_ADMIN_TOKEN\" }",
                    &format!("{{ file = {admin_token} }}"),
                )
                .replace(
                    "{ env = \"DEMO_RECEIVER_TOKEN\" }",
                    &format!("{{ file = {receiver_token} }}"),
                )
                .replace(
                    "url_env = \"ENTITY_BRIDGE_AMQP_URL\"",
                    &format!("url_file = {amqp_file}"),
                )
                .replace("reso\\\\.events", &format!("{run}\\\\.events"))
                .replace("reso.events", &format!("{run}.events"))
                .replace("reso.dead-letter", &format!("{run}.dead-letter"))
                .replace("exchange = \"reso\"", &format!("exchange = \"{run}\""))
        }
    };
    let receiver_dir = tempfile::tempdir().unwrap();
    let data = receiver_dir.path().join("data");
    stage("receiver", receiver_dir.path(), &|t| common(t, &data));
    let receiver = launch(receiver_dir.path()).await;
    let receiver_url = format!("http://{}", receiver.webhook_addr);

    let bridge_dir = tempfile::tempdir().unwrap();
    let data = bridge_dir.path().join("data");
    stage("bridge", bridge_dir.path(), &|t| {
        common(t, &data).replace("http://receiver:8080", &receiver_url)
    });
    // The Property topic exists before the consumer starts; the Media topic is created by the
    // first push and found by the pattern subscription (metadata refresh, 10 s).
    crate::egress::create_topic(&format!("{run}.events.Property"), 3).await;
    let bridge = launch(bridge_dir.path()).await;
    let base = format!("http://{}", bridge.webhook_addr);
    let client = reqwest::Client::new();
    // As compose's healthcheck does: traffic only once every sink reaches its bus.
    let ready = format!("http://{}/readyz", bridge.admin_addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = client.get(&ready).send().await.unwrap();
        if answer.status() == 200 {
            break;
        }
        let body = answer.text().await.unwrap();
        assert!(Instant::now() < deadline, "bridge never ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let post = |path: &str, body: String| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(WEBHOOK_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let key = |r: &str| format!("{run}-{r}");
    let body = format!(
        r#"{{"@reso.context":"urn:reso:metadata:2.0:resource:entityevent","value":[
            {{"EntityEventSequence":1101,"ResourceName":"Property","ResourceRecordKey":"{}"}},
            {{"EntityEventSequence":1111,"ResourceName":"Media","ResourceRecordKey":"{}"}}]}}"#,
        key("P"),
        key("M")
    );
    let answer = post("/webhooks/webhook-to-kafka", body.clone())
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), r#"{"accepted":2}"#);
    let answer = post("/webhooks/webhook-to-rabbitmq", body).await.unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    // Rejections, so labelled error series exist too.
    assert_eq!(
        post("/webhooks/webhook-to-kafka", "{}".into())
            .await
            .unwrap()
            .status(),
        400
    );
    let unauthorized = client
        .post(format!("{base}/webhooks/webhook-to-kafka"))
        .send();
    assert_eq!(unauthorized.await.unwrap().status(), 401);

    // Kafka → webhook → the receiver's embedded log → its replay resource.
    let replay = format!("{receiver_url}/EntityEvent");
    let deadline = Instant::now() + Duration::from_secs(90);
    let events = loop {
        let page: serde_json::Value = client
            .get(&replay)
            .bearer_auth(RECEIVER_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let keys: Vec<String> = page["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["ResourceRecordKey"].as_str().unwrap().to_owned())
            .collect();
        if keys.contains(&key("P")) && keys.contains(&key("M")) {
            break page["value"].as_array().unwrap().clone();
        }
        assert!(
            Instant::now() < deadline,
            "events did not reach the receiver; it has {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(events.len(), 2, "{events:?}");

    // RabbitMQ got the same push as persistent messages in the declared quorum queue.
    let channel = amqp.create_channel().await.unwrap();
    let queue = format!("{run}.events");
    let declared = channel
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(declared.message_count(), 2);

    // The admin listeners ask for the admin token, as Prometheus sends it; probes need none.
    for admin in [bridge.admin_addr, receiver.admin_addr] {
        for path in ["/metrics", "/feeds"] {
            let answer = client
                .get(format!("http://{admin}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 401, "{path} without the admin token");
        }
        let answer = client
            .get(format!("http://{admin}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "/healthz needs no token");
    }
    // /metrics after real traffic: labelled series and histograms exist and pass promtool.
    let bridge_metrics = text(&format!("http://{}/metrics", bridge.admin_addr)).await;
    let receiver_metrics = text(&format!("http://{}/metrics", receiver.admin_addr)).await;
    let delivered = |resource: &str| {
        format!("entity_bridge_push_events_delivered_total{{connector=\"kafka-to-webhook\",resource=\"{resource}\"}}")
    };
    assert_eq!(metric(&bridge_metrics, &delivered("Property")), Some(1.0));
    assert_eq!(metric(&bridge_metrics, &delivered("Media")), Some(1.0));
    for series in [
        "entity_bridge_http_request_duration_seconds_bucket{connector=\"webhook-to-kafka\",status=\"200\",le=\"+Inf\"}",
        "entity_bridge_publish_duration_seconds_count{connector=\"webhook-to-rabbitmq\",outcome=\"ok\"}",
        "entity_bridge_http_requests_total{connector=\"webhook-to-kafka\",status=\"400\"}",
        "entity_bridge_push_request_duration_seconds_count{connector=\"kafka-to-webhook\",status=\"2xx\"}",
    ] {
        assert!(metric(&bridge_metrics, series).is_some_and(|v| v >= 1.0), "{series}\n{bridge_metrics}");
    }
    assert!(receiver_metrics.contains(
        "entity_bridge_replay_requests_total{connector=\"demo-receiver\",status=\"200\"}"
    ));
    for (who, exposition) in [("bridge", &bridge_metrics), ("receiver", &receiver_metrics)] {
        let (ok, out) = promtool(&repo(), &["check", "metrics"], Some(exposition));
        assert!(
            ok && out.trim().is_empty(),
            "{who} /metrics fails promtool:\n{out}\n{exposition}"
        );
    }

    assert!(bridge.shutdown().await, "bridge stops cleanly");
    assert!(receiver.shutdown().await, "receiver stops cleanly");
    channel
        .queue_delete(&queue, QueueDeleteOptions::default())
        .await
        .unwrap();
    channel
        .exchange_delete(&run, ExchangeDeleteOptions::default())
        .await
        .unwrap();
}
