//! Unit tests of [`super`].

use super::*;

fn parse(text: &str) -> Result<PushSinkConfig, toml::de::Error> {
    toml::from_str(text)
}

const MINIMAL: &str = r#"
    url = "https://consumer.example/webhooks"
    auth = { type = "token", token = { env = "T" } }
    dead_letter = { type = "kafka", topic = "dlq" }
"#;

#[test]
fn minimal_config_has_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    c.validate().unwrap();
    assert_eq!(c.max_events, 100);
    assert_eq!(c.limits.max_concurrent_requests, 4);
    assert_eq!(c.retry.on_exhausted, OnExhausted::Block);
}

#[test]
fn oauth2_defaults_and_checks() {
    let text = MINIMAL.replace(
        r#"auth = { type = "token", token = { env = "T" } }"#,
        r#"auth = { type = "oauth2", token_url = "https://idp.example/token", client_id = "c", client_secret = { env = "S" } }"#,
    );
    let c = parse(&text).unwrap();
    c.validate().unwrap();
    match &c.auth {
        AuthConfig::Oauth2 { grant_type, .. } => assert_eq!(grant_type, "client_credentials"),
        other => panic!("{other:?}"),
    }
    let bad = text.replace(
        "client_id = \"c\"",
        "client_id = \"c\", grant_type = \"password\"",
    );
    assert_eq!(
        parse(&bad).unwrap().validate().unwrap_err().0,
        "auth.grant_type"
    );
}

#[test]
fn bad_values_name_their_key() {
    let c = parse(&MINIMAL.replace("https://consumer.example/webhooks", "ftp://x")).unwrap();
    assert_eq!(c.validate().unwrap_err().0, "url");
    let mut c = parse(MINIMAL).unwrap();
    c.limits.requests_per_second = Some(0.0);
    assert_eq!(c.validate().unwrap_err().0, "limits.requests_per_second");
    // Regression: 1e-20 passed and the limiter's period overflowed at start (a panic).
    c.limits.requests_per_second = Some(1e-20);
    assert_eq!(c.validate().unwrap_err().0, "limits.requests_per_second");
    c.limits.requests_per_second = Some(1.0 / 86_400.0);
    c.validate().unwrap();
    assert!(parse(&format!("{MINIMAL}\nlinger = 3")).is_err());
}

#[test]
fn plain_http_only_to_loopback_unless_allowed() {
    let with_url =
        |url: &str| parse(&MINIMAL.replace("https://consumer.example/webhooks", url)).unwrap();
    for ok in [
        "http://127.0.0.1:8080/hook",
        "http://127.8.0.1/hook",
        "http://[::1]:9000/hook",
        "http://localhost/hook",
        "http://api.localhost./hook",
    ] {
        with_url(ok)
            .validate()
            .unwrap_or_else(|e| panic!("{ok}: {e:?}"));
    }
    let remote = with_url("http://consumer.example/webhooks");
    let (key, detail) = remote.validate().unwrap_err();
    assert_eq!(key, "url");
    assert!(detail.contains("allow_insecure_http"), "{detail}");
    let mut allowed = remote.clone();
    allowed.allow_insecure_http = true;
    allowed.validate().unwrap();

    let oauth = MINIMAL.replace(
        r#"auth = { type = "token", token = { env = "T" } }"#,
        r#"auth = { type = "oauth2", token_url = "http://idp.example/token", client_id = "c", client_secret = { env = "S" } }"#,
    );
    assert_eq!(
        parse(&oauth).unwrap().validate().unwrap_err().0,
        "auth.token_url"
    );
}

#[test]
fn credentials_in_a_url_are_refused_and_never_echoed() {
    let c = parse(&MINIMAL.replace(
        "https://consumer.example/webhooks",
        "https://user:hunter2-secret@consumer.example/webhooks",
    ))
    .unwrap();
    let (key, detail) = c.validate().unwrap_err();
    assert_eq!(key, "url");
    assert!(!detail.contains("hunter2"), "{detail}");
    let bad =
        parse(&MINIMAL.replace("https://consumer.example/webhooks", "not a url hunter2")).unwrap();
    assert!(!bad.validate().unwrap_err().1.contains("hunter2"));
}
