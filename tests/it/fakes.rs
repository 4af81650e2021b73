//! A scripted fake sink, for what no real bus does on cue: panic, or fail a given call.
//! Real sinks are tested against their real brokers; this stands in only where a test needs a
//! sink to misbehave (a programming error, a stuck client) to see the rest of the bridge cope.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use entity_bridge::connector::{Message, Sink, SinkError};

/// What the sink does with one `send`.
pub enum Act {
    /// Accept the batch (record it as delivered).
    Accept,
    /// Panic inside `send`.
    Panic,
    /// Fail as unavailable (retryable).
    Fail,
}

/// Decides call number `n` (0-based) given its batch.
pub type Script = Box<dyn Fn(usize, &[Message]) -> Act + Send + Sync>;

/// A sink that follows its script and records what it accepted.
pub struct ScriptedSink {
    script: Script,
    calls: AtomicUsize,
    delivered: Mutex<Vec<(String, i64)>>,
}

impl ScriptedSink {
    pub fn new(script: Script) -> ScriptedSink {
        ScriptedSink {
            script,
            calls: AtomicUsize::new(0),
            delivered: Mutex::new(Vec::new()),
        }
    }

    /// `(ResourceRecordKey, EntityEventSequence)` of every accepted event, in order.
    pub fn delivered(&self) -> Vec<(String, i64)> {
        self.delivered.lock().unwrap().clone()
    }

    /// How many times `send` was called.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Waits until `n` events were accepted.
    pub async fn wait_delivered(&self, n: usize, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while self.delivered.lock().unwrap().len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "only {:?} delivered, wanted {n}",
                self.delivered()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[async_trait]
impl Sink for ScriptedSink {
    async fn send(&self, batch: &[Message]) -> Result<(), SinkError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        match (self.script)(n, batch) {
            Act::Accept => {
                let mut delivered = self.delivered.lock().unwrap();
                delivered.extend(batch.iter().map(|m| (m.record_key.clone(), m.sequence)));
                Ok(())
            }
            Act::Panic => panic!("scripted panic in send #{n}"),
            Act::Fail => Err(SinkError::Unavailable {
                reason: format!("scripted failure of send #{n}"),
            }),
        }
    }

    async fn ready(&self) -> Result<(), SinkError> {
        Ok(())
    }

    async fn flush(&self, _: Duration) -> Result<(), SinkError> {
        Ok(())
    }
}
