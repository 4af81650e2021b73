//! The real binary: `kill -9` right after a 200 loses nothing, and the default run works the way
//! a new user tries it (no arguments, the repository's default config, the printed token).

use super::*;

fn write_bridge_toml(dir: &Path, http: u16, admin: u16) {
    std::fs::write(
        dir.join("bridge.toml"),
        format!(
            "[http]\nlisten_addr = \"127.0.0.1:{http}\"\n[admin]\nlisten_addr = \"127.0.0.1:{admin}\"\n"
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_right_after_a_200_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (http, admin) = (free_port(), free_port());
    write_bridge_toml(dir.path(), http, admin);
    std::fs::create_dir(dir.path().join("connectors")).unwrap();
    // No token configured: the generated one is used, and reused after the crash.
    std::fs::write(
        dir.path().join("connectors/ingest.toml"),
        "[source]\ntype = \"webhook\"\n[sink]\ntype = \"embedded\"\n",
    )
    .unwrap();

    let mut bridge = Proc::spawn(dir.path(), &["run"], &[]);
    let line = bridge.wait_line(|l| l.contains("curl -H"));
    let (token, url) = parse_token_line(&line, dir.path());
    assert_eq!(url, format!("http://127.0.0.1:{http}/webhooks/ingest"));
    let mut expected = Vec::new();
    for push in 0..20 {
        let batch: Vec<(i64, &str, &str)> = (0..5)
            .map(|j| (push * 5 + j + 1, "Property", "k"))
            .collect();
        let r = post(&url, &token, &payload(&batch)).await;
        assert_eq!(r.status(), 200);
        expected.extend(batch.iter().map(|(s, _, _)| *s));
    }
    // SIGKILL immediately after the last 200: no shutdown, no flush, no checkpoint.
    bridge.child.kill().unwrap();
    bridge.child.wait().unwrap();
    drop(bridge);

    let mut bridge = Proc::spawn(dir.path(), &["run"], &[]);
    let line = bridge.wait_line(|l| l.contains("curl -H"));
    assert!(
        !line.contains(&token),
        "the token is printed only when generated: {line}"
    );
    assert!(line.contains("$(cat data/tokens/ingest.token)"), "{line}");
    let (events, _) = replay_all(&format!("http://127.0.0.1:{http}/EntityEvent"), &token).await;
    let producer: Vec<i64> = events
        .iter()
        .map(|e| {
            e["@EntityBridge.SourceEntityEventSequence"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(producer, expected, "every acknowledged event, in order");
    assert_eq!(bridge.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn default_run_as_a_new_user() {
    // A fresh copy of the repository's default configuration: bridge.toml + connectors/*.toml
    // (connectors/examples/ is not part of the default run and is not copied).
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo.join("bridge.toml"), dir.path().join("bridge.toml")).unwrap();
    std::fs::create_dir(dir.path().join("connectors")).unwrap();
    for entry in std::fs::read_dir(repo.join("connectors")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(
                &path,
                dir.path()
                    .join("connectors")
                    .join(path.file_name().unwrap()),
            )
            .unwrap();
        }
    }
    let (http, admin) = (free_port(), free_port());
    let mut bridge = Proc::spawn(
        dir.path(),
        &[],
        &[
            (
                "ENTITY_BRIDGE_HTTP__LISTEN_ADDR",
                format!("127.0.0.1:{http}"),
            ),
            (
                "ENTITY_BRIDGE_ADMIN__LISTEN_ADDR",
                format!("127.0.0.1:{admin}"),
            ),
        ],
    );
    bridge.wait_line(|l| l.contains("entity-bridge started"));
    let line = bridge.wait_line(|l| l.contains("curl -H"));
    assert!(
        line.starts_with("entity-bridge: generated a webhook token"),
        "{line}"
    );
    // Regression: the token was printed to stdout even when stdout was a pipe (log collectors).
    assert!(
        line.contains("not printed because stdout is not a terminal"),
        "{line}"
    );
    let (token, url) = parse_token_line(&line, dir.path());
    assert_eq!(token.len(), 64, "32 random bytes, hex");
    assert_eq!(url, format!("http://127.0.0.1:{http}/webhooks/quickstart"));
    // Not printed at all: neither in that line nor in a log line.
    assert_eq!(
        bridge.seen.iter().filter(|l| l.contains(&token)).count(),
        0,
        "{:?}",
        bridge.seen
    );

    let r = post(&url, &token, SEED_PAYLOAD).await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"accepted": 2, "duplicates": 0}));
    // The shipped quickstart suppresses duplicates: the same push again stores nothing.
    let again: serde_json::Value = post(&url, &token, SEED_PAYLOAD).await.json().await.unwrap();
    assert_eq!(again, serde_json::json!({"accepted": 2, "duplicates": 2}));

    let (status, body) = get_json(
        &format!("http://127.0.0.1:{http}/EntityEvent"),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let events = body["value"].as_array().unwrap();
    assert_eq!(sequences(events), vec![1, 2]);
    assert_eq!(events[0]["ResourceName"], "Property");
    assert_eq!(events[0]["ResourceRecordKey"], "235021");
    assert_eq!(events[0]["@EntityBridge.SourceEntityEventSequence"], 1101);
    assert_eq!(events[1]["ResourceName"], "Media");
    assert_eq!(events[1]["ResourceRecordKey"], "ABC123");

    let (status, _) = get_json(&format!("http://127.0.0.1:{admin}/readyz"), None).await;
    assert_eq!(status, 200);
    assert!(dir.path().join("data/events.db").is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let token_file = dir.path().join("data/tokens/quickstart.token");
        let mode = std::fs::metadata(token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(bridge.terminate(), Some(0));
}
