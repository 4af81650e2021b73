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
                "GET requests to a producer's API, by connector, role (poll: event pages, hydrate: records) and status (the HTTP status code; timeout, error for transport failures; token_error when no token could be had; invalid_page for a 200 that is not a page).",
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
                "Unix time of the last page a poll source read successfully (empty pages included).",
                &["connector"],
            ),
            hydration: registry.counter(
                "entity_bridge_hydration_total",
                "Events without Data whose record [hydrate] fetched, by connector and outcome (fetched: Data filled in; gone: the record is deleted, the event became a delete; failed: not fetched after max_attempts or refused for good: dead-lettered by pull sources, 503 to a webhook push).",
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

    /// Records what one page held.
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
