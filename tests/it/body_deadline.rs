//! One request-body deadline for every route of the webhook listener (issue 26, item 1): bodies
//! that trickle in, on the token endpoint as on the push route, over HTTP/1.1 and in HTTP/2
//! streams, are answered `408` once `http.body_read_timeout_ms` has passed, and their
//! connections (and the listener's connection slots) are free again.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::embedded::{Setup, TOKEN};
use crate::hostile::read_until_closed;

const SIGNING_KEY: &str = "signing-key-2f7c1e9a4b6d8f0a2c4e6b8d0f1a3c5e";

/// A bridge whose `mls` connector has a token endpoint, with a 500 ms body deadline and a
/// listener capped at `max_connections`.
fn setup(max_connections: usize) -> Setup {
    let setup = Setup::new(&[]);
    std::fs::write(setup.path("signing-key"), SIGNING_KEY).unwrap();
    std::fs::write(setup.path("client-secret"), "producer-secret-51c2").unwrap();
    let bridge = format!(
        "shutdown_timeout_ms = 10000\ndata_dir = {:?}\n[http]\nlisten_addr = \"127.0.0.1:0\"\n\
         body_read_timeout_ms = 500\n[http.connections]\nmax_connections = {max_connections}\n\
         [admin]\nlisten_addr = \"127.0.0.1:0\"\n",
        setup.path("data").display().to_string()
    );
    std::fs::write(setup.path("bridge.toml"), bridge).unwrap();
    let connector = format!(
        "{}\n[source.token_endpoint]\nsigning_key = {{ file = {:?} }}\n\
         [[source.token_endpoint.clients]]\nclient_id = \"vendor\"\n\
         client_secret = {{ file = {:?} }}\n\n[sink]\ntype = \"embedded\"\n\
         replay_tokens = [{{ file = {:?} }}]\n",
        setup.webhook_source(""),
        setup.path("signing-key").display().to_string(),
        setup.path("client-secret").display().to_string(),
        setup.path("token").display().to_string(),
    );
    setup.write_connector("mls", &connector);
    setup
}

/// Regression: six connections declaring a 4000-byte token request and sending `grant_type=`
/// stayed open for good (at `max_connections`, the whole listener was locked out).
#[tokio::test(flavor = "multi_thread")]
async fn trickled_token_requests_get_408_and_free_the_listener() {
    let setup = setup(6);
    let bridge = setup.start().await;
    let addr = bridge.base.trim_start_matches("http://").to_owned();
    let mut slow = Vec::new();
    for _ in 0..6 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /webhooks/mls/token HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 4000\r\n\r\ngrant_type="
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    let started = Instant::now();
    for stream in &mut slow {
        let answer = read_until_closed(stream, Duration::from_secs(10))
            .await
            .expect("a trickled token request is answered and its connection closed");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("application/problem+json"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "answered before the deadline: {took:?}"
    );
    // Every connection slot is free again: a push gets through.
    let pushed = bridge
        .post(
            "/webhooks/mls",
            r#"{"value":[{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"K1"}]}"#,
        )
        .await;
    assert_eq!(pushed.status(), 200);
    bridge.stop().await;
}

/// An HTTP/2 stream that sits in its body (a token request) is answered 408 too, while the
/// connection's other streams are served.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_stream_that_sits_in_its_body_gets_408() {
    let setup = setup(16);
    let bridge = setup.start().await;
    let addr = bridge.base.trim_start_matches("http://").to_owned();
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}/webhooks/mls/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("content-length", "4000")
        .body(())
        .unwrap();
    let (stuck, mut body) = client.send_request(request, false).unwrap();
    body.send_data(bytes::Bytes::from_static(b"grant_type="), false)
        .unwrap();
    let started = Instant::now();

    // Another stream on the same connection is served meanwhile.
    let mut client = client.ready().await.unwrap();
    let events = r#"{"value":[{"EntityEventSequence":2,"ResourceName":"Property","ResourceRecordKey":"K2"}]}"#;
    let request = http::Request::post(format!("http://{addr}/webhooks/mls"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (served, mut sent) = client.send_request(request, false).unwrap();
    sent.send_data(bytes::Bytes::from_static(events.as_bytes()), true)
        .unwrap();
    let served = tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("the other stream is answered")
        .unwrap();
    assert_eq!(served.status(), 200);

    let stuck = tokio::time::timeout(Duration::from_secs(10), stuck)
        .await
        .expect("a stream that sits in its body is answered")
        .unwrap();
    assert_eq!(stuck.status(), 408);
    assert!(started.elapsed() >= Duration::from_millis(400));
    drop(body);
    bridge.stop().await;
}
