//! Configuration of the embedded log: the sink that appends to it (and owns its retention and
//! replay resource) and the source that reads it with a named cursor.
//!
//! A log is identified by its file. Relative files live under the top-level `data_dir`. Each
//! connector writes its own log by default (`<connector>.db`), so a producer's token replays
//! only what its own connector wrote. Two connectors write one log only when both say so
//! (`share_log = true`, the same `file`) and agree on its settings (checked across connectors
//! by `config::logs`): one
//! retention policy and one replay route per log, open to the tokens of every writer.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::secret::SecretRef;

/// Appends every event to a durable local log (SQLite, fsync on commit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedSinkConfig {
    /// The log file. A relative path is under `data_dir`. Default: `<connector>.db`, one log per
    /// connector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Let other connectors write this log too (each of them must set it, with the same
    /// `file`). Their webhook tokens can then all replay every event in it.
    #[serde(default)]
    pub share_log: bool,
    /// Delete events older than this many hours (0 = no age limit).
    #[serde(default = "default_retention_max_age_hours")]
    pub retention_max_age_hours: u64,
    /// Also delete the oldest events while the stored event bytes exceed this (0 = no limit).
    #[serde(default)]
    pub retention_max_bytes: u64,
    /// How often retention runs, in seconds.
    #[serde(default = "default_retention_interval_seconds")]
    pub retention_interval_seconds: u64,
    /// Hard cap on the database file size in bytes: beyond it pushes are answered 503 until
    /// retention frees space (0 = no cap; the disk is the cap).
    #[serde(default)]
    pub max_file_bytes: u64,
    /// Serve the RESO EntityEvent replay resource (`GET <replay_path>`) for this log on the
    /// webhook listener.
    #[serde(default = "default_true")]
    pub replay: bool,
    /// URL path of the replay resource.
    #[serde(default = "default_replay_path")]
    pub replay_path: String,
    /// Largest page the replay resource returns, in events; longer results continue via
    /// `@odata.nextLink`.
    #[serde(default = "default_replay_max_page_size")]
    pub replay_max_page_size: usize,
    /// Largest page in bytes of stored events: a page ends early (with a `@odata.nextLink`)
    /// once it holds this much; a single larger event is still served alone.
    #[serde(default = "default_replay_max_page_bytes")]
    pub replay_max_page_bytes: usize,
    /// Replay requests served at once for this log; more get 429 with `Retry-After`.
    #[serde(default = "default_replay_max_concurrent_requests")]
    pub replay_max_concurrent_requests: usize,
    /// Largest `$skip` accepted (skipping is a scan); page with `$skiptoken` or
    /// `$filter=EntityEventSequence gt N` instead. Beyond it: 400 naming `$skip`.
    #[serde(default = "default_replay_max_skip")]
    pub replay_max_skip: u64,
    /// Bound on the database work of one replay request (`$count` over a large log, a long
    /// scan): past it the request is interrupted and answered 503 with `Retry-After`.
    #[serde(default = "default_replay_query_timeout_ms")]
    pub replay_query_timeout_ms: u64,
    /// Index the events' `ResourceRecordKey`, so `$filter=ResourceRecordKey eq '…'` reads the
    /// index instead of scanning the log. Costs appends about a third of their throughput;
    /// without it that filter is refused (400) rather than scanning.
    #[serde(default = "default_true")]
    pub replay_index_record_keys: bool,
    /// Extra bearer tokens accepted by the replay resource, by reference (consumers that are
    /// not producers). The tokens of webhook connectors writing to this log are accepted too.
    #[serde(default)]
    pub replay_tokens: Vec<SecretRef>,
    /// Keep the latest record (`Data`) of each key of these resources and serve it RESO-style
    /// next to the replay resource (`[sink.records]`: `GET /Property('235021')`). Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<super::records::RecordsConfig>,
}

impl Default for EmbeddedSinkConfig {
    fn default() -> Self {
        EmbeddedSinkConfig {
            file: None,
            share_log: false,
            retention_max_age_hours: default_retention_max_age_hours(),
            retention_max_bytes: 0,
            retention_interval_seconds: default_retention_interval_seconds(),
            max_file_bytes: 0,
            replay: true,
            replay_path: default_replay_path(),
            replay_max_page_size: default_replay_max_page_size(),
            replay_max_page_bytes: default_replay_max_page_bytes(),
            replay_max_concurrent_requests: default_replay_max_concurrent_requests(),
            replay_max_skip: default_replay_max_skip(),
            replay_query_timeout_ms: default_replay_query_timeout_ms(),
            replay_tokens: Vec::new(),
            records: None,
            replay_index_record_keys: true,
        }
    }
}

/// Reads a log from a named cursor, advancing it only after the sink confirmed a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedSourceConfig {
    /// The log file to read (a relative path is under `data_dir`), e.g. `quickstart.db` for the
    /// log the connector `quickstart` writes by default.
    pub file: PathBuf,
    /// Name of the cursor stored in the log. Default: the connector name.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Where a cursor that does not exist yet starts: `earliest` (every retained event) or
    /// `latest` (only events appended from now on).
    #[serde(default)]
    pub start: StartPosition,
    /// Most events handed to the sink in one batch.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How often to look for new events when caught up, in milliseconds. Writers in the same
    /// process wake the reader at once; this bounds the delay for writers in other processes.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

impl Default for EmbeddedSourceConfig {
    fn default() -> Self {
        EmbeddedSourceConfig {
            file: PathBuf::new(),
            cursor: None,
            start: StartPosition::default(),
            max_batch: default_max_batch(),
            poll_interval_ms: default_poll_interval_ms(),
        }
    }
}

/// Where a new cursor starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartPosition {
    /// The oldest retained event.
    #[default]
    Earliest,
    /// After the newest event at the time the cursor is created.
    Latest,
}

/// The log file of `connector` when its sink names none.
pub fn default_file(connector: &str) -> PathBuf {
    PathBuf::from(format!("{connector}.db"))
}
fn default_retention_max_age_hours() -> u64 {
    168
}
fn default_retention_interval_seconds() -> u64 {
    60
}
fn default_true() -> bool {
    true
}
fn default_replay_path() -> String {
    "/EntityEvent".into()
}
fn default_replay_max_page_size() -> usize {
    1000
}
fn default_replay_max_page_bytes() -> usize {
    4 << 20
}
fn default_replay_max_concurrent_requests() -> usize {
    8
}
fn default_replay_max_skip() -> u64 {
    100_000
}
fn default_replay_query_timeout_ms() -> u64 {
    5_000
}
fn default_max_batch() -> usize {
    500
}
fn default_poll_interval_ms() -> u64 {
    1000
}

/// Largest `retention_max_age_hours` (100 years).
pub const MAX_RETENTION_HOURS: u64 = 876_000;

/// Smallest accepted `max_file_bytes` (the schema alone takes a few pages).
pub const MIN_FILE_BYTES: u64 = 64 * 1024;

impl EmbeddedSinkConfig {
    /// Semantic checks; `Err((key, detail))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, d: &str| Err((k.to_owned(), d.to_owned()));
        if let Some(records) = &self.records {
            records.validate()?;
            if !self.replay {
                return err(
                    "records",
                    "serves records next to the replay resource: needs replay = true",
                );
            }
            if self.max_file_bytes > 0 && records.max_bytes == 0 {
                return err(
                    "records.max_bytes",
                    "is required with max_file_bytes: records are kept until deleted, so \
                     without a bound they would fill the file and every push would get 503",
                );
            }
            if self.max_file_bytes > 0 && records.max_bytes >= self.max_file_bytes {
                return err(
                    "records.max_bytes",
                    "must be less than max_file_bytes (the events need room too)",
                );
            }
            if records.max_age_hours > MAX_RETENTION_HOURS {
                return err(
                    "records.max_age_hours",
                    "must be at most 876000 (100 years); 0 keeps records until deleted",
                );
            }
        }
        if self.file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            return err("file", "must not be empty");
        }
        // Bounded so the age in milliseconds always fits (a huge value once wrapped negative
        // and deleted the whole log).
        if self.retention_max_age_hours > MAX_RETENTION_HOURS {
            return err(
                "retention_max_age_hours",
                "must be at most 876000 (100 years); 0 keeps events forever",
            );
        }
        if !(1..=86_400).contains(&self.retention_interval_seconds) {
            return err("retention_interval_seconds", "must be between 1 and 86400");
        }
        if self.max_file_bytes != 0 && self.max_file_bytes < MIN_FILE_BYTES {
            return err("max_file_bytes", "must be 0 (no cap) or at least 65536");
        }
        if !crate::http::valid_route_path(&self.replay_path) {
            return err("replay_path", crate::http::ROUTE_PATH_RULE);
        }
        if !(1..=10_000).contains(&self.replay_max_page_size) {
            return err("replay_max_page_size", "must be between 1 and 10000");
        }
        if !(1024..=(256 << 20)).contains(&self.replay_max_page_bytes) {
            return err(
                "replay_max_page_bytes",
                "must be between 1024 and 268435456",
            );
        }
        if !(1..=1024).contains(&self.replay_max_concurrent_requests) {
            return err(
                "replay_max_concurrent_requests",
                "must be between 1 and 1024",
            );
        }
        if !(100..=600_000).contains(&self.replay_query_timeout_ms) {
            return err("replay_query_timeout_ms", "must be between 100 and 600000");
        }
        Ok(())
    }

    /// The log file of `connector`, resolved against `data_dir`.
    pub fn path(&self, data_dir: &Path, connector: &str) -> PathBuf {
        data_dir.join(self.file.clone().unwrap_or_else(|| default_file(connector)))
    }

    /// The resolved log file (after `app::prepare`).
    pub fn resolved_file(&self) -> PathBuf {
        self.file.clone().unwrap_or_default()
    }
}

impl EmbeddedSourceConfig {
    /// Semantic checks; `Err((key, detail))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, d: &str| Err((k.to_owned(), d.to_owned()));
        if self.file.as_os_str().is_empty() {
            return err("file", "is required: the log to read, e.g. `quickstart.db`");
        }
        if let Some(cursor) = &self.cursor {
            if cursor.is_empty() || cursor.len() > 255 {
                return err("cursor", "must be 1 to 255 bytes");
            }
        }
        if !(1..=10_000).contains(&self.max_batch) {
            return err("max_batch", "must be between 1 and 10000");
        }
        if self.poll_interval_ms < 10 {
            return err("poll_interval_ms", "must be at least 10");
        }
        Ok(())
    }

    /// The log file, resolved against `data_dir`.
    pub fn path(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(&self.file)
    }

    /// The cursor name: configured, else the connector name.
    pub fn cursor_name(&self, connector: &str) -> String {
        self.cursor.clone().unwrap_or_else(|| connector.to_owned())
    }
}
