//! Unit tests of [`super`]: how long a key set may be used while the IdP cannot be reached.

use super::*;
use base64::Engine;
use jsonwebtoken::EncodingKey;

/// An ES256 key: its signing key and its public JWK (`kid` = "k1").
fn key() -> (EncodingKey, Jwk) {
    let pair = rcgen::KeyPair::generate().unwrap();
    let raw = pair.public_key_raw(); // 0x04 || X || Y
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "k1",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
    });
    (
        EncodingKey::from_ec_der(&pair.serialize_der()),
        serde_json::from_value(jwk).unwrap(),
    )
}

fn token(signing: &EncodingKey) -> String {
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"iss": "idp", "aud": "bridge", "sub": "p", "exp": now + 300});
    jsonwebtoken::encode(&header, &claims, signing).unwrap()
}

/// An issuer whose IdP refuses connections, holding `jwk` fetched `age` ago.
fn issuer(jwk: Jwk, age: Duration, max_stale_seconds: u64) -> Arc<ExternalIssuer> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks", closed.local_addr().unwrap());
    drop(closed);
    let config: ExternalJwtConfig = toml::from_str(&format!(
        "issuer = \"idp\"\naudience = \"bridge\"\njwks_url = \"{url}\"\nalgorithms = [\"ES256\"]\n\
         jwks_refresh_interval_seconds = 60\njwks_max_stale_seconds = {max_stale_seconds}\n"
    ))
    .unwrap();
    config.validate().unwrap();
    let issuer = ExternalIssuer::new(&config).unwrap();
    let fetched = Instant::now()
        .checked_sub(age)
        .expect("the monotonic clock has run longer than the age");
    *issuer.cache.write().unwrap() = Some(Cached {
        keys: JwkSet { keys: vec![jwk] },
        fetched,
    });
    Arc::new(issuer)
}

#[tokio::test]
async fn a_stale_set_serves_within_its_bound_while_the_idp_is_down() {
    let (signing, jwk) = key();
    let issuer = issuer(jwk, Duration::from_secs(90), 600);
    assert_eq!(issuer.verify(&token(&signing)).await.unwrap(), "p");
}

/// Regression: a stale key set was used forever while the IdP was down.
#[tokio::test]
async fn a_set_past_its_staleness_bound_is_not_trusted_until_the_idp_answers() {
    let (signing, jwk) = key();
    let issuer = issuer(jwk, Duration::from_secs(90), 0);
    let refused = issuer.verify(&token(&signing)).await.unwrap_err();
    assert!(
        matches!(refused, Refusal::Unverifiable { retry_after_seconds } if retry_after_seconds >= 1),
        "{refused:?}"
    );
    // The failed fetch is not repeated within the minimum interval: the answer stands.
    let again = issuer.verify(&token(&signing)).await.unwrap_err();
    assert!(matches!(again, Refusal::Unverifiable { .. }), "{again:?}");
}
