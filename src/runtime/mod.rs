//! What runs connectors: how their parts are built ([`build`]), the [`pump`] that moves a pull
//! source's batches to its sink, the one retry engine ([`retry`]), each connector's [`Health`]
//! and the [`supervise`] loop that restarts its task when it fails, panics or ends.
//!
//! The core owns this so every connector type gets the same behaviour: brokers only build a
//! task (a pump over a source, the Kafka dispatcher and its lanes) and report into [`Health`].

pub mod build;
mod health;
pub mod pump;
pub mod retry;
mod supervisor;

pub use health::{Health, Part, Probe, Readiness, Snapshot, State};
pub use supervisor::{panic_message, supervise, Rebuild, Run, HEALTHY_RUN};
