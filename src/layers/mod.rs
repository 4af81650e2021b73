//! Sink layers: wrappers that add one concern to any connector's sink, so that no sink
//! implements it itself and no two sinks do it differently. The stack, outermost first:
//!
//! 1. [`feeds`]: each feed's sequences and `[dedupe]` — it sees only confirmed sends, and a
//!    suppressed duplicate never reaches the layers below;
//! 2. [`hydrate`]: the record of an event without `Data`, fetched before it is published
//!    (`[hydrate]`), so a duplicate is suppressed before its record is fetched;
//! 3. [`Observed`]: the publish metrics of every `send`, once, whatever the sink.
//!
//! `app` stacks them in that order around the sink a connector's `[sink]` builds.

pub mod feeds;
pub mod hydrate;
mod observe;

pub use observe::Observed;
