//! `hydrate`: what record hydration costs. A record server in this process serves every
//! generated event's JSON as the record of its key (`/odata/<Resource>('<key>')`). One bridge
//! child runs two webhook connectors into the embedded log: `plain` receives the events with
//! their records inline, `hydrate` receives them thin (no `Data`) and fetches each batch's
//! distinct records through `[hydrate]` (`max_concurrent_requests` = `--concurrency`).
//!
//! Ceiling: a plain reqwest client GETting the same records (each batch's distinct URLs, as
//! the bridge fetches them) with the same number in flight. `ratio` = hydrated events per
//! second through the whole bridge / events per second whose records the client alone fetches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures::StreamExt;

use crate::child::BridgeChild;
use crate::gen::Event;
use crate::ingress::{self, per_event};
use crate::stats::{Figures, Row};
use crate::Opts;

type Records = Arc<HashMap<String, Bytes>>;

async fn record(State(records): State<Records>, Path(entity): Path<String>) -> impl IntoResponse {
    let key = entity
        .split_once("('")
        .and_then(|(_, rest)| rest.strip_suffix("')"))
        .unwrap_or_default();
    match records.get(key) {
        Some(body) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body.clone(),
        )
            .into_response(),
        None => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

/// Starts the record server; its base URL.
async fn record_server(batches: &[Vec<Event>]) -> String {
    let records: HashMap<String, Bytes> = batches
        .iter()
        .flatten()
        .map(|e| (e.key.clone(), Bytes::from(e.json.clone())))
        .collect();
    let app = axum::Router::new()
        .route("/odata/{entity}", axum::routing::get(record))
        .with_state(Arc::new(records));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// The batches as thin pushes (no `Data`), with their events' record bytes counted.
fn thin_bodies(batches: &[Vec<Event>]) -> Vec<(Bytes, u64, u64)> {
    let mut sequence = 0u64;
    batches
        .iter()
        .map(|events| {
            let value: Vec<String> = events
                .iter()
                .map(|e| {
                    sequence += 1;
                    format!(
                        r#"{{"EntityEventSequence":{sequence},"ResourceName":"{}","ResourceRecordKey":"{}"}}"#,
                        e.resource, e.key
                    )
                })
                .collect();
            let body = format!(r#"{{"value":[{}]}}"#, value.join(","));
            let bytes = events.iter().map(|e| e.json.len() as u64).sum();
            (Bytes::from(body), events.len() as u64, bytes)
        })
        .collect()
}

/// The URLs the bridge fetches: each batch's distinct records.
fn record_urls(base: &str, batches: &[Vec<Event>]) -> Vec<String> {
    let mut urls = Vec::new();
    for events in batches {
        let mut batch: Vec<String> = events
            .iter()
            .map(|e| format!("{base}/odata/{}('{}')", e.resource, e.key))
            .collect();
        batch.sort_unstable();
        batch.dedup();
        urls.extend(batch);
    }
    urls
}

/// The ceiling: every URL fetched by one client, `concurrency` in flight.
async fn fetch_all(urls: &[String], concurrency: usize, events: u64, bytes: u64) -> Figures {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let started = Instant::now();
    let fetches = urls.iter().map(|url| {
        let client = client.clone();
        async move {
            let response = client.get(url).send().await.expect("record server");
            assert!(response.status().is_success(), "{url}");
            response.bytes().await.expect("record body").len()
        }
    });
    let fetched: usize = futures::stream::iter(fetches)
        .buffer_unordered(concurrency.max(1))
        .fold(0, |n, _| async move { n + 1 })
        .await;
    assert_eq!(fetched, urls.len());
    Figures {
        events,
        bytes,
        elapsed: started.elapsed(),
        latencies: Vec::new(),
    }
}

/// Runs the scenario.
pub async fn run(opts: &Opts) -> Vec<Row> {
    let batches = ingress::batches(opts);
    let full = ingress::bodies(&batches);
    let thin = thin_bodies(&batches);
    let base = record_server(&batches).await;
    let urls = record_urls(&base, &batches);
    let run_id = crate::run_id();
    let dir = crate::ScratchDir::new(&run_id);
    let plain = "type = \"embedded\"\nfile = \"plain.db\"\nreplay = false\n".to_owned();
    let hydrate = format!(
        "type = \"embedded\"\nfile = \"hydrate.db\"\nreplay = false\n\n[hydrate]\n\
         url_template = \"{base}/odata/{{ResourceName}}('{{ResourceRecordKey}}')\"\n\
         max_record_bytes = 67108864\n[hydrate.limits]\nrequests_per_second = 1000000\n\
         max_concurrent_requests = {}\n",
        opts.concurrency.max(1)
    );
    ingress::write_connectors(dir.path(), &[("plain", &plain), ("hydrate", &hydrate)]);
    let child = BridgeChild::start(dir.path(), opts);
    let plain_url = format!("http://{}/webhooks/plain", child.webhook_addr);
    let hydrate_url = format!("http://{}/webhooks/hydrate", child.webhook_addr);
    ingress::post_all(&plain_url, &full[..1], 1, None).await;
    ingress::post_all(&hydrate_url, &thin[..1], 1, None).await;

    let events: u64 = thin.iter().map(|b| b.1).sum();
    let bytes: u64 = thin.iter().map(|b| b.2).sum();
    let (mut plain_rounds, mut hydrated, mut ceiling) = (Vec::new(), Vec::new(), Vec::new());
    let mut hydrate_cpu = 0.0;
    for _ in 0..opts.rounds.max(1) {
        plain_rounds.push(ingress::post_all(&plain_url, &full, opts.concurrency, None).await);
        let c0 = child.cpu_seconds();
        let mut round = ingress::post_all(&hydrate_url, &thin, opts.concurrency, None).await;
        hydrate_cpu += child.cpu_seconds() - c0;
        round.bytes = bytes;
        hydrated.push(round);
        ceiling.push(fetch_all(&urls, opts.concurrency, events, bytes).await);
    }
    let (_, peak_rss) = child.rss_mib();
    child.stop();
    let plain = Figures::median(plain_rounds);
    let hydrated = Figures::median(hydrated);
    let vs_plain = hydrated.events_per_s() / plain.events_per_s().max(1e-9);
    vec![Row {
        scenario: "ingress → hydrate → embedded".to_owned(),
        bridge: hydrated,
        ceiling: Figures::median(ceiling),
        ceiling_name: "reqwest GETs of the same records",
        peak_rss_mib: peak_rss,
        note: format!(
            "{} record GETs for {events} events; same events inline → embedded: {:.0} ev/s (hydrated / inline = {vs_plain:.2}); bridge CPU {:.0} µs/event hydrated",
            urls.len(),
            plain.events_per_s(),
            per_event(hydrate_cpu, events * opts.rounds.max(1) as u64)
        ),
    }]
}
