//! Hostile and faulty requests against the real listener (embedded sink, no broker): each cost is
//! the request's alone, every refusal is a problem body, and slow or idle connections are closed.

use std::io::Write;
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use flate2::Compression;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{TestBridge, TOKEN};

const SINK: &str = "type = \"embedded\"";

fn event(seq: u64) -> String {
    format!(
        r#"{{"EntityEventSequence":{seq},"ResourceName":"Property","ResourceRecordKey":"k{seq}"}}"#
    )
}

fn batch(seqs: std::ops::RangeInclusive<u64>) -> String {
    let events: Vec<String> = seqs.map(event).collect();
    format!(r#"{{"value":[{}]}}"#, events.join(","))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

async fn problem(
    response: reqwest::Response,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    assert_eq!(
        headers["content-type"], "application/problem+json",
        "status {status} must carry a problem body"
    );
    (status, headers, response.json().await.unwrap())
}

/// Reads from `stream` until the server closes it; `None` when it stays open past `wait`.
pub async fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&seen).into_owned()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn content_codings_are_case_insensitive_multi_member_and_unknown_ones_named() {
    let bridge = TestBridge::start("", SINK).await;
    // Two gzip members (RFC 1952) under an upper-case coding name: the whole body is read.
    let body = batch(1..=3);
    let (head, tail) = body.split_at(body.len() / 2);
    let mut two = gzip(head.as_bytes());
    two.extend(gzip(tail.as_bytes()));
    let response = reqwest::Client::new()
        .post(&bridge.webhook)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .header("content-encoding", "GZIP")
        .body(two)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["accepted"],
        3
    );

    // Regression: an unknown coding got a bare 415 without a body.
    let response = bridge
        .post_with(&batch(4..=4), |r| r.header("content-encoding", "br"))
        .await;
    let (status, headers, body) = problem(response).await;
    assert_eq!(status, 415);
    assert_eq!(headers["accept-encoding"], "gzip, identity");
    assert_eq!(headers["connection"], "close");
    assert!(body["detail"].as_str().unwrap().contains("`br`"), "{body}");
    assert_eq!(body["errors"][0]["header"], "content-encoding");
}

#[tokio::test]
async fn every_error_is_a_problem_body() {
    let bridge = TestBridge::start("", SINK).await;
    let client = reqwest::Client::new();
    let (status, _, body) = problem(client.get(&bridge.webhook).send().await.unwrap()).await;
    assert_eq!(status, 405);
    assert!(body["detail"].as_str().unwrap().contains("GET"), "{body}");
    let url = bridge.webhook.replace("/webhooks/it", "/nowhere");
    let (status, _, _) = problem(client.post(url).send().await.unwrap()).await;
    assert_eq!(status, 404);
    // The admin listener too.
    let admin = format!("{}/nowhere", bridge.admin);
    let (status, _, _) = problem(client.get(admin).send().await.unwrap()).await;
    assert_eq!(status, 404);
    let metrics = format!("{}/metrics", bridge.admin);
    let (status, _, _) = problem(client.post(metrics).send().await.unwrap()).await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn payload_bounds_are_400s_naming_where() {
    let bridge = TestBridge::start("max_events_per_push = 2\nmax_json_depth = 8", SINK).await;
    let (status, _, body) = problem(bridge.post(&batch(1..=3)).await).await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["pointer"], "/value/2", "{body}");

    let deep = format!(
        r#"{{"value":[{{"EntityEventSequence":9,"ResourceName":"Property","ResourceRecordKey":"k","Data":{}1{}}}]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (status, _, body) = problem(bridge.post(&deep).await).await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["pointer"], "/value/0", "{body}");
    assert!(body["errors"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("deeper than 8"));

    // Nothing of the refused pushes was kept; a good push still goes through.
    let response = bridge.post(&batch(1..=2)).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn gzip_bombs_stop_at_the_ratio() {
    let bridge = TestBridge::start("max_decompression_ratio = 50", SINK).await;
    // ~8 MiB of spaces inside a valid payload compress about 1000:1.
    let mut body = String::from("{\"value\":[");
    body.push_str(&" ".repeat(8 << 20));
    body.push_str("]}");
    let response = bridge
        .post_with("", |r| {
            r.header("content-encoding", "gzip")
                .body(gzip(body.as_bytes()))
        })
        .await;
    let (status, headers, body) = problem(response).await;
    assert_eq!(status, 413);
    assert_eq!(headers["connection"], "close");
    assert!(
        body["detail"].as_str().unwrap().contains("50 times"),
        "{body}"
    );
}

#[tokio::test]
async fn early_answers_close_the_connection() {
    let bridge = TestBridge::start("", SINK).await;
    let addr = host_port(&bridge.webhook);
    // A wrong token with a 1 MiB body on a keep-alive connection: the answer says close, and
    // the connection really ends after it (the client does not send its next request into a
    // connection the server has stopped reading).
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let body = vec![b' '; 1 << 20];
    let head = format!(
        "POST /webhooks/it HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer wrong\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(&body).await;
    let answer = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("the server closes the connection after an early answer");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}

#[tokio::test]
async fn half_requests_and_idle_connections_are_closed() {
    let bridge = TestBridge::start_tuned(
        "[http.connections]\nheader_read_timeout_ms = 300\nkeep_alive_idle_timeout_ms = 600",
        "",
        SINK,
    )
    .await;
    let addr = host_port(&bridge.webhook);

    // Regression: half a request line kept its connection forever.
    let mut half = TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"POST /webhooks/it HTT").await.unwrap();
    let started = Instant::now();
    read_until_closed(&mut half, Duration::from_secs(5))
        .await
        .expect("a connection that never completes its headers is closed");
    assert!(started.elapsed() >= Duration::from_millis(250));

    // A connection that sends nothing at all.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    read_until_closed(&mut silent, Duration::from_secs(5))
        .await
        .expect("a silent connection is closed at the header timeout");

    // A kept-alive connection: served, then idle past the idle timeout (longer than the
    // header timeout, so the idle rule is the one that applies).
    let mut kept = TcpStream::connect(&addr).await.unwrap();
    let body = batch(1..=1);
    let request = format!(
        "POST /webhooks/it HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    kept.write_all(request.as_bytes()).await.unwrap();
    let served = Instant::now();
    let answer = read_until_closed(&mut kept, Duration::from_secs(5))
        .await
        .expect("an idle kept-alive connection is closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let idle = served.elapsed();
    assert!(
        idle >= Duration::from_millis(500),
        "closed after {idle:?}: the idle timeout (600 ms) applies after a request, not the header timeout"
    );
}

#[tokio::test]
async fn a_slow_body_gets_408_and_frees_its_slot() {
    let bridge = TestBridge::start_tuned(
        "body_read_timeout_ms = 300",
        "max_in_flight_requests = 1",
        SINK,
    )
    .await;
    let addr = host_port(&bridge.webhook);
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /webhooks/it HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"value\":["
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut slow, Duration::from_secs(5))
        .await
        .expect("a slow body is answered and its connection closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    // The only request slot is free again.
    assert_eq!(bridge.post(&batch(1..=1)).await.status(), 200);
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let bridge = TestBridge::start_tuned(
        "[http.connections]\nmax_connections = 2\nheader_read_timeout_ms = 20000",
        "",
        SINK,
    )
    .await;
    let addr = host_port(&bridge.webhook);
    let first = TcpStream::connect(&addr).await.unwrap();
    let _second = TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = reqwest::Client::new();
    let push = client
        .post(&bridge.webhook)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(batch(1..=1))
        .send();
    tokio::pin!(push);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut push)
            .await
            .is_err(),
        "a third connection is not served while two are open"
    );
    drop(first);
    let response = tokio::time::timeout(Duration::from_secs(5), push)
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Regression: a producer's `@EntityBridge.SourceEntityEventSequence` reached the replay
/// resource next to the bridge's own. The push is refused, naming the member; nothing stored.
#[tokio::test]
async fn annotations_the_bridge_adds_are_refused_from_producers() {
    let bridge = TestBridge::start("", SINK).await;
    let forged = r#"{"value":[{"EntityEventSequence":7,"ResourceName":"Property","ResourceRecordKey":"k7","@EntityBridge.SourceEntityEventSequence":1}]}"#;
    let (status, _, body) = problem(bridge.post(forged).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0]["pointer"],
        "/value/0/@EntityBridge.SourceEntityEventSequence"
    );
    assert_eq!(bridge.post(&batch(1..=1)).await.status(), 200);
    let metrics = bridge.metrics().await;
    assert_eq!(
        crate::common::metric(
            &metrics,
            "entity_bridge_events_rejected_total{connector=\"it\",outcome=\"invalid\"}"
        ),
        Some(1.0),
        "the refusal is counted"
    );
}
