//! The compose connector files against the compose file (loaded by the bridge's own
//! validation, secrets present in the service environment, hosts that are compose services),
//! and the Dockerfile (multi-stage, non-root, healthcheck, nothing secret, valid default config).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::compose::{env_of, services, volumes};
use super::{read, repo};

/// Every `{ env = "X" }`, `url_env = "X"` in a connector directory.
fn env_references(value: &toml::Value, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                if k == "env" || k.ends_with("_env") {
                    out.insert(v.as_str().unwrap().to_owned());
                }
                env_references(v, out);
            }
        }
        toml::Value::Array(a) => a.iter().for_each(|v| env_references(v, out)),
        _ => {}
    }
}

fn connector_files(dir: &str) -> Vec<(String, toml::Value)> {
    let mut files: Vec<_> = std::fs::read_dir(repo().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (
                name,
                toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn compose_connectors_load_and_reach_compose_services() {
    let services = services();
    for service in ["bridge", "receiver"] {
        let s = &services[service];
        let mounts: BTreeMap<String, String> =
            volumes(s).into_iter().map(|(src, t)| (t, src)).collect();
        let config_file = &mounts["/etc/entity-bridge/bridge.toml"];
        let connectors_dir = mounts["/etc/entity-bridge/connectors"].trim_start_matches("./");
        // The mounted files pass the bridge's own validation, exactly as mounted.
        let dir = PathBuf::from(config_file.trim_start_matches("./"));
        assert_eq!(
            dir.parent().unwrap().join("connectors"),
            PathBuf::from(connectors_dir)
        );
        let (config, _) = entity_bridge::config::load(&[repo().join(&dir)])
            .unwrap_or_else(|e| panic!("{service}: {e}"));
        assert!(!config.connectors.is_empty());
        // Listener ports match what compose publishes and Prometheus scrapes.
        assert_eq!(config.http.listen_addr.port(), 8080, "{service}");
        assert_eq!(config.admin.listen_addr.port(), 8081, "{service}");
        // Every secret a connector references is in the service's environment.
        let env = env_of(s);
        for (name, file) in connector_files(connectors_dir) {
            let mut refs = BTreeSet::new();
            env_references(&file, &mut refs);
            for r in refs {
                assert!(
                    env.contains_key(&r),
                    "{service}: connector {name} needs env {r}"
                );
            }
        }
    }
    // The wiring the issue asks for: webhook → Kafka and Kafka → webhook (to the receiver).
    let files = connector_files("deploy/compose/bridge/connectors");
    let kinds: BTreeSet<(String, String)> = files
        .iter()
        .map(|(_, f)| {
            (
                f["source"]["type"].as_str().unwrap().to_owned(),
                f["sink"]["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for want in [
        ("webhook", "kafka"),
        ("kafka", "webhook"),
        ("webhook", "amqp"),
    ] {
        assert!(
            kinds.contains(&(want.0.into(), want.1.into())),
            "no {want:?} connector"
        );
    }
    // Every host a connector talks to is a compose service on the port it listens on.
    let listens: BTreeMap<&str, u16> = BTreeMap::from([("kafka", 9092), ("receiver", 8080)]);
    for (name, f) in &files {
        for side in ["source", "sink"] {
            let t = &f[side];
            let mut endpoints = Vec::new();
            if let Some(b) = t.get("bootstrap_servers") {
                endpoints.push(b.as_str().unwrap().to_owned());
            }
            if let Some(u) = t.get("url") {
                let u = u.as_str().unwrap();
                endpoints.push(
                    u.split("://")
                        .nth(1)
                        .unwrap()
                        .split('/')
                        .next()
                        .unwrap()
                        .to_owned(),
                );
            }
            if let Some(dl) = t
                .get("dead_letter")
                .and_then(|d| d.get("bootstrap_servers"))
            {
                endpoints.push(dl.as_str().unwrap().to_owned());
            }
            for endpoint in endpoints {
                let (host, port) = endpoint.split_once(':').unwrap();
                assert!(
                    services.contains_key(host),
                    "{name}: `{host}` is no compose service"
                );
                assert_eq!(
                    listens.get(host),
                    Some(&port.parse().unwrap()),
                    "{name}: {endpoint}"
                );
            }
        }
    }
    // The receiver's token is the one the bridge pushes with.
    let receiver = connector_files("deploy/compose/receiver/connectors");
    let pushes = files
        .iter()
        .find(|(_, f)| f["sink"]["type"].as_str() == Some("webhook"))
        .unwrap();
    assert_eq!(
        pushes.1["sink"]["auth"]["token"]["env"],
        receiver[0].1["source"]["tokens"][0]["env"]
    );
    assert!(pushes.1["sink"]["url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/webhooks/{}", receiver[0].0)));
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_healthcheck() {
    let text = read("deploy/Dockerfile");
    let instructions: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(' ') && !l.trim().is_empty())
        .collect();
    let from: Vec<_> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(from.len() >= 2, "multi-stage build");
    assert!(from[0].contains(" AS build"));
    assert!(
        from.last().unwrap().contains("-slim"),
        "small runtime image"
    );
    let user = instructions
        .iter()
        .rfind(|l| l.starts_with("USER "))
        .expect("USER");
    let user = user.trim_start_matches("USER ").trim();
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "non-root: {user}"
    );
    assert!(instructions.iter().any(|l| l.starts_with("HEALTHCHECK ")));
    assert!(text.contains("/healthz"));
    // What the image copies from the build context exists (and is not ignored).
    let ignore = read(".dockerignore");
    for line in instructions
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            assert!(repo().join(source).exists(), "COPY {source}: missing");
            let top = source.trim_end_matches('/');
            assert!(
                !ignore.lines().any(|l| l.trim_end_matches('/') == top),
                "{source} ignored"
            );
        }
    }
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        "keep target/ out of the context"
    );
    // No secret is baked in.
    for line in instructions
        .iter()
        .filter(|l| l.starts_with("ENV ") || l.starts_with("ARG "))
    {
        for s in ["TOKEN", "PASSWORD", "SECRET"] {
            assert!(!line.contains(s), "{line}");
        }
    }
    // The image's default config (repo-root bridge.toml + connectors/) is valid.
    entity_bridge::config::load(&[repo()]).expect("bridge.toml + connectors/ load");
}
