//! Secrets by reference.
//!
//! Config files never need to hold a secret: they name an environment variable or a file that
//! holds it ([`SecretRef`]). The resolved [`Secret`] masks itself in `Debug` and `Display`, so a
//! stray `{:?}` in a log line cannot leak a token.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a secret is read from. Exactly one of `env` / `file`.
///
/// Deserialized by hand: serde's derived errors quote the value they found (`found string
/// "s3cr3t"`), and the value in that position is most likely a secret written inline by mistake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretRef {
    /// Name of an environment variable holding the secret, e.g. `{ env = "MLS_TOKEN" }`.
    Env(String),
    /// Path of a file holding the secret (trailing newline stripped), e.g. a Docker/K8s secret.
    File(PathBuf),
}

/// What a `SecretRef` must look like, for error messages (never the value that was found).
const SECRET_REF_EXPECTED: &str =
    "a reference to a secret, `{ env = \"VARIABLE\" }` or `{ file = \"/path\" }` (secrets are \
     never written inline; the value found is not shown)";

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SecretRefVisitor)
    }
}

struct SecretRefVisitor;

impl SecretRefVisitor {
    fn inline<E: serde::de::Error>(kind: &str) -> E {
        E::custom(format_args!("found {kind}, expected {SECRET_REF_EXPECTED}"))
    }
}

impl<'de> serde::de::Visitor<'de> for SecretRefVisitor {
    type Value = SecretRef;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SECRET_REF_EXPECTED)
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<SecretRef, E> {
        Err(Self::inline("a string"))
    }
    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<SecretRef, E> {
        Err(Self::inline("bytes"))
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<SecretRef, E> {
        Err(Self::inline("a number"))
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<SecretRef, E> {
        Err(Self::inline("a number"))
    }
    fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<SecretRef, E> {
        Err(Self::inline("a number"))
    }
    fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<SecretRef, E> {
        Err(Self::inline("a number"))
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<SecretRef, E> {
        Err(Self::inline("a number"))
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<SecretRef, E> {
        Err(Self::inline("a boolean"))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<SecretRef, A::Error> {
        use serde::de::Error;
        let mut found: Option<SecretRef> = None;
        while let Some(key) = map.next_key::<String>()? {
            let reference = match key.as_str() {
                "env" => SecretRef::Env(map.next_value()?),
                "file" => SecretRef::File(map.next_value()?),
                other => {
                    return Err(A::Error::custom(format_args!(
                        "unknown key `{other}`, expected {SECRET_REF_EXPECTED}"
                    )))
                }
            };
            if found.replace(reference).is_some() {
                return Err(A::Error::custom(
                    "a secret reference has exactly one of `env` and `file`",
                ));
            }
        }
        found
            .take()
            .ok_or_else(|| A::Error::custom(SECRET_REF_EXPECTED))
    }
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
