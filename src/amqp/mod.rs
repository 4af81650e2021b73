//! RabbitMQ as a bus (lapin): a sink that publishes EntityEvents with publisher confirms and a
//! source that consumes queues with manual acknowledgements, both on a supervised connection
//! that reconnects with backoff, plus the optional topology they declare on connect.

mod config;
mod connection;
mod dead_letter;
mod delivery;
mod sink;
mod source;
pub mod topology;

pub use config::{AmqpSinkConfig, AmqpSourceConfig, ExchangeType, OnUnroutable, DEFAULT_URL};
pub use connection::{check_url, AmqpBuildError};
pub use dead_letter::{AmqpDeadLetter, AmqpDeadLetterConfig};
pub use sink::{properties, AmqpSink};
pub use source::AmqpSource;
