//! The `[dedupe.store] type = "postgres"` table: where the shared store lives, how the bridge
//! reaches it (pool, timeouts, TLS) and how long a replica's claim holds.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::postgres_tls::PostgresTls;
use crate::secret::SecretRef;

/// `[dedupe.store] type = "postgres"`: a table shared by every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresStoreConfig {
    /// The connection string, by reference (`{ env = "…" }` / `{ file = "…" }`), e.g.
    /// `postgres://bridge:secret@db:5432/bridge` or `host=db user=bridge dbname=bridge`. It
    /// usually holds a password, so it is never written inline.
    pub url: SecretRef,
    /// The table (created with its index when missing). Letters, digits and `_`.
    #[serde(default = "default_table")]
    pub table: String,
    /// Connections in this process's pool (each send uses one at a time).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Time to open a connection (and to wait for a free one in the pool).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time limit of every statement (server side, and the client gives up after it too).
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// How long a replica's claim on sequences it is publishing holds; after it, another
    /// replica may take them over (the first one crashed). Keep it above the sink's longest
    /// send (e.g. Kafka `delivery_timeout_ms`).
    #[serde(default = "default_claim_lease_ms")]
    pub claim_lease_ms: u64,
    /// TLS to the database: `"verify_full"` (TLS required, the certificate checked against
    /// `ca_file` or the system's trusted roots, and the host name) or `"disable"` (plain TCP,
    /// for a private network the operator trusts). Absent: `"verify_full"`, except when every
    /// host (and `hostaddr`) of the connection string is loopback (`localhost`, `127.0.0.0/8`,
    /// `::1`) or a Unix socket and no `ca_file` is given. An `sslmode` in the connection
    /// string must agree.
    #[serde(default)]
    pub tls: Option<PostgresTls>,
    /// PEM file of the certificate authorities the database's certificate chains to (a
    /// private CA, a cloud provider's bundle). Absent: the system's trusted roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_table() -> String {
    "entity_bridge_seen".into()
}
fn default_pool_size() -> usize {
    8
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_statement_timeout_ms() -> u64 {
    5_000
}
fn default_claim_lease_ms() -> u64 {
    120_000
}

impl PostgresStoreConfig {
    /// Semantic checks; `Err((key, detail))`, the key relative to `[dedupe.store]`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let valid_table = !self.table.is_empty()
            && self.table.len() <= 48
            && (self.table.bytes())
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !self.table.as_bytes()[0].is_ascii_digit();
        if !valid_table {
            return Err(("table".into(), "must match [a-z_][a-z0-9_]{0,47}".into()));
        }
        if !(1..=256).contains(&self.pool_size) {
            return Err(("pool_size".into(), "must be between 1 and 256".into()));
        }
        for (key, ms) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("statement_timeout_ms", self.statement_timeout_ms),
            ("claim_lease_ms", self.claim_lease_ms),
        ] {
            if !(1..=crate::http::MAX_TIMEOUT_MS).contains(&ms) {
                return Err((
                    key.into(),
                    "must be between 1 and 86400000 (one day)".into(),
                ));
            }
        }
        if self.ca_file.is_some() && self.tls == Some(PostgresTls::Disable) {
            return Err((
                "ca_file".into(),
                "is set while tls = \"disable\"; remove one of them".into(),
            ));
        }
        Ok(())
    }
}
