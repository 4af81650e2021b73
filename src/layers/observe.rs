//! The innermost sink layer: [`Observed`] records the publish metrics of every `send`, once, in one vocabulary:
//! `entity_bridge_publish_duration_seconds{outcome}` (`ok`, `rejected`, `overloaded`,
//! `unavailable`) and, on success, `entity_bridge_events_published_total{resource}`. Every
//! connector's sink is built wrapped in it (`app`), whichever source feeds it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::connector::{count_by_resource, BatchHint, Message, Sink, SinkError};
use crate::metrics::Metrics;

/// Records the publish metrics of the sink it wraps.
pub struct Observed {
    inner: Arc<dyn Sink>,
    connector: String,
    metrics: Metrics,
}

impl Observed {
    /// Wraps `inner`, the sink of `connector`.
    pub fn new(connector: &str, inner: Arc<dyn Sink>, metrics: Metrics) -> Observed {
        Observed {
            inner,
            connector: connector.to_owned(),
            metrics,
        }
    }
}

#[async_trait]
impl Sink for Observed {
    async fn send(&self, batch: &[Message]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return self.inner.send(batch).await;
        }
        let started = Instant::now();
        let result = self.inner.send(batch).await;
        let outcome = result.as_ref().err().map_or("ok", SinkError::outcome);
        let seconds = started.elapsed().as_secs_f64();
        self.metrics
            .publish_duration(&self.connector, outcome, seconds);
        if result.is_ok() {
            count_by_resource(batch, |resource, n| {
                self.metrics.events_published(&self.connector, resource, n)
            });
        }
        result
    }

    async fn ready(&self) -> Result<(), SinkError> {
        self.inner.ready().await
    }

    async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        self.inner.flush(timeout).await
    }

    fn batch_hint(&self) -> BatchHint {
        self.inner.batch_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::RejectKind;

    struct Scripted(Option<SinkError>);

    #[async_trait]
    impl Sink for Scripted {
        async fn send(&self, _: &[Message]) -> Result<(), SinkError> {
            match &self.0 {
                None => Ok(()),
                Some(SinkError::Rejected { index, .. }) => Err(SinkError::Rejected {
                    index: *index,
                    field: None,
                    detail: "bad".into(),
                    kind: RejectKind::Unroutable,
                }),
                Some(_) => Err(SinkError::Unavailable {
                    reason: "down".into(),
                }),
            }
        }
        async fn ready(&self) -> Result<(), SinkError> {
            Ok(())
        }
        async fn flush(&self, _: Duration) -> Result<(), SinkError> {
            Ok(())
        }
        fn batch_hint(&self) -> BatchHint {
            BatchHint {
                max_events: 7,
                ..BatchHint::default()
            }
        }
    }

    fn message(resource: &str) -> Message {
        Message {
            delete: false,
            conflict: None,
            sequence: 1,
            resource_name: resource.into(),
            record_key: "k".into(),
            source_label: None,
            payload: bytes::Bytes::new(),
            origin: None,
        }
    }

    #[tokio::test]
    async fn records_each_send_once_with_its_outcome() {
        let metrics = Metrics::new();
        let batch = [message("Property"), message("Media"), message("Property")];
        let ok = Observed::new("c", Arc::new(Scripted(None)), metrics.clone());
        ok.send(&batch).await.unwrap();
        assert_eq!(ok.batch_hint().max_events, 7, "the hint passes through");
        let down = Scripted(Some(SinkError::Unavailable {
            reason: String::new(),
        }));
        let down = Observed::new("c", Arc::new(down), metrics.clone());
        down.send(&batch).await.unwrap_err();
        let text = metrics.encode();
        for line in [
            "entity_bridge_publish_duration_seconds_count{connector=\"c\",outcome=\"ok\"} 1",
            "entity_bridge_publish_duration_seconds_count{connector=\"c\",outcome=\"unavailable\"} 1",
            "entity_bridge_events_published_total{connector=\"c\",resource=\"Property\"} 2",
            "entity_bridge_events_published_total{connector=\"c\",resource=\"Media\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
