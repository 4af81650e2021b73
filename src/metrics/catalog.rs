//! The catalog of metric families: every name, type, help text and label set the process
//! registers, whether or not it has recorded a sample yet.
//!
//! `Registry::gather` leaves out label-vector families without children, so it cannot answer
//! "does this metric exist?" before traffic. [`Recording`] stands in for the registry while
//! [`super::Metrics::new`] registers, and remembers each family as it passes. Docs, alert
//! rules and dashboards are checked against this list in tests.

use std::sync::Mutex;

use prometheus::core::Collector;
use prometheus::proto::MetricType;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// One registered metric family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricInfo {
    /// Full name, e.g. `entity_bridge_http_requests_total`.
    pub name: String,
    /// `counter`, `gauge` or `histogram` (as in the exposition's `# TYPE` line).
    pub kind: &'static str,
    /// The help text.
    pub help: String,
    /// Label names, in declaration order.
    pub labels: Vec<String>,
}

/// A registry that records what is registered in it.
#[derive(Default)]
pub(super) struct Recording {
    registry: Registry,
    seen: Mutex<Vec<MetricInfo>>,
}

impl Recording {
    /// Registers `collector` and records its families.
    pub(super) fn register(&self, collector: Box<dyn Collector>) -> prometheus::Result<()> {
        let families = collector.collect();
        let infos = collector.desc().into_iter().map(|desc| {
            let kind = families
                .iter()
                .find(|f| f.name() == desc.fq_name)
                .map_or("untyped", |f| kind_name(f.get_field_type()));
            MetricInfo {
                name: desc.fq_name.clone(),
                kind,
                help: desc.help.clone(),
                labels: desc.variable_labels.clone(),
            }
        });
        let infos: Vec<_> = infos.collect();
        self.registry.register(collector)?;
        self.seen.lock().expect("catalog lock").extend(infos);
        Ok(())
    }

    /// Registers a counter family (names and labels are constants of the code, so an invalid
    /// or repeated one is a bug caught by every test that builds `Metrics`).
    pub(super) fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.register(Box::new(c.clone())).expect("unique metric");
        c
    }

    /// Registers a gauge family (see [`Recording::counter`]).
    pub(super) fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.register(Box::new(g.clone())).expect("unique metric");
        g
    }

    /// The families recorded so far, sorted by name.
    pub(super) fn catalog(&self) -> Vec<MetricInfo> {
        let mut all = self.seen.lock().expect("catalog lock").clone();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The registry itself.
    pub(super) fn into_registry(self) -> Registry {
        self.registry
    }
}

fn kind_name(kind: MetricType) -> &'static str {
    match kind {
        MetricType::COUNTER => "counter",
        MetricType::GAUGE => "gauge",
        MetricType::HISTOGRAM => "histogram",
        MetricType::SUMMARY => "summary",
        MetricType::UNTYPED => "untyped",
    }
}
