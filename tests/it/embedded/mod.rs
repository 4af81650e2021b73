//! The embedded log end to end: restarts and `kill -9`, the `/EntityEvent` replay resource,
//! embedded source → Kafka and → the webhook push sink, a full store answering 503, and the default run as a new user
//! does it (the real binary, no arguments, the repository's own default config).

mod bounded_reads;
mod dead_letters;
mod egress;
mod full;
mod metadata;
mod process;
mod push;
mod replay;
mod restart;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use entity_bridge::app::{self, Running};

pub const BIN: &str = env!("CARGO_BIN_EXE_entity-bridge");
pub const TOKEN: &str = "embedded-it-token-7d1e";

/// The RCP-28 multi-valued example, as a producer would send it.
pub const SEED_PAYLOAD: &str = r#"{
"@reso.context": "urn:reso:metadata:2.0:resource:entityevent",
"value": [{
"EntityEventSequence": 1101,
"ResourceName": "Property",
"ResourceRecordKey": "235021"
}, {
"EntityEventSequence": 1111,
"ResourceName": "Media",
"ResourceRecordKey": "ABC123"
}]
}"#;

/// A temp config directory: `bridge.toml` (loopback listeners on port 0, `data_dir` inside the
/// directory), a token file holding [`TOKEN`], and the given connector files.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn new(connectors: &[(&str, &str)]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bridge.toml"),
            format!(
                "shutdown_timeout_ms = 10000\ndata_dir = {:?}\n[http]\nlisten_addr = \"127.0.0.1:0\"\n\
                 [admin]\nlisten_addr = \"127.0.0.1:0\"\n",
                dir.path().join("data").display().to_string()
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::create_dir(dir.path().join("connectors")).unwrap();
        let setup = Setup { dir };
        for (name, text) in connectors {
            setup.write_connector(name, text);
        }
        setup
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A webhook source accepting [`TOKEN`], plus `extra` lines.
    pub fn webhook_source(&self, extra: &str) -> String {
        format!(
            "[source]\ntype = \"webhook\"\ntokens = [{{ file = {:?} }}]\n{extra}\n",
            self.path("token").display().to_string()
        )
    }

    pub fn write_connector(&self, name: &str, text: &str) {
        std::fs::write(self.path(&format!("connectors/{name}.toml")), text).unwrap();
    }

    /// Starts the bridge in this process.
    pub async fn start(&self) -> Bridge {
        let (config, _) = entity_bridge::config::load(&[self.dir.path().to_owned()]).unwrap();
        let running = app::start(config).await.expect("bridge starts");
        Bridge {
            base: format!("http://{}", running.webhook_addr),
            admin: format!("http://{}", running.admin_addr),
            running: Some(running),
        }
    }
}

/// A bridge running in this process.
pub struct Bridge {
    pub base: String,
    pub admin: String,
    running: Option<Running>,
}

impl Bridge {
    /// POSTs `body` to `path` with [`TOKEN`].
    pub async fn post(&self, path: &str, body: &str) -> reqwest::Response {
        post(&format!("{}{path}", self.base), TOKEN, body).await
    }

    /// GETs `/EntityEvent<query>` with [`TOKEN`]; returns the status and the JSON body.
    pub async fn replay(&self, query: &str) -> (u16, serde_json::Value) {
        get_json(&format!("{}/EntityEvent{query}", self.base), Some(TOKEN)).await
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        assert!(
            self.running.take().unwrap().shutdown().await,
            "clean shutdown"
        );
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown_token().cancel();
        }
    }
}

pub async fn post(url: &str, token: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request sent")
}

pub async fn get_json(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, body)
}

/// Follows `@odata.nextLink` from `url` (relative links resolved against the page's URL, as
/// OData clients do); returns every event served and the number of pages.
pub async fn replay_all(url: &str, token: &str) -> (Vec<serde_json::Value>, usize) {
    let (mut events, mut pages, mut next) = (Vec::new(), 0, Some(url.to_owned()));
    while let Some(url) = next.take() {
        let (status, body) = get_json(&url, Some(token)).await;
        assert_eq!(status, 200, "{url}: {body}");
        events.extend(body["value"].as_array().unwrap().iter().cloned());
        next = body["@odata.nextLink"].as_str().map(|link| {
            reqwest::Url::parse(&url)
                .and_then(|base| base.join(link))
                .unwrap_or_else(|e| panic!("nextLink {link}: {e}"))
                .to_string()
        });
        pages += 1;
        assert!(pages < 10_000, "paging does not end");
    }
    (events, pages)
}

/// The `EntityEventSequence` values (log positions) of replayed events.
pub fn sequences(events: &[serde_json::Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["EntityEventSequence"].as_i64().unwrap())
        .collect()
}

/// A multi-valued payload of events `(producer sequence, resource, key)`.
pub fn payload(events: &[(i64, &str, &str)]) -> String {
    let value: Vec<String> = events
        .iter()
        .map(|(s, r, k)| {
            format!(
                r#"{{"EntityEventSequence": {s}, "ResourceName": "{r}", "ResourceRecordKey": "{k}", "Data": {{"Note": "e {s}",  "Spaced" : [1, 2]}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"@reso.context": "urn:reso:metadata:2.0:resource:entityevent", "value": [{}]}}"#,
        value.join(", ")
    )
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary, its stdout and stderr merged into lines.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    pub fn spawn(cwd: &Path, args: &[&str], env: &[(&str, String)]) -> Proc {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .current_dir(cwd)
            .env_remove("ENTITY_BRIDGE_CONFIG")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("binary starts");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(line);
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line matching `pred` (30 s), panicking with everything seen so far.
    pub fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no such line; output so far:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// SIGTERM, then waits (20 s) for the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Splits the printed token line into `(token, webhook URL)`. Under a test stdout is a pipe,
/// so the line names the token file (`$(cat data/tokens/<connector>.token)`, relative to the
/// bridge's working directory `dir`) and the token is read from there.
pub fn parse_token_line(line: &str, dir: &Path) -> (String, String) {
    let bearer = line
        .split("Bearer ")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("line has a bearer token");
    let file = bearer
        .strip_prefix("$(cat ")
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("a piped stdout gets the token file, not the token: {line}"));
    let token = std::fs::read_to_string(dir.join(file))
        .expect("the named token file")
        .trim_end()
        .to_owned();
    let url = line
        .split_whitespace()
        .last()
        .expect("line ends with the URL")
        .to_owned();
    (token, url)
}
