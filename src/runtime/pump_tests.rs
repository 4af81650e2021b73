//! The pump with scripted sinks and sources: poison isolation and retries in place.

use super::*;

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::connector::{RejectKind, SourceBatch};

fn message(sequence: i64, key: &str, resource: &str) -> Message {
    Message {
        delete: false,
        conflict: None,
        sequence,
        resource_name: resource.into(),
        record_key: key.into(),
        source_label: None,
        payload: Bytes::new(),
        origin: None,
    }
}

/// A sink that refuses any batch holding a `Bad` event, naming it (`named`) or not.
struct Refusing {
    named: bool,
    delivered: Mutex<Vec<i64>>,
    sends: Mutex<usize>,
}

#[async_trait]
impl Sink for Refusing {
    async fn send(&self, batch: &[Message]) -> Result<(), SinkError> {
        *self.sends.lock().unwrap() += 1;
        if let Some(index) = batch.iter().position(|m| m.resource_name == "Bad") {
            return Err(SinkError::Rejected {
                index: if self.named { index } else { usize::MAX },
                field: Some("ResourceName"),
                detail: format!("event {} is bad", batch[index].sequence),
                kind: RejectKind::Unroutable,
            });
        }
        let mut delivered = self.delivered.lock().unwrap();
        delivered.extend(batch.iter().map(|m| m.sequence));
        Ok(())
    }
    async fn ready(&self) -> Result<(), SinkError> {
        Ok(())
    }
    async fn flush(&self, _: Duration) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A source of one batch that records how it was settled.
struct OneBatch {
    batch: Option<SourceBatch>,
    settled: Arc<Mutex<Vec<Outcome>>>,
}

#[async_trait]
impl Source for OneBatch {
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        Ok(self.batch.take())
    }
    async fn settle(&mut self, _: SourceBatch, outcome: Outcome) -> Result<(), SourceError> {
        self.settled.lock().unwrap().push(outcome);
        Ok(())
    }
    async fn close(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}

async fn run(named: bool, bad: &[i64]) -> (Vec<i64>, Vec<Outcome>, usize) {
    let messages: Vec<Message> = (1..=100)
        .map(|s| {
            let resource = if bad.contains(&s) { "Bad" } else { "Property" };
            message(s, &format!("k{}", s % 3), resource)
        })
        .collect();
    let receipts = (1..=100).collect();
    let settled = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::new(Refusing {
        named,
        delivered: Mutex::new(Vec::new()),
        sends: Mutex::new(0),
    });
    let pump = Pump {
        connector: "t".into(),
        source: Box::new(OneBatch {
            batch: Some(SourceBatch { messages, receipts }),
            settled: settled.clone(),
        }),
        sink: sink.clone(),
        retry: RetryConfig::default(),
        metrics: Metrics::new(),
        health: Health::new("t", crate::runtime::Readiness::Gate, Metrics::new()),
    };
    pump.run(CancellationToken::new()).await.unwrap();
    let delivered = sink.delivered.lock().unwrap().clone();
    let sends = *sink.sends.lock().unwrap();
    let outcomes = settled.lock().unwrap().clone();
    (delivered, outcomes, sends)
}

/// Regression: one poison event in a batch of 100 dead-lettered all 100.
#[tokio::test]
async fn poison_events_are_isolated_and_their_neighbours_delivered_in_order() {
    for named in [true, false] {
        for bad in [vec![37], vec![1, 50, 100]] {
            let (delivered, outcomes, sends) = run(named, &bad).await;
            let good: Vec<i64> = (1..=100).filter(|s| !bad.contains(s)).collect();
            assert_eq!(delivered, good, "named {named}, bad {bad:?}");
            let indices: Vec<usize> = bad.iter().map(|s| (*s - 1) as usize).collect();
            match &outcomes[..] {
                [Outcome::Partly { poison }] => {
                    assert_eq!(poison.iter().map(|(i, _)| *i).collect::<Vec<_>>(), indices);
                    assert!(poison.iter().all(|(_, why)| why.contains("is bad")));
                }
                other => panic!("{other:?}"),
            }
            // Named rejections cost about two sends per poison event; halving about
            // 2·log2(100) per poison event.
            let bound = if named {
                1 + 2 * bad.len()
            } else {
                1 + 16 * bad.len()
            };
            assert!(sends <= bound, "{sends} sends for {bad:?} (named {named})");
        }
    }
    let (delivered, outcomes, _) = run(true, &[]).await;
    assert_eq!(delivered.len(), 100);
    assert_eq!(outcomes, vec![Outcome::Delivered]);
}

/// A sink that fails its first `failures` sends as unavailable, then accepts.
struct Flaky {
    failures: usize,
    sends: Mutex<usize>,
    delivered: Mutex<Vec<i64>>,
}

#[async_trait]
impl Sink for Flaky {
    async fn send(&self, batch: &[Message]) -> Result<(), SinkError> {
        let mut sends = self.sends.lock().unwrap();
        *sends += 1;
        if *sends <= self.failures {
            return Err(SinkError::Unavailable {
                reason: "bus down".into(),
            });
        }
        self.delivered
            .lock()
            .unwrap()
            .extend(batch.iter().map(|m| m.sequence));
        Ok(())
    }
    async fn ready(&self) -> Result<(), SinkError> {
        Ok(())
    }
    async fn flush(&self, _: Duration) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Regression: a failed batch was handed back to the source (AMQP: nack + requeue), so the
/// deliveries prefetched behind it overtook it and per-key order broke.
#[tokio::test(start_paused = true)]
async fn a_failed_batch_is_retried_in_place_and_settled_once() {
    let messages: Vec<Message> = (1..=10).map(|s| message(s, "k", "Property")).collect();
    let settled = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::new(Flaky {
        failures: 2,
        sends: Mutex::new(0),
        delivered: Mutex::new(Vec::new()),
    });
    let metrics = Metrics::new();
    let health = Health::new("t", crate::runtime::Readiness::Gate, metrics.clone());
    let pump = Pump {
        connector: "t".into(),
        source: Box::new(OneBatch {
            batch: Some(SourceBatch {
                messages,
                receipts: (1..=10).collect(),
            }),
            settled: settled.clone(),
        }),
        sink: sink.clone(),
        retry: RetryConfig::default(),
        metrics: metrics.clone(),
        health: health.clone(),
    };
    pump.run(CancellationToken::new()).await.unwrap();
    assert_eq!(
        *settled.lock().unwrap(),
        vec![Outcome::Delivered],
        "settled once"
    );
    assert_eq!(
        *sink.delivered.lock().unwrap(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(*sink.sends.lock().unwrap(), 3);
    let text = metrics.encode();
    assert!(
        text.contains("entity_bridge_pump_events_total{connector=\"t\",outcome=\"retried\"} 20"),
        "{text}"
    );
    // The sink failed, then delivered: degraded in between, running now, the error kept.
    let snap = health.snapshot();
    assert_eq!(snap.state, crate::runtime::State::Running);
    assert_eq!(
        snap.last_error.as_deref(),
        Some("sink: sink unavailable: bus down")
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_a_retry_hands_the_batch_back() {
    let settled = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::new(Flaky {
        failures: usize::MAX,
        sends: Mutex::new(0),
        delivered: Mutex::new(Vec::new()),
    });
    let pump = Pump {
        connector: "t".into(),
        source: Box::new(OneBatch {
            batch: Some(SourceBatch {
                messages: vec![message(1, "k", "Property")],
                receipts: vec![1],
            }),
            settled: settled.clone(),
        }),
        sink,
        retry: RetryConfig::default(),
        metrics: Metrics::new(),
        health: Health::new("t", crate::runtime::Readiness::Gate, Metrics::new()),
    };
    let cancel = CancellationToken::new();
    let run = tokio::spawn(pump.run(cancel.clone()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(*settled.lock().unwrap(), vec![Outcome::Retry]);
}

/// A source whose batches can never be settled (its dead-letter destination is down): it
/// hands out the same batch again at once, and counts how often.
struct NeverSettles {
    taken: Arc<Mutex<usize>>,
}

#[async_trait]
impl Source for NeverSettles {
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        let mut taken = self.taken.lock().unwrap();
        *taken += 1;
        // Ends a pump that spins, so that the test fails instead of hanging.
        if *taken > 1000 {
            return Ok(None);
        }
        Ok(Some(SourceBatch {
            messages: vec![message(1, "k", "Property")],
            receipts: vec![1],
        }))
    }
    async fn settle(&mut self, _: SourceBatch, _: Outcome) -> Result<(), SourceError> {
        Err(SourceError::Unavailable(
            "dead-letter destination down".into(),
        ))
    }
    async fn close(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// Regression: a settle that failed was followed by the next batch at once, so a poll source
/// whose dead letter was down asked its producer for the same page every 25 ms.
#[tokio::test(start_paused = true)]
async fn a_failing_settle_backs_off_instead_of_spinning() {
    let taken = Arc::new(Mutex::new(0));
    let pump = Pump {
        connector: "t".into(),
        source: Box::new(NeverSettles {
            taken: taken.clone(),
        }),
        sink: Arc::new(Refusing {
            named: true,
            delivered: Mutex::new(Vec::new()),
            sends: Mutex::new(0),
        }),
        retry: RetryConfig::default(),
        metrics: Metrics::new(),
        health: Health::new("t", crate::runtime::Readiness::Gate, Metrics::new()),
    };
    let cancel = CancellationToken::new();
    let run = tokio::spawn(pump.run(cancel.clone()));
    tokio::time::sleep(Duration::from_secs(10)).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    let taken = *taken.lock().unwrap();
    // Full-jitter exponential backoff from the default minimum: a handful of tries, not
    // thousands.
    assert!((2..=30).contains(&taken), "{taken} batches taken in 10 s");
}
