//! Connector supervision: each connector's state as a state set, its task restarts, and
//! clients replaced after a fatal error.
//!
//! Kept apart from the traffic metrics because the supervisor, the healing clients and
//! `/readyz` write them, never a request path.

use prometheus::{IntCounterVec, IntGaugeVec};

use super::Metrics;

/// The values of the `state` label of `entity_bridge_connector_state`, in the order the
/// supervisor defines them (`crate::runtime::State::as_str`).
pub const CONNECTOR_STATES: [&str; 3] = ["running", "degraded", "stopped"];

/// The families written by the supervisor.
pub(super) struct ConnectorMetrics {
    pub(super) state: IntGaugeVec,
    pub(super) restarts: IntCounterVec,
    pub(super) kafka_rebuilds: IntCounterVec,
}

impl Metrics {
    /// Sets a connector's state: 1 on `state`, 0 on every other value of [`CONNECTOR_STATES`].
    pub fn connector_state(&self, connector: &str, state: &str) {
        for s in CONNECTOR_STATES {
            self.0
                .connectors
                .state
                .with_label_values(&[connector, s])
                .set(i64::from(s == state));
        }
    }

    /// Counts one restart of a connector's task, by why it had stopped (`failed`, `panicked`,
    /// `ended`).
    pub fn connector_restart(&self, connector: &str, outcome: &str) {
        self.0
            .connectors
            .restarts
            .with_label_values(&[connector, outcome])
            .inc();
    }

    /// Counts one replacement of a Kafka producer after a fatal error (`rebuilt`, or `failed`
    /// when the new client could not be created).
    pub fn kafka_client_rebuilt(&self, connector: &str, outcome: &str) {
        self.0
            .connectors
            .kafka_rebuilds
            .with_label_values(&[connector, outcome])
            .inc();
    }
}
