//! Record hydration: a sink layer that fetches the record of every event arriving without
//! `Data` (RCP-28: consumers "pick up the corresponding records from provider APIs") and puts
//! it into `Data` before the event is published, for any source and any sink.
//!
//! - **Where from**: the event's `ResourceRecordUrl` when it is on an allowed origin (never
//!   anywhere a producer names: the bridge's token would travel there), else the configured
//!   URL template. Through the shared producer client: auth, rate and concurrency limits,
//!   `Retry-After`, gzip, capped answers.
//! - **Order**: a batch's records are fetched concurrently (each distinct URL once) and the
//!   batch is published in its own order, so per-key order holds; batches are not overlapped.
//! - **Gone records** (404 / 410, a configured RESO 400 "no longer available") become deletes:
//!   `"@EntityBridge.Deleted": true`, no `Data`, and [`Message::delete`] so that the Kafka sink
//!   writes a tombstone.
//! - **Failures**: each send fetches a record once; a failed send is retried whole by the pump
//!   (in place, with the connector's backoff), reusing the records that arrived. When every
//!   record fails, the producer's API is down: retried, nothing dead-lettered. A record that
//!   fails in `max_attempts` sends while others of its batch arrive is refused and its event
//!   dead-lettered alone. A push gets one attempt and a 503 (its producer
//!   retries). 403 and redirects count as failures that may pass (credentials, API layout). A
//!   record that can never be used (404/410 not configured as gone, another 4xx, not JSON, too
//!   large or deep, no allowed URL) is refused at once.

mod config;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;

pub use config::{origin_of, HydrateConfig, HydrateLimitsConfig};

use crate::connector::{BatchHint, Message, RejectKind, SendReport, Sink, SinkError};
use crate::metrics::Metrics;
use crate::outbound::get::{GetClient, GetClientBuildError, GetClientConfig, GetError};
use crate::outbound::LimitsConfig;
use crate::poll::events::DELETED_ANNOTATION;

/// What an event needs, read from its bytes.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "Data", default, deserialize_with = "present")]
    data: bool,
    #[serde(rename = "ResourceRecordUrl", default)]
    url: Option<String>,
    #[serde(rename = "@EntityBridge.Deleted", default)]
    deleted: Option<bool>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// What fetching one record came to.
#[derive(Debug, Clone)]
enum Fetched {
    /// The record's JSON.
    Record(Bytes),
    /// The record is gone.
    Gone,
    /// It cannot be had now; `lasting`: asking again cannot help.
    Failed { reason: String, lasting: bool },
}

/// The hydration layer around a connector's sink.
pub struct Hydrate {
    inner: Arc<dyn Sink>,
    connector: String,
    client: GetClient,
    config: HydrateConfig,
    origins: Vec<String>,
    metrics: Metrics,
    /// Whether a record that keeps failing is refused (pull sources dead-letter it) or the
    /// send answered unavailable (webhook pushes: 503, the producer retries).
    refuse_failures: bool,
    /// What the last send with a failed record fetched, and when (see [`ISOLATION_WINDOW`]).
    /// Its lock is held only to copy entries in or out (nothing under it can panic), so a
    /// poisoned lock still holds a consistent map and is used as is, like `strikes`.
    recent: Mutex<Option<(Instant, HashMap<String, Fetched>)>>,
    /// Failed sends of each record that failed while others arrived (pull sources).
    strikes: Mutex<HashMap<String, u32>>,
}

/// Most records with strikes remembered (a bound: beyond it the count starts over).
const MAX_STRUCK_RECORDS: usize = 10_000;

/// How long the records of a send with a failed record are reused by the sends that follow
/// (the pump isolating the failed event re-sends its neighbours at once).
const ISOLATION_WINDOW: Duration = Duration::from_secs(30);

impl Hydrate {
    /// Wraps `inner`. `refuse_failures`: see the module header.
    pub fn new(
        connector: &str,
        config: &HydrateConfig,
        inner: Arc<dyn Sink>,
        refuse_failures: bool,
        metrics: Metrics,
    ) -> Result<Hydrate, GetClientBuildError> {
        let client = GetClient::build(
            GetClientConfig {
                connector,
                role: "hydrate",
                auth: config.auth.as_ref(),
                limits: LimitsConfig {
                    requests_per_second: Some(config.limits.requests_per_second),
                    events_per_second: None,
                    max_concurrent_requests: config.limits.max_concurrent_requests,
                },
                max_retry_after: Duration::from_secs(config.limits.max_retry_after_seconds),
                timeout: Duration::from_millis(config.request_timeout_ms),
                max_body_bytes: config.max_record_bytes,
            },
            metrics.clone(),
        )?;
        Ok(Hydrate {
            inner,
            connector: connector.to_owned(),
            client,
            origins: config.allowed_origins(),
            config: config.clone(),
            metrics,
            refuse_failures,
            recent: Mutex::new(None),
            strikes: Mutex::new(HashMap::new()),
        })
    }

    /// The URL of `m`'s record: its `ResourceRecordUrl` on an allowed origin, else the template.
    fn url_of(&self, m: &Message, record_url: Option<&str>) -> Option<String> {
        if let Some(url) = record_url {
            if origin_of(url).is_some_and(|o| self.origins.contains(&o)) {
                return Some(url.to_owned());
            }
        }
        let template = self.config.url_template.as_ref()?;
        let key = crate::outbound::odata_key(&m.record_key);
        Some(
            template
                .replace("{ResourceName}", &m.resource_name)
                .replace("{ResourceRecordKey}", &key),
        )
    }

    /// Fetches one record, once: retries are whole sends, spaced by the connector's backoff
    /// (the pump retries the batch in place), so a record that fails while its neighbours
    /// arrive is judged over several sends, never within one (see [`Hydrate::hydrate`]).
    async fn fetch(&self, url: &str) -> Fetched {
        let transient = |reason: String| Fetched::Failed {
            reason,
            lasting: false,
        };
        match self.client.get(url).await {
            Ok(answer) => self.check(answer.body),
            Err(GetError::Gone(s)) if self.config.gone_statuses.contains(&s) => Fetched::Gone,
            Err(GetError::Refused { status, body }) if self.gone(status, &body) => Fetched::Gone,
            // The bridge's credentials or the API's layout, not the record: may pass.
            Err(e @ GetError::Refused { status, .. })
                if status == 403 || (300..400).contains(&status) =>
            {
                transient(format!("record: {e}"))
            }
            Err(e @ (GetError::Gone(_) | GetError::Refused { .. } | GetError::TooLarge(_))) => {
                Fetched::Failed {
                    reason: format!("record: {e}"),
                    lasting: true,
                }
            }
            // The endpoint is paused until the producer's Retry-After; the next send waits.
            Err(e @ (GetError::Throttled { .. } | GetError::Retry(_))) => {
                transient(format!("record: {e}"))
            }
        }
    }

    /// A record that failed while others of its batch arrived gets a strike; at `max_attempts`
    /// strikes (as many sends, the pump's backoff between them) it is refused for good, and
    /// its event is dead-lettered alone. Until then the batch is retried whole: a record API
    /// that recovers in the middle of a batch loses nothing.
    fn strike(&self, fetched: &mut HashMap<String, Fetched>) {
        let mut strikes = self.strikes.lock().unwrap_or_else(|p| p.into_inner());
        if strikes.len() > MAX_STRUCK_RECORDS {
            strikes.clear();
        }
        for (url, f) in fetched.iter_mut() {
            let Fetched::Failed {
                reason,
                lasting: false,
            } = f
            else {
                continue;
            };
            let n = strikes.entry(url.clone()).or_insert(0);
            *n += 1;
            if *n >= self.config.max_attempts {
                let reason = format!("{reason} (in {n} sends while other records arrived)");
                strikes.remove(url);
                *f = Fetched::Failed {
                    reason,
                    lasting: true,
                };
            }
        }
    }

    fn gone(&self, status: u16, body: &[u8]) -> bool {
        is_gone(&self.config, status, body)
    }

    /// A fetched body usable as `Data`: one JSON object, not too deep.
    fn check(&self, body: Bytes) -> Fetched {
        let lasting = |reason: &str| Fetched::Failed {
            reason: format!("record: {reason}"),
            lasting: true,
        };
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return lasting("the answer is not a JSON object");
        }
        // The record sits one level inside the event.
        if crate::event::deeper_than(&body, self.config.max_json_depth.saturating_sub(1)) {
            return lasting("the record nests deeper than max_json_depth");
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            return lasting("the answer is not valid JSON");
        }
        Fetched::Record(body)
    }

    /// The batch with records filled in, or why it cannot be published.
    async fn hydrate(&self, batch: &[Message]) -> Result<Option<(Vec<Message>, Tally)>, SinkError> {
        let mut wanted: Vec<(usize, String)> = Vec::new();
        for (index, m) in batch.iter().enumerate() {
            // An event whose optional fields cannot be read (a ResourceRecordUrl that is no
            // string) is treated as having none of them: the template decides.
            let probe = serde_json::from_slice::<Probe>(&m.payload).unwrap_or(Probe {
                data: false,
                url: None,
                deleted: None,
            });
            if probe.data || m.delete || probe.deleted == Some(true) {
                continue;
            }
            let Some(url) = self.url_of(m, probe.url.as_deref()) else {
                self.metrics.hydration(&self.connector, "failed", 1);
                return Err(SinkError::Rejected {
                    index,
                    field: Some("ResourceRecordUrl"),
                    detail: "has no Data, and its ResourceRecordUrl is missing or on an origin \
                             the connector does not fetch from (record_url_origins)"
                        .into(),
                    kind: RejectKind::Unfetchable,
                });
            };
            wanted.push((index, url));
        }
        if wanted.is_empty() {
            return Ok(None);
        }
        let mut urls: Vec<String> = wanted.iter().map(|(_, u)| u.clone()).collect();
        urls.sort_unstable();
        urls.dedup();
        // What an earlier send of this batch fetched (the pump re-sends the events around a
        // refused one): reused, so isolating a bad record costs no second round of requests.
        let mut fetched: HashMap<String, Fetched> = HashMap::new();
        if let Some((at, recent)) = &*self.recent.lock().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < ISOLATION_WINDOW {
                for url in &urls {
                    if let Some(f) = recent.get(url) {
                        fetched.insert(url.clone(), f.clone());
                    }
                }
            }
        }
        let from_cache = !fetched.is_empty();
        let concurrency = self.config.limits.max_concurrent_requests;
        let fetches = (urls.into_iter())
            .filter(|url| !fetched.contains_key(url))
            .map(|url| async move {
                let f = self.fetch(&url).await;
                (url, f)
            });
        let new: Vec<(String, Fetched)> = futures::stream::iter(fetches)
            .buffer_unordered(concurrency)
            .collect()
            .await;
        fetched.extend(new);
        let failed = |f: &Fetched| matches!(f, Fetched::Failed { .. });
        if fetched.values().any(failed) {
            let outage = !from_cache
                && fetched
                    .values()
                    .all(|f| matches!(f, Fetched::Failed { lasting: false, .. }));
            if outage {
                // Every record failed for a while: the producer's API is down, not these
                // records. Retried in place (pump backoff), nothing dead-lettered.
                let reason = fetched
                    .values()
                    .find_map(|f| match f {
                        Fetched::Failed { reason, .. } => Some(reason.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                return Err(SinkError::Unavailable {
                    reason: format!("the record API fails for every record: {reason}"),
                });
            }
            if self.refuse_failures {
                self.strike(&mut fetched);
            }
            // Kept for the sends that follow: what arrived, and what is refused for good
            // (never a failure that may pass: it is fetched again).
            let keep: HashMap<String, Fetched> = (fetched.iter())
                .filter(|(_, f)| !matches!(f, Fetched::Failed { lasting: false, .. }))
                .map(|(u, f)| (u.clone(), f.clone()))
                .collect();
            *self.recent.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), keep));
        }
        if self.refuse_failures {
            let mut strikes = self.strikes.lock().unwrap_or_else(|p| p.into_inner());
            for (url, f) in &fetched {
                if !failed(f) {
                    strikes.remove(url);
                }
            }
        }
        let mut out = batch.to_vec();
        let mut tally = Tally::default();
        for (index, url) in &wanted {
            let m = &mut out[*index];
            match &fetched[url.as_str()] {
                Fetched::Record(record) => {
                    m.payload = with_member(&m.payload, "Data", record);
                    tally.fetched += 1;
                }
                Fetched::Gone => {
                    m.payload = with_member(&m.payload, DELETED_ANNOTATION, b"true");
                    m.delete = true;
                    tally.gone += 1;
                }
                Fetched::Failed { reason, lasting } => {
                    // Only a refusal for good is an event's outcome: a failure that may pass
                    // is retried (its requests are counted by status).
                    if *lasting {
                        self.metrics.hydration(&self.connector, "failed", 1);
                    }
                    tracing::warn!(connector = %self.connector, sequence = m.sequence, %reason, "record could not be fetched");
                    if *lasting {
                        return Err(SinkError::Rejected {
                            index: *index,
                            field: None,
                            detail: reason.clone(),
                            kind: RejectKind::Unfetchable,
                        });
                    }
                    return Err(SinkError::Unavailable {
                        reason: reason.clone(),
                    });
                }
            }
        }
        Ok(Some((out, tally)))
    }

    /// Counts the outcomes of a send that went through: each event once, however many sends
    /// (retries, the pump isolating a neighbour) it took.
    fn delivered(&self, tally: Tally) {
        self.metrics
            .hydration(&self.connector, "fetched", tally.fetched);
        self.metrics.hydration(&self.connector, "gone", tally.gone);
    }
}

/// Hydrated events of one send, counted once the send is delivered.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    fetched: u64,
    gone: u64,
}

/// Whether a refusal means the record is gone: a `gone_statuses` status, or a 400 whose body
/// contains `gone_400_contains` (case-insensitive).
fn is_gone(config: &HydrateConfig, status: u16, body: &[u8]) -> bool {
    if config.gone_statuses.contains(&status) {
        return true;
    }
    status == 400
        && config.gone_400_contains.as_deref().is_some_and(|needle| {
            let body = String::from_utf8_lossy(body).to_lowercase();
            body.contains(&needle.to_lowercase())
        })
}

/// `event` (a JSON object's bytes) with `"name": value` added as its last member.
fn with_member(event: &[u8], name: &str, value: &[u8]) -> Bytes {
    let body = event.trim_ascii_end();
    let body = body.strip_suffix(b"}").unwrap_or(body);
    let empty = body.trim_ascii_end().ends_with(b"{");
    let mut out = Vec::with_capacity(body.len() + name.len() + value.len() + 8);
    out.extend_from_slice(body);
    if !empty {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(value);
    out.push(b'}');
    Bytes::from(out)
}

#[async_trait]
impl Sink for Hydrate {
    async fn send(&self, batch: &[Message]) -> Result<(), SinkError> {
        match self.hydrate(batch).await? {
            Some((filled, tally)) => {
                self.inner.send(&filled).await?;
                self.delivered(tally);
                Ok(())
            }
            None => self.inner.send(batch).await,
        }
    }

    async fn send_report(&self, batch: &[Message]) -> Result<SendReport, SinkError> {
        match self.hydrate(batch).await? {
            Some((filled, tally)) => {
                let report = self.inner.send_report(&filled).await?;
                self.delivered(tally);
                Ok(report)
            }
            None => self.inner.send_report(batch).await,
        }
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
mod tests;
