//! `bench`: measures the bridge against the raw broker ceiling, in one run, with the same bytes.
//!
//! ```text
//! cargo run --release --bin bench -- all
//! cargo run --release --bin bench -- ingress-kafka --events 50000 --concurrency 8
//! ```
//!
//! Each scenario starts what it needs on loopback (the bridge runs as a child process so its
//! memory is its own), drives it, then measures the ceiling — a plain client of the same broker
//! doing the same work with the same messages — and prints `ratio = bridge / ceiling`.
//! Results and their interpretation live in `docs/benchmarks.md`.

mod amqp_ceiling;
mod child;
mod dedupe;
mod egress;
mod gen;
mod hydrate;
mod ingress;
mod kafka_ceiling;
mod parse;
mod stats;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Benchmark scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// N concurrent HTTP producers → webhook → Kafka; ceiling: rdkafka producer (acks=all).
    IngressKafka,
    /// Ingress → Kafka with and without `[dedupe]` in the same run; ceiling: rdkafka producer.
    IngressKafkaDedupe,
    /// N concurrent HTTP producers → webhook → RabbitMQ; ceiling: lapin with publisher confirms.
    IngressAmqp,
    /// N concurrent HTTP producers → webhook → embedded log; ceiling: the log's own append.
    IngressEmbedded,
    /// The payload parser alone on one thread; ceiling: serde_json scanning the same bodies.
    IngressParse,
    /// Kafka → bridge → local HTTP receiver answering 200; ceiling: a plain rdkafka consumer.
    EgressKafka,
    /// Bridge RSS while draining a `--backlog`-event egress backlog (must not grow with it).
    EgressBacklog,
    /// Thin pushes → `[hydrate]` (records from a local server) → embedded log; ceiling: a
    /// plain HTTP client fetching the same records with the same concurrency.
    Hydrate,
    /// Every scenario in turn.
    All,
}

/// Options shared by every scenario.
#[derive(Parser, Debug, Clone)]
#[command(about = "entity-bridge benchmark: bridge vs raw broker ceiling")]
pub struct Opts {
    /// Which scenario to run (`__bridge` is internal: run the bridge child).
    pub scenario: String,
    /// Config dir for the internal `__bridge` child.
    pub child_config: Option<PathBuf>,
    /// Events per scenario.
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
    /// Events per pushed batch.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Concurrent HTTP producers (and concurrent batches for the ceiling).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Size of a Property event's JSON in bytes.
    #[arg(long, default_value_t = 8 * 1024)]
    pub property_bytes: usize,
    /// Ingress scenarios: rounds of bridge then ceiling, alternating; each side's median is
    /// reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Events in the egress backlog scenario (small, 512-byte events).
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog: u64,
    /// Egress read-ahead per partition (`max_buffered_events_per_partition`).
    #[arg(long, default_value_t = 10_000)]
    pub read_ahead: usize,
    /// Partitions of the benchmark topics.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Kafka-protocol broker.
    #[arg(
        long,
        env = "ENTITY_BRIDGE_TEST_KAFKA",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka: String,
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "ENTITY_BRIDGE_TEST_AMQP",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp: String,
}

/// A name unique to this run (topics, groups, scratch dirs).
/// How long a scenario may go without progress (an event arriving) before it fails: runs are
/// bounded by progress, not by a fixed window, so a busy machine is slow but never fails.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(120);

pub fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}

/// A scratch directory under the system temp dir, removed when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(run_id: &str) -> Self {
        let path = std::env::temp_dir().join(format!("entity-bridge-bench-{run_id}"));
        std::fs::create_dir_all(&path).expect("scratch dir");
        ScratchDir(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() {
    let opts = Opts::parse();
    if opts.scenario == "__bridge" {
        child::serve(opts.child_config.clone().expect("config dir"));
    }
    let scenario = Scenario::from_str(&opts.scenario, true).unwrap_or_else(|e| {
        eprintln!("unknown scenario `{}`: {e}", opts.scenario);
        std::process::exit(2)
    });
    let scenarios: Vec<Scenario> = match scenario {
        Scenario::All => Scenario::value_variants()
            .iter()
            .copied()
            .filter(|s| *s != Scenario::All)
            .collect(),
        one => vec![one],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "bench: {} events, batches of {}, {} producers, Property events of {} bytes, seed {}, {} rounds",
        opts.events, opts.batch, opts.concurrency, opts.property_bytes, opts.seed, opts.rounds
    );
    let mut rows = Vec::new();
    for s in scenarios {
        eprintln!("running {s:?} …");
        let row = runtime.block_on(async {
            match s {
                Scenario::IngressKafka => vec![ingress::run(ingress::Bus::Kafka, &opts).await],
                Scenario::IngressKafkaDedupe => dedupe::run(&opts).await,
                Scenario::IngressAmqp => vec![ingress::run(ingress::Bus::Amqp, &opts).await],
                Scenario::IngressEmbedded => {
                    vec![ingress::run(ingress::Bus::Embedded, &opts).await]
                }
                Scenario::EgressKafka => vec![egress::run(&opts).await],
                Scenario::EgressBacklog => vec![egress::backlog(&opts).await],
                Scenario::IngressParse => vec![parse::run(&opts)],
                Scenario::Hydrate => hydrate::run(&opts).await,
                Scenario::All => unreachable!(),
            }
        });
        rows.extend(row);
    }
    stats::print_table(&rows);
}
