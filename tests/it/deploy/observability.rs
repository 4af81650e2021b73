//! Prometheus config and alert rules (promtool), the Grafana dashboard and provisioning, and
//! docs/metrics.md, all checked against the metric catalog of the code.

use std::collections::{BTreeMap, BTreeSet};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde_json::Value;

use super::{catalog, check_expr, metric_names, promtool, read, repo, yaml};

/// The alerts the issue asks for (dead letters, push 5xx / 429, consumer lag, ingress 429 /
/// 503, not ready; feeds: stalled, regressions, duplicate storms) plus the ones added beside
/// them.
const ALERTS: [&str; 19] = [
    "EntityBridgeDown",
    "EntityBridgeSinkNotReady",
    "EntityBridgeConnectorStopped",
    "EntityBridgeConnectorRestarting",
    "EntityBridgeConnectorDegraded",
    "EntityBridgeIngressOverloaded",
    "EntityBridgeIngressUnavailable",
    "EntityBridgePushServerErrors",
    "EntityBridgePushThrottled",
    "EntityBridgeDeadLetters",
    "EntityBridgeConsumerLag",
    "EntityBridgeEmbeddedCursorLag",
    "EntityBridgePollFailing",
    "EntityBridgeTokenEndpointRefusals",
    "EntityBridgeFeedStalled",
    "EntityBridgeFeedRegressions",
    "EntityBridgeDuplicateStorm",
    "EntityBridgeFeedConflicts",
    "EntityBridgeDedupeStoreErrors",
];

#[test]
fn prometheus_config_and_rules_pass_promtool() {
    let dir = repo().join("deploy/prometheus");
    for args in [
        // Syntax only: the admin token file it names exists inside the compose container
        // (/run/secrets/admin_token), not here; the wiring is checked below.
        &["check", "config", "--syntax-only", "prometheus.yml"][..],
        &["check", "rules", "alerts.yml"],
        // Feeds synthetic series to every alert and checks it fires with its labels and text.
        &["test", "rules", "alerts.test.yml"],
    ] {
        let (ok, out) = promtool(&dir, args, None);
        assert!(ok, "promtool {args:?} failed:\n{out}");
    }
    // The scrape targets are the compose services' admin listeners, under the job the rules use.
    let config = yaml("deploy/prometheus/prometheus.yml");
    let job = config["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "entity-bridge")
        .expect("job entity-bridge");
    assert_eq!(job["metrics_path"], "/metrics");
    let targets: BTreeSet<&str> = job["static_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["targets"].as_array().unwrap())
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(targets, BTreeSet::from(["bridge:8081", "receiver:8081"]));
    // Off loopback the admin listeners ask for a token: Prometheus sends, from the compose
    // secret, the variable the bridges read their `admin.tokens` from.
    assert_eq!(job["authorization"]["type"], "Bearer");
    assert_eq!(
        job["authorization"]["credentials_file"],
        "/run/secrets/admin_token"
    );
    let services = super::compose::services();
    assert_eq!(
        services["prometheus"]["secrets"],
        serde_json::json!(["admin_token"])
    );
    let compose = yaml("docker-compose.yml");
    assert_eq!(
        compose["secrets"]["admin_token"]["environment"],
        "ENTITY_BRIDGE_ADMIN_TOKEN"
    );
    for dir in ["bridge", "receiver"] {
        let text = super::read(&format!("deploy/compose/{dir}/bridge.toml"));
        assert!(
            text.contains("tokens = [{ env = \"ENTITY_BRIDGE_ADMIN_TOKEN\" }]"),
            "{dir}: admin.tokens"
        );
        assert!(
            super::compose::env_of(&services[dir]).contains_key("ENTITY_BRIDGE_ADMIN_TOKEN"),
            "{dir}: the admin token in its environment"
        );
    }
}

#[test]
fn alert_rules_use_real_metrics_and_have_runbooks() {
    let catalog = catalog();
    let rules = yaml("deploy/prometheus/alerts.yml");
    let operations = read("docs/operations.md").to_lowercase();
    let mut names = BTreeSet::new();
    let mut problems = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().expect("alerting rules only");
            names.insert(name);
            let expr = rule["expr"].as_str().unwrap();
            problems.extend(check_expr(&catalog, name, expr));
            if name != "EntityBridgeDown" && metric_names(expr).is_empty() {
                problems.push(format!("{name}: uses no entity_bridge metric"));
            }
            let runbook = rule["annotations"]["runbook"].as_str().unwrap_or_default();
            let anchor = format!("docs/operations.md#{}", name.to_lowercase());
            if runbook != anchor {
                problems.push(format!("{name}: runbook annotation should be {anchor}"));
            }
            if !operations.contains(&format!("### {}\n", name.to_lowercase())) {
                problems.push(format!(
                    "{name}: no `### {name}` runbook in docs/operations.md"
                ));
            }
            for key in ["summary", "description"] {
                if rule["annotations"][key].as_str().is_none_or(str::is_empty) {
                    problems.push(format!("{name}: no {key}"));
                }
            }
            if rule["labels"]["severity"].as_str().is_none() {
                problems.push(format!("{name}: no severity"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(names, BTreeSet::from(ALERTS));
}

#[test]
fn every_alert_fires_in_a_promtool_case() {
    let cases = yaml("deploy/prometheus/alerts.test.yml");
    let firing: BTreeSet<&str> = cases["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|case| case["alert_rule_test"].as_array().unwrap())
        .filter(|check| {
            check["exp_alerts"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
        .map(|check| check["alertname"].as_str().unwrap())
        .collect();
    assert_eq!(firing, BTreeSet::from(ALERTS), "alerts.test.yml");
}

/// Every PromQL expression of the dashboard (targets and variable queries), variables resolved.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap().to_owned();
            exprs.push((title, target["expr"].as_str().unwrap().to_owned()));
        }
    }
    exprs
}

#[test]
fn grafana_dashboard_queries_real_metrics_and_valid_promql() {
    let text = read("deploy/grafana/dashboards/entity-bridge.json");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert_eq!(dashboard["uid"], "entity-bridge");
    let catalog = catalog();
    let exprs = dashboard_exprs(&dashboard);
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (title, expr) in &exprs {
        problems.extend(check_expr(&catalog, title, expr));
        used.extend(metric_names(expr));
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        let query = var["query"]["query"].as_str().unwrap();
        problems.extend(check_expr(&catalog, var["name"].as_str().unwrap(), query));
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // What the issue asks the dashboard to cover.
    for want in [
        "entity_bridge_http_requests_total",
        "entity_bridge_http_request_duration_seconds_bucket",
        "entity_bridge_publish_duration_seconds_bucket",
        "entity_bridge_push_events_delivered_total",
        "entity_bridge_push_retries_total",
        "entity_bridge_push_throttled_total",
        "entity_bridge_dead_lettered_events_total",
        "entity_bridge_consumer_lag",
        "entity_bridge_feed_high_water_mark",
        "entity_bridge_feed_last_event_timestamp_seconds",
        "entity_bridge_feed_events_total",
        "entity_bridge_feed_duplicates_total",
        "entity_bridge_feed_regressions_total",
        "entity_bridge_feed_conflicts_total",
        "entity_bridge_feed_gap_sequences_total",
    ] {
        assert!(used.contains(want), "dashboard does not show {want}");
    }
    // Every query parses as PromQL: promtool checks them as recording rules.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$connector", ".*")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.rules.yml"), rules).unwrap();
    let (ok, out) = promtool(dir.path(), &["check", "rules", "dashboard.rules.yml"], None);
    assert!(ok, "dashboard queries are not valid PromQL:\n{out}");
    // Panels reference the provisioned data source.
    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let uid = datasources["datasources"][0]["uid"].as_str().unwrap();
    assert_eq!(
        datasources["datasources"][0]["url"],
        "http://prometheus:9090"
    );
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], uid, "{}", panel["title"]);
        }
    }
    // The provider loads the directory compose mounts the dashboards into.
    let provider = yaml("deploy/grafana/provisioning/dashboards/entity-bridge.yml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let compose = yaml("docker-compose.yml");
    let mounts = compose["services"]["grafana"]["volumes"].to_string();
    assert!(
        mounts.contains(&format!("./deploy/grafana/dashboards:{path}")),
        "{mounts}"
    );
}

#[test]
fn metrics_doc_lists_every_metric_with_type_and_labels() {
    let doc = read("docs/metrics.md");
    let catalog = catalog();
    let rows: BTreeMap<String, Vec<String>> = doc
        .lines()
        .filter(|l| l.starts_with("| `entity_bridge_"))
        .map(|l| {
            let cells: Vec<String> = l.split('|').map(|c| c.trim().to_owned()).collect();
            (cells[1].trim_matches('`').to_owned(), cells[2..].to_vec())
        })
        .collect();
    let mut problems = Vec::new();
    for m in &catalog {
        let Some(cells) = rows.get(&m.name) else {
            problems.push(format!("{} is not documented", m.name));
            continue;
        };
        if cells[0] != m.kind {
            problems.push(format!(
                "{}: documented as {}, is {}",
                m.name, cells[0], m.kind
            ));
        }
        let labels: Vec<String> = cells[1]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_owned())
            .filter(|l| !l.is_empty() && l != "—")
            .collect();
        if labels != m.labels {
            problems.push(format!(
                "{}: labels {:?}, documented {labels:?}",
                m.name, m.labels
            ));
        }
    }
    for name in metric_names(&doc) {
        if super::family(&catalog, &name).is_none() {
            problems.push(format!("docs/metrics.md names unknown metric {name}"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Every family of the catalog, with one sample each, through the real text encoder and
/// `promtool check metrics` (naming, units, help, types). Covers families that traffic in
/// the end-to-end test does not reach.
#[test]
fn every_metric_family_passes_promtool_lint() {
    let registry = Registry::new();
    for m in catalog() {
        let labels: Vec<&str> = m.labels.iter().map(String::as_str).collect();
        let values: Vec<&str> = labels.iter().map(|_| "x").collect();
        match m.kind {
            "counter" => {
                let c = IntCounterVec::new(Opts::new(&m.name, &m.help), &labels).unwrap();
                c.with_label_values(&values).inc();
                registry.register(Box::new(c)).unwrap();
            }
            "gauge" => {
                let g = IntGaugeVec::new(Opts::new(&m.name, &m.help), &labels).unwrap();
                g.with_label_values(&values).set(1);
                registry.register(Box::new(g)).unwrap();
            }
            "histogram" => {
                let h = HistogramVec::new(HistogramOpts::new(&m.name, &m.help), &labels).unwrap();
                h.with_label_values(&values).observe(0.5);
                registry.register(Box::new(h)).unwrap();
            }
            other => panic!("{}: unexpected type {other}", m.name),
        }
    }
    let mut text = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &registry.gather(),
        &mut text,
    )
    .unwrap();
    let text = String::from_utf8(text).unwrap();
    let (ok, out) = promtool(&repo(), &["check", "metrics"], Some(&text));
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}\n{text}"
    );
}
