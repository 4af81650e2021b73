//! Loading and layering configuration files with figment.
//!
//! Layers, later wins: built-in defaults (serde defaults on the structs) < `bridge.toml` < one
//! file per connector in `connectors/` (file stem = connector name, nested under
//! `connectors.<name>`) < environment variables `ENTITY_BRIDGE_<KEY>` with `__` between levels,
//! e.g. `ENTITY_BRIDGE_CONNECTORS__MLS__SINK__BOOTSTRAP_SERVERS`. Only variables whose first
//! segment is a top-level key are read, so secrets named `ENTITY_BRIDGE_TOKEN` do not collide.
//!
//! Figment keeps each value's origin, so an error names the file and the key to fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::{Config, ConfigError};

/// Environment variable prefix for overrides.
pub const ENV_PREFIX: &str = "ENTITY_BRIDGE_";
const TOP_LEVEL_KEYS: &[&str] = &[
    "http",
    "admin",
    "log",
    "shutdown_timeout_ms",
    "data_dir",
    "connectors",
];

/// The files a configuration was assembled from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// `bridge.toml` files, in layering order.
    pub bridge_files: Vec<PathBuf>,
    /// Connector files by connector name.
    pub connector_files: BTreeMap<String, PathBuf>,
}

impl ConfigSources {
    /// Collects the files behind `paths` (see [`load`] for the rules).
    pub fn discover(paths: &[PathBuf]) -> Result<Self, ConfigError> {
        let mut sources = ConfigSources::default();
        for path in paths {
            let meta = std::fs::metadata(path).map_err(|e| ConfigError::Path {
                path: path.clone(),
                detail: e.to_string(),
            })?;
            if meta.is_dir() {
                let bridge = path.join("bridge.toml");
                if bridge.is_file() {
                    sources.bridge_files.push(bridge);
                }
                sources.add_connector_dir(&path.join("connectors"))?;
            } else if path.file_stem().is_some_and(|s| s == "bridge") {
                sources.bridge_files.push(path.clone());
                let dir = path.parent().unwrap_or(Path::new("."));
                sources.add_connector_dir(&dir.join("connectors"))?;
            } else {
                sources.add_connector_file(path)?;
            }
        }
        Ok(sources)
    }

    fn add_connector_dir(&mut self, dir: &Path) -> Result<(), ConfigError> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        for file in files {
            self.add_connector_file(&file)?;
        }
        Ok(())
    }

    fn add_connector_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| ConfigError::Path {
                path: path.to_owned(),
                detail: "connector file name must be UTF-8".into(),
            })?
            .to_owned();
        if let Some(previous) = self.connector_files.insert(name.clone(), path.to_owned()) {
            return Err(ConfigError::Path {
                path: path.to_owned(),
                detail: format!(
                    "connector `{name}` is already defined by {}",
                    previous.display()
                ),
            });
        }
        Ok(())
    }

    /// The file that defined a connector, for error messages.
    pub fn file_of(&self, connector: &str) -> String {
        self.connector_files
            .get(connector)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "environment".into())
    }
}

/// A connector file, nested under `connectors.<name>`.
struct ConnectorFile {
    name: String,
    path: PathBuf,
}

impl Provider for ConnectorFile {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("connector `{}`", self.name))
            .source(figment::Source::File(self.path.clone()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let inner = Toml::file_exact(&self.path).data()?;
        Ok(inner
            .into_iter()
            .map(|(profile, dict)| {
                let mut by_name = Dict::new();
                by_name.insert(self.name.clone(), Value::from(dict));
                let mut root = Dict::new();
                root.insert("connectors".into(), Value::from(by_name));
                (profile, root)
            })
            .collect())
    }
}

/// Loads the configuration from `paths` (each a directory, a `bridge.toml`, or a connector file).
///
/// - a directory contributes its `bridge.toml` (if any) and every `connectors/*.toml` in it;
/// - a file named `bridge.toml` contributes itself and the `connectors/` directory beside it;
/// - any other file is one connector, named after its file stem.
///
/// The result is validated; errors name the file and key.
pub fn load(paths: &[PathBuf]) -> Result<(Config, ConfigSources), ConfigError> {
    let sources = ConfigSources::discover(paths)?;
    let mut figment = Figment::new();
    for file in &sources.bridge_files {
        figment = figment.merge(Toml::file_exact(file));
    }
    for (name, path) in &sources.connector_files {
        figment = figment.merge(ConnectorFile {
            name: name.clone(),
            path: path.clone(),
        });
    }
    figment = figment.merge(env_provider());
    let config: Config = figment.extract()?;
    config.validate(&|name| sources.file_of(name))?;
    Ok((config, sources))
}

fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX).split("__").filter(|key| {
        // `split` already turned `__` into `.`.
        let first = key.as_str().split('.').next().unwrap_or_default();
        TOP_LEVEL_KEYS.iter().any(|k| first.eq_ignore_ascii_case(k))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) -> PathBuf {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    const CONNECTOR: &str = r#"
        [source]
        type = "webhook"
        tokens = [{ env = "MLS_TOKEN" }]
        [sink]
        type = "kafka"
        bootstrap_servers = "kafka:9092"
    "#;

    #[test]
    fn directory_layers_bridge_and_connectors() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "bridge.toml", "shutdown_timeout_ms = 5000\n");
        write(dir.path(), "connectors/mls.toml", CONNECTOR);
        let (config, sources) = load(&[dir.path().to_owned()]).unwrap();
        assert_eq!(config.shutdown_timeout_ms, 5000);
        assert_eq!(config.http.listen_addr.port(), 8080);
        assert!(config.connectors.contains_key("mls"));
        assert!(sources.file_of("mls").ends_with("mls.toml"));
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{CONNECTOR}\nlinger_msec = 5\n");
        let file = write(dir.path(), "connectors/mls.toml", &text);
        let err = load(&[file]).unwrap_err().to_string();
        assert!(err.contains("linger_msec"), "{err}");
        assert!(err.contains("mls.toml"), "{err}");
    }

    #[test]
    fn invalid_value_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = CONNECTOR.replace(
            "bootstrap_servers = \"kafka:9092\"",
            "topic_template = \"reso.{Nope}\"",
        );
        let file = write(dir.path(), "connectors/mls.toml", &text);
        let err = load(&[file]).unwrap_err().to_string();
        assert!(err.contains("mls.toml"), "{err}");
        assert!(err.contains("sink.topic_template"), "{err}");
    }

    #[test]
    fn feed_tracking_keys_are_bounded_and_agree_with_the_dedupe_window() {
        let dir = tempfile::tempdir().unwrap();
        let with = |top: &str, dedupe: &str| {
            let text = format!("{top}\n{CONNECTOR}\n{dedupe}");
            let file = write(dir.path(), "connectors/mls.toml", &text);
            load(&[file]).map(|_| ()).map_err(|e| e.to_string())
        };
        with("evict_idle_feeds_after_hours = 0", "").unwrap();
        let err = with("evict_idle_feeds_after_hours = 100000", "").unwrap_err();
        assert!(err.contains("evict_idle_feeds_after_hours"), "{err}");
        let err = with("", "[dedupe]\nwindow_age_hours = 0\n").unwrap_err();
        assert!(err.contains("dedupe.window_age_hours"), "{err}");
        let never = "evict_idle_feeds_after_hours = 0";
        with(never, "[dedupe]\nwindow_age_hours = 0\n").unwrap();
    }

    /// Regression: a secret written inline was quoted back by the error (`found string "…"`).
    #[test]
    fn errors_never_echo_a_secret_written_inline() {
        let dir = tempfile::tempdir().unwrap();
        let reference = "tokens = [{ env = \"MLS_TOKEN\" }]";
        for (bad, says) in [
            (
                "tokens = [\"hunter2-inline\"]",
                "secrets are never written inline",
            ),
            (
                "tokens = [{ value = \"hunter2-inline\" }]",
                "unknown key `value`",
            ),
            (
                "tokens = \"hunter2-inline\"",
                "found a string (value not shown)",
            ),
            (
                "tokens = [{ env = \"A\", file = \"/x\" }]",
                "exactly one of",
            ),
            ("tokens = hunter2-inline", "mls.toml"),
        ] {
            let file = write(
                dir.path(),
                "connectors/mls.toml",
                &CONNECTOR.replace(reference, bad),
            );
            let err = load(&[file]).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{bad}: {err}");
            assert!(err.contains(says), "{bad}: {err}");
        }
        // Values that are not secrets still name what was expected.
        let file = write(
            dir.path(),
            "connectors/mls.toml",
            &format!("{CONNECTOR}\nshutdown = 1\n").replace("type = \"kafka\"", "type = \"kafak\""),
        );
        let err = load(&[file]).unwrap_err().to_string();
        assert!(err.contains("kafka"), "{err}");
    }

    #[test]
    fn duplicate_connector_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a/mls.toml", CONNECTOR);
        let b = write(dir.path(), "b/mls.toml", CONNECTOR);
        let err = load(&[a, b]).unwrap_err().to_string();
        assert!(err.contains("already defined"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's signature
    fn env_filter_only_takes_top_level_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ENTITY_BRIDGE_ADMIN__LISTEN_ADDR", "127.0.0.1:9999");
            jail.set_env("ENTITY_BRIDGE_TOKEN", "not-a-config-key");
            let config: Config = Figment::new().merge(env_provider()).extract()?;
            assert_eq!(config.admin.listen_addr.port(), 9999);
            Ok(())
        });
    }
}
