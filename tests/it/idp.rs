//! A webhook connector accepting JWT bearer tokens of an external identity provider
//! (`[source.jwt]`): a real local IdP serves its JWKS (ECDSA P-256 keys generated per run);
//! issuer, audience, expiry and algorithm are checked, an unknown `kid` refreshes the set once,
//! and forged `kid`s cannot make the bridge hammer the IdP.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::common::challenge;
use crate::embedded::{post, Setup};

/// An IdP key: its id, its signing key and its public JWK.
struct IdpKey {
    kid: String,
    signing: EncodingKey,
    jwk: serde_json::Value,
}

fn key(kid: &str) -> IdpKey {
    let pair = rcgen::KeyPair::generate().unwrap();
    let raw = pair.public_key_raw(); // 0x04 || X || Y
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    IdpKey {
        kid: kid.to_owned(),
        signing: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: serde_json::json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        }),
    }
}

struct Idp {
    url: String,
    keys: Arc<Mutex<Vec<serde_json::Value>>>,
    fetches: Arc<AtomicUsize>,
}

async fn idp() -> Idp {
    let keys: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let fetches: Arc<AtomicUsize> = Arc::default();
    let (k, f) = (keys.clone(), fetches.clone());
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let (k, f) = (k.clone(), f.clone());
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                let mut keys = k.lock().unwrap().clone();
                // A key type the bridge cannot use is skipped, not fatal for the set.
                keys.push(serde_json::json!({"kty": "unknown-kty", "kid": "odd"}));
                axum::Json(serde_json::json!({ "keys": keys }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Idp { url, keys, fetches }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(key: &IdpKey, aud: &str, exp: u64) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    let claims = serde_json::json!({
        "iss": "https://idp.example.test/", "aud": aud, "sub": "listhub",
        "iat": now(), "exp": exp,
    });
    jsonwebtoken::encode(&header, &claims, &key.signing).unwrap()
}

fn push() -> &'static str {
    r#"{"value":[{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"A"}]}"#
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_of_an_external_idp_are_checked_against_its_jwks() {
    let idp = idp().await;
    let first = key("k1");
    idp.keys.lock().unwrap().push(first.jwk.clone());
    let setup = Setup::new(&[]);
    setup.write_connector(
        "mls",
        &format!(
            r#"[source]
type = "webhook"
[source.jwt]
issuer = "https://idp.example.test/"
audience = "bridge-mls"
jwks_url = "{}"
algorithms = ["ES256"]
max_clock_skew_seconds = 0
jwks_min_refresh_interval_seconds = 1

[sink]
type = "embedded"
replay = false
"#,
            idp.url
        ),
    );
    let bridge = setup.start().await;
    let webhook = format!("{}/webhooks/mls", bridge.base);

    let good = token(&first, "bridge-mls", now() + 300);
    assert_eq!(post(&webhook, &good, push()).await.status(), 200);
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        1,
        "fetched once, then cached"
    );
    assert_eq!(post(&webhook, &good, push()).await.status(), 200);
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);

    let other_audience = post(&webhook, &token(&first, "another-api", now() + 300), push()).await;
    assert_eq!(other_audience.status(), 401);
    assert!(challenge(&other_audience).contains("invalid_token"));
    // Not valid yet (`nbf` in the future).
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(first.kid.clone());
    let early = serde_json::json!({"iss": "https://idp.example.test/", "aud": "bridge-mls",
        "sub": "listhub", "nbf": now() + 600, "exp": now() + 900});
    let early = jsonwebtoken::encode(&header, &early, &first.signing).unwrap();
    assert_eq!(post(&webhook, &early, push()).await.status(), 401);
    // Regression (GHSA-h395-gr6q-cpjc, jsonwebtoken < 10.3): an `nbf` sent as a string was
    // taken as absent, so a token not valid yet passed.
    let stringly = serde_json::json!({"iss": "https://idp.example.test/", "aud": "bridge-mls",
        "sub": "listhub", "nbf": (now() + 600).to_string(), "exp": now() + 900});
    let stringly = jsonwebtoken::encode(&header, &stringly, &first.signing).unwrap();
    assert_eq!(post(&webhook, &stringly, push()).await.status(), 401);
    let expired = post(&webhook, &token(&first, "bridge-mls", now() - 5), push()).await;
    assert_eq!(expired.status(), 401);
    assert!(
        challenge(&expired).contains("expired"),
        "{}",
        challenge(&expired)
    );
    // HS256 "signed" with the public key material as a secret: the algorithm is refused.
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k1".into());
    let claims = serde_json::json!({"iss": "https://idp.example.test/", "aud": "bridge-mls", "exp": now() + 300});
    let confused = jsonwebtoken::encode(
        &hs,
        &claims,
        &EncodingKey::from_secret(first.jwk["x"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    assert_eq!(post(&webhook, &confused, push()).await.status(), 401);
    let payload = good.split('.').nth(1).unwrap();
    let none = format!(
        "{}.{payload}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#)
    );
    assert_eq!(post(&webhook, &none, push()).await.status(), 401);

    // The IdP rotates: a token of a new key makes the bridge fetch the set again.
    let second = key("k2");
    idp.keys.lock().unwrap().push(second.jwk.clone());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fetched = idp.fetches.load(Ordering::SeqCst);
    assert_eq!(
        post(&webhook, &token(&second, "bridge-mls", now() + 300), push())
            .await
            .status(),
        200
    );
    assert_eq!(idp.fetches.load(Ordering::SeqCst), fetched + 1);
    // Forged key ids: at most one more fetch within the minimum interval.
    let stranger = key("forged");
    for i in 0..10 {
        let mut forged = key(&format!("forged-{i}"));
        forged.signing = stranger.signing.clone();
        let r = post(&webhook, &token(&forged, "bridge-mls", now() + 300), push()).await;
        assert_eq!(r.status(), 401);
    }
    assert!(idp.fetches.load(Ordering::SeqCst) <= fetched + 2);
    bridge.stop().await;
}

/// A JWKS URL that accepts connections and never answers.
async fn hanging_idp() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    url
}

/// Regression: while the JWKS URL hung, 40 pushes with unknown `kid`s got no answer within
/// 14 s (20 held 80 s), and 80 of them made another connector's fixed-token push time out.
/// Now each wait is bounded (503 + Retry-After), waits are capped, other connectors unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_idp_holds_no_push_for_long_and_delays_no_other_connector() {
    let setup = Setup::new(&[]);
    setup.write_connector(
        "mls",
        &format!(
            "[source]\ntype = \"webhook\"\n[source.jwt]\nissuer = \"https://idp.example.test/\"\n\
             audience = \"bridge-mls\"\njwks_url = \"{}\"\nalgorithms = [\"ES256\"]\n\
             jwks_fetch_timeout_ms = 1000\njwks_max_waiting_requests = 20\n\n\
             [sink]\ntype = \"embedded\"\nreplay = false\n",
            hanging_idp().await
        ),
    );
    setup.write_connector(
        "other",
        &format!(
            "{}\n[sink]\ntype = \"embedded\"\nreplay = false\n",
            setup.webhook_source("")
        ),
    );
    let bridge = setup.start().await;
    let webhook = format!("{}/webhooks/mls", bridge.base);
    let started = std::time::Instant::now();
    let pushes: Vec<_> = (0..80)
        .map(|i| {
            let (webhook, forged) = (webhook.clone(), key(&format!("unknown-{i}")));
            let token = token(&forged, "bridge-mls", now() + 300);
            tokio::spawn(async move {
                let r = post(&webhook, &token, push()).await;
                let retry = r.headers().get("retry-after").is_some();
                (r.status().as_u16(), retry, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = std::time::Instant::now();
    let fixed = bridge.post("/webhooks/other", push()).await;
    assert_eq!(fixed.status(), 200);
    let other = other.elapsed();
    assert!(
        other < Duration::from_millis(500),
        "another connector's push waited {other:?}"
    );
    for push in pushes {
        let (status, retry_after, answered) = push.await.unwrap();
        assert_eq!((status, retry_after), (503, true));
        assert!(
            answered < Duration::from_secs(4),
            "answered after {answered:?}"
        );
    }
    bridge.stop().await;
}
