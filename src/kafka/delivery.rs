//! One delivery answer per batch, counted down in librdkafka's delivery callback.
//!
//! The plain `FutureProducer` gives every record its own oneshot channel and future: a push of
//! 100 events allocates 200 objects, polls 100 futures and can wake the waiting request up to
//! 100 times from librdkafka's polling thread. The sink only needs one answer per batch — did
//! every record land, and if not, which one failed first — so [`SinkContext`] routes each
//! report to its [`Batch`], and the batch wakes its waiter once, when the last report is in.
//! Profiling `bench ingress-kafka` showed the per-record futures at about 10 % of the bridge's
//! CPU (see `docs/benchmarks.md`).

use std::sync::{Arc, Mutex};

use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use tokio::sync::oneshot;

/// The Kafka sink's producer context: hands each delivery report to the batch it belongs to.
/// Logging and error callbacks keep rdkafka's defaults (forwarded to `tracing`).
pub struct SinkContext;

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Report>;

    fn delivery(&self, result: &DeliveryResult<'_>, report: Box<Report>) {
        let error = result.as_ref().err().map(|(e, _)| e.clone());
        report.batch.record(report.index, error);
    }
}

/// What a batch's waiter learns: every record delivered, or the first failed record (by index
/// in the batch) and why.
pub type Outcome = Result<(), (usize, KafkaError)>;

/// Which record of which batch a delivery report is for (librdkafka's per-message opaque).
pub struct Report {
    batch: Arc<Batch>,
    index: usize,
}

/// The delivery reports still expected for one batch.
pub struct Batch {
    state: Mutex<State>,
}

struct State {
    remaining: usize,
    first_failure: Option<(usize, KafkaError)>,
    done: Option<oneshot::Sender<Outcome>>,
}

impl Batch {
    /// A batch of `len` records, and the receiver that gets its outcome once all `len` reports
    /// are in. If fewer records are enqueued (the producer refused one), the receiver never
    /// completes; the caller returns the enqueue error instead of waiting.
    pub fn new(len: usize) -> (Arc<Batch>, oneshot::Receiver<Outcome>) {
        let (done, outcome) = oneshot::channel();
        let batch = Arc::new(Batch {
            state: Mutex::new(State {
                remaining: len,
                first_failure: None,
                done: Some(done),
            }),
        });
        (batch, outcome)
    }

    /// The opaque for record `index`, to pass with the record to librdkafka.
    pub fn report(self: &Arc<Self>, index: usize) -> Box<Report> {
        Box::new(Report {
            batch: self.clone(),
            index,
        })
    }

    fn record(&self, index: usize, error: Option<KafkaError>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(error) = error {
            if state.first_failure.as_ref().is_none_or(|(i, _)| index < *i) {
                state.first_failure = Some((index, error));
            }
        }
        state.remaining = state.remaining.saturating_sub(1);
        if state.remaining == 0 {
            let outcome = state.first_failure.take().map_or(Ok(()), Err);
            if let Some(done) = state.done.take() {
                // The waiter may have given up (timeout, cancelled request): nothing to tell.
                let _ = done.send(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    fn failed(code: RDKafkaErrorCode) -> Option<KafkaError> {
        Some(KafkaError::MessageProduction(code))
    }

    #[tokio::test]
    async fn answers_once_after_the_last_report() {
        let (batch, mut outcome) = Batch::new(3);
        batch.record(2, None);
        batch.record(0, None);
        assert!(outcome.try_recv().is_err(), "two of three reports are in");
        batch.record(1, None);
        assert!(matches!(outcome.await, Ok(Ok(()))));
    }

    #[tokio::test]
    async fn reports_the_lowest_failed_index_whatever_the_order() {
        let (batch, outcome) = Batch::new(4);
        batch.record(3, failed(RDKafkaErrorCode::MessageTimedOut));
        batch.record(0, None);
        batch.record(1, failed(RDKafkaErrorCode::MessageSizeTooLarge));
        batch.record(2, None);
        match outcome.await {
            Ok(Err((1, KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)))) => {}
            other => panic!("expected record 1 too large, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_partly_enqueued_batch_never_answers() {
        let (batch, mut outcome) = Batch::new(2);
        let report = batch.report(0);
        report.batch.record(report.index, None);
        assert!(outcome.try_recv().is_err());
    }
}
