//! Every Prometheus metric of the process, in one registry.
//!
//! Keeping them in one place keeps names, labels and help texts consistent (prefix
//! `entity_bridge_`, `_total` counters, `_seconds` histograms; labels only `connector`,
//! `resource`, `outcome`, `status`, `state`, `feed`) and lets a test check the exposition with
//! `promtool`.
//!
//! `ResourceName` comes from producers, so the `resource` label is capped: after
//! [`MAX_RESOURCE_LABELS`] distinct values, further names are counted as `other`.

mod catalog;
mod connectors;
mod feeds;
mod poll;
mod tokens;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

pub use catalog::MetricInfo;
pub use connectors::CONNECTOR_STATES;
pub use feeds::FeedCounts;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Registry, TextEncoder,
};

/// Distinct `resource` label values kept before new ones are folded into `other`.
pub const MAX_RESOURCE_LABELS: usize = 64;

/// The process's metrics. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    catalog: Vec<MetricInfo>,
    resources: Mutex<HashSet<String>>,
    http_requests: IntCounterVec,
    http_request_duration: HistogramVec,
    requests_in_flight: IntGaugeVec,
    request_bytes_in_flight: IntGaugeVec,
    events_received: IntCounterVec,
    events_rejected: IntCounterVec,
    events_published: IntCounterVec,
    publish_duration: HistogramVec,
    sink_ready: IntGaugeVec,
    pump_events: IntCounterVec,
    push: PushMetrics,
    amqp: AmqpMetrics,
    embedded: EmbeddedMetrics,
    connectors: connectors::ConnectorMetrics,
    feeds: feeds::FeedMetrics,
    poll: poll::PollMetrics,
    tokens: tokens::TokenMetrics,
}

/// The embedded log: its size, retention, cursors and the replay resource.
struct EmbeddedMetrics {
    log_events: IntGaugeVec,
    log_bytes: IntGaugeVec,
    retention_deleted: IntCounterVec,
    records: IntGaugeVec,
    records_bytes: IntGaugeVec,
    records_dropped: IntCounterVec,
    cursor_lag: IntGaugeVec,
    replay_requests: IntCounterVec,
    replay_events: IntCounterVec,
}

/// RabbitMQ connections, returned (unroutable) and redelivered messages.
struct AmqpMetrics {
    connections: IntCounterVec,
    returned: IntCounterVec,
    redelivered: IntCounterVec,
}

/// Egress: the webhook (push) sink and the Kafka source feeding it.
struct PushMetrics {
    requests: IntCounterVec,
    request_duration: HistogramVec,
    events_delivered: IntCounterVec,
    retries: IntCounterVec,
    throttled: IntCounterVec,
    retry_after: HistogramVec,
    dead_lettered: IntCounterVec,
    batch_events: HistogramVec,
    consumer_lag: IntGaugeVec,
    consumer_rejoins: IntCounterVec,
}

const RETRY_AFTER_BUCKETS: &[f64] = &[0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
const BATCH_EVENTS_BUCKETS: &[f64] =
    &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates the registry with every metric registered.
    pub fn new() -> Self {
        // Records every family as it is registered (see `catalog`).
        let registry = catalog::Recording::default();
        let counter =
            |name: &str, help: &str, labels: &[&str]| registry.counter(name, help, labels);
        let gauge = |name: &str, help: &str, labels: &[&str]| registry.gauge(name, help, labels);
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let h = HistogramVec::new(opts, labels).expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let buckets_histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            let h = HistogramVec::new(opts, labels).expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let push = PushMetrics {
            requests: counter(
                "entity_bridge_push_requests_total",
                "Webhook sink POSTs by connector and status class (2xx, 3xx, 4xx, 5xx, error = no HTTP answer).",
                &["connector", "status"],
            ),
            request_duration: histogram(
                "entity_bridge_push_request_duration_seconds",
                "Webhook sink POST latency until the consumer's answer, by connector and status class.",
                &["connector", "status"],
            ),
            events_delivered: counter(
                "entity_bridge_push_events_delivered_total",
                "EntityEvents a consumer endpoint answered 2xx for, by connector and ResourceName.",
                &["connector", "resource"],
            ),
            retries: counter(
                "entity_bridge_push_retries_total",
                "Webhook sink batch retries, by connector and cause (throttled, status_5xx, timeout, connect, auth, ...).",
                &["connector", "outcome"],
            ),
            throttled: counter(
                "entity_bridge_push_throttled_total",
                "429 / 503 answers carrying Retry-After that paused a connector's endpoint, by status.",
                &["connector", "status"],
            ),
            retry_after: buckets_histogram(
                "entity_bridge_push_retry_after_seconds",
                "Pauses requested by consumers with Retry-After (after the configured cap), in seconds.",
                &["connector"],
                RETRY_AFTER_BUCKETS,
            ),
            dead_lettered: counter(
                "entity_bridge_dead_lettered_events_total",
                "Events written to the dead-letter destination, by connector and reason (rejected, retries_exhausted, too_large, unparseable).",
                &["connector", "outcome"],
            ),
            batch_events: buckets_histogram(
                "entity_bridge_push_batch_events",
                "Events per webhook sink POST.",
                &["connector"],
                BATCH_EVENTS_BUCKETS,
            ),
            consumer_rejoins: counter(
                "entity_bridge_consumer_rejoins_total",
                "Times a Kafka source held no partition while its topics had lag nobody consumed for unassigned_rejoin_after_ms, and left to rejoin its group.",
                &["connector"],
            ),
            consumer_lag: gauge(
                "entity_bridge_consumer_lag",
                "Messages behind the high watermark summed over the partitions a Kafka source owns (committed offsets; from librdkafka statistics).",
                &["connector"],
            ),
        };
        let amqp = AmqpMetrics {
            connections: counter(
                "entity_bridge_amqp_connections_total",
                "RabbitMQ connection events of AMQP sinks and sources, by connector and outcome (opened, failed, lost).",
                &["connector", "outcome"],
            ),
            returned: counter(
                "entity_bridge_amqp_returned_total",
                "Messages RabbitMQ returned as unroutable (mandatory publish, no bound queue), by connector and ResourceName.",
                &["connector", "resource"],
            ),
            redelivered: counter(
                "entity_bridge_amqp_redelivered_total",
                "Deliveries an AMQP source received with the redelivered flag set, by connector.",
                &["connector"],
            ),
        };
        let embedded = EmbeddedMetrics {
            log_events: gauge(
                "entity_bridge_embedded_log_events",
                "Events stored in the embedded log a connector's sink appends to.",
                &["connector"],
            ),
            log_bytes: gauge(
                "entity_bridge_embedded_log_bytes",
                "Event payload bytes stored in the embedded log a connector's sink appends to.",
                &["connector"],
            ),
            retention_deleted: counter(
                "entity_bridge_embedded_retention_deleted_total",
                "Events deleted from an embedded log by retention (age or size), by connector.",
                &["connector"],
            ),
            records: gauge(
                "entity_bridge_embedded_records",
                "Records ([sink.records]) kept in the embedded log a connector's sink appends to.",
                &["connector"],
            ),
            records_bytes: gauge(
                "entity_bridge_embedded_records_bytes",
                "Bytes of record Data kept in the embedded log a connector's sink appends to.",
                &["connector"],
            ),
            records_dropped: counter(
                "entity_bridge_embedded_records_dropped_total",
                "Records dropped from an embedded log by the records' retention (max_age_hours, max_bytes), by connector.",
                &["connector"],
            ),
            cursor_lag: gauge(
                "entity_bridge_embedded_cursor_lag_events",
                "Events appended to an embedded log after the position of a source connector's cursor.",
                &["connector"],
            ),
            replay_requests: counter(
                "entity_bridge_replay_requests_total",
                "Requests to the EntityEvent replay resource, by the connector owning the log and HTTP status code.",
                &["connector", "status"],
            ),
            replay_events: counter(
                "entity_bridge_replay_events_total",
                "Events served by the EntityEvent replay resource, by the connector owning the log.",
                &["connector"],
            ),
        };
        let connectors = connectors::ConnectorMetrics {
            state: gauge(
                "entity_bridge_connector_state",
                "1 on the connector's current state (running, degraded = a part reports a problem, stopped = its task is down and being restarted), 0 on the others.",
                &["connector", "state"],
            ),
            restarts: counter(
                "entity_bridge_connector_restarts_total",
                "Restarts of a connector's task by its supervisor, by connector and why it had stopped (failed, panicked, ended).",
                &["connector", "outcome"],
            ),
            kafka_rebuilds: counter(
                "entity_bridge_kafka_client_rebuilds_total",
                "Kafka producers (sink or dead-letter writer) discarded after a fatal librdkafka error such as a fenced idempotent producer, by connector and outcome (rebuilt, failed).",
                &["connector", "outcome"],
            ),
        };
        let feeds = feeds::FeedMetrics::register(&registry);
        let poll = poll::PollMetrics::register(&registry);
        let tokens = tokens::TokenMetrics::register(&registry);
        let inner = Inner {
            connectors,
            feeds,
            poll,
            tokens,
            push,
            amqp,
            embedded,
            http_requests: counter(
                "entity_bridge_http_requests_total",
                "Webhook requests answered, by connector and HTTP status code.",
                &["connector", "status"],
            ),
            http_request_duration: histogram(
                "entity_bridge_http_request_duration_seconds",
                "Time from receiving a webhook request to answering it (time-to-200 for accepted pushes).",
                &["connector", "status"],
            ),
            requests_in_flight: gauge(
                "entity_bridge_requests_in_flight",
                "Webhook requests currently being processed, by connector.",
                &["connector"],
            ),
            request_bytes_in_flight: gauge(
                "entity_bridge_request_bytes_in_flight",
                "Bytes of the in-flight budget (max_in_flight_bytes) held by webhook request bodies being read or processed: decompressed size, taken as the bytes arrive.",
                &["connector"],
            ),
            events_received: counter(
                "entity_bridge_events_received_total",
                "EntityEvents received in valid webhook payloads, by connector and ResourceName.",
                &["connector", "resource"],
            ),
            events_rejected: counter(
                "entity_bridge_events_rejected_total",
                "Webhook requests rejected before publishing, by connector and reason.",
                &["connector", "outcome"],
            ),
            events_published: counter(
                "entity_bridge_events_published_total",
                "EntityEvents confirmed durable by the sink, by connector and ResourceName.",
                &["connector", "resource"],
            ),
            publish_duration: histogram(
                "entity_bridge_publish_duration_seconds",
                "Time for a sink to confirm a whole batch, by connector and outcome.",
                &["connector", "outcome"],
            ),
            sink_ready: gauge(
                "entity_bridge_sink_ready",
                "1 when the connector's sink answered its last readiness probe, else 0.",
                &["connector"],
            ),
            pump_events: counter(
                "entity_bridge_pump_events_total",
                "Events taken from a pull source and settled, by connector and outcome (delivered, dead_lettered; retried = events of each failed attempt, retried in place).",
                &["connector", "outcome"],
            ),
            resources: Mutex::new(HashSet::new()),
            catalog: registry.catalog(),
            registry: registry.into_registry(),
        };
        Metrics(Arc::new(inner))
    }

    /// Every registered metric family, including those without samples yet, sorted by name.
    pub fn catalog(&self) -> &[MetricInfo] {
        &self.0.catalog
    }

    /// The registry, e.g. for tests that inspect metric families.
    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    /// Text exposition format for `/metrics`.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.0.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }

    /// Bounded `resource` label value for a producer-supplied ResourceName.
    pub fn resource_label<'a>(&self, resource: &'a str) -> &'a str {
        let mut seen = self.0.resources.lock().expect("metrics lock");
        if seen.contains(resource) {
            return resource;
        }
        if seen.len() < MAX_RESOURCE_LABELS {
            seen.insert(resource.to_owned());
            return resource;
        }
        "other"
    }

    /// Counts one answered webhook request and its duration.
    pub fn http_request(&self, connector: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        self.0
            .http_requests
            .with_label_values(&[connector, &status])
            .inc();
        self.0
            .http_request_duration
            .with_label_values(&[connector, &status])
            .observe(seconds);
    }

    /// Gauge of requests in flight for a connector.
    pub fn requests_in_flight(&self, connector: &str) -> prometheus::IntGauge {
        self.0.requests_in_flight.with_label_values(&[connector])
    }

    /// Gauge of body bytes in flight for a connector.
    pub fn request_bytes_in_flight(&self, connector: &str) -> prometheus::IntGauge {
        self.0
            .request_bytes_in_flight
            .with_label_values(&[connector])
    }

    /// Counts events received, grouped by resource by the caller.
    pub fn events_received(&self, connector: &str, resource: &str, n: u64) {
        let resource = self.resource_label(resource);
        self.0
            .events_received
            .with_label_values(&[connector, resource])
            .inc_by(n);
    }

    /// Counts a request rejected before publishing (`outcome` = why).
    pub fn request_rejected(&self, connector: &str, outcome: &str) {
        self.0
            .events_rejected
            .with_label_values(&[connector, outcome])
            .inc();
    }

    /// Counts events confirmed by the sink.
    pub fn events_published(&self, connector: &str, resource: &str, n: u64) {
        let resource = self.resource_label(resource);
        self.0
            .events_published
            .with_label_values(&[connector, resource])
            .inc_by(n);
    }

    /// Observes how long a batch took to be confirmed (`outcome`: `ok`, `overloaded`, …).
    pub fn publish_duration(&self, connector: &str, outcome: &str, seconds: f64) {
        self.0
            .publish_duration
            .with_label_values(&[connector, outcome])
            .observe(seconds);
    }

    /// Counts events a pump settled with `outcome`.
    pub fn pump_events(&self, connector: &str, outcome: &str, n: u64) {
        self.0
            .pump_events
            .with_label_values(&[connector, outcome])
            .inc_by(n);
    }

    /// Counts one webhook sink POST by status class and observes its latency.
    pub fn push_request(&self, connector: &str, status_class: &str, seconds: f64) {
        let p = &self.0.push;
        p.requests
            .with_label_values(&[connector, status_class])
            .inc();
        p.request_duration
            .with_label_values(&[connector, status_class])
            .observe(seconds);
    }

    /// Observes the size of one webhook sink POST.
    pub fn push_batch_events(&self, connector: &str, events: usize) {
        self.0
            .push
            .batch_events
            .with_label_values(&[connector])
            .observe(events as f64);
    }

    /// Counts events a consumer endpoint accepted.
    pub fn push_events_delivered(&self, connector: &str, resource: &str, n: u64) {
        let resource = self.resource_label(resource);
        self.0
            .push
            .events_delivered
            .with_label_values(&[connector, resource])
            .inc_by(n);
    }

    /// Counts one retry of a webhook sink batch (`cause`: why it is retried).
    pub fn push_retry(&self, connector: &str, cause: &str) {
        self.0
            .push
            .retries
            .with_label_values(&[connector, cause])
            .inc();
    }

    /// Counts a 429 / 503 with Retry-After and observes the pause it caused.
    pub fn push_throttled(&self, connector: &str, status: u16, pause_seconds: f64) {
        let p = &self.0.push;
        p.throttled
            .with_label_values(&[connector, &status.to_string()])
            .inc();
        p.retry_after
            .with_label_values(&[connector])
            .observe(pause_seconds);
    }

    /// Counts events written to the dead-letter destination.
    pub fn dead_lettered(&self, connector: &str, reason: &str, n: u64) {
        self.0
            .push
            .dead_lettered
            .with_label_values(&[connector, reason])
            .inc_by(n);
    }

    /// Sets the consumer lag of a Kafka source.
    pub fn consumer_lag(&self, connector: &str, lag: i64) {
        self.0
            .push
            .consumer_lag
            .with_label_values(&[connector])
            .set(lag);
    }

    /// Counts a Kafka source leaving its group to rejoin (it held nothing while lag waited).
    pub fn consumer_rejoin(&self, connector: &str) {
        self.0
            .push
            .consumer_rejoins
            .with_label_values(&[connector])
            .inc();
    }

    /// Counts a RabbitMQ connection event (`outcome`: `opened`, `failed`, `lost`).
    pub fn amqp_connection(&self, connector: &str, outcome: &str) {
        self.0
            .amqp
            .connections
            .with_label_values(&[connector, outcome])
            .inc();
    }

    /// Counts messages RabbitMQ returned as unroutable.
    pub fn amqp_returned(&self, connector: &str, resource: &str, n: u64) {
        let resource = self.resource_label(resource);
        self.0
            .amqp
            .returned
            .with_label_values(&[connector, resource])
            .inc_by(n);
    }

    /// Counts deliveries that arrived with the redelivered flag.
    pub fn amqp_redelivered(&self, connector: &str, n: u64) {
        self.0
            .amqp
            .redelivered
            .with_label_values(&[connector])
            .inc_by(n);
    }

    /// Records the latest readiness probe of a connector's sink.
    pub fn sink_ready(&self, connector: &str, ready: bool) {
        self.0
            .sink_ready
            .with_label_values(&[connector])
            .set(i64::from(ready));
    }
}

/// The embedded log and its replay resource.
impl Metrics {
    /// Sets the stored event count and payload bytes of the log `connector` appends to.
    pub fn embedded_log_size(&self, connector: &str, events: i64, bytes: i64) {
        let m = &self.0.embedded;
        m.log_events.with_label_values(&[connector]).set(events);
        m.log_bytes.with_label_values(&[connector]).set(bytes);
    }

    /// Sets the records kept in a log and their bytes.
    pub fn embedded_records_size(&self, connector: &str, records: i64, bytes: i64) {
        let m = &self.0.embedded;
        m.records.with_label_values(&[connector]).set(records);
        m.records_bytes.with_label_values(&[connector]).set(bytes);
    }

    /// Counts records dropped by the records' retention.
    pub fn embedded_records_dropped(&self, connector: &str, n: u64) {
        self.0
            .embedded
            .records_dropped
            .with_label_values(&[connector])
            .inc_by(n);
    }

    /// Counts events deleted by retention.
    pub fn embedded_retention_deleted(&self, connector: &str, n: u64) {
        self.0
            .embedded
            .retention_deleted
            .with_label_values(&[connector])
            .inc_by(n);
    }

    /// Sets how many events a source connector's cursor is behind the log's end.
    pub fn embedded_cursor_lag(&self, connector: &str, events: i64) {
        self.0
            .embedded
            .cursor_lag
            .with_label_values(&[connector])
            .set(events);
    }

    /// Counts one answered replay request.
    pub fn replay_request(&self, connector: &str, status: u16) {
        self.0
            .embedded
            .replay_requests
            .with_label_values(&[connector, &status.to_string()])
            .inc();
    }

    /// Counts events served by the replay resource.
    pub fn replay_events(&self, connector: &str, n: u64) {
        self.0
            .embedded
            .replay_events
            .with_label_values(&[connector])
            .inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_label_is_capped() {
        let m = Metrics::new();
        for i in 0..MAX_RESOURCE_LABELS {
            let name = format!("R{i}");
            assert_eq!(m.resource_label(&name), name);
        }
        assert_eq!(m.resource_label("R0"), "R0");
        assert_eq!(m.resource_label("OneTooMany"), "other");
    }

    #[test]
    fn exposition_names_are_prefixed() {
        let m = Metrics::new();
        m.http_request("c", 200, 0.01);
        m.events_published("c", "Property", 3);
        let text = m.encode();
        assert!(
            text.contains("entity_bridge_http_requests_total{connector=\"c\",status=\"200\"} 1")
        );
        assert!(text.contains(
            "entity_bridge_events_published_total{connector=\"c\",resource=\"Property\"} 3"
        ));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("entity_bridge_"), "{line}");
        }
    }
}
