//! The shared dedupe store over TLS: a real PostgreSQL behind a TLS front that speaks
//! PostgreSQL's own TLS negotiation (`SSLRequest`, `S`, handshake) and refuses plain startups,
//! as a `hostssl`-only server does. The bridge's store works through it when it trusts the
//! front's CA, and refuses a certificate it cannot verify.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use entity_bridge::layers::feeds::{PostgresSeen, PostgresStoreConfig, SeenStore, Window};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use crate::dedupe_postgres::{postgres_url, Table};
use crate::tls::{pki, pki_for};

/// PostgreSQL's `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A TLS front for the test PostgreSQL on 127.0.0.1.
struct TlsFront {
    port: u16,
    /// TLS sessions that completed their handshake.
    handshakes: Arc<AtomicUsize>,
    /// Startups refused because they did not ask for TLS.
    plain_refused: Arc<AtomicUsize>,
}

fn upstream() -> String {
    let url: tokio_postgres::Config = postgres_url().parse().unwrap();
    let host = match &url.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("the test PostgreSQL must be on TCP, not {other:?}"),
    };
    format!(
        "{host}:{}",
        url.get_ports().first().copied().unwrap_or(5432)
    )
}

impl TlsFront {
    async fn start(cert_pem: &str, key_pem: &str) -> TlsFront {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let plain_refused = Arc::new(AtomicUsize::new(0));
        let (done, refused) = (handshakes.clone(), plain_refused.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, done, refused) = (acceptor.clone(), done.clone(), refused.clone());
                tokio::spawn(async move {
                    let mut first = [0u8; 8];
                    if client.read_exact(&mut first).await.is_err() {
                        return;
                    }
                    if first != SSL_REQUEST {
                        refused.fetch_add(1, Ordering::SeqCst);
                        return; // a hostssl-only server: no plain sessions
                    }
                    if client.write_all(b"S").await.is_err() {
                        return;
                    }
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    done.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut server) = TcpStream::connect(upstream()).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                });
            }
        });
        TlsFront {
            port,
            handshakes,
            plain_refused,
        }
    }

    /// The test's connection string with the front as its host (`host` names it: `localhost`
    /// or `127.0.0.1`; both are in the certificate).
    fn url(&self, host: &str) -> String {
        let url: tokio_postgres::Config = postgres_url().parse().unwrap();
        let user = url.get_user().unwrap_or("postgres").to_owned();
        let db = url.get_dbname().unwrap_or("test").to_owned();
        let password = url
            .get_password()
            .map(|p| format!(" password={}", String::from_utf8_lossy(p)))
            .unwrap_or_default();
        format!(
            "host={host} port={} user={user} dbname={db}{password}",
            self.port
        )
    }
}

fn store(table: &Table, url_file: &std::path::Path, extra: &str) -> Result<PostgresSeen, String> {
    let toml = format!(
        "url = {{ file = {:?} }}\ntable = \"{}\"\nconnect_timeout_ms = 3000\n{extra}",
        url_file.display().to_string(),
        table.name
    );
    let config: PostgresStoreConfig = toml::from_str(&toml).map_err(|e| e.to_string())?;
    config.validate().map_err(|(k, d)| format!("{k}: {d}"))?;
    let window = Window {
        events: 1_000,
        max_age: None,
    };
    PostgresSeen::open(&config, "it", window).map_err(|e| e.to_string())
}

/// The store settings that ask for verified TLS against the CA in `ca_file`.
fn verified_by(ca_file: &std::path::Path) -> String {
    format!(
        "tls = \"verify_full\"\nca_file = {:?}\n",
        ca_file.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shared_store_works_over_verified_tls_and_refuses_an_unknown_certificate() {
    let table = Table::new().await;
    let ours = pki();
    let front = TlsFront::start(&ours.cert_pem, &ours.key_pem).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &ours.ca_pem).unwrap();
    let url_file = dir.path().join("url");
    std::fs::write(&url_file, front.url("localhost")).unwrap();

    // `localhost` is loopback, so TLS is asked for explicitly.
    let trusted = store(&table, &url_file, &verified_by(&ca)).unwrap();
    let events: Vec<(i64, i64)> = (1..=5).map(|s| (s, 3)).collect();
    trusted.claim("IDX", &events).await.expect("claim over TLS");
    trusted.mark("IDX", &events).await.expect("mark over TLS");
    let seen = trusted.claim("IDX", &events).await.unwrap();
    assert_eq!(seen.delivered.len(), 5, "remembered through TLS: {seen:?}");
    assert!(front.handshakes.load(Ordering::SeqCst) >= 1);

    // The same front by IP address: the certificate names 127.0.0.1 too.
    std::fs::write(&url_file, front.url("127.0.0.1")).unwrap();
    let by_ip = store(&table, &url_file, &verified_by(&ca)).unwrap();
    assert_eq!(
        by_ip.high_water_marks().await.unwrap(),
        vec![("IDX".into(), 5)]
    );

    // Another CA: the handshake fails and nothing reaches the database.
    let stranger = pki();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, &stranger.ca_pem).unwrap();
    let before = front.handshakes.load(Ordering::SeqCst);
    let untrusted = store(&table, &url_file, &verified_by(&other_ca)).unwrap();
    let err = untrusted
        .claim("IDX", &events)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("invalid peer certificate"),
        "the refusal says why: {err}"
    );
    assert_eq!(front.handshakes.load(Ordering::SeqCst), before);

    // A certificate for another name, from a trusted CA: refused too.
    let elsewhere = pki_for(&["db.example.invalid"]);
    let named = TlsFront::start(&elsewhere.cert_pem, &elsewhere.key_pem).await;
    let named_ca = dir.path().join("named-ca.pem");
    std::fs::write(&named_ca, &elsewhere.ca_pem).unwrap();
    let named_url = dir.path().join("named-url");
    std::fs::write(&named_url, named.url("127.0.0.1")).unwrap();
    let mismatch = store(
        &table,
        &named_url,
        &format!("ca_file = {:?}\n", named_ca.display().to_string()),
    )
    .unwrap();
    let err = mismatch
        .claim("IDX", &events)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not valid for name"), "{err}");
    assert_eq!(named.handshakes.load(Ordering::SeqCst), 0);

    // Plain TCP to a TLS-only server is refused by the server, not silently downgraded.
    let plain = store(&table, &url_file, "tls = \"disable\"\n").unwrap();
    assert!(plain.claim("IDX", &events).await.is_err());
    assert!(front.plain_refused.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_contradicting_sslmode_or_a_ca_file_without_tls_is_refused_at_start() {
    let table = Table::new().await;
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("url");
    std::fs::write(&url_file, format!("{}?sslmode=require", postgres_url())).unwrap();
    let err = store(&table, &url_file, "").err().expect("refused");
    assert!(
        err.contains("sslmode=require") && err.contains("tls"),
        "{err}"
    );
    assert!(
        !err.contains("postgres://"),
        "the connection string is never quoted: {err}"
    );

    let err = store(
        &table,
        &url_file,
        "tls = \"disable\"\nca_file = \"ca.pem\"\n",
    )
    .err()
    .expect("refused");
    assert!(err.starts_with("ca_file"), "{err}");

    // The loopback default stays plain TCP: the plain test database keeps working.
    std::fs::write(&url_file, postgres_url()).unwrap();
    let local = store(&table, &url_file, "").unwrap();
    tokio::time::timeout(Duration::from_secs(10), local.claim("f", &[(1, 1)]))
        .await
        .unwrap()
        .unwrap();
}
