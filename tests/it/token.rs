//! A webhook connector's OAuth2 token endpoint, used by real clients: the `oauth2` crate and a
//! plain form POST get tokens and push with them; RFC 6749 refusals; tokens that expire, rotate
//! and belong to one connector; and the bridge's own egress OAuth2 client delivering to
//! another bridge through its token endpoint.

use std::time::{Duration, Instant};

use oauth2::basic::BasicClient;
use oauth2::{AuthType, ClientId, ClientSecret, TokenResponse, TokenUrl};

use crate::common::*;
use crate::embedded::{get_json, Setup, TOKEN};

const SIGNING_KEY: &str = "signing-key-2f7c1e9a4b6d8f0a2c4e6b8d0f1a3c5e";
const NEXT_KEY: &str = "next-signing-key-9e8d7c6b5a4f3e2d1c0b9a8f7e6d";
const CLIENT_SECRET: &str = "producer-secret-51c2";

/// A webhook connector → embedded log with a token endpoint (one client, `vendor`), no fixed
/// tokens; the replay resource accepts [`TOKEN`].
fn connector(setup: &Setup, extra: &str) -> String {
    std::fs::write(setup.path("signing-key"), SIGNING_KEY).unwrap();
    std::fs::write(setup.path("next-key"), NEXT_KEY).unwrap();
    std::fs::write(setup.path("client-secret"), CLIENT_SECRET).unwrap();
    format!(
        r#"[source]
type = "webhook"

[source.token_endpoint]
signing_key = {{ file = {key:?} }}
{extra}
[[source.token_endpoint.clients]]
client_id = "vendor"
client_secret = {{ file = {secret:?} }}
scopes = ["events:write"]

[sink]
type = "embedded"
replay_tokens = [{{ file = {token:?} }}]
"#,
        key = setup.path("signing-key").display().to_string(),
        secret = setup.path("client-secret").display().to_string(),
        token = setup.path("token").display().to_string(),
    )
}

fn push(sequence: i64) -> String {
    format!(
        r#"{{"value":[{{"EntityEventSequence":{sequence},"ResourceName":"Property","ResourceRecordKey":"K{sequence}"}}]}}"#
    )
}

async fn post_with_token(url: &str, token: &str, body: &str) -> reqwest::Response {
    crate::embedded::post(url, token, body).await
}

/// A token by a plain form POST with the client's credentials in the body.
async fn form_token(token_url: &str) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&client_id=vendor&client_secret={CLIENT_SECRET}&scope=events%3Awrite"
        ))
        .send()
        .await
        .unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn producers_get_tokens_with_the_oauth2_crate_and_a_form_post_and_push_with_them() {
    let setup = Setup::new(&[]);
    setup.write_connector("mls", &connector(&setup, ""));
    let bridge = setup.start().await;
    let webhook = format!("{}/webhooks/mls", bridge.base);
    let token_url = format!("{webhook}/token");

    let client = BasicClient::new(ClientId::new("vendor".into()))
        .set_client_secret(ClientSecret::new(CLIENT_SECRET.into()))
        .set_auth_type(AuthType::BasicAuth)
        .set_token_uri(TokenUrl::new(token_url.clone()).unwrap());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .expect("the oauth2 crate gets a token");
    let token = response.access_token().secret().clone();
    assert_eq!(response.expires_in(), Some(Duration::from_secs(3600)));
    assert_eq!(
        post_with_token(&webhook, &token, &push(1)).await.status(),
        200
    );

    let (status, headers, body) = form_token(&token_url).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "events:write");
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(
        post_with_token(&webhook, token, &push(2)).await.status(),
        200
    );

    let (status, replay) = get_json(&format!("{}/EntityEvent", bridge.base), Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(replay["value"].as_array().unwrap().len(), 2);
    let metrics = reqwest::get(format!("{}/metrics", bridge.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(
            &metrics,
            "entity_bridge_token_requests_total{connector=\"mls\",outcome=\"issued\"}"
        ),
        Some(2.0)
    );
    assert!(!metrics.contains(CLIENT_SECRET) && !metrics.contains(token));
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_follow_rfc_6749_and_6750() {
    let setup = Setup::new(&[]);
    setup.write_connector("mls", &connector(&setup, ""));
    let bridge = setup.start().await;
    let webhook = format!("{}/webhooks/mls", bridge.base);
    let token_url = format!("{webhook}/token");
    let form = |body: &'static str, basic: Option<&'static str>| {
        let mut request = reqwest::Client::new()
            .post(&token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(b) = basic {
            request = request.header("authorization", format!("Basic {b}"));
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let challenge = response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: serde_json::Value = response.json().await.unwrap();
            (
                status,
                body["error"].as_str().unwrap_or_default().to_owned(),
                challenge,
            )
        }
    };
    // base64("vendor:wrong") and base64("vendor:producer-secret-51c2").
    let wrong = "dmVuZG9yOndyb25n";
    let right = "dmVuZG9yOnByb2R1Y2VyLXNlY3JldC01MWMy";
    let (status, error, challenge) = form("grant_type=client_credentials", Some(wrong)).await;
    assert_eq!((status, error.as_str()), (401, "invalid_client"));
    assert!(challenge.unwrap().starts_with("Basic"));
    let (status, error, _) = form("grant_type=password", Some(right)).await;
    assert_eq!((status, error.as_str()), (400, "unsupported_grant_type"));
    let (status, error, _) = form("scope=events%3Awrite", Some(right)).await;
    assert_eq!((status, error.as_str()), (400, "invalid_request"));
    let (status, error, _) = form("grant_type=client_credentials&scope=admin", Some(right)).await;
    assert_eq!((status, error.as_str()), (400, "invalid_scope"));
    let (status, error, _) = form(
        "grant_type=client_credentials&client_id=vendor&client_secret=producer-secret-51c2",
        Some(right),
    )
    .await;
    assert_eq!(
        (status, error.as_str()),
        (400, "invalid_request"),
        "two methods"
    );
    let (status, error, _) = form("grant_type=client_credentials", None).await;
    assert_eq!((status, error.as_str()), (401, "invalid_client"));
    let (status, error, _) = form("grant_type=client_credentials", Some(right)).await;
    assert_eq!((status, error.as_str()), (200, ""));
    let json = reqwest::Client::new()
        .post(&token_url)
        .basic_auth("vendor", Some(CLIENT_SECRET))
        .json(&serde_json::json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 400, "only form-encoded requests");

    // RFC 6750: no token → a plain challenge; a bad token → invalid_token.
    let none = reqwest::Client::new()
        .post(&webhook)
        .header("content-type", "application/json")
        .body(push(1))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    let challenge = crate::common::challenge(&none);
    assert!(
        challenge.starts_with("Bearer") && !challenge.contains("error="),
        "{challenge}"
    );
    let bad = post_with_token(&webhook, "eyJhbGciOiJIUzI1NiJ9.e30.x", &push(1)).await;
    assert_eq!(bad.status(), 401);
    let challenge = crate::common::challenge(&bad);
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_expire_rotate_and_stay_with_their_connector() {
    let setup = Setup::new(&[]);
    let short = "token_lifetime_seconds = 5\nmax_clock_skew_seconds = 0\n";
    setup.write_connector("mls", &connector(&setup, short));
    let other = connector(&setup, "");
    let replay_line = other
        .lines()
        .find(|l| l.starts_with("replay_tokens"))
        .unwrap();
    setup.write_connector("other", &other.replace(replay_line, "replay = false"));
    let bridge = setup.start().await;
    let mls = format!("{}/webhooks/mls", bridge.base);
    let other = format!("{}/webhooks/other", bridge.base);
    let (_, _, body) = form_token(&format!("{mls}/token")).await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    let issued = Instant::now();
    assert_eq!(post_with_token(&mls, &token, &push(1)).await.status(), 200);
    let refused = post_with_token(&other, &token, &push(1)).await;
    assert_eq!(refused.status(), 401, "a token for another connector");
    let challenge = crate::common::challenge(&refused);
    assert!(challenge.contains("another connector"), "{challenge}");
    bridge.stop().await;

    // Rotation: a new signing key; the one that signed the token becomes a previous key.
    let rotated = format!(
        "previous_signing_keys = [{{ file = {:?} }}]\n{short}",
        setup.path("signing-key").display().to_string()
    );
    let text = connector(&setup, &rotated).replacen(
        &format!("{:?}", setup.path("signing-key").display().to_string()),
        &format!("{:?}", setup.path("next-key").display().to_string()),
        1,
    );
    setup.write_connector("mls", &text);
    let bridge = setup.start().await;
    let mls = format!("{}/webhooks/mls", bridge.base);
    assert_eq!(
        post_with_token(&mls, &token, &push(2)).await.status(),
        200,
        "a token signed by a previous key stays valid"
    );
    let (_, _, body) = form_token(&format!("{mls}/token")).await;
    let fresh = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(post_with_token(&mls, &fresh, &push(3)).await.status(), 200);

    // Expiry: 5 s lifetime, no skew allowed.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(issued.elapsed())).await;
    let expired = post_with_token(&mls, &token, &push(4)).await;
    assert_eq!(expired.status(), 401);
    let challenge = crate::common::challenge(&expired);
    assert!(challenge.contains("expired"), "{challenge}");
    bridge.stop().await;
}

/// The bridge's own egress OAuth2 client (webhook sink) fetching tokens from another bridge's
/// token endpoint and delivering to its webhook, end to end.
#[tokio::test(flavor = "multi_thread")]
async fn the_bridges_own_oauth2_client_delivers_through_another_bridges_token_endpoint() {
    let target = Setup::new(&[]);
    target.write_connector("target", &connector(&target, ""));
    let a = target.start().await;

    let relay = Setup::new(&[]);
    std::fs::write(relay.path("client-secret"), CLIENT_SECRET).unwrap();
    relay.write_connector(
        "ingest",
        &format!(
            "{}\n[sink]\ntype = \"embedded\"\nfile = \"relay.db\"\n",
            relay.webhook_source("")
        ),
    );
    relay.write_connector(
        "relay",
        &format!(
            r#"[source]
type = "embedded"
file = "relay.db"

[sink]
type = "webhook"
url = "{a}/webhooks/target"
linger_ms = 10
auth = {{ type = "oauth2", token_url = "{a}/webhooks/target/token", client_id = "vendor", client_secret = {{ file = {secret:?} }} }}

[sink.dead_letter]
type = "kafka"
bootstrap_servers = "{kafka}"
topic = "{dlq}"
"#,
            a = a.base,
            secret = relay.path("client-secret").display().to_string(),
            kafka = kafka(),
            dlq = unique("it-token-relay-dlq"),
        ),
    );
    let b = relay.start().await;
    let body = r#"{"value":[
        {"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"A"},
        {"EntityEventSequence":2,"ResourceName":"Property","ResourceRecordKey":"B"}]}"#;
    assert_eq!(b.post("/webhooks/ingest", body).await.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, replay) = get_json(&format!("{}/EntityEvent", a.base), Some(TOKEN)).await;
        if replay["value"].as_array().map_or(0, Vec::len) == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not relayed: {replay}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = reqwest::get(format!("{}/metrics", a.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric(
            &metrics,
            "entity_bridge_token_requests_total{connector=\"target\",outcome=\"issued\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    b.stop().await;
    a.stop().await;
}

/// A noisy and a quiet producer at once: the noisy one is held to its own quota (429 with its
/// own `Retry-After`), the quiet one is served throughout; a token endpoint client's event rate.
#[tokio::test(flavor = "multi_thread")]
async fn per_producer_quotas_hold_back_the_noisy_producer_only() {
    let setup = Setup::new(&[]);
    std::fs::write(setup.path("noisy"), "noisy-producer-token").unwrap();
    let text = connector(&setup, "").replacen(
        "[source]\ntype = \"webhook\"\n",
        &format!(
            "[source]\ntype = \"webhook\"\ntokens = [{{ file = {:?} }}, {{ file = {:?} }}]\n\
             [source.quotas.\"token-1\"]\nrequests_per_second = 2\n\
             [source.quotas.\"*\"]\nrequests_per_second = 1000\n\
             [source.quotas.vendor]\nevents_per_second = 5\n",
            setup.path("noisy").display().to_string(),
            setup.path("token").display().to_string(),
        ),
        1,
    );
    setup.write_connector("mls", &text);
    let bridge = setup.start().await;
    let webhook = format!("{}/webhooks/mls", bridge.base);
    let noisy = {
        let webhook = webhook.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for s in 0..20 {
                let r = post_with_token(&webhook, "noisy-producer-token", &push(100 + s)).await;
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                answers.push((r.status().as_u16(), retry_after));
            }
            answers
        })
    };
    let mut quiet = Vec::new();
    for s in 0..20 {
        quiet.push(
            post_with_token(&webhook, TOKEN, &push(200 + s))
                .await
                .status()
                .as_u16(),
        );
    }
    let noisy = noisy.await.unwrap();
    assert!(
        quiet.iter().all(|s| *s == 200),
        "the quiet producer is served: {quiet:?}"
    );
    let refused: Vec<_> = noisy.iter().filter(|(s, _)| *s == 429).collect();
    assert!(
        refused.len() >= 15,
        "the noisy producer is held to 2/s: {noisy:?}"
    );
    assert!(
        refused.iter().all(|(_, r)| r.as_deref() == Some("1")),
        "{noisy:?}"
    );

    // The token endpoint's client `vendor`: 5 events per second.
    let (_, _, body) = form_token(&format!("{webhook}/token")).await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    let ten: String = (1..=10)
        .map(|s| {
            format!(
                r#"{{"EntityEventSequence":{s},"ResourceName":"Property","ResourceRecordKey":"V"}}"#
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let five = |from: i64| {
        (from..from + 5)
            .map(|s| format!(r#"{{"EntityEventSequence":{s},"ResourceName":"Property","ResourceRecordKey":"V"}}"#))
            .collect::<Vec<_>>()
            .join(",")
    };
    let first = post_with_token(&webhook, &token, &format!(r#"{{"value":[{}]}}"#, five(1))).await;
    assert_eq!(first.status(), 200);
    let over = post_with_token(&webhook, &token, &format!(r#"{{"value":[{ten}]}}"#)).await;
    assert_eq!(over.status(), 429);
    assert!(over.headers().contains_key("retry-after"));
    let metrics = reqwest::get(format!("{}/metrics", bridge.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric(
            &metrics,
            "entity_bridge_producer_quota_refusals_total{connector=\"mls\",producer=\"token-1\",quota=\"requests\"}"
        )
        .unwrap_or(0.0)
            >= 15.0
    );
    assert_eq!(
        metric(
            &metrics,
            "entity_bridge_producer_quota_refusals_total{connector=\"mls\",producer=\"vendor\",quota=\"events\"}"
        ),
        Some(1.0)
    );
    bridge.stop().await;
}

/// The binary with the token endpoint, logging at trace level: the signing key, the client
/// secret and the issued token appear in no log line, in `/metrics` or in `check`; the token
/// endpoint's rate limit answers 429 with `Retry-After`; a refused attempt is logged without
/// what it presented.
#[tokio::test(flavor = "multi_thread")]
async fn keys_secrets_and_tokens_stay_out_of_logs_metrics_and_check() {
    use crate::egress_process::BridgeProcess;
    let dir = tempfile::tempdir().unwrap();
    let connector = r#"[source]
type = "webhook"
[source.token_endpoint]
signing_key = { env = "IT_SIGNING_KEY" }
requests_per_second = 0.5
[[source.token_endpoint.clients]]
client_id = "vendor"
client_secret = { env = "IT_CLIENT_SECRET" }
scopes = ["events:write"]

[sink]
type = "embedded"
replay = false
"#;
    let env = [
        ("IT_SIGNING_KEY", SIGNING_KEY),
        ("IT_CLIENT_SECRET", CLIENT_SECRET),
    ];
    let bridge = BridgeProcess::spawn(dir.path(), connector, &env);
    let (webhook, admin) = bridge.addresses().await;
    let webhook = format!("http://{webhook}/webhooks/egress");
    let (status, _, body) = form_token(&format!("{webhook}/token")).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        post_with_token(&webhook, &token, &push(1)).await.status(),
        200
    );
    let (status, headers, body) = form_token(&format!("{webhook}/token")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("temporarily_unavailable"))
    );
    assert!(headers.contains_key("retry-after"));
    // A refused attempt is logged with the client id, the peer and the reason, never what
    // was presented.
    const WRONG: &str = "wrong-secret-7a1c9e3b5d";
    let refused = reqwest::Client::new()
        .post(format!("{webhook}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&client_id=vendor&client_secret={WRONG}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_entity-bridge"))
        .args(["check", "--config"])
        .arg(dir.path())
        .envs(env)
        .output()
        .unwrap();
    assert!(check.status.success());
    let check = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(check.contains("env = \"IT_SIGNING_KEY\""), "{check}");
    let logs = bridge.output();
    let line = (logs.lines())
        .find(|l| l.contains("token request refused"))
        .unwrap_or_else(|| panic!("the refusal is logged: {logs}"));
    for field in [
        "client_id=\"vendor\"",
        "peer=127.0.0.1",
        "reason=\"invalid_client\"",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    let signature = token.rsplit('.').next().unwrap();
    for (what, text) in [("logs", &logs), ("metrics", &metrics), ("check", &check)] {
        for secret in [SIGNING_KEY, CLIENT_SECRET, &token, signature, WRONG] {
            assert!(!text.contains(secret), "{what} show a secret");
        }
    }
    assert!(
        logs.contains("access token issued"),
        "the issue itself is logged"
    );
}

/// Regression (review): the tokens of a client removed from the configuration stayed valid
/// until they expired. They are refused from the next start on.
#[tokio::test(flavor = "multi_thread")]
async fn a_removed_client_is_cut_off_at_once() {
    let setup = Setup::new(&[]);
    setup.write_connector("mls", &connector(&setup, ""));
    let bridge = setup.start().await;
    let webhook = format!("{}/webhooks/mls", bridge.base);
    let (_, _, body) = form_token(&format!("{webhook}/token")).await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        post_with_token(&webhook, &token, &push(1)).await.status(),
        200
    );
    bridge.stop().await;
    setup.write_connector(
        "mls",
        &connector(&setup, "").replace("client_id = \"vendor\"", "client_id = \"successor\""),
    );
    let bridge = setup.start().await;
    let webhook = format!("{}/webhooks/mls", bridge.base);
    let refused = post_with_token(&webhook, &token, &push(2)).await;
    assert_eq!(refused.status(), 401);
    bridge.stop().await;
}
