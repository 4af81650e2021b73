//! Shared helpers: broker addresses, unique names, a bridge started in-process on loopback
//! ports, and a real rdkafka consumer. A missing broker makes tests fail loudly, never skip.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use entity_bridge::app::{self, Running};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _, OwnedMessage};
use rdkafka::ClientConfig;

pub const TOKEN: &str = "it-token-5f2c9a";

/// Kafka-protocol broker for tests (`deploy/dev/test.sh` starts tansu there).
pub fn kafka() -> String {
    std::env::var("ENTITY_BRIDGE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Panics with instructions when the Kafka-protocol broker does not answer.
pub fn require_kafka() {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .expect("consumer");
    if let Err(e) = consumer.fetch_metadata(None, Duration::from_secs(10)) {
        panic!(
            "no Kafka-protocol broker at {} ({e}); run the tests with `bash deploy/dev/test.sh`",
            kafka()
        );
    }
}

/// RabbitMQ for tests (`deploy/dev/test.sh` makes sure one runs there; guest/guest).
pub fn amqp_url() -> String {
    std::env::var("ENTITY_BRIDGE_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Panics with instructions when RabbitMQ does not accept an AMQP connection.
pub async fn require_amqp() -> lapin::Connection {
    let properties = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    match tokio::time::timeout(
        Duration::from_secs(10),
        lapin::Connection::connect(&amqp_url(), properties),
    )
    .await
    {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => panic!(
            "no RabbitMQ at ENTITY_BRIDGE_TEST_AMQP / 127.0.0.1:5672 ({e}); run the tests with `bash deploy/dev/test.sh`"
        ),
        Err(_) => panic!(
            "RabbitMQ at ENTITY_BRIDGE_TEST_AMQP / 127.0.0.1:5672 did not answer in 10 s; run the tests with `bash deploy/dev/test.sh`"
        ),
    }
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000;
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A bridge running in this process with one webhook connector named `it`.
pub struct TestBridge {
    pub running: Option<Running>,
    pub webhook: String,
    pub admin: String,
    _dir: tempfile::TempDir,
}

impl TestBridge {
    /// Starts a bridge whose connector file is `[source]` (webhook, token file) + `sink_toml`.
    pub async fn start(source_extra: &str, sink_toml: &str) -> TestBridge {
        Self::start_tuned("", source_extra, sink_toml).await
    }

    /// Like [`TestBridge::start`], with `http_extra` added to `bridge.toml`'s `[http]` table
    /// (it may open sub-tables such as `[http.connections]`).
    pub async fn start_tuned(http_extra: &str, source_extra: &str, sink_toml: &str) -> TestBridge {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let connector = format!(
            "[source]\ntype = \"webhook\"\npath = \"/webhooks/it\"\ntokens = [{{ file = {:?} }}]\n{source_extra}\n\n[sink]\n{sink_toml}\n",
            token_file.display().to_string()
        );
        Self::launch(dir, &connector, http_extra).await
    }

    /// Starts a bridge with one connector `it` whose file is exactly `connector_toml` (any
    /// source and sink, e.g. a pull source; `webhook` is then meaningless).
    pub async fn start_connector(connector_toml: &str) -> TestBridge {
        Self::launch(tempfile::tempdir().unwrap(), connector_toml, "").await
    }

    async fn launch(dir: tempfile::TempDir, connector: &str, http_extra: &str) -> TestBridge {
        // `ENTITY_BRIDGE_TEST_LOG=debug` (a tracing filter) shows the bridges' logs in test
        // output, to debug a failing test.
        if let Ok(filter) = std::env::var("ENTITY_BRIDGE_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        std::fs::write(
            dir.path().join("bridge.toml"),
            format!(
                "shutdown_timeout_ms = 10000\ndata_dir = {:?}\n[http]\nlisten_addr = \"127.0.0.1:0\"\n{http_extra}\n\
                 [admin]\nlisten_addr = \"127.0.0.1:0\"\n",
                dir.path().join("data").display().to_string()
            ),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("connectors")).unwrap();
        std::fs::write(dir.path().join("connectors/it.toml"), connector).unwrap();
        let (config, _) = entity_bridge::config::load(&[PathBuf::from(dir.path())]).unwrap();
        let running = app::start(config).await.expect("bridge starts");
        TestBridge {
            webhook: format!("http://{}/webhooks/it", running.webhook_addr),
            admin: format!("http://{}", running.admin_addr),
            running: Some(running),
            _dir: dir,
        }
    }

    /// A Kafka sink section routing to `<prefix>.{ResourceName}`.
    pub fn kafka_sink(prefix: &str, extra: &str) -> String {
        format!(
            "type = \"kafka\"\nbootstrap_servers = \"{}\"\ntopic_template = \"{prefix}.{{ResourceName}}\"\ntopic_partitions = 2\n{extra}\n",
            kafka()
        )
    }

    /// POSTs `body` as JSON with the test token.
    pub async fn post(&self, body: &str) -> reqwest::Response {
        self.post_with(body, |r| r).await
    }

    /// POSTs with the test token and JSON content type, letting the caller adjust the request.
    pub async fn post_with(
        &self,
        body: &str,
        adjust: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> reqwest::Response {
        let request = reqwest::Client::new()
            .post(&self.webhook)
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_owned());
        adjust(request).send().await.expect("request sent")
    }

    /// The admin listener's `/feeds` view.
    pub async fn feeds(&self) -> serde_json::Value {
        reqwest::get(format!("{}/feeds", self.admin))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Graceful shutdown; returns whether it was clean.
    pub async fn stop(mut self) -> bool {
        self.running.take().unwrap().shutdown().await
    }
}

impl Drop for TestBridge {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown_token().cancel();
        }
    }
}

/// Reads `topics` from the beginning until `stop` says so or `timeout` passes.
pub fn consume_until(
    topics: &[&str],
    timeout: Duration,
    stop: impl FnMut(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    consume_from(&kafka(), topics, timeout, stop)
}

/// [`consume_until`] on the broker at `bootstrap`.
pub fn consume_from(
    bootstrap: &str,
    topics: &[&str],
    timeout: Duration,
    mut stop: impl FnMut(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("it-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(topics).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while Instant::now() < deadline && !stop(&seen) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            seen.push(m.detach());
        }
    }
    seen
}

/// Reads until `n` messages arrived from `topics`, panicking after 30 s.
pub fn consume_n(topics: &[&str], n: usize) -> Vec<OwnedMessage> {
    let seen = consume_until(topics, Duration::from_secs(30), |s| s.len() >= n);
    assert!(
        seen.len() >= n,
        "expected {n} messages on {topics:?}, got {}",
        seen.len()
    );
    seen
}

/// A header's value as a string.
pub fn header(m: &OwnedMessage, key: &str) -> Option<String> {
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The `WWW-Authenticate` challenge of a refused request.
pub fn challenge(r: &reqwest::Response) -> String {
    r.headers()["www-authenticate"].to_str().unwrap().to_owned()
}

/// The value of a metric line (`name{labels}`) in an exposition, if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Topics on the broker whose name starts with `prefix`.
pub fn topics_with_prefix(prefix: &str) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|t| t.starts_with(prefix))
        .collect()
}

/// Waits (blocking) until the broker lists `topic`: a reader subscribed before a topic exists
/// may not see it appear for minutes, so tests wait for the bridge to create it first.
pub fn wait_for_topic(topic: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !topics_with_prefix(topic).iter().any(|t| t == topic) {
        assert!(Instant::now() < deadline, "{topic} was never created");
        std::thread::sleep(Duration::from_millis(200));
    }
}
