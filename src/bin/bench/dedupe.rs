//! `ingress-kafka-dedupe`: what duplicate suppression costs. One bridge child runs two webhook
//! connectors to the same Kafka topics, `bench` without `[dedupe]` and `dedupe` with it
//! (embedded store); each round posts the same batches to both and runs the ceiling, in
//! turn. The dedupe side sends each round as a new feed (`EntityEventSource: round-N`), so
//! every event is new and goes through the whole path: look-up, publish, mark.

use crate::child::BridgeChild;
use crate::ingress::{self, per_event, Bus, Ceiling};
use crate::stats::{Figures, Row};
use crate::Opts;

/// Runs the scenario: a row with suppression off and a row with it on, against one ceiling.
pub async fn run(opts: &Opts) -> Vec<Row> {
    let batches = ingress::batches(opts);
    let bodies = ingress::bodies(&batches);
    let messages = ingress::messages(&batches);
    let run_id = crate::run_id();
    let dir = crate::ScratchDir::new(&run_id);
    let prefix = format!("bench-{run_id}");
    let sink = ingress::kafka_sink(opts, &prefix).await;
    let with_dedupe = format!("{sink}\n[dedupe]\n");
    ingress::write_connectors(dir.path(), &[("bench", &sink), ("dedupe", &with_dedupe)]);
    let child = BridgeChild::start(dir.path(), opts);
    let off_url = format!("http://{}/webhooks/bench", child.webhook_addr);
    let on_url = format!("http://{}/webhooks/dedupe", child.webhook_addr);
    let ceiling = Ceiling::setup(Bus::Kafka, opts, &prefix, dir.path()).await;
    ingress::post_all(&off_url, &bodies[..1], 1, None).await;
    ingress::post_all(&on_url, &bodies[..1], 1, Some("warm-up")).await;
    ceiling.run(&messages[..1], 1).await;

    let (mut off, mut on, mut ceil) = (Vec::new(), Vec::new(), Vec::new());
    let (mut off_cpu, mut on_cpu) = (0.0, 0.0);
    for round in 0..opts.rounds.max(1) {
        let c0 = child.cpu_seconds();
        off.push(ingress::post_all(&off_url, &bodies, opts.concurrency, None).await);
        let c1 = child.cpu_seconds();
        let label = format!("round-{round}");
        on.push(ingress::post_all(&on_url, &bodies, opts.concurrency, Some(&label)).await);
        let c2 = child.cpu_seconds();
        (off_cpu, on_cpu) = (off_cpu + c1 - c0, on_cpu + c2 - c1);
        ceil.push(ceiling.run(&messages, opts.concurrency).await);
    }
    let (_, peak_rss) = child.rss_mib();
    child.stop();
    ceiling.teardown().await;

    let events = |rounds: &[Figures]| rounds.iter().map(|f| f.events).sum::<u64>();
    let (off_events, on_events) = (events(&off), events(&on));
    let ceiling = Figures::median(ceil);
    let off = Figures::median(off);
    let on = Figures::median(on);
    let on_vs_off = on.events_per_s() / off.events_per_s().max(1e-9);
    let row = |scenario: &str, bridge: Figures, note: String| Row {
        scenario: scenario.to_owned(),
        bridge,
        ceiling: ceiling.clone(),
        ceiling_name: "rdkafka producer acks=all",
        peak_rss_mib: peak_rss,
        note,
    };
    vec![
        row(
            "ingress → kafka, dedupe off",
            off,
            format!(
                "median of {} rounds, alternating with the dedupe row and the ceiling; bridge CPU {:.0} µs/event",
                opts.rounds.max(1),
                per_event(off_cpu, off_events)
            ),
        ),
        row(
            "ingress → kafka, dedupe on",
            on,
            format!(
                "dedupe on / off = {on_vs_off:.3}; bridge CPU {:.0} µs/event (embedded store, every event new)",
                per_event(on_cpu, on_events)
            ),
        ),
    ]
}
