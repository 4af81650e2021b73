//! The webhook (push) sink: POSTs RESO payloads to a consumer endpoint as a polite producer.
//!
//! `send` returns `Ok` once every event of the batch is settled: answered 2xx by the consumer,
//! or written durably to the dead-letter topic (events the consumer refuses on their own —
//! a refused batch is split until they are isolated —, oversized events, and under
//! `on_exhausted = "dead_letter"` batches that kept failing). Retries happen here, in place, so
//! the caller keeps at most one batch in flight per partition and order holds across retries.
//! `send` fails only when the bridge shuts down mid-retry (the caller then does not acknowledge
//! the batch, and it is delivered again after the restart).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::{HeaderValue, CONTENT_TYPE};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batch;
use super::config::{OnExhausted, PushSinkConfig};
use super::peers::{Peer, Peers};
use crate::connector::{count_by_resource, BatchHint, Message, Sink, SinkError};
use crate::dead_letter::{DeadLetter, DeadLetterInfo, DeadRecord};
use crate::metrics::Metrics;
use crate::outbound::answer::{classify, status_class, Verdict};
use crate::outbound::auth::{Auth, AuthBuildError, Token};
use crate::outbound::limit::Endpoint;
use crate::runtime::retry::{until_ok, Budget};

pub use crate::outbound::USER_AGENT;

/// Why the sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PushBuildError {
    /// Token or client secret unreadable, or a bad token URL.
    #[error(transparent)]
    Auth(#[from] AuthBuildError),
    /// The HTTP client could not be set up.
    #[error("HTTP client: {0}")]
    Client(String),
    /// The dead-letter writer could not be built.
    #[error("dead_letter: {0}")]
    DeadLetter(#[from] crate::dead_letter::DeadLetterBuildError),
}

/// POSTs batches to one consumer endpoint.
pub struct PushSink {
    connector: String,
    url: reqwest::Url,
    client: reqwest::Client,
    auth: Auth,
    endpoint: Endpoint,
    config: PushSinkConfig,
    static_label: Option<HeaderValue>,
    dead_letter: DeadLetter,
    peers: Peers,
    metrics: Metrics,
    stop: CancellationToken,
}

impl PushSinkConfig {
    /// Builds the sink; `stop` cuts retry waits short at shutdown.
    pub fn build(
        &self,
        connector: &str,
        metrics: Metrics,
        stop: CancellationToken,
    ) -> Result<PushSink, PushBuildError> {
        let url =
            reqwest::Url::parse(&self.url).map_err(|e| PushBuildError::Client(e.to_string()))?;
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(Duration::from_millis(self.request_timeout_ms))
            .connect_timeout(Duration::from_millis(self.connect_timeout_ms))
            // A redirected POST may turn into a GET that "succeeds": never follow.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| PushBuildError::Client(e.to_string()))?;
        let static_label = self
            .entity_event_source
            .as_deref()
            .map(|l| HeaderValue::from_str(l).map_err(|e| PushBuildError::Client(e.to_string())))
            .transpose()?;
        Ok(PushSink {
            connector: connector.to_owned(),
            url,
            client,
            auth: Auth::build(&self.auth, connector)?,
            endpoint: Endpoint::new(&self.limits, self.max_events),
            config: self.clone(),
            static_label,
            dead_letter: self.dead_letter.build(connector, metrics.clone())?,
            peers: Peers::new(Duration::from_millis(self.not_ready_after_ms)),
            metrics,
            stop,
        })
    }
}

/// A chunk the consumer refused as poison: its answer and the POSTs it took.
struct Refused {
    status: Option<u16>,
    attempts: u32,
}

fn shutting_down() -> SinkError {
    SinkError::Unavailable {
        reason: "shutting down; the batch will be delivered after the restart".into(),
    }
}

impl PushSink {
    /// Runs `fut` unless shutdown comes first.
    async fn unless_stopped<T>(
        &self,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, SinkError> {
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => Err(shutting_down()),
            out = fut => Ok(out),
        }
    }

    /// One POST; the verdict and the HTTP status when there was an answer.
    async fn post(
        &self,
        body: &Bytes,
        token: &Token,
        label: Option<&HeaderValue>,
        events: usize,
    ) -> (Verdict, Option<u16>) {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .bearer_auth(token.value.expose())
            .body(body.clone());
        if let Some(label) = label {
            request = request.header("EntityEventSource", label.clone());
        }
        self.metrics.push_batch_events(&self.connector, events);
        let started = Instant::now();
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let verdict = classify(
                    status,
                    response.headers(),
                    Duration::from_secs(self.config.retry.max_retry_after_seconds),
                    SystemTime::now(),
                );
                // Read the answer so the connection can be reused, but only up to a cap: its
                // content is unused, and a consumer streaming gigabytes must not hold the lane.
                let _ = crate::outbound::capped::read_capped(
                    response,
                    crate::outbound::capped::MAX_RESPONSE_BYTES,
                )
                .await;
                let seconds = started.elapsed().as_secs_f64();
                self.metrics
                    .push_request(&self.connector, status_class(status), seconds);
                (verdict, Some(status.as_u16()))
            }
            Err(e) => {
                let cause = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "transport"
                };
                let seconds = started.elapsed().as_secs_f64();
                self.metrics.push_request(&self.connector, "error", seconds);
                tracing::warn!(connector = %self.connector, error = %e.without_url(), cause, "POST failed");
                (Verdict::Retry { cause }, None)
            }
        }
    }

    /// Records whether the consumer endpoint works: delivered, refused or throttling (429) is
    /// an answer; no answer, a 5xx (with or without `Retry-After`) or a refused token is not.
    fn track_consumer(&self, verdict: Verdict, status: Option<u16>) {
        match (verdict, status) {
            (_, Some(429)) => self.peers.answered(Peer::Consumer),
            (Verdict::Retry { cause }, None) => self.peers.failed(Peer::Consumer, cause),
            (Verdict::Retry { .. } | Verdict::Throttled { .. }, Some(status)) => self
                .peers
                .failed(Peer::Consumer, format_args!("HTTP {status}")),
            (Verdict::Unauthorized, _) => {
                (self.peers).failed(Peer::Consumer, "it refuses the token (HTTP 401)")
            }
            _ => self.peers.answered(Peer::Consumer),
        }
    }

    /// Delivers one chunk. When the consumer refuses it as poison (a 4xx), its halves are
    /// delivered in order, down to single events: only the events the consumer refuses on
    /// their own are dead-lettered (each with its own answer), and their good neighbours are
    /// delivered, in order. A batch with one bad event among n costs about 2·log2(n) extra POSTs.
    fn deliver<'a>(&'a self, chunk: &'a [Message]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let Refused { status, attempts } = match self.attempt(chunk).await? {
                None => return Ok(()),
                Some(refused) => refused,
            };
            if chunk.len() > 1 {
                self.metrics.push_retry(&self.connector, "isolating_poison");
                tracing::info!(connector = %self.connector, status, events = chunk.len(), "consumer refused the batch; delivering its halves to isolate the refused events");
                let (first, second) = chunk.split_at(chunk.len() / 2);
                self.deliver(first).await?;
                return self.deliver(second).await;
            }
            let detail = format!("consumer answered HTTP {}", status.unwrap_or_default());
            let info = DeadLetterInfo {
                reason: "rejected",
                detail: &detail,
                http_status: status,
                attempts,
            };
            self.dead_letter(chunk, info).await
        })
    }

    /// Sends one chunk, retrying in place until it is delivered (`None`), refused as poison
    /// (`Some`), or dead-lettered after exhausted retries (`None`).
    async fn attempt(&self, chunk: &[Message]) -> Result<Option<Refused>, SinkError> {
        let body = batch::body(chunk);
        let label = self.static_label.clone().or_else(|| {
            chunk[0]
                .source_label
                .as_deref()
                .and_then(|l| HeaderValue::from_str(l).ok())
        });
        let retry = &self.config.retry;
        let mut backoff = retry.backoff();
        // Time spent waiting for the endpoint (a consumer's `Retry-After` pause, rate limits)
        // does not count toward `max_retry_duration_ms`.
        let mut budget = Budget::new(Duration::from_millis(retry.max_retry_duration_ms));
        let mut attempts = 0u32;
        let mut refreshed = false;
        loop {
            let asked = Instant::now();
            let permit = self
                .unless_stopped(self.endpoint.acquire(chunk.len()))
                .await?;
            budget.waited(asked.elapsed());
            let (verdict, status) = match self.unless_stopped(self.auth.token()).await? {
                Ok(token) => {
                    self.peers.answered(Peer::Token);
                    attempts += 1;
                    let (verdict, status) =
                        self.post(&body, &token, label.as_ref(), chunk.len()).await;
                    self.track_consumer(verdict, status);
                    if verdict == Verdict::Unauthorized
                        && !refreshed
                        && self.auth.invalidate(&token)
                    {
                        // A fresh token gets one immediate retry.
                        refreshed = true;
                        self.metrics.push_retry(&self.connector, "token_refresh");
                        tracing::info!(connector = %self.connector, "consumer refused the token; refreshing it");
                        continue;
                    }
                    (verdict, status)
                }
                Err(e) => {
                    self.peers.failed(Peer::Token, &e);
                    (Verdict::Retry { cause: "auth" }, None)
                }
            };
            drop(permit);
            let cause = match verdict {
                Verdict::Delivered => {
                    count_by_resource(chunk, |resource, n| {
                        self.metrics
                            .push_events_delivered(&self.connector, resource, n)
                    });
                    return Ok(None);
                }
                Verdict::Throttled { pause } => {
                    let pause = pause.max(backoff.next_cap());
                    self.endpoint.pause(pause);
                    let status = status.unwrap_or_default();
                    self.metrics
                        .push_throttled(&self.connector, status, pause.as_secs_f64());
                    self.metrics.push_retry(&self.connector, "throttled");
                    tracing::info!(connector = %self.connector, status, pause_seconds = pause.as_secs_f64(), "consumer asked to pause; endpoint paused");
                    continue;
                }
                Verdict::Poison => return Ok(Some(Refused { status, attempts })),
                Verdict::Unauthorized => "unauthorized",
                Verdict::Retry { cause } => cause,
            };
            refreshed = false;
            let exhausted = budget.failed();
            if retry.on_exhausted == OnExhausted::DeadLetter && exhausted {
                let detail = format!("still failing after {attempts} attempts ({cause})");
                let info = DeadLetterInfo {
                    reason: "retries_exhausted",
                    detail: &detail,
                    http_status: status,
                    attempts,
                };
                return self.dead_letter(chunk, info).await.map(|()| None);
            }
            let delay = backoff.next_delay();
            self.metrics.push_retry(&self.connector, cause);
            tracing::warn!(connector = %self.connector, cause, status, attempts, events = chunk.len(), delay_ms = delay.as_millis() as u64, "POST failed; retrying the same batch");
            self.unless_stopped(tokio::time::sleep(delay)).await?;
        }
    }

    /// Writes `events` to the dead-letter destination, retrying that write until it succeeds.
    async fn dead_letter(
        &self,
        events: &[Message],
        info: DeadLetterInfo<'_>,
    ) -> Result<(), SinkError> {
        let records: Vec<DeadRecord<'_>> = events.iter().map(DeadRecord::from).collect();
        let records = &records;
        let written = until_ok(
            self.config.retry.backoff(),
            &self.stop,
            "dead-letter write",
            &self.connector,
            || async move {
                let result = self.dead_letter.write(records, info).await;
                match &result {
                    Ok(()) => self.peers.answered(Peer::DeadLetter),
                    Err(e) => self.peers.failed(Peer::DeadLetter, e),
                }
                result
            },
        )
        .await;
        written.ok_or_else(shutting_down)
    }
}

impl PushSink {
    /// Sends `batch` in chunks within `max_events` / `max_bytes` (one label per chunk), each
    /// delivered or dead-lettered before the next.
    async fn send_chunks(&self, batch: &[Message]) -> Result<(), SinkError> {
        let split_on_label = self.static_label.is_none();
        for chunk in batch::chunks(
            batch,
            self.config.max_events,
            self.config.max_bytes,
            split_on_label,
        ) {
            let events = &batch[chunk.range];
            if chunk.oversized {
                let detail = format!(
                    "event of {} bytes exceeds max_bytes = {}",
                    events[0].payload.len(),
                    self.config.max_bytes
                );
                let info = DeadLetterInfo {
                    reason: "too_large",
                    detail: &detail,
                    http_status: None,
                    attempts: 0,
                };
                self.dead_letter(events, info).await?;
            } else {
                self.deliver(events).await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for PushSink {
    async fn send(&self, batch: &[Message]) -> Result<(), SinkError> {
        self.send_chunks(batch).await
    }

    /// Ready unless the consumer endpoint, the token endpoint or the dead-letter destination
    /// has kept failing for `not_ready_after_ms` (see [`super::peers`]): probing a consumer
    /// would mean POSTing data, so readiness is judged from the traffic itself.
    async fn ready(&self) -> Result<(), SinkError> {
        self.peers
            .ready()
            .map_err(|reason| SinkError::Unavailable { reason })
    }

    async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        self.dead_letter
            .flush(timeout)
            .await
            .map_err(|e| SinkError::Unavailable {
                reason: e.to_string(),
            })
    }

    fn batch_hint(&self) -> BatchHint {
        BatchHint {
            max_events: self.config.max_events,
            max_bytes: self.config.max_bytes,
            linger: Duration::from_millis(self.config.linger_ms),
        }
    }
}
