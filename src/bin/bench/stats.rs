//! Figures of one run and the table the benchmark prints.

use std::time::{Duration, Instant};

use entity_bridge::connector::Message;

/// One measured side (the bridge, or the raw ceiling).
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub events: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Per-request latencies (time-to-200), when the side has requests.
    pub latencies: Vec<Duration>,
}

impl Figures {
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// What a ceiling timed since `started` over `batches` of the bridge's messages.
    pub fn of_messages(batches: &[Vec<Message>], started: Instant) -> Figures {
        Figures {
            events: batches.iter().map(|b| b.len() as u64).sum(),
            bytes: batches
                .iter()
                .flatten()
                .map(|m| m.payload.len() as u64)
                .sum(),
            elapsed: started.elapsed(),
            latencies: Vec::new(),
        }
    }

    /// The round with the median throughput (the upper one of an even count).
    pub fn median(mut rounds: Vec<Figures>) -> Figures {
        rounds.sort_by(|a, b| a.events_per_s().total_cmp(&b.events_per_s()));
        let middle = rounds.len() / 2;
        rounds.swap_remove(middle)
    }

    /// The `q` quantile (0..=1) of the latencies in milliseconds, if any were recorded.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        Some(sorted[index].as_secs_f64() * 1000.0)
    }
}

/// A finished scenario.
pub struct Row {
    pub scenario: String,
    pub bridge: Figures,
    pub ceiling: Figures,
    pub ceiling_name: &'static str,
    pub peak_rss_mib: f64,
    pub note: String,
}

impl Row {
    pub fn ratio(&self) -> f64 {
        self.bridge.events_per_s() / self.ceiling.events_per_s().max(1e-9)
    }
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

/// A peak RSS, or `-` for a scenario without a bridge process (0).
fn rss(mib: f64) -> String {
    if mib > 0.0 {
        format!("{mib:.1}")
    } else {
        "-".into()
    }
}

/// Prints the table (Markdown, so it can be pasted into docs/benchmarks.md).
pub fn print_table(rows: &[Row]) {
    println!();
    println!("| scenario | events | bridge ev/s | bridge MiB/s | p50 ms | p99 ms | ceiling | ceiling ev/s | ratio | bridge peak RSS MiB | note |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.1} | {} | {} | {} | {:.0} | {:.2} | {} | {} |",
            r.scenario,
            r.bridge.events,
            r.bridge.events_per_s(),
            r.bridge.mib_per_s(),
            ms(r.bridge.quantile_ms(0.5)),
            ms(r.bridge.quantile_ms(0.99)),
            r.ceiling_name,
            r.ceiling.events_per_s(),
            r.ratio(),
            rss(r.peak_rss_mib),
            r.note,
        );
    }
    for r in rows {
        println!(
            "{}: ratio = bridge / ceiling = {:.2}",
            r.scenario,
            r.ratio()
        );
    }
}
