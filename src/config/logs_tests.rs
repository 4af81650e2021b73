//! Unit tests of [`super`].

use std::path::Path;

use super::*;

fn config(connectors: &[(&str, &str)]) -> Config {
    let mut text = String::new();
    for (name, body) in connectors {
        text.push_str(
            &body
                .replace("[source]", &format!("[connectors.{name}.source]"))
                .replace("[sink]", &format!("[connectors.{name}.sink]")),
        );
        text.push('\n');
    }
    toml::from_str(&text).unwrap()
}

const INGEST: &str = "[source]\ntype = \"webhook\"\n[sink]\ntype = \"embedded\"\n";

const SHARED: &str =
    "[source]\ntype = \"webhook\"\n[sink]\ntype = \"embedded\"\nfile = \"events.db\"\nshare_log = true\n";

#[test]
fn each_connector_writes_its_own_log_unless_both_share() {
    // Regression: two connectors on the default file shared one log and one replay
    // resource, so producer A's token read producer B's events.
    let defaults = config(&[("a", INGEST), ("b", INGEST)]);
    let a = match &defaults.connectors["a"].sink {
        SinkConfig::Embedded(s) => s.path(Path::new("data"), "a"),
        _ => unreachable!(),
    };
    assert_eq!(a, Path::new("data/a.db"));
    let (_, key, detail) = validate_logs(&defaults).unwrap_err();
    assert_eq!(
        key, "sink.replay_path",
        "own logs, but one replay path: {detail}"
    );
    assert!(detail.contains("/b/EntityEvent"), "{detail}");

    let same_file = INGEST.replace(
        "type = \"embedded\"",
        "type = \"embedded\"\nfile = \"events.db\"",
    );
    let (name, key, detail) =
        validate_logs(&config(&[("a", &same_file), ("b", &same_file)])).unwrap_err();
    assert_eq!((name.as_str(), key.as_str()), ("b", "sink.file"));
    assert!(detail.contains("share_log = true"), "{detail}");
    let one_sided = config(&[("a", SHARED), ("b", &same_file)]);
    assert_eq!(validate_logs(&one_sided).unwrap_err().1, "sink.file");
}

#[test]
fn shared_logs_must_agree_and_replay_paths_must_be_unique() {
    let same = config(&[("a", SHARED), ("b", SHARED)]);
    assert!(
        validate_logs(&same).is_ok(),
        "two writers, one log, same settings"
    );

    let differ = config(&[
        ("a", SHARED),
        ("b", &format!("{SHARED}retention_max_age_hours = 1\n")),
    ]);
    let (name, key, detail) = validate_logs(&differ).unwrap_err();
    assert_eq!((name.as_str(), key.as_str()), ("b", "sink"));
    assert!(detail.contains("other settings"), "{detail}");

    let two_logs = config(&[("a", INGEST), ("b", INGEST)]);
    let (_, key, _) = validate_logs(&two_logs).unwrap_err();
    assert_eq!(key, "sink.replay_path");

    let clash = config(&[(
        "a",
        "[source]\ntype = \"webhook\"\npath = \"/EntityEvent\"\n[sink]\ntype = \"embedded\"\n",
    )]);
    let (_, key, detail) = validate_logs(&clash).unwrap_err();
    assert_eq!(key, "sink.replay_path");
    assert!(detail.contains("webhook path"), "{detail}");

    let readers = config(&[
        ("a", "[source]\ntype = \"embedded\"\nfile = \"events.db\"\ncursor = \"c\"\n[sink]\ntype = \"embedded\"\nfile = \"copy.db\"\nreplay = false\n"),
        ("b", "[source]\ntype = \"embedded\"\nfile = \"events.db\"\ncursor = \"c\"\n[sink]\ntype = \"embedded\"\nfile = \"copy2.db\"\nreplay = false\n"),
    ]);
    let (_, key, _) = validate_logs(&readers).unwrap_err();
    assert_eq!(key, "source.cursor");
}
