//! A scripted fake sink and source, for what no real bus does on cue: panic, or fail a given
//! call. Real sinks and sources are tested against their real brokers (the contract suite in
//! `contract.rs`); these stand in only where a test needs one to misbehave (a programming
//! error, a source that fails for good) to see the rest of the bridge cope.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use entity_bridge::connector::{
    Message, Outcome, Sink, SinkError, Source, SourceBatch, SourceError,
};

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

/// What a [`ScriptedSource`] instance does on its `n`-th `next_batch` (0-based).
pub type SourceScript = Box<dyn Fn(usize) -> Option<SourceError> + Send + Sync>;

/// Messages waiting in a feed shared by every [`ScriptedSource`] built from it (a restart
/// builds a new source over the same feed, like a new consumer on the same queue), and how
/// each batch was settled.
#[derive(Default)]
pub struct Feed {
    pending: Mutex<VecDeque<Message>>,
    settled: Mutex<Vec<(Vec<i64>, String)>>,
}

impl Feed {
    pub fn with(messages: Vec<Message>) -> Arc<Feed> {
        Arc::new(Feed {
            pending: Mutex::new(messages.into()),
            settled: Mutex::default(),
        })
    }

    /// `(sequences, outcome)` of every settled batch, in order.
    pub fn settled(&self) -> Vec<(Vec<i64>, String)> {
        self.settled.lock().unwrap().clone()
    }
}

/// A source over a [`Feed`]: batches of up to `max_batch`, failing as its script says. An
/// unsettled batch (the source dropped, as after a crash) goes back to the feed, like an
/// AMQP broker requeueing unacknowledged deliveries.
pub struct ScriptedSource {
    feed: Arc<Feed>,
    max_batch: usize,
    script: SourceScript,
    calls: usize,
    outstanding: Option<Vec<Message>>,
}

impl ScriptedSource {
    pub fn new(feed: Arc<Feed>, max_batch: usize, script: SourceScript) -> ScriptedSource {
        ScriptedSource {
            feed,
            max_batch,
            script,
            calls: 0,
            outstanding: None,
        }
    }

    fn give_back(&mut self) {
        if let Some(batch) = self.outstanding.take() {
            let mut pending = self.feed.pending.lock().unwrap();
            for m in batch.into_iter().rev() {
                pending.push_front(m);
            }
        }
    }
}

impl Drop for ScriptedSource {
    fn drop(&mut self) {
        self.give_back();
    }
}

#[async_trait]
impl Source for ScriptedSource {
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        let n = self.calls;
        self.calls += 1;
        if let Some(e) = (self.script)(n) {
            return Err(e);
        }
        loop {
            let taken: Vec<Message> = {
                let mut pending = self.feed.pending.lock().unwrap();
                let n = pending.len().min(self.max_batch);
                pending.drain(..n).collect()
            };
            if !taken.is_empty() {
                self.outstanding = Some(taken.clone());
                let receipts = (0..taken.len() as u64).collect();
                return Ok(Some(SourceBatch {
                    messages: taken,
                    receipts,
                }));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn settle(&mut self, batch: SourceBatch, outcome: Outcome) -> Result<(), SourceError> {
        let sequences = batch.messages.iter().map(|m| m.sequence).collect();
        let label = match &outcome {
            Outcome::Delivered => "delivered",
            Outcome::Retry => "retry",
            Outcome::Poison { .. } => "poison",
            Outcome::Partly { .. } => "partly",
        };
        self.feed
            .settled
            .lock()
            .unwrap()
            .push((sequences, label.to_owned()));
        if outcome == Outcome::Retry {
            self.give_back();
        }
        self.outstanding = None;
        Ok(())
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        self.give_back();
        Ok(())
    }
}
