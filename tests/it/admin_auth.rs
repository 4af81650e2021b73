//! The admin listener (issue 26, item 11): loopback by default; off loopback it needs admin
//! bearer tokens, which every request must carry except the orchestrator probes and, where the
//! operator opts in, `/metrics`. Before, it listened on 0.0.0.0:8081 and served `/feeds` and
//! `/metrics` to anyone.

use std::process::Command;

use crate::common::metric;
use crate::embedded::Setup;

const ADMIN_TOKEN: &str = "admin-token-7d1e0c9b3a";

/// A bridge whose admin listener has a token; `extra` lines go to `[admin]`.
async fn bridge_with_admin_token(extra: &str) -> (Setup, crate::embedded::Bridge) {
    let setup = Setup::new(&[]);
    std::fs::write(setup.path("admin-token"), ADMIN_TOKEN).unwrap();
    let bridge_toml = std::fs::read_to_string(setup.path("bridge.toml")).unwrap();
    let admin = format!(
        "[admin]\ntokens = [{{ file = {:?} }}]\n{extra}\n",
        setup.path("admin-token").display().to_string()
    );
    std::fs::write(
        setup.path("bridge.toml"),
        bridge_toml.replace("[admin]\n", &admin),
    )
    .unwrap();
    setup.write_connector(
        "mls",
        &format!("{}[sink]\ntype = \"embedded\"\n", setup.webhook_source("")),
    );
    let bridge = setup.start().await;
    (setup, bridge)
}

async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_paths_need_the_token_and_probes_do_not() {
    let (_setup, bridge) = bridge_with_admin_token("").await;
    for path in ["/metrics", "/feeds", "/no-such-path"] {
        let url = format!("{}{path}", bridge.admin);
        for token in [None, Some("not-the-admin-token")] {
            let answer = get(&url, token).await;
            assert_eq!(answer.status(), 401, "{path} with {token:?}");
            assert_eq!(
                answer.headers()["www-authenticate"],
                "Bearer realm=\"entity-bridge-admin\""
            );
            assert_eq!(answer.headers()["content-type"], "application/problem+json");
        }
    }
    for path in ["/metrics", "/feeds"] {
        let answer = get(&format!("{}{path}", bridge.admin), Some(ADMIN_TOKEN)).await;
        assert_eq!(answer.status(), 200, "{path} with the admin token");
    }
    for path in ["/healthz", "/readyz"] {
        let answer = get(&format!("{}{path}", bridge.admin), None).await;
        assert_eq!(answer.status(), 200, "{path} is open to probes");
    }
    let metrics = get(&format!("{}/metrics", bridge.admin), Some(ADMIN_TOKEN))
        .await
        .text()
        .await
        .unwrap();
    let refused = |path: &str| {
        metric(
            &metrics,
            &format!("entity_bridge_admin_unauthorized_total{{path=\"{path}\"}}"),
        )
    };
    assert_eq!(refused("/metrics"), Some(2.0), "{metrics}");
    assert_eq!(refused("/feeds"), Some(2.0));
    assert_eq!(refused("other"), Some(2.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_without_token_opens_metrics_only() {
    let (_setup, bridge) = bridge_with_admin_token("metrics_without_token = true").await;
    let answer = get(&format!("{}/metrics", bridge.admin), None).await;
    assert_eq!(answer.status(), 200);
    let answer = get(&format!("{}/feeds", bridge.admin), None).await;
    assert_eq!(answer.status(), 401, "/feeds still needs the token");
}

/// Off loopback without tokens, both `check` and `run` refuse, naming the key; the default
/// listens on loopback and needs none.
#[test]
fn off_loopback_without_tokens_is_refused_and_the_default_is_loopback() {
    let config = entity_bridge::config::Config::default();
    assert!(config.admin.listen_addr.ip().is_loopback());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bridge.toml"),
        "[admin]\nlisten_addr = \"0.0.0.0:0\"\n[http]\nlisten_addr = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("connectors")).unwrap();
    std::fs::write(
        dir.path().join("connectors/mls.toml"),
        "[source]\ntype = \"webhook\"\n[sink]\ntype = \"embedded\"\n",
    )
    .unwrap();
    for command in ["check", "run"] {
        let out = Command::new(env!("CARGO_BIN_EXE_entity-bridge"))
            .args([command, "--config"])
            .arg(dir.path())
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(stderr.contains("`admin.tokens`"), "{command}: {stderr}");
        assert!(stderr.contains("0.0.0.0:0"), "{command}: {stderr}");
    }
}
