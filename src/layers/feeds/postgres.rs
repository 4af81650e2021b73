//! The shared dedupe store: one PostgreSQL table that every replica of a connector uses, so a
//! duplicate that lands on another replica behind the load balancer is still recognised.
//!
//! One row per (connector, feed, sequence): `state` 0 while a replica publishes it (a claim
//! held by `owner`, a random id per process), 1 once delivered, with the event's identity.
//! A claim older than `claim_lease_ms` (its replica crashed mid-send) may be taken over, and a
//! delivered row older than `window_age_hours` counts as forgotten. Every statement is bounded
//! (`statement_timeout_ms`, plus a client-side timeout for a database that stopped answering),
//! and the pool bounds connections (`pool_size`). Pruning works as in the embedded store.
//!
//! Connections use TLS with full verification unless every host is loopback or the operator
//! chose `tls = "disable"` ([`super::postgres_tls`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::OnceCell;
use tokio_postgres::NoTls;

pub use super::postgres_config::PostgresStoreConfig;
use super::postgres_tls::{self, Transport};
use super::store::{
    count_marks, prune_every, Claimed, Identity, SeenStore, SeenStoreError, Window, PRUNE_INTERVAL,
};

/// The PostgreSQL store of one connector.
pub struct PostgresSeen {
    pool: Pool,
    connector: String,
    table: String,
    owner: i64,
    window: Window,
    lease: Duration,
    timeout: Duration,
    schema: OnceCell<()>,
    prune: Mutex<PruneState>,
}

struct PruneState {
    marks: HashMap<String, u64>,
    last_age_prune: Instant,
}

/// The error with its causes (`…: error performing TLS handshake: invalid peer certificate:
/// UnknownIssuer`): the pool's and the client's top-level messages alone do not say why.
fn store_error(e: impl std::error::Error) -> SeenStoreError {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    SeenStoreError::Store(text)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl PostgresSeen {
    /// Builds the pool (no connection yet: the table is created on first use, so a database
    /// that is down at start-up delays suppression, not the bridge).
    pub fn open(
        config: &PostgresStoreConfig,
        connector: &str,
        window: Window,
    ) -> Result<PostgresSeen, SeenStoreError> {
        let open_error = |reason: String| SeenStoreError::Open {
            path: format!("postgres table {}", config.table).into(),
            reason,
        };
        let url = config
            .url
            .resolve()
            .map_err(|e| open_error(e.to_string()))?;
        let mut pg: tokio_postgres::Config = url
            .expose()
            .parse()
            // The parser's message may quote the string; say only that it is malformed.
            .map_err(|_| {
                open_error(
                    "the connection string is not a valid PostgreSQL URL or key=value string"
                        .into(),
                )
            })?;
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        pg.connect_timeout(connect_timeout);
        pg.application_name("entity-bridge");
        pg.options(format!(
            "-c statement_timeout={}",
            config.statement_timeout_ms
        ));
        let transport = postgres_tls::configure(config.tls, config.ca_file.as_deref(), &mut pg)
            .map_err(|e| open_error(e.to_string()))?;
        let mode = postgres_tls::effective(config.tls, config.ca_file.is_some(), &pg);
        if postgres_tls::plain_beyond_loopback(mode, &pg) {
            tracing::warn!(
                connector,
                table = %config.table,
                "the dedupe database is reached over plain TCP (tls = \"disable\"): keep it on \
                 a network you trust"
            );
        }
        // A connection given back mid-statement (a client-side timeout) or inside a failed
        // transaction fails the check and is replaced, never reused half-done.
        let recycling = || ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        };
        let manager = match transport {
            Transport::Plain => Manager::from_config(pg, NoTls, recycling()),
            Transport::Tls(client) => Manager::from_config(
                pg,
                tokio_postgres_rustls::MakeRustlsConnect::new(*client),
                recycling(),
            ),
        };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(connect_timeout))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .build()
            .map_err(|e| open_error(e.to_string()))?;
        let mut owner = [0u8; 8];
        getrandom::fill(&mut owner).map_err(|e| open_error(e.to_string()))?;
        Ok(PostgresSeen {
            pool,
            connector: connector.to_owned(),
            table: config.table.clone(),
            owner: i64::from_le_bytes(owner),
            window,
            lease: Duration::from_millis(config.claim_lease_ms),
            timeout: connect_timeout + Duration::from_millis(config.statement_timeout_ms),
            schema: OnceCell::new(),
            prune: Mutex::new(PruneState {
                marks: HashMap::new(),
                last_age_prune: Instant::now(),
            }),
        })
    }

    /// A pooled connection with the table in place; the whole call is bounded by `timeout`.
    async fn run<T>(
        &self,
        work: impl AsyncFnOnce(&deadpool_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, SeenStoreError> {
        let attempt = async {
            let client = self.pool.get().await.map_err(store_error)?;
            self.schema
                .get_or_try_init(|| self.create_table(&client))
                .await?;
            work(&client).await.map_err(store_error)
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(SeenStoreError::Store(
                    "the dedupe database did not answer in time".into(),
                ))
            })
    }

    /// Creates the table and its index unless the table exists: a role that may only read and
    /// write an existing table (no CREATE right on the schema) works as well.
    async fn create_table(&self, client: &deadpool_postgres::Client) -> Result<(), SeenStoreError> {
        let t = &self.table;
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[t])
            .await
            .map_err(store_error)?
            .get(0);
        if exists {
            return Ok(());
        }
        let mut client = self.pool.get().await.map_err(store_error)?;
        let tx = client.transaction().await.map_err(store_error)?;
        // Replicas starting together would race on CREATE … IF NOT EXISTS: serialize them.
        let sql = format!(
            "SELECT pg_advisory_xact_lock(hashtext('entity_bridge_schema:{t}'));
             CREATE TABLE IF NOT EXISTS {t} (
                 connector TEXT NOT NULL,
                 feed TEXT NOT NULL,
                 sequence BIGINT NOT NULL,
                 identity BIGINT NOT NULL,
                 state SMALLINT NOT NULL,
                 owner BIGINT NOT NULL,
                 updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                 PRIMARY KEY (connector, feed, sequence)
             );
             CREATE INDEX IF NOT EXISTS {t}_by_age ON {t} (connector, updated_at);"
        );
        tx.batch_execute(&sql).await.map_err(store_error)?;
        // Dropped without commit (an error above), the transaction rolls back.
        tx.commit().await.map_err(store_error)
    }

    fn age_ms(&self) -> i64 {
        self.window.max_age.map_or(0, millis)
    }

    async fn prune(&self, feed: &str, marked: u64) -> Result<(), SeenStoreError> {
        let (count_due, age_due) = {
            let mut p = self.prune.lock().unwrap_or_else(|e| e.into_inner());
            let count_due =
                count_marks(&mut p.marks, feed, marked, prune_every(self.window.events));
            let age_due = p.last_age_prune.elapsed() >= PRUNE_INTERVAL;
            if age_due {
                p.last_age_prune = Instant::now();
            }
            (count_due, age_due)
        };
        let t = &self.table;
        if count_due {
            let skip = i64::try_from(self.window.events).unwrap_or(i64::MAX) - 1;
            let sql = format!(
                "DELETE FROM {t} WHERE connector = $1 AND feed = $2 AND state = 1 AND sequence < (
                     SELECT sequence FROM {t} WHERE connector = $1 AND feed = $2 AND state = 1
                     ORDER BY sequence DESC OFFSET $3 LIMIT 1)"
            );
            self.run(async |c| c.execute(&sql, &[&self.connector, &feed, &skip]).await)
                .await?;
        }
        if age_due {
            // Forgotten marks, and claims long past their lease (their replica is gone).
            let sql = format!(
                "DELETE FROM {t} WHERE connector = $1 AND (
                     (state = 1 AND $2::bigint > 0 AND updated_at < now() - $2::bigint * interval '1 millisecond')
                  OR (state = 0 AND updated_at < now() - $3::bigint * interval '1 millisecond'))"
            );
            let (age, lease) = (self.age_ms(), millis(self.lease));
            self.run(async |c| c.execute(&sql, &[&self.connector, &age, &lease]).await)
                .await?;
        }
        Ok(())
    }
}

/// `events` as the two array parameters, sorted by sequence with one entry per sequence (the
/// last one's identity): replicas then lock rows in the same order (no deadlock between two
/// claims), and no statement writes one row twice.
fn columns(events: &[(i64, Identity)]) -> (Vec<i64>, Vec<i64>) {
    let mut sorted: Vec<(i64, Identity)> = events.to_vec();
    sorted.reverse();
    sorted.sort_by_key(|(s, _)| *s); // stable: the last copy of a sequence comes first
    sorted.dedup_by_key(|(s, _)| *s);
    sorted.into_iter().unzip()
}

#[async_trait]
impl SeenStore for PostgresSeen {
    async fn claim(
        &self,
        feed: &str,
        events: &[(i64, Identity)],
    ) -> Result<Claimed, SeenStoreError> {
        let t = &self.table;
        let (sequences, identities) = columns(events);
        let (lease, age) = (millis(self.lease), self.age_ms());
        // Claim what nobody holds; take over expired claims and forgotten marks.
        let claim = format!(
            "INSERT INTO {t} AS s (connector, feed, sequence, identity, state, owner, updated_at)
             SELECT $1, $2, e.sequence, e.identity, 0, $5, now()
             FROM unnest($3::bigint[], $4::bigint[]) AS e(sequence, identity)
             ON CONFLICT (connector, feed, sequence) DO UPDATE
             SET identity = EXCLUDED.identity, state = 0, owner = EXCLUDED.owner, updated_at = now()
             WHERE (s.state = 0 AND s.updated_at < now() - $6::bigint * interval '1 millisecond')
                OR (s.state = 1 AND $7::bigint > 0 AND s.updated_at < now() - $7::bigint * interval '1 millisecond')"
        );
        let read = format!(
            "SELECT sequence, identity, state, owner FROM {t}
             WHERE connector = $1 AND feed = $2 AND sequence = ANY($3)"
        );
        let rows = self
            .run(async |c| {
                c.execute(
                    &claim,
                    &[
                        &self.connector,
                        &feed,
                        &sequences,
                        &identities,
                        &self.owner,
                        &lease,
                        &age,
                    ],
                )
                .await?;
                c.query(&read, &[&self.connector, &feed, &sequences]).await
            })
            .await?;
        let mut claimed = Claimed::default();
        let mut mine = std::collections::HashSet::new();
        for row in rows {
            let (sequence, identity, state, owner): (i64, i64, i16, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            match (state, owner == self.owner) {
                (1, _) => {
                    claimed.delivered.insert(sequence, identity);
                }
                (_, true) => {
                    mine.insert(sequence);
                }
                (_, false) => claimed.busy.push(sequence),
            }
        }
        // A row that vanished between the two statements was released by its publisher:
        // not ours, not delivered — look again.
        for s in &sequences {
            if !mine.contains(s) && !claimed.delivered.contains_key(s) && !claimed.busy.contains(s)
            {
                claimed.busy.push(*s);
            }
        }
        Ok(claimed)
    }

    async fn mark(&self, feed: &str, events: &[(i64, Identity)]) -> Result<(), SeenStoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let t = &self.table;
        let (sequences, identities) = columns(events);
        let sql = format!(
            "INSERT INTO {t} (connector, feed, sequence, identity, state, owner, updated_at)
             SELECT $1, $2, e.sequence, e.identity, 1, $5, now()
             FROM unnest($3::bigint[], $4::bigint[]) AS e(sequence, identity)
             ON CONFLICT (connector, feed, sequence) DO UPDATE
             SET identity = EXCLUDED.identity, state = 1, owner = EXCLUDED.owner, updated_at = now()"
        );
        self.run(async |c| {
            c.execute(
                &sql,
                &[&self.connector, &feed, &sequences, &identities, &self.owner],
            )
            .await
        })
        .await?;
        if let Err(e) = self.prune(feed, events.len() as u64).await {
            // The marks are committed; pruning is tried again at the next interval.
            tracing::warn!(connector = %self.connector, error = %e, "dedupe store prune failed");
        }
        Ok(())
    }

    async fn release(&self, feed: &str, sequences: &[i64]) -> Result<(), SeenStoreError> {
        if sequences.is_empty() {
            return Ok(());
        }
        let t = &self.table;
        let sql = format!(
            "DELETE FROM {t} WHERE connector = $1 AND feed = $2 AND sequence = ANY($3)
             AND owner = $4 AND state = 0"
        );
        let mut sequences = sequences.to_vec();
        sequences.sort_unstable();
        self.run(async |c| {
            c.execute(&sql, &[&self.connector, &feed, &sequences, &self.owner])
                .await
        })
        .await
        .map(|_| ())
    }

    async fn high_water_marks(&self) -> Result<Vec<(String, i64)>, SeenStoreError> {
        let t = &self.table;
        // Feeds still inside the window, the most recently marked first (they get the
        // monitor's slots when the store holds more feeds than `max_tracked_feeds`).
        let sql = format!(
            "SELECT feed, MAX(sequence) FROM {t}
             WHERE connector = $1 AND state = 1
               AND ($2::bigint = 0 OR updated_at >= now() - $2::bigint * interval '1 millisecond')
             GROUP BY feed ORDER BY MAX(updated_at) DESC"
        );
        let age = self.age_ms();
        let rows = self
            .run(async |c| c.query(&sql, &[&self.connector, &age]).await)
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
