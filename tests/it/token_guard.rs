//! The token endpoint under a guesser (issue 26, item 3): failed attempts are limited per peer
//! address and per client id, and a client that authenticates is served throughout. Before,
//! one budget for everyone was spent before authentication: a guesser at 200 requests/s kept
//! every real client at 429 (0 of 15 tokens).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use crate::common::metric;
use crate::embedded::Setup;

const SIGNING_KEY: &str = "signing-key-2f7c1e9a4b6d8f0a2c4e6b8d0f1a3c5e";
const SECRET: &str = "producer-secret-51c2";

fn connector(setup: &Setup) -> String {
    std::fs::write(setup.path("signing-key"), SIGNING_KEY).unwrap();
    std::fs::write(setup.path("client-secret"), SECRET).unwrap();
    format!(
        "[source]\ntype = \"webhook\"\n[source.token_endpoint]\nsigning_key = {{ file = {key:?} }}\n\
         [[source.token_endpoint.clients]]\nclient_id = \"vendor\"\nclient_secret = {{ file = {secret:?} }}\n\n\
         [sink]\ntype = \"embedded\"\nreplay = false\n",
        key = setup.path("signing-key").display().to_string(),
        secret = setup.path("client-secret").display().to_string(),
    )
}

/// A client whose connections come from `127.0.0.<last>`.
fn from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .build()
        .unwrap()
}

async fn ask(client: &reqwest::Client, url: &str, secret: &str) -> (u16, Option<String>) {
    let response = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&client_id=vendor&client_secret={secret}"
        ))
        .send()
        .await
        .unwrap();
    let retry_after =
        (response.headers().get("retry-after")).map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), retry_after)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guesser_is_held_back_and_real_clients_keep_getting_tokens() {
    let setup = Setup::new(&[]);
    setup.write_connector("mls", &connector(&setup));
    let bridge = setup.start().await;
    let url = format!("{}/webhooks/mls/token", bridge.base);

    // A guesser on 127.0.0.2 at about 200 requests a second, for three seconds.
    let guesser = tokio::spawn({
        let url = url.clone();
        async move {
            let client = from(2);
            let mut answers = Vec::new();
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                answers.push(ask(&client, &url, "guess-guess-guess-guess").await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answers
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The real client, on 127.0.0.1, asks 15 times meanwhile.
    let real = from(1);
    let mut granted = 0;
    for _ in 0..15 {
        let (status, _) = ask(&real, &url, SECRET).await;
        granted += usize::from(status == 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(granted, 15, "every request of the real client gets a token");

    let answers = guesser.await.unwrap();
    assert!(
        answers.len() > 100,
        "the guesser kept trying: {}",
        answers.len()
    );
    let refused = answers.iter().filter(|(s, _)| *s == 401).count();
    let throttled: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    // The peer's budget: 30 failed attempts a minute, one more every two seconds.
    assert!((30..=32).contains(&refused), "{refused} refused with 401");
    assert_eq!(refused + throttled.len(), answers.len());
    assert!(throttled
        .iter()
        .all(|(_, r)| r.as_deref().is_some_and(|r| r.parse::<u64>().unwrap() >= 1)));

    // Another address naming the same client id: that id's budget is spent too, but the
    // client with its secret is still served.
    assert_eq!(ask(&from(3), &url, "another-wrong-guess").await.0, 429);
    assert_eq!(ask(&from(3), &url, SECRET).await.0, 200);

    let metrics = bridge.metrics().await;
    let outcome = |o: &str| {
        metric(
            &metrics,
            &format!("entity_bridge_token_requests_total{{connector=\"mls\",outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(outcome("invalid_client"), Some(refused as f64));
    assert!(outcome("throttled").unwrap() >= (throttled.len() + 1) as f64);
    assert_eq!(outcome("issued"), Some(16.0));
    bridge.stop().await;
}
