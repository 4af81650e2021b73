//! Replacement decisions with fake producers and paused time.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;

struct Fake {
    id: usize,
    fatal: AtomicBool,
}

static REACHABLE: AtomicBool = AtomicBool::new(false);

fn healing(builds: Arc<AtomicUsize>, metrics: Metrics) -> Healing<Fake> {
    let kind = Kind {
        make: Box::new(move || {
            Ok(Fake {
                id: builds.fetch_add(1, Ordering::SeqCst),
                fatal: AtomicBool::new(false),
            })
        }),
        fatal: |p: &Fake| {
            p.fatal
                .load(Ordering::SeqCst)
                .then(|| "ProducerFenced".to_owned())
        },
        reachable: |_| REACHABLE.load(Ordering::SeqCst),
    };
    Healing::new("c", "sink", kind, Duration::from_secs(5), metrics).unwrap()
}

fn rebuilt(metrics: &Metrics) -> bool {
    metrics
        .encode()
        .contains("entity_bridge_kafka_client_rebuilds_total{connector=\"c\",outcome=\"rebuilt\"}")
}

#[tokio::test]
async fn a_fatal_producer_is_replaced_but_not_in_a_tight_loop() {
    let builds = Arc::new(AtomicUsize::new(0));
    let metrics = Metrics::new();
    let h = healing(builds.clone(), metrics.clone());
    assert!(!h.heal_if_fatal(), "a healthy producer stays");
    h.get().fatal.store(true, Ordering::SeqCst);
    assert_eq!(
        h.problem().as_deref(),
        Some("producer fatal error: ProducerFenced")
    );
    assert!(h.failed().await);
    assert_eq!(h.get().id, 1);
    assert_eq!(h.problem(), None);
    assert!(rebuilt(&metrics));
    // The new one is fatal at once: not replaced again within the interval.
    h.get().fatal.store(true, Ordering::SeqCst);
    assert!(!h.heal_if_fatal());
    assert_eq!(builds.load(Ordering::SeqCst), 2);
}

/// Only this test touches `REACHABLE`.
#[tokio::test]
async fn a_stuck_producer_is_replaced_only_while_its_broker_answers() {
    let builds = Arc::new(AtomicUsize::new(0));
    let h = healing(builds.clone(), Metrics::new());
    REACHABLE.store(false, Ordering::SeqCst);
    assert!(!h.failed().await, "one failure is not stuck");
    // Age the failure by hand (the tracking uses std's clock).
    h.tracking.lock().unwrap().failing_since = Some(Instant::now() - Duration::from_secs(6));
    assert!(
        !h.failed().await,
        "the broker is down: an outage, not a stuck producer"
    );
    assert_eq!(
        h.problem()
            .as_deref()
            .map(|p| p.starts_with("every send failed for")),
        Some(true)
    );
    h.tracking.lock().unwrap().last_check = None;
    REACHABLE.store(true, Ordering::SeqCst);
    assert!(
        h.failed().await,
        "broker back, producer still failing: replaced"
    );
    assert_eq!(h.get().id, 1);
    assert_eq!(h.problem(), None);
    // A success clears the failing state.
    assert!(!h.failed().await);
    h.succeeded();
    assert!(h.tracking.lock().unwrap().failing_since.is_none());

    // Readiness during an outage with no sends: not ready while the broker is down, ready
    // (the producer replaced) once it answers, without waiting for a send to notice.
    REACHABLE.store(false, Ordering::SeqCst);
    assert!(!h.failed().await);
    let aged = Instant::now() - Duration::from_secs(6);
    {
        let mut t = h.tracking.lock().unwrap();
        t.failing_since = Some(aged);
        t.last_check = None;
        t.last_rebuild = None;
    }
    assert!(h.check().await.is_some(), "broker down: not ready");
    h.tracking.lock().unwrap().last_check = None;
    REACHABLE.store(true, Ordering::SeqCst);
    assert_eq!(h.check().await, None, "broker back: replaced, ready");
    assert_eq!(h.get().id, 2);
}
