//! Each connector's health: what its supervisor, source and sink last said, in one place.
//!
//! `/readyz`, `/metrics` and the logs all read the same [`Health`], so they cannot disagree.
//! Writers are the connector's supervisor (task up / down), its pump or lanes (a batch delivered,
//! a source or sink failing) and the readiness probes. A connector is
//!
//! - **stopped** while its task is down (failed or panicked, waiting to be restarted),
//! - **degraded** while its task runs but a part reports a problem (the source cannot reach its
//!   bus, the sink cannot deliver, a probe failed),
//! - **running** otherwise.
//!
//! Healthy paths stay cheap: reporting "ok" on every batch is one atomic load unless a problem
//! is recorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub use crate::connector::Probe;
use crate::metrics::Metrics;

/// Whether a connector's readiness gates `/readyz` or is only reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// Not ready ⇒ `/readyz` answers 503 (the instance leaves its load balancer).
    #[default]
    Gate,
    /// Shown in the `/readyz` body and the metrics, but `/readyz` stays 200: e.g. an egress
    /// connector in a process that also serves webhooks, so that a consumer outage does not take
    /// the ingress out of the load balancer.
    Report,
}

/// A connector's state (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Everything works.
    Running,
    /// Running, but a part reports a problem.
    Degraded,
    /// The connector's task is down, waiting to be restarted.
    Stopped,
}

impl State {
    /// Every state, for the state-set metric.
    pub const ALL: [State; 3] = [State::Running, State::Degraded, State::Stopped];

    /// The metric label and JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Degraded => "degraded",
            State::Stopped => "stopped",
        }
    }
}

/// The parts of a connector that report problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The connector's task (pump, Kafka dispatcher and lanes).
    Task,
    /// The source (its connection to the bus or producer).
    Source,
    /// The sink, as seen by the task delivering to it (a batch failed, a batch delivered).
    Sink,
    /// The sink's own readiness probe (`Sink::ready`, run by `/readyz`): kept apart from
    /// [`Part::Sink`] so a passing probe cannot hide deliveries that fail, nor the reverse.
    SinkProbe,
}

impl Part {
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone)]
struct Problem {
    error: String,
}

#[derive(Debug)]
struct Tracked {
    problems: [Option<Problem>; 4],
    state: State,
    since: SystemTime,
    last_error: Option<(String, SystemTime)>,
}

struct Inner {
    connector: String,
    readiness: Readiness,
    metrics: Metrics,
    tracked: Mutex<Tracked>,
    troubled: AtomicBool,
    probe: Mutex<Option<Probe>>,
}

/// A connector's health handle. Cheap to clone.
///
/// Its locks guard plain assignments and a metric update that cannot panic, so they are never
/// poisoned: the `expect`s on them state that invariant.
#[derive(Clone)]
pub struct Health(Arc<Inner>);

/// What `/readyz` shows of one connector.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// `running`, `degraded` or `stopped`.
    pub state: State,
    /// When the connector entered that state (RFC 3339).
    pub since: String,
    /// Whether it counts as ready (running, and every probe passed).
    pub ready: bool,
    /// Whether its readiness gates `/readyz`.
    pub readiness: Readiness,
    /// The problems it has now, by part (`task`, `source`, `sink`, `sink probe`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// The most recent problem, even if it has cleared since.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When that problem was reported (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

const PART_NAMES: [&str; 4] = ["task", "source", "sink", "sink probe"];

impl Health {
    /// A connector's health, starting as running.
    pub fn new(connector: &str, readiness: Readiness, metrics: Metrics) -> Health {
        let health = Health(Arc::new(Inner {
            connector: connector.to_owned(),
            readiness,
            metrics,
            tracked: Mutex::new(Tracked {
                problems: [None, None, None, None],
                state: State::Running,
                since: SystemTime::now(),
                last_error: None,
            }),
            troubled: AtomicBool::new(false),
            probe: Mutex::new(None),
        }));
        health
            .0
            .metrics
            .connector_state(connector, State::Running.as_str());
        health
    }

    /// The connector's name.
    pub fn connector(&self) -> &str {
        &self.0.connector
    }

    /// Whether this connector's readiness gates `/readyz`.
    pub fn readiness(&self) -> Readiness {
        self.0.readiness
    }

    /// Records that `part` works. One atomic load when nothing was wrong.
    pub fn ok(&self, part: Part) {
        if !self.0.troubled.load(Ordering::Acquire) {
            return;
        }
        self.update(|t| t.problems[part.index()] = None);
    }

    /// Records that `part` has a problem (no secrets, no payload data in `error`).
    pub fn failed(&self, part: Part, error: impl std::fmt::Display) {
        let error = error.to_string();
        self.update(|t| {
            t.last_error = Some((
                format!("{}: {error}", PART_NAMES[part.index()]),
                SystemTime::now(),
            ));
            t.problems[part.index()] = Some(Problem { error });
        });
    }

    /// Installs the probe of the source now running (replaced on every restart).
    pub fn set_probe(&self, probe: Option<Probe>) {
        *self.0.probe.lock().expect("probe lock") = probe;
    }

    /// Runs the source probe, if any, and records its answer.
    pub fn run_probe(&self) {
        let probe = self.0.probe.lock().expect("probe lock").clone();
        if let Some(probe) = probe {
            match probe() {
                Ok(()) => self.ok(Part::Source),
                Err(e) => self.failed(Part::Source, e),
            }
        }
    }

    /// The connector's current state.
    pub fn state(&self) -> State {
        self.0.tracked.lock().expect("health lock").state
    }

    /// What `/readyz` shows.
    pub fn snapshot(&self) -> Snapshot {
        let t = self.0.tracked.lock().expect("health lock");
        let problems = (t.problems.iter().zip(PART_NAMES))
            .filter_map(|(p, name)| p.as_ref().map(|p| format!("{name}: {}", p.error)))
            .collect();
        Snapshot {
            state: t.state,
            since: rfc3339(t.since),
            ready: t.state == State::Running,
            readiness: self.0.readiness,
            problems,
            last_error: t.last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_at: t.last_error.as_ref().map(|(_, at)| rfc3339(*at)),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Tracked)) {
        let mut t = self.0.tracked.lock().expect("health lock");
        change(&mut t);
        let state = if t.problems[Part::Task.index()].is_some() {
            State::Stopped
        } else if t.problems.iter().any(Option::is_some) {
            State::Degraded
        } else {
            State::Running
        };
        self.0
            .troubled
            .store(state != State::Running, Ordering::Release);
        if state != t.state {
            t.state = state;
            t.since = SystemTime::now();
            // Under the lock, so that concurrent transitions leave the metric where /readyz is.
            self.0
                .metrics
                .connector_state(&self.0.connector, state.as_str());
            drop(t);
            tracing::info!(connector = %self.0.connector, state = state.as_str(), "connector state changed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_follows_the_worst_part_and_recovers() {
        let health = Health::new("c", Readiness::Gate, Metrics::new());
        assert_eq!(health.state(), State::Running);
        health.ok(Part::Sink);
        health.failed(Part::Sink, "consumer endpoint did not answer");
        assert_eq!(health.state(), State::Degraded);
        health.failed(Part::Task, "panicked");
        let snap = health.snapshot();
        assert_eq!(snap.state, State::Stopped);
        assert!(!snap.ready);
        assert_eq!(snap.problems.len(), 2, "{snap:?}");
        assert_eq!(snap.last_error.as_deref(), Some("task: panicked"));
        health.ok(Part::Task);
        assert_eq!(health.state(), State::Degraded);
        health.ok(Part::Sink);
        let snap = health.snapshot();
        assert_eq!(snap.state, State::Running);
        assert!(snap.ready && snap.problems.is_empty());
        // The last error stays visible after it cleared.
        assert_eq!(snap.last_error.as_deref(), Some("task: panicked"));
    }

    #[test]
    fn probes_report_the_source() {
        let health = Health::new("c", Readiness::Report, Metrics::new());
        let up = Arc::new(AtomicBool::new(false));
        let flag = up.clone();
        health.set_probe(Some(Arc::new(move || {
            if flag.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("not connected".into())
            }
        })));
        health.run_probe();
        assert_eq!(health.state(), State::Degraded);
        assert_eq!(health.snapshot().problems, vec!["source: not connected"]);
        up.store(true, Ordering::Relaxed);
        health.run_probe();
        assert_eq!(health.state(), State::Running);
    }

    #[test]
    fn the_metric_knows_every_state() {
        let names: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, crate::metrics::CONNECTOR_STATES);
    }

    #[test]
    fn the_state_metric_has_one_state_set() {
        let metrics = Metrics::new();
        let health = Health::new("c", Readiness::Gate, metrics.clone());
        health.failed(Part::Source, "down");
        let text = metrics.encode();
        assert!(
            text.contains("entity_bridge_connector_state{connector=\"c\",state=\"degraded\"} 1"),
            "{text}"
        );
        assert!(text.contains("entity_bridge_connector_state{connector=\"c\",state=\"running\"} 0"));
    }
}
