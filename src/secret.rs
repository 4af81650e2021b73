//! Secrets by reference.
//!
//! Config files never need to hold a secret: they name an environment variable or a file that
//! holds it ([`SecretRef`]). The resolved [`Secret`] masks itself in `Debug` and `Display`, so a
//! stray `{:?}` in a log line cannot leak a token.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a secret is read from. Exactly one of `env` / `file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretRef {
    /// Name of an environment variable holding the secret, e.g. `{ env = "MLS_TOKEN" }`.
    Env(String),
    /// Path of a file holding the secret (trailing newline stripped), e.g. a Docker/K8s secret.
    File(PathBuf),
}

/// Why a secret could not be read. Never contains the secret itself.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is unset or not UTF-8.
    #[error("environment variable `{0}` is not set")]
    MissingEnv(String),
    /// The file could not be read.
    #[error("cannot read secret file `{path}`: {source}")]
    File {
        /// The file that failed.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The secret resolved to an empty string.
    #[error("secret from {0} is empty")]
    Empty(String),
}

impl SecretRef {
    /// Reads the secret now.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let (value, origin) = match self {
            SecretRef::Env(name) => (
                std::env::var(name).map_err(|_| SecretError::MissingEnv(name.clone()))?,
                format!("env `{name}`"),
            ),
            SecretRef::File(path) => (
                std::fs::read_to_string(path).map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?,
                format!("file `{}`", path.display()),
            ),
        };
        let value = value.trim_end_matches(['\r', '\n']).to_owned();
        if value.is_empty() {
            return Err(SecretError::Empty(origin));
        }
        Ok(Secret(value))
    }
}

/// A resolved secret. Prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value known to be secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; call only where it is handed to a peer.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_secret_is_trimmed_and_masked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cr3t\n").unwrap();
        let secret = SecretRef::File(path).resolve().unwrap();
        assert_eq!(secret.expose(), "s3cr3t");
        assert_eq!(format!("{secret:?} {secret}"), "Secret(***) ***");
    }

    #[test]
    fn missing_and_empty_secrets_are_errors() {
        let err = SecretRef::Env("ENTITY_BRIDGE_TEST_SURELY_UNSET".into())
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("ENTITY_BRIDGE_TEST_SURELY_UNSET"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            SecretRef::File(path).resolve(),
            Err(SecretError::Empty(_))
        ));
    }
}
