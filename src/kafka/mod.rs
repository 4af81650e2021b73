//! Kafka as a bus (rdkafka): the sink that publishes EntityEvents, its config and topic routing;
//! the source that consumes them in a consumer group with one ordered lane per partition.

mod config;
mod dead_letter;
mod delivery;
mod healing;
mod lane;
mod record;
mod sink;
mod source;
mod source_config;
pub mod topics;
mod unassigned;

pub use config::{
    replication, Deletes, KafkaSinkConfig, UnknownResource, RESERVED_LIBRDKAFKA_KEYS,
};
pub use dead_letter::{KafkaDeadLetter, KafkaDeadLetterConfig};
pub use healing::{Healing, Kind};
pub use record::{parse_record, PoisonRecord, RecordView};
pub use sink::{broker_reachable, fatal_error, headers, KafkaBuildError, KafkaSink};
pub use source::{KafkaSource, KafkaSourceBuildError, SourceContext};
pub use source_config::{KafkaSourceConfig, OffsetReset, RESERVED_CONSUMER_KEYS};
