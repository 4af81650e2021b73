//! Kafka as a bus (rdkafka): the sink that publishes EntityEvents, its config and topic routing.

mod config;
mod sink;
pub mod topics;

pub use config::{KafkaSinkConfig, UnknownResource, RESERVED_LIBRDKAFKA_KEYS};
pub use sink::{KafkaBuildError, KafkaSink};
