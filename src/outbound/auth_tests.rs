//! Unit tests of [`super`].

use super::*;

#[test]
fn refresh_margin_is_half_the_lifetime_at_most_a_minute() {
    assert_eq!(
        refresh_margin(Duration::from_secs(2)),
        Duration::from_secs(1)
    );
    assert_eq!(
        refresh_margin(Duration::from_secs(3600)),
        Duration::from_secs(60)
    );
}

#[tokio::test]
async fn a_huge_expires_in_is_capped_not_a_panic() {
    let now = Instant::now();
    // Regression: `started + expires_in - margin` overflowed and panicked the lanes.
    let at = refresh_at(now, Duration::from_secs(u64::MAX));
    assert_eq!(at, now + MAX_TOKEN_LIFETIME - Duration::from_secs(60));
    assert_eq!(
        refresh_at(now, Duration::from_secs(600)),
        now + Duration::from_secs(540)
    );
    assert_eq!(refresh_at(now, Duration::ZERO), now);
}

/// A real token endpoint on loopback answering `body` to every request.
async fn token_endpoint(body: &'static [u8]) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move || async move {
            ([(http::header::CONTENT_TYPE, "application/json")], body)
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/token")
}

fn oauth2_config(token_url: String) -> AuthConfig {
    std::env::set_var("ENTITY_BRIDGE_UNIT_PUSH_SECRET", "s3cret");
    let text = format!(
        "type = \"oauth2\"\ntoken_url = \"{token_url}\"\nclient_id = \"c\"\n\
         client_secret = {{ env = \"ENTITY_BRIDGE_UNIT_PUSH_SECRET\" }}\n"
    );
    toml::from_str(&text).unwrap()
}

#[tokio::test]
async fn token_responses_from_a_real_endpoint_are_bounded() {
    let url = token_endpoint(
        br#"{"access_token":"abc","token_type":"bearer","expires_in":18446744073709551615}"#,
    )
    .await;
    let auth = Auth::build(&oauth2_config(url), "c").unwrap();
    assert_eq!(auth.token().await.unwrap().value.expose(), "abc");

    static HUGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let huge = HUGE.get_or_init(|| {
        let mut body = br#"{"access_token":"abc","token_type":"bearer","pad":""#.to_vec();
        body.extend(std::iter::repeat_n(b'x', 1 << 20));
        body.extend(br#""}"#);
        body
    });
    let auth = Auth::build(&oauth2_config(token_endpoint(huge.as_slice()).await), "c").unwrap();
    let err = auth.token().await.unwrap_err();
    assert!(err.to_string().contains("exceeds 65536 bytes"), "{err}");
}

#[tokio::test]
async fn a_redirecting_token_endpoint_never_sends_the_secret_elsewhere() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // The other origin: counts whatever reaches it.
    static ELSEWHERE: AtomicUsize = AtomicUsize::new(0);
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_url = format!("http://{}/steal", other.local_addr().unwrap());
    let app = axum::Router::new().fallback(|| async {
        ELSEWHERE.fetch_add(1, Ordering::SeqCst);
        r#"{"access_token":"stolen","token_type":"bearer"}"#
    });
    tokio::spawn(async move { axum::serve(other, app).await });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move || async move {
            (
                http::StatusCode::TEMPORARY_REDIRECT,
                [(http::header::LOCATION, other_url)],
            )
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let auth = Auth::build(&oauth2_config(format!("http://{addr}/token")), "c").unwrap();
    let err = auth.token().await.unwrap_err();
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert_eq!(
        ELSEWHERE.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}

#[tokio::test]
async fn fixed_token_is_never_invalidated() {
    std::env::set_var("ENTITY_BRIDGE_UNIT_PUSH_TOKEN", "t0k3n");
    let config = AuthConfig::Token {
        token: crate::secret::SecretRef::Env("ENTITY_BRIDGE_UNIT_PUSH_TOKEN".into()),
    };
    let auth = Auth::build(&config, "c").unwrap();
    let token = auth.token().await.unwrap();
    assert_eq!(token.value.expose(), "t0k3n");
    assert!(!auth.invalidate(&token));
    assert_eq!(format!("{token:?}").matches("t0k3n").count(), 0);
}
