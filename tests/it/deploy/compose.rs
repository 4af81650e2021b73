//! docker-compose.yml and .env.example, checked structurally with a real YAML parser: services,
//! ports, volumes, mounted files, variables and secrets.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{read, repo, yaml};

const SERVICES: [&str; 6] = [
    "kafka",
    "rabbitmq",
    "bridge",
    "receiver",
    "prometheus",
    "grafana",
];

pub(super) fn services() -> serde_json::Map<String, Value> {
    let compose = yaml("docker-compose.yml");
    compose["services"]
        .as_object()
        .expect("docker-compose.yml: services")
        .clone()
}

pub(super) fn env_of(service: &Value) -> BTreeMap<String, String> {
    let env = &service["environment"];
    match env {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("environment must be a map, got {other}"),
    }
}

/// Container ports a service publishes (`[ip:]host:container` → container).
fn published(service: &Value) -> BTreeSet<u16> {
    service["ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .map(|p| {
                    let s = p.as_str().expect("ports are strings");
                    s.rsplit(':')
                        .next()
                        .unwrap()
                        .parse()
                        .expect("container port")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `(source, target)` of every volume entry.
pub(super) fn volumes(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .map(|vols| {
            vols.iter()
                .map(|v| {
                    let parts: Vec<&str> = v
                        .as_str()
                        .expect("short volume syntax")
                        .split(':')
                        .collect();
                    (parts[0].to_owned(), parts[1].to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every variable `${NAME…}` used in a text.
fn variables(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        let tail = &rest[at + 2..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap();
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// `NAME=value` lines of .env.example.
fn env_example() -> BTreeMap<String, String> {
    read(".env.example")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!(".env.example: `{l}`"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn compose_has_every_service_wired() {
    let services = services();
    for name in SERVICES {
        assert!(services.contains_key(name), "service `{name}` missing");
    }
    // Apache Kafka, official image, KRaft single node (broker + controller, no ZooKeeper).
    let kafka = &services["kafka"];
    assert!(kafka["image"]
        .as_str()
        .unwrap()
        .starts_with("apache/kafka:"));
    let env = env_of(kafka);
    assert_eq!(env["KAFKA_PROCESS_ROLES"], "broker,controller");
    assert_eq!(env["KAFKA_CONTROLLER_QUORUM_VOTERS"], "1@kafka:9093");
    assert!(env["KAFKA_LISTENERS"].contains("PLAINTEXT://:9092"));
    assert!(env["KAFKA_ADVERTISED_LISTENERS"].contains("PLAINTEXT://kafka:9092"));
    assert!(env.contains_key("CLUSTER_ID"));
    assert!(!env.keys().any(|k| k.contains("ZOOKEEPER")));
    // RabbitMQ with the management plugin and UI.
    let rabbit = &services["rabbitmq"];
    assert!(rabbit["image"].as_str().unwrap().contains("management"));
    assert_eq!(published(rabbit), BTreeSet::from([5672, 15672]));
    // The bridge and the demo receiver are built from deploy/Dockerfile, with config mounted.
    for name in ["bridge", "receiver"] {
        let s = &services[name];
        assert_eq!(s["build"]["context"], ".", "{name}");
        assert_eq!(s["build"]["dockerfile"], "deploy/Dockerfile", "{name}");
        let targets: BTreeSet<String> = volumes(s).into_iter().map(|(_, t)| t).collect();
        for t in [
            "/etc/entity-bridge/bridge.toml",
            "/etc/entity-bridge/connectors",
            "/var/lib/entity-bridge/data",
        ] {
            assert!(targets.contains(t), "{name} does not mount {t}");
        }
        assert_eq!(
            published(s),
            BTreeSet::from([8080]),
            "{name}: webhook port only"
        );
        assert_eq!(
            s["expose"],
            serde_json::json!(["8081"]),
            "{name}: admin port internal"
        );
    }
    assert_eq!(
        services["bridge"]["depends_on"]["kafka"]["condition"],
        "service_healthy"
    );
    assert!(services["bridge"]["healthcheck"]["test"]
        .to_string()
        .contains("/readyz"));
    assert_eq!(published(&services["prometheus"]), BTreeSet::from([9090]));
    assert_eq!(published(&services["grafana"]), BTreeSet::from([3000]));
    for (name, s) in &services {
        if name != "bridge" && name != "receiver" {
            assert!(
                s["image"].as_str().unwrap().contains(':'),
                "{name}: pin the image tag"
            );
        }
    }
}

#[test]
fn compose_mounts_exist_and_named_volumes_are_declared() {
    let compose = yaml("docker-compose.yml");
    let declared: BTreeSet<String> = compose["volumes"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut used = BTreeSet::new();
    for (name, service) in services() {
        for (source, target) in volumes(&service) {
            if source.starts_with("./") {
                let path = repo().join(&source);
                assert!(path.exists(), "{name}: mounted `{source}` does not exist");
                if target.ends_with(".toml") || target.ends_with(".yml") {
                    assert!(path.is_file(), "{name}: `{source}` should be a file");
                }
            } else {
                assert!(
                    declared.contains(&source),
                    "{name}: volume `{source}` not declared"
                );
                used.insert(source);
            }
        }
        if let Some(build) = service.get("build") {
            let dockerfile = build["dockerfile"].as_str().unwrap();
            assert!(repo().join(dockerfile).is_file(), "{dockerfile}");
        }
    }
    assert_eq!(used, declared, "declared volumes nobody uses");
}

#[test]
fn every_compose_variable_is_documented_and_no_secret_is_inline() {
    // Variables in the parsed document (comments do not count); compose interpolates them.
    fn strings(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => {
                out.push_str(s);
                out.push('\n');
            }
            Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            Value::Object(o) => o.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let mut text = String::new();
    strings(&yaml("docker-compose.yml"), &mut text);
    let used = variables(&text);
    let documented = env_example();
    let documented_names: BTreeSet<String> = documented.keys().cloned().collect();
    let missing: Vec<_> = used.difference(&documented_names).collect();
    assert!(
        missing.is_empty(),
        "used in docker-compose.yml, not in .env.example: {missing:?}"
    );
    let unused: Vec<_> = documented_names.difference(&used).collect();
    assert!(
        unused.is_empty(),
        ".env.example documents unused variables: {unused:?}"
    );
    // Secrets have no value in the example and are required (`:?`) in compose.
    for (name, value) in &documented {
        if ["TOKEN", "PASSWORD", "SECRET"]
            .iter()
            .any(|s| name.contains(s))
        {
            assert!(
                value.is_empty(),
                ".env.example must not ship a value for {name}"
            );
            assert!(
                text.contains(&format!("${{{name}:?")),
                "{name} must be required (`${{{name}:?…}}`)"
            );
        }
    }
    // Every secret-looking environment value is a reference to .env, never a literal.
    for (service_name, service) in services() {
        for (key, value) in env_of(&service) {
            if ["TOKEN", "PASSWORD", "SECRET", "AMQP_URL"]
                .iter()
                .any(|s| key.contains(s))
            {
                assert!(
                    value.contains("${"),
                    "{service_name}: {key} must come from .env"
                );
            }
        }
    }
}
