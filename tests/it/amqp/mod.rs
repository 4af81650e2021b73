//! AMQP sink and source against the real RabbitMQ (127.0.0.1:5672 or ENTITY_BRIDGE_TEST_AMQP).
//!
//! Helpers here: a test-side lapin client, a guard that deletes every exchange and queue a
//! test declared (even when the test panics), and closing one named bridge connection from the
//! broker side with `rabbitmqctl` (other tests' connections are left alone).

mod dedupe;
mod sink;
mod source;

use std::process::Command;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection};

use crate::common::*;

/// A test-side RabbitMQ client that deletes what the test named when dropped.
pub struct Rabbit {
    pub connection: Connection,
    exchanges: Vec<String>,
    queues: Vec<String>,
    _url_dir: tempfile::TempDir,
    /// `url_file = "…"` for a bridge config (the URL never appears in the TOML).
    pub url_line: String,
}

impl Rabbit {
    /// Connects (failing loudly when RabbitMQ is absent).
    pub async fn new() -> Rabbit {
        let connection = require_amqp().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("amqp-url");
        std::fs::write(&path, format!("{}\n", amqp_url())).unwrap();
        Rabbit {
            connection,
            exchanges: Vec::new(),
            queues: Vec::new(),
            url_line: format!("url_file = {:?}", path.display().to_string()),
            _url_dir: dir,
        }
    }

    /// A unique exchange name, deleted at the end of the test.
    pub fn exchange(&mut self, prefix: &str) -> String {
        let name = unique(prefix);
        self.exchanges.push(name.clone());
        name
    }

    /// A unique queue name, deleted at the end of the test.
    pub fn queue(&mut self, prefix: &str) -> String {
        let name = unique(prefix);
        self.queues.push(name.clone());
        name
    }

    async fn channel(&self) -> Channel {
        self.connection.create_channel().await.unwrap()
    }

    /// Declares a durable queue with optional arguments.
    pub async fn declare_queue(&self, queue: &str, args: FieldTable) {
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        self.channel()
            .await
            .queue_declare(queue, options, args)
            .await
            .unwrap();
    }

    /// Binds `queue` to `exchange` with `routing_key`.
    pub async fn bind(&self, queue: &str, exchange: &str, routing_key: &str) {
        self.channel()
            .await
            .queue_bind(
                queue,
                exchange,
                routing_key,
                lapin::options::QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Ready messages in `queue` (unacknowledged deliveries are not counted); `None` when the
    /// queue does not exist.
    pub async fn ready_count(&self, queue: &str) -> Option<u32> {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let channel = self.channel().await;
        let q = channel
            .queue_declare(queue, options, FieldTable::default())
            .await
            .ok()?;
        Some(q.message_count())
    }

    /// Polls until `queue` holds exactly `n` ready messages.
    pub async fn wait_ready_count(&self, queue: &str, n: u32) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let count = self.ready_count(queue).await;
            if count == Some(n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "queue {queue}: expected {n} ready messages, have {count:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes (and acks) the next message of `queue`.
    pub async fn get(&self, queue: &str) -> Option<lapin::message::BasicGetMessage> {
        self.channel()
            .await
            .basic_get(queue, BasicGetOptions { no_ack: true })
            .await
            .unwrap()
    }

    /// Publishes one confirmed persistent message to the default exchange (straight to `queue`).
    pub async fn publish(&self, queue: &str, body: &[u8], source: Option<&str>) {
        let channel = self.channel().await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let mut headers = FieldTable::default();
        if let Some(source) = source {
            headers.insert(
                "EntityEventSource".into(),
                AMQPValue::LongString(LongString::from(source)),
            );
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirm = channel
            .basic_publish(
                "",
                queue,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(
            confirm.is_ack() && confirm.take_message().is_none(),
            "test publish to {queue} not confirmed"
        );
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        let exchanges = std::mem::take(&mut self.exchanges);
        let queues = std::mem::take(&mut self.queues);
        // Runs even when the test panicked: a fresh connection on a thread of its own.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let connection = require_amqp().await;
                for queue in &queues {
                    let channel = connection.create_channel().await.unwrap();
                    let _ = channel
                        .queue_delete(queue, QueueDeleteOptions::default())
                        .await;
                }
                for exchange in &exchanges {
                    let channel = connection.create_channel().await.unwrap();
                    let _ = channel
                        .exchange_delete(exchange, ExchangeDeleteOptions::default())
                        .await;
                }
                let _ = connection.close(200, "test cleanup").await;
            });
        })
        .join()
        .unwrap();
    }
}

/// Closes the bridge connection named `name` from the broker side (polls until it exists).
pub fn close_connection_named(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Table output: `<pid>\t<client_properties>` per line (the JSON formatter prints pids
        // in a form `close_connection` does not accept).
        let out = Command::new("rabbitmqctl")
            .args([
                "list_connections",
                "pid",
                "client_properties",
                "-q",
                "--no-table-headers",
            ])
            .output()
            .expect("rabbitmqctl must be installed (it comes with rabbitmq-server)");
        assert!(
            out.status.success(),
            "rabbitmqctl list_connections failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        let pid = listing
            .lines()
            .find(|line| line.contains(name))
            .and_then(|line| line.split_whitespace().next())
            .map(str::to_owned);
        if let Some(pid) = pid {
            let status = Command::new("rabbitmqctl")
                .args(["close_connection", &pid, "closed by an entity-bridge test"])
                .output()
                .unwrap();
            assert!(
                status.status.success(),
                "close_connection {pid} failed: {}",
                String::from_utf8_lossy(&status.stderr)
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no RabbitMQ connection named {name}:\n{listing}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `/readyz` until it answers `status`.
pub async fn wait_ready(bridge: &TestBridge, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = reqwest::get(format!("{}/readyz", bridge.admin))
            .await
            .unwrap()
            .status()
            .as_u16();
        if got == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {got}, wanted {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `/metrics` until `series` reaches at least `min`.
pub async fn wait_metric(bridge: &TestBridge, series: &str, min: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = bridge.metrics().await;
        if metric(&text, series).is_some_and(|v| v >= min) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {min}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A header of a delivery.
pub fn amqp_header<'a>(d: &'a lapin::message::Delivery, key: &str) -> Option<&'a AMQPValue> {
    d.properties.headers().as_ref()?.inner().get(key)
}
