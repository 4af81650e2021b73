//! The ingress parser alone: `parse_payload` on the scenario's bodies, on one thread, against the
//! JSON scanner's own speed on the same bytes (`serde_json` skipping the body as `IgnoredAny`,
//! which still checks it is valid JSON). It isolates the bridge's per-event validation cost
//! from HTTP, the broker and CPU sharing, which blur it in the end-to-end ingress scenarios.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use entity_bridge::event::{parse_payload, ParseOptions};
use serde::de::IgnoredAny;

use crate::stats::{Figures, Row};
use crate::{ingress, Opts};

/// Each side parses at least this many events, so short runs still time something.
const MIN_EVENTS: u64 = 200_000;

/// Runs the parse scenario.
pub fn run(opts: &Opts) -> Row {
    let bodies = ingress::bodies(&ingress::batches(opts));
    let rounds = MIN_EVENTS.div_ceil(opts.events.max(1));
    // Warm caches and the allocator once on each side before timing.
    let bridge_one = |body: &Bytes| {
        let payload =
            parse_payload(body, ParseOptions::default()).expect("generated body is valid");
        payload.len() as u64
    };
    let ceiling_one = |body: &Bytes| {
        serde_json::from_slice::<IgnoredAny>(body).expect("generated body is JSON");
        0
    };
    time(&bodies, 1, bridge_one);
    time(&bodies, 1, ceiling_one);
    let bridge = time(&bodies, rounds, bridge_one);
    let ceiling = time(&bodies, rounds, ceiling_one);
    let per_event = |f: &Figures| f.elapsed.as_secs_f64() * 1e6 / f.events.max(1) as f64;
    Row {
        scenario: "ingress parse".into(),
        note: format!(
            "one thread, no broker; {:.1} µs/event vs {:.1} µs/event to scan the JSON",
            per_event(&bridge),
            per_event(&ceiling)
        ),
        bridge,
        ceiling,
        ceiling_name: "serde_json scan (IgnoredAny)",
        peak_rss_mib: 0.0,
    }
}

fn time(bodies: &[(Bytes, u64, u64)], rounds: u64, mut one: impl FnMut(&Bytes) -> u64) -> Figures {
    let started = Instant::now();
    let (mut events, mut bytes) = (0, 0);
    for _ in 0..rounds {
        for (body, n, size) in bodies {
            black_box(one(black_box(body)));
            events += n;
            bytes += size;
        }
    }
    Figures {
        events,
        bytes,
        elapsed: started.elapsed(),
        latencies: Vec::new(),
    }
}
