//! Optional topology declared on every connect: exchanges, queues (with dead-lettering) and
//! bindings, so a fresh RabbitMQ is usable with one config file.
//!
//! Declarations are idempotent, so re-declaring after a reconnect (or a broker restart that
//! lost non-durable objects) is harmless. A declaration that conflicts with what exists (e.g.
//! a queue with other arguments) fails the connection attempt: that needs an operator.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Channel;
use serde::{Deserialize, Serialize};

use super::config::{ExchangeType, MAX_SHORT_STRING};

/// Exchanges, queues and bindings to declare.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyConfig {
    /// Exchanges to declare, in order (`[[sink.topology.exchanges]]`).
    #[serde(default)]
    pub exchanges: Vec<ExchangeDecl>,
    /// Queues to declare, after the exchanges (`[[sink.topology.queues]]`).
    #[serde(default)]
    pub queues: Vec<QueueDecl>,
    /// Queue bindings, declared last (`[[sink.topology.bindings]]`).
    #[serde(default)]
    pub bindings: Vec<BindingDecl>,
}

/// One exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDecl {
    /// Exchange name (*required*).
    pub name: String,
    /// Exchange type.
    #[serde(default, rename = "type")]
    pub kind: ExchangeType,
    /// Survives a broker restart.
    #[serde(default = "default_true")]
    pub durable: bool,
    /// Deleted by the broker when its last binding is removed.
    #[serde(default)]
    pub auto_delete: bool,
}

/// One queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDecl {
    /// Queue name (*required*).
    pub name: String,
    /// Survives a broker restart (its persistent messages too).
    #[serde(default = "default_true")]
    pub durable: bool,
    /// Deleted by the broker when its last consumer goes away.
    #[serde(default)]
    pub auto_delete: bool,
    /// `x-queue-type`: `classic` or `quorum`; broker default when unset.
    #[serde(default)]
    pub queue_type: Option<QueueType>,
    /// `x-dead-letter-exchange`: where rejected (poison) messages go.
    #[serde(default)]
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`: routing key of dead-lettered messages (default: theirs).
    #[serde(default)]
    pub dead_letter_routing_key: Option<String>,
}

/// RabbitMQ queue types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    /// Classic queue.
    Classic,
    /// Replicated quorum queue (durable only).
    Quorum,
}

/// A queue bound to an exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingDecl {
    /// Queue name (*required*).
    pub queue: String,
    /// Exchange name (*required*).
    pub exchange: String,
    /// Binding key; on a topic exchange `#` matches every routing key.
    #[serde(default = "default_binding_key")]
    pub routing_key: String,
}

fn default_true() -> bool {
    true
}
fn default_binding_key() -> String {
    "#".into()
}

fn check(key: String, name: &str) -> Result<(), (String, String)> {
    if name.is_empty() || name.len() > MAX_SHORT_STRING {
        return Err((key, "must be 1 to 255 bytes".into()));
    }
    if name.starts_with("amq.") {
        return Err((
            key,
            "names starting with `amq.` are reserved by RabbitMQ".into(),
        ));
    }
    Ok(())
}

impl TopologyConfig {
    /// Whether nothing is declared.
    pub fn is_empty(&self) -> bool {
        self.exchanges.is_empty() && self.queues.is_empty() && self.bindings.is_empty()
    }

    /// Semantic checks; `Err((key, detail))` with keys relative to the topology table.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (i, e) in self.exchanges.iter().enumerate() {
            check(format!("exchanges[{i}].name"), &e.name)?;
        }
        for (i, q) in self.queues.iter().enumerate() {
            check(format!("queues[{i}].name"), &q.name)?;
            if q.queue_type == Some(QueueType::Quorum) && (!q.durable || q.auto_delete) {
                return Err((
                    format!("queues[{i}].queue_type"),
                    "quorum queues must be durable and not auto_delete".into(),
                ));
            }
            if let Some(dlx) = &q.dead_letter_exchange {
                if dlx.len() > MAX_SHORT_STRING {
                    return Err((
                        format!("queues[{i}].dead_letter_exchange"),
                        "must be at most 255 bytes".into(),
                    ));
                }
            }
        }
        for (i, b) in self.bindings.iter().enumerate() {
            if b.queue.is_empty() || b.queue.len() > MAX_SHORT_STRING {
                return Err((
                    format!("bindings[{i}].queue"),
                    "must be 1 to 255 bytes".into(),
                ));
            }
            if b.exchange.is_empty() || b.exchange.len() > MAX_SHORT_STRING {
                return Err((
                    format!("bindings[{i}].exchange"),
                    "must be 1 to 255 bytes (the default exchange cannot be bound)".into(),
                ));
            }
            if b.routing_key.len() > MAX_SHORT_STRING {
                return Err((
                    format!("bindings[{i}].routing_key"),
                    "must be at most 255 bytes".into(),
                ));
            }
        }
        Ok(())
    }

    /// Puts a durable exchange first (the sink's own), unless the topology declares it already.
    pub fn prepend_exchange(&mut self, name: &str, kind: ExchangeType) {
        if self.exchanges.iter().any(|e| e.name == name) {
            return;
        }
        self.exchanges.insert(
            0,
            ExchangeDecl {
                name: name.to_owned(),
                kind,
                durable: true,
                auto_delete: false,
            },
        );
    }

    /// Declares everything on `channel`, in order: exchanges, queues, bindings.
    pub async fn declare(&self, channel: &Channel) -> Result<(), TopologyError> {
        for e in &self.exchanges {
            let options = ExchangeDeclareOptions {
                durable: e.durable,
                auto_delete: e.auto_delete,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(&e.name, e.kind.kind(), options, FieldTable::default())
                .await
                .map_err(|source| TopologyError::Exchange {
                    name: e.name.clone(),
                    source,
                })?;
        }
        for q in &self.queues {
            let options = QueueDeclareOptions {
                durable: q.durable,
                auto_delete: q.auto_delete,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(&q.name, options, q.arguments())
                .await
                .map_err(|source| TopologyError::Queue {
                    name: q.name.clone(),
                    source,
                })?;
        }
        for b in &self.bindings {
            channel
                .queue_bind(
                    &b.queue,
                    &b.exchange,
                    &b.routing_key,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|source| TopologyError::Binding {
                    queue: b.queue.clone(),
                    exchange: b.exchange.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

impl QueueDecl {
    /// The `x-…` arguments of the declaration.
    pub fn arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        if let Some(kind) = self.queue_type {
            let kind = match kind {
                QueueType::Classic => "classic",
                QueueType::Quorum => "quorum",
            };
            args.insert("x-queue-type".into(), text(kind));
        }
        if let Some(dlx) = &self.dead_letter_exchange {
            args.insert("x-dead-letter-exchange".into(), text(dlx));
        }
        if let Some(key) = &self.dead_letter_routing_key {
            args.insert("x-dead-letter-routing-key".into(), text(key));
        }
        args
    }
}

/// A declaration the broker refused.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// `exchange.declare` failed.
    #[error("cannot declare exchange `{name}`: {source}")]
    Exchange {
        /// The exchange.
        name: String,
        /// The broker's answer.
        source: lapin::Error,
    },
    /// `queue.declare` failed.
    #[error("cannot declare queue `{name}`: {source}")]
    Queue {
        /// The queue.
        name: String,
        /// The broker's answer.
        source: lapin::Error,
    },
    /// `queue.bind` failed.
    #[error("cannot bind queue `{queue}` to exchange `{exchange}`: {source}")]
    Binding {
        /// The queue.
        queue: String,
        /// The exchange.
        exchange: String,
        /// The broker's answer.
        source: lapin::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let t: TopologyConfig = toml::from_str(
            r#"
            [[exchanges]]
            name = "reso"
            [[exchanges]]
            name = "reso.dlx"
            type = "fanout"
            [[queues]]
            name = "reso.property"
            queue_type = "quorum"
            dead_letter_exchange = "reso.dlx"
            [[bindings]]
            queue = "reso.property"
            exchange = "reso"
            routing_key = "Property"
            "#,
        )
        .unwrap();
        t.validate().unwrap();
        assert_eq!(t.exchanges[1].kind, ExchangeType::Fanout);
        let args = t.queues[0].arguments();
        assert!(args.contains_key("x-dead-letter-exchange"));
        assert!(args.contains_key("x-queue-type"));
        assert!(!args.contains_key("x-dead-letter-routing-key"));

        let mut bad = t.clone();
        bad.queues[0].durable = false;
        assert_eq!(bad.validate().unwrap_err().0, "queues[0].queue_type");
        let mut reserved = t;
        reserved.exchanges[0].name = "amq.topic".into();
        assert_eq!(reserved.validate().unwrap_err().0, "exchanges[0].name");
    }

    #[test]
    fn sink_exchange_is_prepended_once() {
        let mut t = TopologyConfig::default();
        t.prepend_exchange("reso", ExchangeType::Topic);
        t.prepend_exchange("reso", ExchangeType::Topic);
        assert_eq!(t.exchanges.len(), 1);
        assert!(t.exchanges[0].durable);
    }
}
