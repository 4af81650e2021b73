//! The token endpoints of webhook connectors: what they answered.

use prometheus::IntCounterVec;

use super::catalog::Recording;
use super::Metrics;

/// The families written by token endpoints.
pub(super) struct TokenMetrics {
    requests: IntCounterVec,
}

impl TokenMetrics {
    pub(super) fn register(registry: &Recording) -> TokenMetrics {
        TokenMetrics {
            requests: registry.counter(
                "entity_bridge_token_requests_total",
                "Requests to a webhook connector's OAuth2 token endpoint, by connector and outcome (issued, or the RFC 6749 error: invalid_request, invalid_client, unsupported_grant_type, invalid_scope; temporarily_unavailable when rate limited).",
                &["connector", "outcome"],
            ),
        }
    }
}

impl Metrics {
    /// Counts one token request answered with `outcome`.
    pub fn token_request(&self, connector: &str, outcome: &str) {
        self.0
            .tokens
            .requests
            .with_label_values(&[connector, outcome])
            .inc();
    }
}
