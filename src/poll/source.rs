//! The poll source: asks a producer for the events after its checkpoint, page by page, and
//! hands each page to the [`crate::runtime::pump::Pump`] as one batch.
//!
//! Delivery: the checkpoint (the highest sequence of the page) moves, durably, only when the
//! pump settles the page — delivered, or its poison events dead-lettered. A retryable sink
//! failure is retried in place by the pump; a restart asks again from the checkpoint, so a page
//! may be delivered twice, never skipped. Events of a page that are not valid EntityEvents are
//! dead-lettered before the page is handed over (a bad event never holds its neighbours).
//!
//! Paging: a RESO producer's `@odata.nextLink` is followed (same origin only: the bearer token
//! must not travel to another host), else the next request filters on the checkpoint. A full
//! page is followed by the next request at once (within the rate limit); a short page means
//! caught up: the next poll waits `idle_interval_ms`. A failing request (5xx, timeout, 429)
//! is retried with the pump's exponential backoff with full jitter, and a `Retry-After` pauses
//! every request until it ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::checkpoint::Checkpoint;
use super::config::{EventMapping, PollStart};
use super::page::{parse_reso_page, Page};
use crate::connector::{Message, Outcome, Source, SourceBatch, SourceError};
use crate::dead_letter::{DeadLetter, DeadLetterInfo, DeadRecord};
use crate::event::ParseOptions;
use crate::metrics::Metrics;
use crate::outbound::get::{GetClient, GetError};
use crate::outbound::percent_encode as encode;
use crate::runtime::{Health, Part};

/// Which API the producer speaks.
#[derive(Debug, Clone)]
pub enum Api {
    /// A RESO `EntityEvent` resource (OData).
    Reso,
    /// An events-after-sequence-id API, mapped.
    Events(Box<EventMapping>),
}

/// What the source is built from.
pub struct PollParts {
    /// The connector.
    pub connector: String,
    /// The API.
    pub api: Api,
    /// The endpoint.
    pub url: reqwest::Url,
    /// Extra query parameters of a first-page request.
    pub query: BTreeMap<String, String>,
    /// Events per request.
    pub page_size: usize,
    /// Wait once caught up.
    pub idle: Duration,
    /// Where a feed without checkpoint starts.
    pub start: PollStart,
    /// Event parsing limits.
    pub parse: ParseOptions,
    /// The producer client.
    pub client: GetClient,
    /// The checkpoint file.
    pub checkpoint: Checkpoint,
    /// Where invalid and refused events go.
    pub dead_letter: Arc<DeadLetter>,
    /// Metrics.
    pub metrics: Metrics,
    /// The connector's health.
    pub health: Health,
}

/// What settling the page in flight does.
struct Pending {
    last: i64,
    next_link: Option<String>,
    more: bool,
}

/// A running poll source.
pub struct PollSource {
    p: PollParts,
    topic: Arc<str>,
    /// The checkpoint; `None` until `start = "latest"` has asked for the newest event.
    position: Option<i64>,
    next_link: Option<String>,
    idle_until: Option<Instant>,
    pending: Option<Pending>,
}

impl PollSource {
    /// Opens the checkpoint; a feed without one starts where `start` says.
    pub async fn open(p: PollParts) -> Result<PollSource, SourceError> {
        let stored = (p.checkpoint.load().await).map_err(|e| SourceError::Fatal(e.to_string()))?;
        let position = match (stored, p.start) {
            (Some(s), _) => Some(s),
            (None, PollStart::Earliest) => Some(0),
            (None, PollStart::After(n)) => Some(n),
            (None, PollStart::Latest) => None,
        };
        if let Some(s) = position {
            p.metrics.poll_checkpoint(&p.connector, s);
        }
        tracing::info!(connector = %p.connector, checkpoint = position, file = %p.checkpoint.path().display(), "poll source open");
        let mut topic = p.url.clone();
        topic.set_query(None);
        Ok(PollSource {
            topic: Arc::from(topic.as_str()),
            p,
            position,
            next_link: None,
            idle_until: None,
            pending: None,
        })
    }

    /// The URL of the page after `position`, built from the configuration.
    fn first_url(&self, position: i64) -> String {
        let mut params: Vec<String> = Vec::new();
        match &self.p.api {
            Api::Reso => {
                params.push(format!(
                    "$filter=EntityEventSequence%20gt%20{position}&$orderby=EntityEventSequence%20asc&$top={}",
                    self.p.page_size
                ));
            }
            Api::Events(m) => {
                params.push(format!("{}={position}", encode(&m.after_param)));
                params.push(format!(
                    "{}={}",
                    encode(&m.page_size_param),
                    self.p.page_size
                ));
            }
        }
        for (k, v) in &self.p.query {
            params.push(format!("{}={}", encode(k), encode(v)));
        }
        let mut url = self.p.url.clone();
        let query = match url.query() {
            Some(q) if !q.is_empty() => format!("{q}&{}", params.join("&")),
            _ => params.join("&"),
        };
        url.set_query(Some(&query));
        url.into()
    }

    /// A next link of the producer's, resolved; `None` (and a warning) for another origin.
    fn same_origin(&self, link: &str) -> Option<String> {
        let resolved = self.p.url.join(link).ok()?;
        if resolved.origin() == self.p.url.origin() {
            Some(resolved.into())
        } else {
            tracing::warn!(connector = %self.p.connector, "the producer's @odata.nextLink points to another origin; not followed (paging by sequence instead)");
            None
        }
    }

    /// Asks for the newest event (`start = "latest"`).
    async fn latest(&self) -> Result<i64, SourceError> {
        // The endpoint's own and the configured query parameters are kept (an API key, a
        // tenant), so "latest" is asked of the same event set.
        let mut url = self.p.url.clone();
        let mut query: Vec<String> = url.query().map(str::to_owned).into_iter().collect();
        query.extend((self.p.query.iter()).map(|(k, v)| format!("{}={}", encode(k), encode(v))));
        query.push("$orderby=EntityEventSequence%20desc&$top=1".to_owned());
        url.set_query(Some(&query.join("&")));
        let mut answer = self.p.client.get(url.as_str()).await.map_err(unavailable)?;
        let page = parse_reso_page(&answer.body, 0, self.p.parse, &self.topic).map_err(|e| {
            answer.unusable("invalid_page");
            SourceError::Unavailable(e.to_string())
        })?;
        Ok(page.last_sequence.unwrap_or(0))
    }

    /// Moves the checkpoint after a settled page.
    async fn advance(&mut self, pending: Pending) -> Result<(), SourceError> {
        let position = self.position.unwrap_or(0);
        if pending.last > position {
            (self.p.checkpoint.store(pending.last).await)
                .map_err(|e| SourceError::Unavailable(e.to_string()))?;
            self.position = Some(pending.last);
            self.p
                .metrics
                .poll_checkpoint(&self.p.connector, pending.last);
        }
        self.next_link = pending.next_link;
        if !pending.more {
            self.idle_until = Some(Instant::now() + self.p.idle);
        }
        Ok(())
    }

    async fn dead_letter_invalid(&self, page: &Page) -> Result<(), SourceError> {
        for bad in &page.invalid {
            let record = DeadRecord {
                payload: &bad.raw,
                sequence: bad.sequence,
                origin: None,
                ..DeadRecord::default()
            };
            let info = DeadLetterInfo {
                reason: "unparseable",
                detail: &bad.reason,
                http_status: None,
                attempts: 1,
            };
            (self.p.dead_letter.write(&[record], info).await)
                .map_err(|e| SourceError::Unavailable(e.to_string()))?;
        }
        Ok(())
    }

    async fn dead_letter(&self, messages: &[&Message], reason: &str) -> Result<(), SourceError> {
        let records: Vec<DeadRecord<'_>> = messages.iter().map(|m| DeadRecord::from(*m)).collect();
        let info = DeadLetterInfo {
            reason: "rejected",
            detail: reason,
            http_status: None,
            attempts: 1,
        };
        (self.p.dead_letter.write(&records, info).await)
            .map_err(|e| SourceError::Unavailable(e.to_string()))
    }

    /// Fetches and parses the next page; `None` when the page needs no delivery (it was
    /// empty or held nothing to publish, and the checkpoint moved past it).
    async fn poll_once(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        let position = match self.position {
            Some(p) => p,
            None => {
                let latest = self.latest().await?;
                // Stored at once: a restart before the first event must resume here, not ask
                // for "latest" again and skip what arrived meanwhile.
                (self.p.checkpoint.store(latest).await)
                    .map_err(|e| SourceError::Unavailable(e.to_string()))?;
                tracing::info!(connector = %self.p.connector, latest, "starting after the producer's newest event");
                self.p.metrics.poll_checkpoint(&self.p.connector, latest);
                self.position = Some(latest);
                latest
            }
        };
        let following = self.next_link.is_some();
        let url = match &self.next_link {
            Some(link) => link.clone(),
            None => self.first_url(position),
        };
        let mut answer = match self.p.client.get(&url).await {
            Ok(answer) => answer,
            Err(GetError::Gone(_) | GetError::Refused { .. }) if following => {
                // An expired paging token: ask again by sequence.
                tracing::warn!(connector = %self.p.connector, "the producer refused its own next link; paging by sequence instead");
                self.next_link = None;
                return Ok(None);
            }
            Err(e) => return Err(unavailable(e)),
        };
        let page = match &self.p.api {
            Api::Reso => parse_reso_page(&answer.body, position, self.p.parse, &self.topic),
            Api::Events(m) => super::events::parse_events_page(
                &answer.body,
                position,
                m,
                self.p.parse,
                &self.topic,
            ),
        };
        let page = page.map_err(|e| {
            answer.unusable("invalid_page");
            SourceError::Unavailable(e.to_string())
        })?;
        drop(answer);
        self.p.health.ok(Part::Source);
        let next_link = page.next_link.as_deref().and_then(|l| self.same_origin(l));
        let last = page.last_sequence.unwrap_or(position).max(position);
        // Counted before the progress check, so a producer repeating a page of old events
        // shows as `skipped` events.
        self.p.metrics.poll_page(&self.p.connector, &page);
        // Checked before anything is dead-lettered: a page that makes no progress is asked for
        // again, and must not dead-letter its events again each time.
        if page.received > 0 && last == position && next_link.is_none() {
            return Err(SourceError::Unavailable(format!(
                "a page of {} events holds nothing after the checkpoint {position}: the producer \
                 ignores the sequence filter, or the sequence mapping is wrong",
                page.received
            )));
        }
        self.p.metrics.poll_page_read(&self.p.connector);
        self.dead_letter_invalid(&page).await?;
        let pending = Pending {
            last,
            more: next_link.is_some() || page.received >= self.p.page_size,
            next_link,
        };
        if page.messages.is_empty() {
            self.advance(pending).await?;
            return Ok(None);
        }
        self.pending = Some(pending);
        let receipts = page.messages.iter().map(|m| m.sequence as u64).collect();
        Ok(Some(SourceBatch {
            messages: page.messages,
            receipts,
        }))
    }
}

fn unavailable(e: GetError) -> SourceError {
    SourceError::Unavailable(e.to_string())
}

#[async_trait]
impl Source for PollSource {
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        loop {
            if let Some(until) = self.idle_until {
                tokio::time::sleep_until(until).await;
                self.idle_until = None;
            }
            if let Some(batch) = self.poll_once().await? {
                return Ok(Some(batch));
            }
        }
    }

    async fn settle(&mut self, batch: SourceBatch, outcome: Outcome) -> Result<(), SourceError> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        match outcome {
            // Asked for again from the same place.
            Outcome::Retry => return Ok(()),
            Outcome::Delivered => {}
            Outcome::Poison { reason } => {
                let all: Vec<&Message> = batch.messages.iter().collect();
                self.dead_letter(&all, &reason).await?;
            }
            Outcome::Partly { poison } => {
                for (index, reason) in &poison {
                    if let Some(m) = batch.messages.get(*index) {
                        self.dead_letter(&[m], reason).await?;
                    }
                }
            }
        }
        self.advance(pending).await
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        // The checkpoint is written at every settle; nothing is pending.
        Ok(())
    }
}
