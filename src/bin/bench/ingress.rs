//! Ingress scenarios: concurrent HTTP producers post RESO batches to the bridge (a child
//! process), then the broker's own client writes the same messages as the ceiling.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use entity_bridge::connector::Message;
use futures::future::join_all;

use crate::child::{cpu_seconds, pid_of, BridgeChild};
use crate::gen::{self, Event, GenConfig, Rng};
use crate::stats::{Figures, Row};
use crate::{amqp_ceiling, kafka_ceiling, Opts};

const TOKEN: &str = "bench-token";

/// The bus behind the bridge.
#[derive(Clone, Copy, Debug)]
pub enum Bus {
    /// Kafka sink.
    Kafka,
    /// RabbitMQ (AMQP) sink.
    Amqp,
    /// The embedded log (SQLite, fsync per commit).
    Embedded,
}

/// Generates the scenario's batches (deterministic from the seed).
pub fn batches(opts: &Opts) -> Vec<Vec<Event>> {
    let config = GenConfig {
        property_bytes: opts.property_bytes,
        ..GenConfig::default()
    };
    let mut rng = Rng::new(opts.seed);
    let mut all = Vec::new();
    let mut seq = 1u64;
    while seq <= opts.events {
        let n = (opts.events - seq + 1).min(opts.batch as u64);
        all.push(
            (seq..seq + n)
                .map(|s| gen::event(&mut rng, &config, s))
                .collect(),
        );
        seq += n;
    }
    all
}

/// One webhook body per batch, with its event count and the events' own bytes (what MB/s
/// counts).
pub fn bodies(batches: &[Vec<Event>]) -> Vec<(Bytes, u64, u64)> {
    batches
        .iter()
        .map(|b| {
            let bytes = b.iter().map(|e| e.json.len() as u64).sum();
            (Bytes::from(gen::payload(b)), b.len() as u64, bytes)
        })
        .collect()
}

/// Writes a bridge config dir with one webhook connector `bench` and the given sink.
pub fn write_config(dir: &Path, sink_toml: &str) {
    write_connectors(dir, &[("bench", sink_toml)]);
}

/// Writes a bridge config dir with webhook connectors `(name, sink and further tables)`, each
/// at `/webhooks/<name>`.
pub fn write_connectors(dir: &Path, connectors: &[(&str, &str)]) {
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    std::fs::write(
        dir.join("bridge.toml"),
        format!(
            "data_dir = {:?}\n[http]\nlisten_addr = \"127.0.0.1:0\"\n[admin]\nlisten_addr = \"127.0.0.1:0\"\n",
            dir.join("data").display().to_string()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("connectors")).unwrap();
    for (name, sink_toml) in connectors {
        let connector = format!(
            "[source]\ntype = \"webhook\"\npath = \"/webhooks/{name}\"\ntokens = [{{ file = {:?} }}]\n\
             max_body_bytes = 67108864\nmax_in_flight_bytes = 1073741824\n\n[sink]\n{sink_toml}\n",
            dir.join("token").display().to_string()
        );
        std::fs::write(dir.join(format!("connectors/{name}.toml")), connector).unwrap();
    }
}

/// Posts every body with `concurrency` producers (with `EntityEventSource: label` when given);
/// retries a body answered 429/503. Bodies are shared `Bytes`, so the generator never copies a
/// body.
pub async fn post_all(
    url: &str,
    bodies: &[(Bytes, u64, u64)],
    concurrency: usize,
    label: Option<&str>,
) -> Figures {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (client, next, url) = (client.clone(), next.clone(), url.to_owned());
        let label = label.map(str::to_owned);
        async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((body, _, _)) = bodies.get(i) else {
                    break;
                };
                loop {
                    let t = Instant::now();
                    let mut request = client
                        .post(&url)
                        .bearer_auth(TOKEN)
                        .header("content-type", "application/json");
                    if let Some(label) = &label {
                        request = request.header("EntityEventSource", label);
                    }
                    let response = request
                        .body(body.clone())
                        .send()
                        .await
                        .expect("bridge reachable");
                    match response.status().as_u16() {
                        200 => {
                            latencies.push(t.elapsed());
                            break;
                        }
                        429 | 503 => tokio::time::sleep(Duration::from_millis(50)).await,
                        other => panic!(
                            "bridge answered {other}: {}",
                            response.text().await.unwrap_or_default()
                        ),
                    }
                }
            }
            latencies
        }
    });
    let latencies: Vec<Duration> = join_all(workers).await.into_iter().flatten().collect();
    Figures {
        events: bodies.iter().map(|b| b.1).sum(),
        bytes: bodies.iter().map(|b| b.2).sum(),
        elapsed: started.elapsed(),
        latencies,
    }
}

/// Creates the `<prefix>.Property` / `<prefix>.Media` topics and returns a Kafka sink writing
/// to them.
pub async fn kafka_sink(opts: &Opts, prefix: &str) -> String {
    for resource in ["Property", "Media"] {
        kafka_ceiling::create_topic(
            &opts.kafka,
            &format!("{prefix}.{resource}"),
            opts.partitions,
        )
        .await;
    }
    format!(
        "type = \"kafka\"\nbootstrap_servers = \"{}\"\ntopic_template = \"{prefix}.{{ResourceName}}\"\ncreate_topics = false\n",
        opts.kafka
    )
}

/// Runs one ingress scenario.
pub async fn run(bus: Bus, opts: &Opts) -> Row {
    let batches = batches(opts);
    let bodies = bodies(&batches);
    let messages = messages(&batches);
    let run_id = crate::run_id();
    let dir = crate::ScratchDir::new(&run_id);
    let prefix = format!("bench-{run_id}");
    let sink = match bus {
        Bus::Kafka => kafka_sink(opts, &prefix).await,
        Bus::Amqp => {
            let (_c, channel) = amqp_ceiling::channel(&opts.amqp).await;
            amqp_ceiling::declare(&channel, &prefix, &prefix).await;
            format!(
                "type = \"amqp\"\nurl_env = \"BENCH_AMQP_URL\"\nexchange = \"{prefix}\"\ndeclare_exchange = false\n"
            )
        }
        Bus::Embedded => "type = \"embedded\"\nfile = \"bench.db\"\n".to_owned(),
    };
    write_config(dir.path(), &sink);
    let child = BridgeChild::start(dir.path(), opts);
    let url = format!("http://{}/webhooks/bench", child.webhook_addr);
    let ceiling = Ceiling::setup(bus, opts, &prefix, dir.path()).await;
    // Warm-up on both sides: connections, metadata, producer ids.
    post_all(&url, &bodies[..1], 1, None).await;
    ceiling.run(&messages[..1], 1).await;

    // Rounds alternate bridge and ceiling, so both see the broker in the same state (tansu's
    // memory store slows as it fills) and a one-off stall does not decide the ratio.
    let (mut bridge_rounds, mut ceiling_rounds) = (Vec::new(), Vec::new());
    let (mut bridge_cpu, mut loadgen_cpu, mut ceiling_cpu) = (0.0, 0.0, 0.0);
    let broker = bus.broker_comm().and_then(pid_of);
    let broker_cpu = || broker.map_or(0.0, |pid| cpu_seconds(Some(pid)));
    let (mut broker_cpu_bridge, mut broker_cpu_ceiling) = (0.0, 0.0);
    for _ in 0..opts.rounds.max(1) {
        let (b0, g0, k0) = (child.cpu_seconds(), cpu_seconds(None), broker_cpu());
        bridge_rounds.push(post_all(&url, &bodies, opts.concurrency, None).await);
        bridge_cpu += child.cpu_seconds() - b0;
        loadgen_cpu += cpu_seconds(None) - g0;
        let (c0, k1) = (cpu_seconds(None), broker_cpu());
        broker_cpu_bridge += k1 - k0;
        ceiling_rounds.push(ceiling.run(&messages, opts.concurrency).await);
        ceiling_cpu += cpu_seconds(None) - c0;
        broker_cpu_ceiling += broker_cpu() - k1;
    }
    let (_, peak_rss) = child.rss_mib();
    let push_ms = child
        .mean_ms("entity_bridge_http_request_duration_seconds")
        .await;
    let publish_ms = child
        .mean_ms("entity_bridge_publish_duration_seconds")
        .await;
    child.stop();
    ceiling.teardown().await;

    let events = |rounds: &[Figures]| rounds.iter().map(|f| f.events).sum::<u64>();
    let broker_note = match broker {
        Some(_) => format!(
            "; broker CPU µs/event: {:.0} under the bridge, {:.0} under the ceiling",
            per_event(broker_cpu_bridge, events(&bridge_rounds)),
            per_event(broker_cpu_ceiling, events(&ceiling_rounds))
        ),
        None => String::new(),
    };
    let note = format!(
        "median of {} rounds; bridge mean per push {:.1} ms, of which sink {:.1} ms; CPU µs/event: bridge {:.0}, HTTP load generator {:.0}, ceiling client {:.0}{broker_note}",
        bridge_rounds.len(),
        push_ms,
        publish_ms,
        per_event(bridge_cpu, events(&bridge_rounds)),
        per_event(loadgen_cpu, events(&bridge_rounds)),
        per_event(ceiling_cpu, events(&ceiling_rounds))
    );
    Row {
        scenario: format!("ingress → {bus:?}").to_lowercase(),
        bridge: Figures::median(bridge_rounds),
        ceiling: Figures::median(ceiling_rounds),
        ceiling_name: match bus {
            Bus::Kafka => "rdkafka producer acks=all",
            Bus::Amqp => "lapin publisher confirms",
            Bus::Embedded => "embedded Log::append",
        },
        peak_rss_mib: peak_rss,
        note,
    }
}

impl Bus {
    /// The command name of the local broker process (its CPU is reported when it runs here).
    pub(crate) fn broker_comm(self) -> Option<&'static str> {
        match self {
            Bus::Kafka => Some("tansu"),
            Bus::Amqp => Some("beam.smp"),
            Bus::Embedded => None,
        }
    }
}

/// The ceiling side of an ingress scenario: the broker's own client, set up once and run once
/// per round with the same batches and concurrency as the HTTP producers.
#[allow(clippy::large_enum_variant)] // one value per scenario; its size does not matter
pub(crate) enum Ceiling {
    Kafka {
        producer: rdkafka::producer::FutureProducer,
        topics: kafka_ceiling::Topics,
    },
    Amqp {
        _connection: lapin::Connection,
        channel: lapin::Channel,
        exchange: String,
        bridge_exchange: String,
    },
    Embedded {
        log: Arc<entity_bridge::embedded::Log>,
    },
}

impl Ceiling {
    pub(crate) async fn setup(bus: Bus, opts: &Opts, prefix: &str, dir: &Path) -> Self {
        match bus {
            Bus::Kafka => {
                // The same topic layout as the bridge's `{ResourceName}` template.
                let topics = kafka_ceiling::Topics::PerResource(format!("{prefix}.ceiling"));
                for (_, topic) in topics.names() {
                    kafka_ceiling::create_topic(&opts.kafka, &topic, opts.partitions).await;
                }
                let producer = kafka_ceiling::producer(&opts.kafka);
                Ceiling::Kafka { producer, topics }
            }
            Bus::Amqp => {
                let (connection, channel) = amqp_ceiling::channel(&opts.amqp).await;
                let exchange = format!("{prefix}.ceiling");
                amqp_ceiling::declare(&channel, &exchange, &exchange).await;
                Ceiling::Amqp {
                    _connection: connection,
                    channel,
                    exchange,
                    bridge_exchange: prefix.to_owned(),
                }
            }
            Bus::Embedded => {
                let log =
                    entity_bridge::embedded::Log::open(&dir.join("ceiling.db")).expect("open log");
                Ceiling::Embedded { log }
            }
        }
    }

    /// Sends `messages` (the scenario's batches, or the first of them for the warm-up).
    pub(crate) async fn run(&self, messages: &[Vec<Message>], concurrency: usize) -> Figures {
        match self {
            Ceiling::Kafka { producer, topics } => {
                kafka_ceiling::produce(producer, topics, messages, concurrency).await
            }
            Ceiling::Amqp {
                channel, exchange, ..
            } => amqp_ceiling::publish(channel, exchange, messages, concurrency).await,
            Ceiling::Embedded { log } => store_ceiling(log, messages, concurrency).await,
        }
    }

    pub(crate) async fn teardown(self) {
        if let Ceiling::Amqp {
            channel,
            exchange,
            bridge_exchange,
            ..
        } = self
        {
            amqp_ceiling::delete(&channel, &exchange, &exchange).await;
            amqp_ceiling::delete(&channel, &bridge_exchange, &bridge_exchange).await;
        }
    }
}

/// The generated batches as the bridge's own messages (what the webhook would have made of
/// them), for the ceilings, which send what the sinks send. Built once, outside timed rounds.
pub fn messages(batches: &[Vec<Event>]) -> Vec<Vec<Message>> {
    batches
        .iter()
        .enumerate()
        .map(|(i, b)| {
            b.iter()
                .enumerate()
                .map(|(n, e)| Message {
                    delete: false,
                    conflict: None,
                    sequence: (i * 1_000_000 + n + 1) as i64,
                    resource_name: e.resource.to_owned(),
                    record_key: e.key.clone(),
                    source_label: None,
                    payload: Bytes::from(e.json.clone()),
                    origin: None,
                })
                .collect()
        })
        .collect()
}

/// The embedded ceiling: the log's own batch append (same store, same group-commit writer,
/// same fsync per commit), called directly with the same batches and concurrency.
async fn store_ceiling(
    log: &entity_bridge::embedded::Log,
    messages: &[Vec<Message>],
    concurrency: usize,
) -> Figures {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let next = next.clone();
        async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(batch) = messages.get(i) else { break };
                log.append("ceiling", batch).await.expect("append");
            }
        }
    });
    join_all(workers).await;
    Figures::of_messages(messages, started)
}

/// CPU microseconds per event.
pub(crate) fn per_event(cpu_seconds: f64, events: u64) -> f64 {
    cpu_seconds * 1e6 / events.max(1) as f64
}
