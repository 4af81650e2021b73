//! Configuration errors: they name the file and key to fix, and never quote a value that may
//! be a secret.

use std::path::PathBuf;

/// A configuration error, naming the file and key where it can be fixed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read or parsed, or a key has the wrong type or is unknown.
    #[error("{0}")]
    Figment(Box<figment::Error>),
    /// A value is well-formed but not acceptable.
    #[error("{file}: `{key}`: {detail}")]
    Invalid {
        /// The file to fix (or `environment` / `defaults`).
        file: String,
        /// The dotted key inside that file.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// A path given on the command line does not exist or is unreadable.
    #[error("{path}: {detail}")]
    Path {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError::Figment(Box::new(redact(e)))
    }
}

/// The same errors without the values they quote: a string in the wrong place is often a
/// secret written inline (`token = "…"`), and TOML syntax errors quote the offending line. The
/// file, key and what was expected stay, which is what the operator needs to fix it.
fn redact(error: figment::Error) -> figment::Error {
    use figment::error::{Actual, Kind};
    let hide = |actual: Actual| match actual {
        Actual::Str(_) => Actual::Other("a string (value not shown)".into()),
        Actual::Bytes(_) => Actual::Other("bytes (value not shown)".into()),
        Actual::Char(_) => Actual::Other("a character (value not shown)".into()),
        other => other,
    };
    // Newest first; `chain` puts an error in front of the ones before it.
    let mut errors: Vec<figment::Error> = error.into_iter().collect();
    for e in &mut errors {
        e.kind = match std::mem::replace(&mut e.kind, Kind::Message(String::new())) {
            Kind::InvalidType(actual, expected) => Kind::InvalidType(hide(actual), expected),
            Kind::InvalidValue(actual, expected) => Kind::InvalidValue(hide(actual), expected),
            Kind::Unsupported(actual) => Kind::Unsupported(hide(actual)),
            Kind::UnsupportedKey(actual, need) => Kind::UnsupportedKey(hide(actual), need),
            Kind::Message(message) => Kind::Message(without_source_lines(&message)),
            other => other,
        };
    }
    let mut rebuilt = errors
        .pop()
        .expect("a figment error holds at least one error");
    while let Some(newer) = errors.pop() {
        rebuilt = rebuilt.chain(newer);
    }
    rebuilt
}

/// Drops the quoted source lines of a TOML parse error (`3 | token = s3cr3t`, `  |  ^`).
fn without_source_lines(message: &str) -> String {
    message
        .lines()
        .filter(|line| {
            let t = line.trim_start();
            let digits = t.trim_start_matches(|c: char| c.is_ascii_digit());
            !digits.trim_start().starts_with('|')
        })
        .collect::<Vec<_>>()
        .join("\n")
}
