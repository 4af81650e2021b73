//! TLS for real: the webhook listener serving HTTPS from a generated CA-signed certificate
//! (answers, replay, ALPN, graceful shutdown), bad certificate files failing fast, and the
//! Kafka (librdkafka passthrough, SASL secrets by reference) and AMQP (`amqps://`) clients
//! opening TLS when configured to.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use entity_bridge::app::{self, Running};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::common::{metric, TOKEN};

/// A test CA and a server certificate it signed for `localhost` and `127.0.0.1`.
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn pki() -> Pki {
    pki_for(&["localhost", "127.0.0.1"])
}

/// A test CA and a server certificate it signed for `names`.
pub fn pki_for(names: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "entity-bridge test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: leaf.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Writes the PKI files and a config dir: `[http.tls]` + one connector `it` from `connector`.
fn stage(dir: &Path, pki: &Pki, connector: &str) {
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(dir.join("cert.pem"), &pki.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &pki.key_pem).unwrap();
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let d = |f: &str| format!("{:?}", dir.join(f).display().to_string());
    std::fs::write(
        dir.join("bridge.toml"),
        format!(
            "shutdown_timeout_ms = 10000\ndata_dir = {}\n[http]\nlisten_addr = \"127.0.0.1:0\"\n\
             [http.tls]\ncert_file = {}\nkey_file = {}\n[admin]\nlisten_addr = \"127.0.0.1:0\"\n",
            d("data"),
            d("cert.pem"),
            d("key.pem")
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("connectors")).unwrap();
    std::fs::write(dir.join("connectors/it.toml"), connector).unwrap();
}

fn embedded_connector(dir: &Path) -> String {
    format!(
        "[source]\ntype = \"webhook\"\npath = \"/webhooks/it\"\ntokens = [{{ file = {:?} }}]\n\
         [sink]\ntype = \"embedded\"\nfile = \"events.db\"\nreplay_max_page_size = 1\n",
        dir.join("token").display().to_string()
    )
}

async fn start(dir: &Path) -> Running {
    let (config, _) = entity_bridge::config::load(&[dir.to_path_buf()]).expect("config");
    app::start(config).await.expect("bridge starts")
}

fn https_client(pki: &Pki, addr: std::net::SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .build()
        .unwrap()
}

const BATCH: &str = r#"{"@reso.context":"urn:reso:metadata:2.0:resource:entityevent","value":[
  {"EntityEventSequence":1101,"ResourceName":"Property","ResourceRecordKey":"235021"},
  {"EntityEventSequence":1111,"ResourceName":"Media","ResourceRecordKey":"ABC123"}]}"#;

#[tokio::test(flavor = "multi_thread")]
async fn https_webhook_and_replay_answer_for_real() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    stage(dir.path(), &pki, &embedded_connector(dir.path()));
    let bridge = start(dir.path()).await;
    let port = bridge.webhook_addr.port();
    let client = https_client(&pki, bridge.webhook_addr);

    let answer = client
        .post(format!("https://localhost:{port}/webhooks/it"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(BATCH)
        .send()
        .await
        .expect("HTTPS POST trusted through the test CA");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), r#"{"accepted":2}"#);
    // The certificate also names 127.0.0.1, and the replay resource is on the same listener.
    let page: serde_json::Value = client
        .get(format!("https://127.0.0.1:{port}/EntityEvent"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["value"][0]["ResourceRecordKey"], "235021");
    // Paging links are relative: resolved against the page's URL they lead on over HTTPS.
    let next = page["@odata.nextLink"].as_str().unwrap();
    assert!(next.starts_with("/EntityEvent?"), "{next}");
    let next = format!("https://127.0.0.1:{port}{next}");
    let page: serde_json::Value = client
        .get(next)
        .bearer_auth(TOKEN)
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["value"][0]["ResourceRecordKey"], "ABC123");
    assert!(page.get("@odata.nextLink").is_none(), "{page}");
    // Errors are real answers too (problem+json over TLS).
    let unauthorized = client
        .post(format!("https://localhost:{port}/webhooks/it"))
        .body(BATCH)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);

    // A client that does not trust the CA, and plain HTTP, get no answer at all.
    let untrusting = reqwest::Client::builder()
        .resolve("localhost", bridge.webhook_addr)
        .build()
        .unwrap();
    let refused = untrusting
        .post(format!("https://localhost:{port}/webhooks/it"))
        .send()
        .await;
    assert!(refused.is_err(), "untrusted certificate accepted");
    let plain = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhooks/it"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(BATCH)
        .send()
        .await;
    assert!(
        plain.map_or(true, |r| r.status() != 200),
        "plain HTTP accepted"
    );

    // ALPN offers HTTP/2.
    let tls = tls_connect(&pki, bridge.webhook_addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(tls);

    // The admin listener stays plain HTTP.
    let metrics = reqwest::get(format!("http://{}/metrics", bridge.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(
            &metrics,
            "entity_bridge_http_requests_total{connector=\"it\",status=\"200\"}"
        ),
        Some(1.0)
    );
    assert!(bridge.shutdown().await);
}

async fn tls_connect(
    pki: &Pki,
    addr: std::net::SocketAddr,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

use tokio_rustls::rustls::pki_types::pem::PemObject;

#[tokio::test(flavor = "multi_thread")]
async fn https_shutdown_finishes_the_in_flight_push() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    stage(dir.path(), &pki, &embedded_connector(dir.path()));
    let bridge = start(dir.path()).await;
    let addr = bridge.webhook_addr;
    let admin = format!("http://{}/metrics", bridge.admin_addr);
    let body = r#"{"value":[{"EntityEventSequence":5,"ResourceName":"Property","ResourceRecordKey":"D1"}]}"#;
    let mut slow = tls_connect(&pki, addr, &[b"http/1.1"]).await;
    let head = format!(
        "POST /webhooks/it HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body.as_bytes()[..10]).await.unwrap();
    slow.flush().await.unwrap();
    let series = "entity_bridge_requests_in_flight{connector=\"it\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(&admin).await.unwrap().text().await.unwrap();
        if metric(&text, series) == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "request never became in-flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = tokio::spawn(bridge.shutdown());
    // New connections are refused once the listener stopped accepting.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "listener kept accepting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The push in flight still gets its real answer over TLS.
    slow.write_all(&body.as_bytes()[10..]).await.unwrap();
    slow.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#"{"accepted":1}"#), "{answer}");
    assert!(stopping.await.unwrap(), "clean shutdown");
}

#[test]
fn bad_certificate_files_fail_check_naming_the_key() {
    let pki = pki();
    let other = self::pki();
    for (case, cert, key, want) in [
        ("missing", None, Some(&pki.key_pem), "cert.pem"),
        ("not pem", Some("hello"), Some(&pki.key_pem), "CERTIFICATE"),
        (
            "no key",
            Some(&pki.cert_pem),
            Some(&pki.cert_pem),
            "private key",
        ),
        (
            "wrong key",
            Some(&pki.cert_pem),
            Some(&other.key_pem),
            "KeyMismatch",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        stage(dir.path(), &pki, &embedded_connector(dir.path()));
        match cert {
            Some(c) => std::fs::write(dir.path().join("cert.pem"), c).unwrap(),
            None => std::fs::remove_file(dir.path().join("cert.pem")).unwrap(),
        }
        std::fs::write(dir.path().join("key.pem"), key.unwrap()).unwrap();
        let err = entity_bridge::config::load(&[dir.path().to_path_buf()])
            .err()
            .unwrap_or_else(|| panic!("{case}: accepted"))
            .to_string();
        assert!(err.contains("http.tls"), "{case}: {err}");
        assert!(err.contains(want), "{case}: {err}");
        assert!(!err.contains("BEGIN"), "{case}: PEM content leaked: {err}");
    }
}

/// Accepts connections and reports the first bytes each client sends.
async fn first_bytes_listener() -> (String, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 6];
                if tokio::time::timeout(Duration::from_secs(10), socket.read_exact(&mut buf))
                    .await
                    .is_ok_and(|r| r.is_ok())
                {
                    let _ = tx.send(buf);
                }
            });
        }
    });
    (addr, rx)
}

/// A TLS record header carrying a ClientHello: content type 22, version 3.x, handshake type 1.
fn is_client_hello(bytes: &[u8]) -> bool {
    bytes[0] == 0x16 && bytes[1] == 0x03 && bytes[5] == 0x01
}

async fn expect_client_hello(who: &str, rx: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let first = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{who}: no connection within 20 s"))
        .unwrap();
    assert!(
        is_client_hello(&first),
        "{who} did not start TLS: {first:02x?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_and_amqp_clients_speak_tls_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let (kafka_sink, mut kafka_sink_rx) = first_bytes_listener().await;
    let (kafka_source, mut kafka_source_rx) = first_bytes_listener().await;
    let (amqp, mut amqp_rx) = first_bytes_listener().await;
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        format!("{:?}", path.display().to_string())
    };
    let password = file("kafka.password", "s3cret-kafka\n");
    let amqp_url = file("amqp.url", &format!("amqps://guest:guest@{amqp}/%2f"));
    let ca = format!("{:?}", dir.path().join("ca.pem").display().to_string());
    // Ingress to Kafka over SASL_SSL with a SCRAM password read from a file.
    let sink = format!(
        "[source]\ntype = \"webhook\"\ntokens = [{{ file = {password} }}]\n\
         [sink]\ntype = \"kafka\"\nbootstrap_servers = \"{kafka_sink}\"\n\
         [sink.librdkafka]\n\"security.protocol\" = \"sasl_ssl\"\n\"ssl.ca.location\" = {ca}\n\
         \"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"bridge\"\n\
         [sink.librdkafka_secrets]\n\"sasl.password\" = {{ file = {password} }}\n"
    );
    // Egress from Kafka over SSL, and ingress to RabbitMQ over amqps://.
    let source = format!(
        "[source]\ntype = \"kafka\"\nbootstrap_servers = \"{kafka_source}\"\ntopics = [\"t\"]\n\
         [source.librdkafka]\n\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = {ca}\n\
         [source.dead_letter]\ntype = \"kafka\"\nbootstrap_servers = \"{kafka_source}\"\ntopic = \"dl\"\n\
         [source.dead_letter.librdkafka]\n\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = {ca}\n\
         [sink]\ntype = \"embedded\"\nreplay = false\n"
    );
    let to_amqp = format!(
        "[source]\ntype = \"webhook\"\ntokens = [{{ file = {password} }}]\n\
         [sink]\ntype = \"amqp\"\nurl_file = {amqp_url}\n"
    );
    stage(dir.path(), &pki, "");
    std::fs::remove_file(dir.path().join("connectors/it.toml")).unwrap();
    for (name, text) in [
        ("to-kafka", &sink),
        ("from-kafka", &source),
        ("to-amqp", &to_amqp),
    ] {
        std::fs::write(dir.path().join(format!("connectors/{name}.toml")), text).unwrap();
    }
    let bridge = start(dir.path()).await;
    expect_client_hello("Kafka sink (sasl_ssl)", &mut kafka_sink_rx).await;
    expect_client_hello("Kafka source (ssl)", &mut kafka_source_rx).await;
    expect_client_hello("AMQP sink (amqps)", &mut amqp_rx).await;
    // `check` shows the SASL password by reference only.
    let (config, _) = entity_bridge::config::load(&[dir.path().to_path_buf()]).unwrap();
    let printed = toml::to_string(&config.masked()).unwrap();
    assert!(!printed.contains("s3cret-kafka"), "{printed}");
    assert!(printed.contains("kafka.password"), "{printed}");
    bridge.shutdown_token().cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), bridge.shutdown()).await;
}

/// Reads until the peer closes (EOF or reset); `None` when it is still open after `within`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + within).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// The header timeout holds on the TLS listener too: a client that never starts the handshake,
/// and one that completes it but sends half a request, are both closed.
#[tokio::test(flavor = "multi_thread")]
async fn tls_connections_that_stall_are_closed_at_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    stage(dir.path(), &pki, &embedded_connector(dir.path()));
    let toml = std::fs::read_to_string(dir.path().join("bridge.toml")).unwrap();
    std::fs::write(
        dir.path().join("bridge.toml"),
        format!("{toml}[http.connections]\nheader_read_timeout_ms = 300\n"),
    )
    .unwrap();
    let bridge = start(dir.path()).await;
    let addr = bridge.webhook_addr;

    let mut no_handshake = TcpStream::connect(addr).await.unwrap();
    let took = closed_within(&mut no_handshake, Duration::from_secs(5))
        .await
        .expect("a connection that never starts TLS is closed");
    assert!(took >= Duration::from_millis(250), "{took:?}");

    let mut half = tls_connect(&pki, addr, &[b"http/1.1"]).await;
    half.write_all(b"POST /webhooks/it HTT").await.unwrap();
    half.flush().await.unwrap();
    closed_within(&mut half, Duration::from_secs(5))
        .await
        .expect("half a request over TLS is closed at the header timeout");
    assert!(bridge.shutdown().await);
}

/// h2c (HTTP/2 without TLS, by preface) is served by the same loop: a client that sends the
/// preface and then nothing is closed, and the connection cap counts it.
#[tokio::test(flavor = "multi_thread")]
async fn h2c_connections_that_stall_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    std::fs::write(
        dir.path().join("bridge.toml"),
        format!(
            "shutdown_timeout_ms = 10000\ndata_dir = {:?}\n[http]\nlisten_addr = \"127.0.0.1:0\"\n\
             [http.connections]\nheader_read_timeout_ms = 300\nkeep_alive_idle_timeout_ms = 600\n\
             http2_keep_alive_interval_ms = 200\nhttp2_keep_alive_timeout_ms = 200\n\
             [admin]\nlisten_addr = \"127.0.0.1:0\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("connectors")).unwrap();
    std::fs::write(
        dir.path().join("connectors/it.toml"),
        embedded_connector(dir.path()),
    )
    .unwrap();
    let bridge = start(dir.path()).await;
    let mut stalled = TcpStream::connect(bridge.webhook_addr).await.unwrap();
    stalled
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // The bridge speaks HTTP/2 at once: its first frame is SETTINGS (frame type 4).
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), stalled.read_exact(&mut frame))
        .await
        .expect("the server's SETTINGS frame")
        .unwrap();
    assert_eq!(frame[3], 4, "first frame type: {frame:?}");
    // The client never sends its SETTINGS nor answers PINGs: the bridge gives up on it.
    let took = closed_within(&mut stalled, Duration::from_secs(10))
        .await
        .expect("a stalled h2c connection is closed");
    assert!(took >= Duration::from_millis(150), "{took:?}");
    assert!(bridge.shutdown().await);
}
