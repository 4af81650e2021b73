//! What keeps connectors running: each connector's [`Health`] and the [`supervise`] loop that
//! restarts its task when it fails, panics or ends.
//!
//! The core owns this so every connector type gets the same behaviour: brokers only build a
//! task (a pump over a source, the Kafka dispatcher and its lanes) and report into [`Health`].

mod health;
mod supervisor;

pub use health::{Health, Part, Probe, Readiness, Snapshot, State};
pub use supervisor::{panic_message, supervise, Rebuild, Run, HEALTHY_RUN};
