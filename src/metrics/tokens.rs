//! Producers of webhook connectors: what the token endpoints answered, and pushes refused by a
//! producer's quota.

use prometheus::IntCounterVec;

use super::catalog::Recording;
use super::Metrics;

/// The families written by token endpoints.
pub(super) struct TokenMetrics {
    requests: IntCounterVec,
    quota_refusals: IntCounterVec,
}

impl TokenMetrics {
    pub(super) fn register(registry: &Recording) -> TokenMetrics {
        TokenMetrics {
            requests: registry.counter(
                "entity_bridge_token_requests_total",
                "Requests to a webhook connector's OAuth2 token endpoint, by connector and outcome (issued, or the RFC 6749 error: invalid_request, invalid_client, unsupported_grant_type, invalid_scope; temporarily_unavailable when a client asks too often; throttled: a failed attempt beyond its peer's or client id's budget, answered 429).",
                &["connector", "outcome"],
            ),
            quota_refusals: registry.counter(
                "entity_bridge_producer_quota_refusals_total",
                "Pushes answered 429 because their producer was over its own quota ([source.quotas]), by connector, producer (token-N or a token endpoint client id: configured names only) and quota (requests, events, in_flight).",
                &["connector", "producer", "quota"],
            ),
        }
    }
}

impl Metrics {
    /// Counts one push refused by `producer`'s `quota`.
    pub fn quota_refusal(&self, connector: &str, producer: &str, quota: &str) {
        self.0
            .tokens
            .quota_refusals
            .with_label_values(&[connector, producer, quota])
            .inc();
    }

    /// Counts one token request answered with `outcome`.
    pub fn token_request(&self, connector: &str, outcome: &str) {
        self.0
            .tokens
            .requests
            .with_label_values(&[connector, outcome])
            .inc();
    }
}
