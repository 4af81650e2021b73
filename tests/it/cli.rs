//! The `entity-bridge` binary: `check` validates and prints masked config; errors name file + key;
//! `run` drains and exits 0 on SIGTERM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_entity-bridge");

fn write_connector(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir.join("connectors")).unwrap();
    std::fs::write(dir.join("connectors").join(format!("{name}.toml")), text).unwrap();
}

const CONNECTOR: &str = r#"
[source]
type = "webhook"
tokens = [{ env = "IT_MLS_TOKEN" }]

[sink]
type = "kafka"
bootstrap_servers = "127.0.0.1:9092"

[sink.librdkafka]
"sasl.password" = "hunter2-inline"
"linger.ms" = "10"
"#;

#[test]
fn check_prints_resolved_config_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    write_connector(dir.path(), "mls", CONNECTOR);
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir.path())
        .env("IT_MLS_TOKEN", "an-inbound-token")
        .env(
            "ENTITY_BRIDGE_CONNECTORS__MLS__SINK__DELIVERY_TIMEOUT_MS",
            "4321",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("delivery_timeout_ms = 4321"),
        "env layer applied: {stdout}"
    );
    assert!(
        stdout.contains("env = \"IT_MLS_TOKEN\""),
        "token shown by reference: {stdout}"
    );
    assert!(stdout.contains("\"sasl.password\" = \"***\""), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(stdout.contains("\"linger.ms\" = \"10\""), "{stdout}");
}

#[test]
fn check_names_file_and_key_on_error() {
    let dir = tempfile::tempdir().unwrap();
    write_connector(
        dir.path(),
        "mls",
        &CONNECTOR.replace("[sink]", "[sink]\nlinger = 3"),
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mls.toml"), "{stderr}");
    assert!(stderr.contains("linger"), "{stderr}");
}

#[test]
fn shipped_example_connectors_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        // `check` resolves every secret, as `run` does: give each referenced variable a value.
        let text = std::fs::read_to_string(&path).unwrap();
        let mut command = Command::new(BIN);
        command.args(["check", "--config"]).arg(&path);
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            for marker in ["env = \"", "url_env = \""] {
                for (i, _) in line.match_indices(marker) {
                    let rest = &line[i + marker.len()..];
                    let name = &rest[..rest.find('"').unwrap()];
                    let value = if name.contains("AMQP_URL") {
                        "amqp://guest:guest@127.0.0.1:5672/%2f"
                    } else {
                        "an-example-secret-of-more-than-32-bytes"
                    };
                    command.env(name, value);
                }
            }
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn run_drains_and_exits_zero_on_sigterm() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bridge.toml"),
        "[http]\nlisten_addr = \"127.0.0.1:0\"\n[admin]\nlisten_addr = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    write_connector(
        dir.path(),
        "mls",
        &CONNECTOR.replace("127.0.0.1:9092", &kafka()),
    );
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(dir.path())
        .env("IT_MLS_TOKEN", "abc")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it logs that it started, then SIGTERM it.
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let started = line.contains("entity-bridge started");
            lines.push(line);
            if started {
                break;
            }
        }
        lines
    });
    let lines = reader.join().unwrap();
    assert!(
        lines.iter().any(|l| l.contains("entity-bridge started")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("abc")),
        "token must not be logged"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bridge did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
