//! Bearer tokens at work: what the token endpoints answered, pushes refused by a producer's
//! quota, and admin requests refused for want of an admin token.

use prometheus::IntCounterVec;

use super::catalog::Recording;
use super::Metrics;

/// The families written by token endpoints.
pub(super) struct TokenMetrics {
    requests: IntCounterVec,
    quota_refusals: IntCounterVec,
    admin_refusals: IntCounterVec,
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
            admin_refusals: registry.counter(
                "entity_bridge_admin_unauthorized_total",
                "Requests to the admin listener answered 401 (no or a wrong admin token; admin.tokens), by path (an admin path, or other).",
                &["path"],
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

    /// Counts one admin request refused for want of a token; `path` is an admin path or `other`.
    pub fn admin_unauthorized(&self, path: &str) {
        self.0
            .tokens
            .admin_refusals
            .with_label_values(&[path])
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
