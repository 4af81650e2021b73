//! `check` refuses what `run` refuses, with the same message (issue 26, item 10): every
//! configuration below used to pass `check` and then panic or fail at `run`. Each is loaded
//! through both commands; both must exit 2 with the same error line, naming the file and key.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_entity-bridge");

const BRIDGE: &str = "data_dir = \"data\"\n[http]\nlisten_addr = \"127.0.0.1:0\"\n\
                      [admin]\nlisten_addr = \"127.0.0.1:0\"\n";

const SIGNING_KEY: &str = "0123456789abcdef0123456789abcdef0123456789";
const CLIENT_SECRET: &str = "a-client-secret-of-32-bytes-long";

/// One failing configuration: its connector files, its environment, and what the one error
/// line must contain (connector file and key).
struct Case {
    name: &'static str,
    connectors: Vec<(&'static str, String)>,
    env: Vec<(&'static str, &'static str)>,
    expect: Vec<&'static str>,
}

fn token_endpoint(client_secret_env: &str) -> String {
    format!(
        "[source.token_endpoint]\nsigning_key = {{ env = \"IT_SIGNING_KEY\" }}\n\
         [[source.token_endpoint.clients]]\nclient_id = \"listhub\"\n\
         client_secret = {{ env = \"{client_secret_env}\" }}\n"
    )
}

fn embedded(extra: &str) -> String {
    format!("[sink]\ntype = \"embedded\"\n{extra}")
}

fn cases() -> Vec<Case> {
    let webhook = "[source]\ntype = \"webhook\"\ntokens = [{ env = \"IT_TOKEN\" }]\n";
    let base_env = vec![
        ("IT_TOKEN", "a-webhook-token-0123456789"),
        ("IT_SIGNING_KEY", SIGNING_KEY),
        ("IT_CLIENT_SECRET", CLIENT_SECRET),
    ];
    vec![
        Case {
            name: "a webhook path is another connector's token endpoint",
            connectors: vec![
                (
                    "a",
                    format!(
                        "{webhook}path = \"/webhooks/b/token\"\n{}",
                        embedded("replay_path = \"/a/EntityEvent\"\n")
                    ),
                ),
                (
                    "b",
                    format!(
                        "{webhook}{}{}",
                        token_endpoint("IT_CLIENT_SECRET"),
                        embedded("")
                    ),
                ),
            ],
            env: base_env.clone(),
            expect: vec!["b.toml", "`source.token_endpoint`", "/webhooks/b/token", "`a`"],
        },
        Case {
            name: "a replay path is another log's record collection",
            connectors: vec![
                (
                    "a",
                    format!("{webhook}{}", embedded("replay_path = \"/Property\"\n")),
                ),
                (
                    "b",
                    format!(
                        "{webhook}{}",
                        embedded("[sink.records]\nresources = [\"Property\"]\n")
                    ),
                ),
            ],
            env: base_env.clone(),
            expect: vec!["b.toml", "`sink.records`", "GET /Property", "`a`"],
        },
        Case {
            name: "two logs with the same replay path",
            connectors: vec![
                ("a", format!("{webhook}{}", embedded(""))),
                ("b", format!("{webhook}{}", embedded(""))),
            ],
            env: base_env.clone(),
            expect: vec!["b.toml", "`sink.replay_path`", "/EntityEvent", "a.db"],
        },
        Case {
            name: "a path segment starting with `:`",
            connectors: vec![(
                "a",
                format!("{webhook}path = \"/hooks/:mls\"\n{}", embedded("")),
            )],
            env: base_env.clone(),
            expect: vec!["a.toml", "`source.path`", "starting with `:`"],
        },
        Case {
            name: "only a token endpoint, and the default replay = true",
            connectors: vec![(
                "a",
                format!(
                    "[source]\ntype = \"webhook\"\n{}{}",
                    token_endpoint("IT_CLIENT_SECRET"),
                    embedded("")
                ),
            )],
            env: base_env.clone(),
            expect: vec!["a.toml", "`sink.replay`", "replay_tokens"],
        },
        Case {
            name: "only an external identity provider, and the default replay = true",
            connectors: vec![(
                "a",
                format!(
                    "[source]\ntype = \"webhook\"\n[source.jwt]\nissuer = \"https://idp.example.test/\"\n\
                     audience = \"bridge\"\njwks_url = \"https://idp.example.test/jwks\"\n{}",
                    embedded("")
                ),
            )],
            env: base_env.clone(),
            expect: vec!["a.toml", "`sink.replay`", "replay_tokens"],
        },
        Case {
            name: "a signing key that is too short",
            connectors: vec![(
                "a",
                format!(
                    "{webhook}{}{}",
                    token_endpoint("IT_CLIENT_SECRET"),
                    embedded("")
                ),
            )],
            env: vec![
                ("IT_TOKEN", "a-webhook-token-0123456789"),
                ("IT_SIGNING_KEY", "short"),
                ("IT_CLIENT_SECRET", CLIENT_SECRET),
            ],
            expect: vec!["a.toml", "`source.token_endpoint.signing_key`"],
        },
        Case {
            name: "a client secret shorter than 16 bytes",
            connectors: vec![(
                "a",
                format!(
                    "{webhook}{}{}",
                    token_endpoint("IT_SHORT_SECRET"),
                    embedded("")
                ),
            )],
            env: [base_env.clone(), vec![("IT_SHORT_SECRET", "guessable")]].concat(),
            expect: vec!["a.toml", "`source.token_endpoint.clients`", "listhub", "16 bytes"],
        },
        Case {
            name: "an environment variable that is not set",
            connectors: vec![(
                "a",
                format!(
                    "[source]\ntype = \"webhook\"\ntokens = [{{ env = \"IT_UNSET_TOKEN\" }}]\n{}",
                    embedded("")
                ),
            )],
            env: base_env.clone(),
            expect: vec!["a.toml", "`source.tokens[0]`", "IT_UNSET_TOKEN", "not set"],
        },
        Case {
            name: "a librdkafka option librdkafka does not know",
            connectors: vec![(
                "a",
                format!(
                    "{webhook}[sink]\ntype = \"kafka\"\nbootstrap_servers = \"127.0.0.1:1\"\n\
                     [sink.librdkafka]\n\"no.such.option\" = \"1\"\n"
                ),
            )],
            env: base_env.clone(),
            expect: vec!["a.toml", "`sink.librdkafka`", "no.such.option"],
        },
        Case {
            name: "an AMQP URL that does not parse",
            connectors: vec![(
                "a",
                format!(
                    "{webhook}[sink]\ntype = \"amqp\"\nurl_env = \"IT_AMQP_URL\"\nexchange = \"x\"\n"
                ),
            )],
            env: [base_env, vec![("IT_AMQP_URL", "not a url")]].concat(),
            expect: vec!["a.toml", "`sink.url_env`", "not valid"],
        },
    ]
}

/// Runs `entity-bridge <command>` on `dir`; returns its exit code and stderr. A `run` that is
/// still up after 20 s started: the test fails.
fn invoke(command: &str, dir: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args([command, "--config"])
        .arg(dir)
        .current_dir(dir)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("`{command}` did not refuse the configuration in {dir:?}: it started");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr)
}

#[test]
fn check_refuses_what_run_refuses_with_the_same_message() {
    for case in cases() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bridge.toml"), BRIDGE).unwrap();
        std::fs::create_dir_all(dir.path().join("connectors")).unwrap();
        for (name, text) in &case.connectors {
            std::fs::write(dir.path().join(format!("connectors/{name}.toml")), text).unwrap();
        }
        let (check_code, check_err) = invoke("check", dir.path(), &case.env);
        let (run_code, run_err) = invoke("run", dir.path(), &case.env);
        assert_eq!(check_code, Some(2), "{}: check: {check_err}", case.name);
        assert_eq!(run_code, Some(2), "{}: run: {run_err}", case.name);
        assert_eq!(check_err, run_err, "{}", case.name);
        assert_eq!(
            check_err.lines().count(),
            1,
            "{}: one line: {check_err}",
            case.name
        );
        for part in &case.expect {
            assert!(
                check_err.contains(part),
                "{}: `{part}` in {check_err}",
                case.name
            );
        }
        assert!(
            !check_err.contains(SIGNING_KEY) && !check_err.contains(CLIENT_SECRET),
            "{}: no secret in {check_err}",
            case.name
        );
    }
}
