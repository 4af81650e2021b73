//! Deployment artefacts checked without a container engine: docker-compose.yml, the
//! Dockerfile, Prometheus config and alert rules (with `promtool`), the Grafana dashboard, and
//! the compose connectors run for real against the test brokers.
//!
//! No docker engine exists where these tests run, so images are never built and compose never
//! starts; what can be checked is checked with real parsers and tools. `promtool` comes from
//! Debian's `prometheus` package (`deploy/dev/test.sh` installs it); without it these tests fail.

mod compose;
mod flow;
mod observability;
mod wiring;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use entity_bridge::metrics::{MetricInfo, Metrics};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Reads a repository file, panicking with its path.
pub fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Parses a YAML file of the repository into JSON values (string keys only).
pub fn yaml(rel: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: not valid YAML: {e}"))
}

/// Runs `promtool` in `dir` with `stdin`; returns (success, stdout + stderr). Panics when
/// promtool is not installed: a missing tool fails the test, it never skips it.
pub fn promtool(dir: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install Debian's `prometheus` package \
                 (bash deploy/dev/test.sh does it when promtool is absent)"
            )
        });
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every metric family the process registers.
pub fn catalog() -> Vec<MetricInfo> {
    Metrics::new().catalog().to_vec()
}

/// Every `entity_bridge_…` name in a PromQL expression (or any text).
pub fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("entity_bridge_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if end > "entity_bridge_".len() {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end.max(1)..];
    }
    names
}

/// The registered family a series name belongs to (`_bucket`/`_sum`/`_count` of histograms).
pub fn family<'a>(catalog: &'a [MetricInfo], series: &str) -> Option<&'a MetricInfo> {
    if let Some(m) = catalog.iter().find(|m| m.name == series) {
        return Some(m);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = series.strip_suffix(suffix)?;
        catalog
            .iter()
            .find(|m| m.name == base && m.kind == "histogram")
    })
}

/// Label names a PromQL expression groups or matches by: `by (…)`, `without (…)`,
/// `on (…)`, `ignoring (…)`, `group_left (…)` and `{name=…}` matchers.
pub fn label_names(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for keyword in [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ] {
        let mut rest = expr;
        while let Some(at) = rest.find(keyword) {
            let before_ok = at == 0
                || !rest.as_bytes()[at - 1].is_ascii_alphanumeric()
                    && rest.as_bytes()[at - 1] != b'_';
            let tail = rest[at + keyword.len()..].trim_start();
            if before_ok && tail.starts_with('(') {
                let inside = &tail[1..tail.find(')').unwrap()];
                labels.extend(
                    inside
                        .split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned),
                );
            }
            rest = &rest[at + keyword.len()..];
        }
    }
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let close = open + rest[open..].find('}').unwrap();
        for matcher in rest[open + 1..close].split(',') {
            let name = matcher.split(['=', '!']).next().unwrap().trim().to_owned();
            if !name.is_empty() {
                labels.insert(name);
            }
        }
        rest = &rest[close + 1..];
    }
    labels
}

/// Checks that every metric and label an expression names exists; returns the problems.
pub fn check_expr(catalog: &[MetricInfo], origin: &str, expr: &str) -> Vec<String> {
    let mut problems = Vec::new();
    // Target labels Prometheus adds, the histogram bucket label and the metric name.
    let mut known: BTreeSet<String> = ["instance", "job", "role", "le", "__name__"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    for name in metric_names(expr) {
        match family(catalog, &name) {
            Some(m) => known.extend(m.labels.iter().cloned()),
            None => problems.push(format!("{origin}: `{name}` is not a registered metric")),
        }
    }
    for label in label_names(expr) {
        if !known.contains(&label) {
            problems.push(format!(
                "{origin}: label `{label}` belongs to none of the metrics in `{expr}`"
            ));
        }
    }
    problems
}
