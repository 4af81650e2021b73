//! Pulling from producers: requests to their APIs (poll pages, record hydration) by status,
//! what the pages held, and each poll feed's checkpoint.

use prometheus::{IntCounterVec, IntGaugeVec};

use super::catalog::Recording;
use super::Metrics;
use crate::poll::Page;

/// The families written by poll sources and the producer client.
pub(super) struct PollMetrics {
    requests: IntCounterVec,
    events: IntCounterVec,
    checkpoint: IntGaugeVec,
    last_page: IntGaugeVec,
    hydration: IntCounterVec,
}

impl PollMetrics {
    pub(super) fn register(registry: &Recording) -> PollMetrics {
        PollMetrics {
            requests: registry.counter(
                "entity_bridge_producer_requests_total",
                "GET requests to a producer's API, each counted once, by connector, role (poll: event pages, hydrate: records) and status (the HTTP status code of an answer that was used or refused; timeout: no complete answer in time, body included; error: a transport failure or a body that broke off; too_large: a body beyond the size cap; token_error: no token could be had; invalid_page: a 200 that is not a page).",
                &["connector", "role", "status"],
            ),
            events: registry.counter(
                "entity_bridge_poll_events_total",
                "Events in the pages a poll source read, by connector and outcome (fetched: handed to the sink; skipped: at or below the checkpoint or not in the event type allowlist; invalid: dead-lettered as unparseable).",
                &["connector", "outcome"],
            ),
            checkpoint: registry.gauge(
                "entity_bridge_poll_checkpoint",
                "The sequence a poll source's checkpoint holds: every event up to it was delivered or dead-lettered.",
                &["connector"],
            ),
            last_page: registry.gauge(
                "entity_bridge_poll_last_page_timestamp_seconds",
                "Unix time of the last usable page a poll source read (empty pages included; a page repeating only events at or below the checkpoint is not usable).",
                &["connector"],
            ),
            hydration: registry.counter(
                "entity_bridge_hydration_total",
                "Events without Data that [hydrate] handled, each counted once, by connector and outcome (fetched: Data filled in and the event delivered; gone: the record is deleted, the event became a delete and was delivered; failed: refused for good, after max_attempts or at once: dead-lettered by pull sources, refused to a webhook push). Fetches that fail and are retried are counted only in entity_bridge_producer_requests_total.",
                &["connector", "outcome"],
            ),
        }
    }
}

impl Metrics {
    /// Counts one request to a producer (`role` = poll or hydrate).
    pub fn outbound_get(&self, connector: &str, role: &str, status: &str) {
        self.0
            .poll
            .requests
            .with_label_values(&[connector, role, status])
            .inc();
    }

    /// Records what one page held (a page repeating old events too: they count as skipped).
    pub fn poll_page(&self, connector: &str, page: &Page) {
        let m = &self.0.poll;
        for (outcome, n) in [
            ("fetched", page.messages.len()),
            ("skipped", page.skipped),
            ("invalid", page.invalid.len()),
        ] {
            m.events
                .with_label_values(&[connector, outcome])
                .inc_by(n as u64);
        }
    }

    /// Records that a page was read and usable (it made progress, or the feed is caught up):
    /// what `EntityBridgePollFailing` watches.
    pub fn poll_page_read(&self, connector: &str) {
        let m = &self.0.poll;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        m.last_page
            .with_label_values(&[connector])
            .set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    /// Counts `n` hydration outcomes (`fetched`, `gone`, `failed`).
    pub fn hydration(&self, connector: &str, outcome: &str, n: u64) {
        self.0
            .poll
            .hydration
            .with_label_values(&[connector, outcome])
            .inc_by(n);
    }

    /// Sets a poll source's checkpoint.
    pub fn poll_checkpoint(&self, connector: &str, sequence: i64) {
        self.0
            .poll
            .checkpoint
            .with_label_values(&[connector])
            .set(sequence);
    }
}
