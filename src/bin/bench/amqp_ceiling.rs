//! The raw RabbitMQ ceiling: lapin publishing the same messages with publisher confirms.
//!
//! Like the bridge's AMQP sink it uses one confirm-mode channel, persistent `mandatory`
//! messages with the sink's own properties (headers, `message_id`), and awaits every confirm of
//! a batch together, with the same number of batches in flight as the HTTP producers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::stats::Figures;
use entity_bridge::amqp::properties;
use entity_bridge::connector::Message;

/// Opens a connection and a channel.
pub async fn channel(url: &str) -> (Connection, Channel) {
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let connection = Connection::connect(url, properties)
        .await
        .expect("RabbitMQ reachable");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

/// Declares a durable topic exchange and a durable queue bound to it with `#`.
pub async fn declare(channel: &Channel, exchange: &str, queue: &str) {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            exchange,
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue, durable, FieldTable::default())
        .await
        .expect("queue");
    channel
        .queue_bind(
            queue,
            exchange,
            "#",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("binding");
}

/// Deletes what [`declare`] made.
pub async fn delete(channel: &Channel, exchange: &str, queue: &str) {
    let _ = channel
        .queue_delete(queue, QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(exchange, ExchangeDeleteOptions::default())
        .await;
}

/// Publishes `batches` with confirms, `concurrency` batches in flight on one channel.
pub async fn publish(
    channel: &Channel,
    exchange: &str,
    batches: &[Vec<Message>],
    concurrency: usize,
) -> Figures {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let next = Arc::new(AtomicUsize::new(0));
    let options = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let next = next.clone();
        async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(batch) = batches.get(i) else { break };
                let mut confirms = Vec::with_capacity(batch.len());
                for m in batch {
                    let confirm = channel
                        .basic_publish(
                            exchange,
                            &m.resource_name,
                            options,
                            &m.payload,
                            properties("bench", m),
                        )
                        .await
                        .expect("publish");
                    confirms.push(confirm);
                }
                for c in join_all(confirms).await {
                    assert!(matches!(c.expect("confirm"), Confirmation::Ack(None)));
                }
            }
        }
    });
    join_all(workers).await;
    Figures::of_messages(batches, started)
}
