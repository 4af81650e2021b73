//! TLS between the bridge and the shared dedupe database. A managed or remote PostgreSQL is
//! reached over networks the operator does not own, and the connection carries the database
//! password (or its SCRAM exchange) and every delivered sequence, so TLS with full
//! verification (the server's certificate chain and its host name) is the default for every
//! host that is not loopback. rustls with the *ring* provider, like the listeners.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use serde::{Deserialize, Serialize};
use tokio_postgres::config::{Host, SslMode};

/// `[dedupe.store] tls`: how the bridge talks to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostgresTls {
    /// TLS required; the server's certificate must chain to `ca_file` (or to the system's
    /// trusted roots) and name the host of the connection string (like libpq's
    /// `sslmode=verify-full`).
    VerifyFull,
    /// Plain TCP: only for a database on loopback or a private network the operator trusts.
    Disable,
}

/// What the connection uses, decided from the configuration and the connection string.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP (or a Unix socket).
    Plain,
    /// TLS with this client configuration.
    Tls(Box<ClientConfig>),
}

/// Why the TLS settings cannot be used (start-up errors; never quotes the connection string).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlsSetupError {
    /// `tls = "verify_full"` with a Unix-socket host (PostgreSQL has no TLS there).
    #[error("tls = \"verify_full\" needs TCP hosts; the connection string names a Unix socket")]
    SocketHost,
    /// The connection string's `sslmode` says otherwise than `tls`.
    #[error(
        "the connection string's sslmode={url} contradicts tls = \"{chosen}\"; remove sslmode \
         and set [dedupe.store] tls"
    )]
    SslModeConflict {
        /// The connection string's mode.
        url: &'static str,
        /// The mode `tls` chose.
        chosen: &'static str,
    },
    /// `ca_file` could not be read or holds no certificate.
    #[error("ca_file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No trusted root at all (no `ca_file` and none in the system's store).
    #[error("no trusted roots: the system has none readable; set [dedupe.store] ca_file")]
    NoRoots,
}

fn is_loopback(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }
}

/// Whether every address the client may dial is on this machine: each host is loopback or a
/// Unix socket, and so is each `hostaddr` (which the client dials instead of the host's name).
fn all_loopback(pg: &tokio_postgres::Config) -> bool {
    let (hosts, addrs) = (pg.get_hosts(), pg.get_hostaddrs());
    (!hosts.is_empty() || !addrs.is_empty())
        && hosts.iter().all(is_loopback)
        && addrs.iter().all(|ip| ip.is_loopback())
}

/// The mode in force: `tls` when set, else `verify_full` when a `ca_file` is given or any
/// address is beyond loopback, else `disable`.
pub fn effective(
    tls: Option<PostgresTls>,
    ca_file: bool,
    pg: &tokio_postgres::Config,
) -> PostgresTls {
    match tls {
        Some(mode) => mode,
        None if !ca_file && all_loopback(pg) => PostgresTls::Disable,
        None => PostgresTls::VerifyFull,
    }
}

/// Whether a plain connection leaves the machine (worth a warning at start-up).
pub fn plain_beyond_loopback(mode: PostgresTls, pg: &tokio_postgres::Config) -> bool {
    mode == PostgresTls::Disable && !all_loopback(pg)
}

/// Applies the mode to `pg` (its `sslmode`) and builds the transport.
pub fn configure(
    tls: Option<PostgresTls>,
    ca_file: Option<&Path>,
    pg: &mut tokio_postgres::Config,
) -> Result<Transport, TlsSetupError> {
    let mode = effective(tls, ca_file.is_some(), pg);
    let (chosen, wanted) = match mode {
        PostgresTls::VerifyFull => ("verify_full", SslMode::Require),
        PostgresTls::Disable => ("disable", SslMode::Disable),
    };
    // `prefer` is the parser's default as well as a possible explicit choice: it never
    // contradicts. `require` against `disable` (or the reverse) does.
    let url = match pg.get_ssl_mode() {
        SslMode::Require => Some("require"),
        SslMode::Disable => Some("disable"),
        _ => None,
    };
    if let Some(url) = url {
        if pg.get_ssl_mode() != wanted {
            return Err(TlsSetupError::SslModeConflict { url, chosen });
        }
    }
    pg.ssl_mode(wanted);
    if mode == PostgresTls::Disable {
        return Ok(Transport::Plain);
    }
    if pg.get_hosts().iter().any(|h| matches!(h, Host::Unix(_))) {
        return Err(TlsSetupError::SocketHost);
    }
    let roots = match ca_file {
        Some(path) => roots_from_file(path)?,
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("invariant: the ring provider supports rustls's default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Transport::Tls(Box::new(config)))
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let error = |reason: String| TlsSetupError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(error("holds no PEM certificate".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| error(format!("unusable certificate: {e}")))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsSetupError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    // Unreadable or unparsable entries of the system store are skipped, as browsers do.
    let (added, _skipped) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsSetupError::NoRoots);
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(url: &str) -> tokio_postgres::Config {
        url.parse().unwrap()
    }

    #[test]
    fn loopback_hosts_default_to_plain_and_others_to_verified_tls() {
        let mode = |url: &str| effective(None, false, &pg(url));
        assert_eq!(mode("postgres://u@127.0.0.1:5432/db"), PostgresTls::Disable);
        assert_eq!(mode("host=localhost user=u"), PostgresTls::Disable);
        assert_eq!(mode("postgres://u@[::1]/db"), PostgresTls::Disable);
        assert_eq!(
            mode("host=/var/run/postgresql user=u"),
            PostgresTls::Disable
        );
        assert_eq!(
            mode("postgres://u@db.internal:5432/db"),
            PostgresTls::VerifyFull
        );
        assert_eq!(
            mode("host=127.0.0.1,db.internal user=u"),
            PostgresTls::VerifyFull
        );
        // The client dials hostaddr, whatever the host's name says.
        assert_eq!(
            mode("host=localhost hostaddr=10.0.0.5 user=u"),
            PostgresTls::VerifyFull
        );
        assert_eq!(mode("hostaddr=10.0.0.5 user=u"), PostgresTls::VerifyFull);
        assert_eq!(mode("hostaddr=127.0.0.1 user=u"), PostgresTls::Disable);
        // A CA file says TLS is wanted, loopback or not (a tunnel, a sidecar).
        let local = pg("postgres://u@127.0.0.1:5432/db");
        assert_eq!(effective(None, true, &local), PostgresTls::VerifyFull);
        let remote = pg("postgres://u@db.internal:5432/db");
        assert_eq!(
            effective(Some(PostgresTls::Disable), false, &remote),
            PostgresTls::Disable
        );
        assert!(plain_beyond_loopback(PostgresTls::Disable, &remote));
        assert!(plain_beyond_loopback(
            PostgresTls::Disable,
            &pg("hostaddr=10.0.0.5 user=u")
        ));
        assert!(!plain_beyond_loopback(PostgresTls::Disable, &local));
    }

    #[test]
    fn sslmode_in_the_connection_string_must_agree() {
        let mut remote = pg("postgres://u@db.internal/db?sslmode=disable");
        assert_eq!(
            configure(None, None, &mut remote).unwrap_err(),
            TlsSetupError::SslModeConflict {
                url: "disable",
                chosen: "verify_full"
            }
        );
        let mut local = pg("postgres://u@127.0.0.1/db?sslmode=require");
        assert!(matches!(
            configure(None, None, &mut local),
            Err(TlsSetupError::SslModeConflict { .. })
        ));
        let mut agreed = pg("postgres://u@127.0.0.1/db?sslmode=disable");
        assert!(matches!(
            configure(None, None, &mut agreed),
            Ok(Transport::Plain)
        ));
        assert_eq!(agreed.get_ssl_mode(), SslMode::Disable);
    }

    #[test]
    fn verified_tls_needs_tcp_hosts_and_a_readable_ca_file() {
        let mut socket = pg("host=/var/run/postgresql user=u");
        assert_eq!(
            configure(Some(PostgresTls::VerifyFull), None, &mut socket).unwrap_err(),
            TlsSetupError::SocketHost
        );
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let mut remote = pg("postgres://u@db.internal/db");
        let err = configure(None, Some(&missing), &mut remote).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let err = configure(None, Some(&empty), &mut remote).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }
}
