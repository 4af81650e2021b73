//! A poll feed's checkpoint: the last `EntityEventSequence` the sink confirmed, kept in
//! `data_dir/poll/<connector>.checkpoint.json` so that a restart resumes after it.
//!
//! Written the crash-safe way: a temporary file beside it is written and fsynced, renamed over
//! the old one, and the directory fsynced, so after a crash the file holds either the old or the
//! new checkpoint, never half of one. The checkpoint only moves forward after the sink said
//! `Ok` (delivery contract, rule 2): a crash in between redelivers a page, never skips one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why the checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading, writing or syncing the file failed.
    #[error("checkpoint `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a checkpoint (edited by hand, or another program's file).
    #[error("checkpoint `{path}` is not a checkpoint file: {detail}; fix or delete it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    /// The last sequence delivered.
    sequence: i64,
    /// The URL polled when it was written (shown to operators; a changed URL is logged).
    url: String,
    /// Unix time of the write.
    updated_at_unix: u64,
}

/// One feed's checkpoint file.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    path: PathBuf,
    url: String,
}

/// The checkpoint file of `connector` under `data_dir`.
pub fn checkpoint_path(data_dir: &Path, connector: &str) -> PathBuf {
    data_dir
        .join("poll")
        .join(format!("{connector}.checkpoint.json"))
}

impl Checkpoint {
    /// The checkpoint at `path` of a feed polling `url`.
    pub fn new(path: PathBuf, url: &str) -> Checkpoint {
        Checkpoint {
            path,
            url: url.to_owned(),
        }
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> CheckpointError {
        CheckpointError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// The stored sequence; `None` for a feed that never delivered anything.
    pub async fn load(&self) -> Result<Option<i64>, CheckpointError> {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let stored: OnDisk =
            serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt {
                path: self.path.clone(),
                detail: e.to_string(),
            })?;
        if stored.sequence < 0 {
            return Err(CheckpointError::Corrupt {
                path: self.path.clone(),
                detail: "negative sequence".into(),
            });
        }
        if stored.url != self.url {
            tracing::warn!(checkpoint = %self.path.display(), "the checkpoint was written while polling another URL; resuming from it anyway (delete the file to start over)");
        }
        Ok(Some(stored.sequence))
    }

    /// Durably replaces the stored sequence.
    pub async fn store(&self, sequence: i64) -> Result<(), CheckpointError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.store_blocking(sequence))
            .await
            .map_err(|e| self.io(std::io::Error::other(e)))?
    }

    fn store_blocking(&self, sequence: i64) -> Result<(), CheckpointError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        let record = OnDisk {
            sequence,
            url: self.url.clone(),
            updated_at_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| self.io(e))?;
        serde_json::to_writer(&mut tmp, &record).map_err(|e| self.io(e.into()))?;
        tmp.write_all(b"\n").map_err(|e| self.io(e))?;
        tmp.as_file().sync_all().map_err(|e| self.io(e))?;
        tmp.persist(&self.path).map_err(|e| self.io(e.error))?;
        // The rename itself is durable only once the directory is.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_and_loads_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = checkpoint_path(dir.path(), "mls");
        let cp = Checkpoint::new(path.clone(), "https://x.example/EntityEvent");
        assert_eq!(cp.load().await.unwrap(), None);
        cp.store(41).await.unwrap();
        cp.store(42).await.unwrap();
        assert_eq!(cp.load().await.unwrap(), Some(42));
        // Only the checkpoint is left in the directory (no temporary files).
        let files: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(files.len(), 1);
        std::fs::write(&path, b"{\"sequence\":").unwrap();
        let e = cp.load().await.unwrap_err().to_string();
        assert!(e.contains("fix or delete it"), "{e}");
    }
}
