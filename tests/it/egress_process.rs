//! Egress across process boundaries: OAuth2 through the real binary (its logs checked for
//! secrets), a crash (SIGKILL) and restart, and two bridges sharing one consumer group.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::egress::{create_topic, event, keyed_events, produce, Egress};
use crate::receiver::{OAuthPeer, Received, Receiver};

const BIN: &str = env!("CARGO_BIN_EXE_entity-bridge");
const CLIENT_SECRET: &str = "cs-7f3a9c1e5b-secret";
const SHORT_SESSION: &str =
    "[source.librdkafka]\n\"heartbeat.interval.ms\" = \"300\"\n\"session.timeout.ms\" = \"6000\"";
const CLIENT_BASIC: &str = "YnJpZGdlLWNsaWVudDpjcy03ZjNhOWMxZTViLXNlY3JldA==";

/// The `entity-bridge` binary running one connector, its output captured line by line.
pub(crate) struct BridgeProcess {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl BridgeProcess {
    pub(crate) fn spawn(dir: &Path, connector_toml: &str, env: &[(&str, &str)]) -> BridgeProcess {
        std::fs::write(
            dir.join("bridge.toml"),
            "shutdown_timeout_ms = 10000\n[http]\nlisten_addr = \"127.0.0.1:0\"\n[admin]\nlisten_addr = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("connectors")).unwrap();
        std::fs::write(dir.join("connectors/egress.toml"), connector_toml).unwrap();
        let mut command = Command::new(BIN);
        command
            .args(["run", "--config"])
            .arg(dir)
            .env(
                "RUST_LOG",
                "debug,entity_bridge=trace,reqwest=trace,oauth2=trace,hyper_util=trace",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    output.lock().unwrap().push(line);
                }
            });
        }
        BridgeProcess { child, output }
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal}");
    }

    /// Waits for the process to exit; returns whether it exited 0.
    async fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "bridge did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// Waits for the start-up line and returns the `(webhook, admin)` addresses it names.
    pub(crate) async fn addresses(&self) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let started = (self.output.lock().unwrap().iter())
                .find(|l| l.contains("entity-bridge started"))
                .cloned();
            if let Some(line) = started {
                let line = strip_ansi(&line);
                let field = |name: &str| {
                    let rest = &line[line.find(&format!("{name}="))? + name.len() + 1..];
                    Some(rest.split_whitespace().next()?.to_owned())
                };
                return (field("webhook_addr").unwrap(), field("admin_addr").unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "bridge did not start:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `line` without terminal colour sequences (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bearer(r: &Received) -> String {
    r.header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned()
}

/// Checks that every key's events arrived in order; duplicates (redeliveries) are allowed.
fn assert_key_order(requests: &[Received]) {
    let mut by_key: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for r in requests.iter().filter(|r| r.status == 200) {
        for (key, seq) in r.keys() {
            let seen = by_key.entry(key).or_default();
            if !seen.contains(&seq) {
                seen.push(seq);
            }
        }
    }
    for (key, seqs) in by_key {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "first deliveries of {key} in order");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth2_token_cached_refreshed_and_never_logged() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    // The first token lives an hour, later ones 2 s (the bridge refreshes at half-life).
    let peer = Arc::new(OAuthPeer {
        issued: Mutex::new(Vec::new()),
        revoked: Mutex::new(Vec::new()),
        lifetimes: vec![Duration::from_secs(3600), Duration::from_secs(2)],
        client_basic: CLIENT_BASIC.into(),
    });
    let (token_url, _token_task) = peer.start_token_endpoint().await;
    let checker = peer.clone();
    let receiver = Receiver::start(Box::new(move |_, headers, _| {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if checker.accepts(token) {
            (200, vec![])
        } else {
            (401, vec![("www-authenticate", "Bearer".to_owned())])
        }
    }))
    .await;
    let mut egress = Egress::new("it-egress-oauth", &receiver.url, &dir);
    egress.sink_extra = "max_events = 5".into();
    create_topic(&egress.topic, 1).await;
    let toml = egress.toml().replace(
        &format!(
            "auth = {{ type = \"token\", token = {{ file = {:?} }} }}",
            egress.token_file.display().to_string()
        ),
        &format!(
            "auth = {{ type = \"oauth2\", token_url = \"{token_url}\", client_id = \"bridge-client\", client_secret = {{ env = \"IT_OAUTH_CLIENT_SECRET\" }} }}"
        ),
    );
    assert!(toml.contains("oauth2"));
    let mut bridge = BridgeProcess::spawn(
        dir.path(),
        &toml,
        &[("IT_OAUTH_CLIENT_SECRET", CLIENT_SECRET)],
    );

    // Many requests, one token.
    produce(&egress.topic, &keyed_events("o", 3, 10), None).await;
    receiver.wait_delivered(30, Duration::from_secs(60)).await;
    assert_eq!(
        peer.issued.lock().unwrap().len(),
        1,
        "one token for many requests"
    );
    let first = peer.issued.lock().unwrap()[0].0.clone();
    let requests = receiver.requests();
    assert!(requests.len() >= 6);
    assert!(requests.iter().all(|r| bearer(r) == first));

    // The consumer revokes it: 401, one refresh, the same batch retried with the new token.
    peer.revoked.lock().unwrap().push(first.clone());
    let more: Vec<_> = (1..=5)
        .map(|s| ("p".to_owned(), s, event("p", s, 3)))
        .collect();
    produce(&egress.topic, &more, None).await;
    receiver.wait_delivered(35, Duration::from_secs(60)).await;
    assert_eq!(
        peer.issued.lock().unwrap().len(),
        2,
        "refreshed after the 401"
    );
    let unauthorized = receiver
        .requests()
        .iter()
        .filter(|r| r.status == 401)
        .count();
    assert_eq!(unauthorized, 1, "retried once with the fresh token");

    // The second token expires after 2 s; the bridge must replace it before, without a 401.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seq = 100;
    while peer.issued.lock().unwrap().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "token not refreshed before expiry"
        );
        seq += 1;
        produce(
            &egress.topic,
            &[("q".to_owned(), seq, event("q", seq, 1))],
            None,
        )
        .await;
        let want = receiver.delivered().len() + 1;
        receiver.wait_delivered(want, Duration::from_secs(30)).await;
    }
    let unauthorized = receiver
        .requests()
        .iter()
        .filter(|r| r.status == 401)
        .count();
    assert_eq!(
        unauthorized, 1,
        "the expiring token was refreshed proactively"
    );

    bridge.signal("-TERM");
    assert!(bridge.wait(Duration::from_secs(20)).await, "clean exit");
    let output = bridge.output();
    assert!(
        output.contains("fetched an OAuth2 access token"),
        "{output}"
    );
    assert!(
        !output.contains(CLIENT_SECRET),
        "client secret leaked into the logs"
    );
    assert!(
        !output.contains(CLIENT_BASIC),
        "client credentials leaked into the logs"
    );
    for (token, _, _) in peer.issued.lock().unwrap().iter() {
        assert!(
            !output.contains(token.as_str()),
            "access token leaked into the logs"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_and_restart_delivers_what_was_not_delivered() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::accepting().await;
    let mut egress = Egress::new("it-egress-crash", &receiver.url, &dir);
    // A crashed member holds its partitions until its session times out.
    egress.source_extra = SHORT_SESSION.into();
    egress.sink_extra = "max_events = 2\n[sink.limits]\nrequests_per_second = 10".into();
    create_topic(&egress.topic, 2).await;
    let events = keyed_events("c", 6, 10);
    produce(&egress.topic, &events, None).await;
    let mut bridge = BridgeProcess::spawn(dir.path(), &egress.toml(), &[]);
    receiver.wait_delivered(10, Duration::from_secs(60)).await;
    bridge.signal("-KILL");
    bridge.wait(Duration::from_secs(10)).await;
    let at_crash = receiver.delivered().len();
    assert!(
        at_crash < events.len(),
        "crashed mid-stream ({at_crash} delivered)"
    );
    // Events produced while the bridge is down are delivered too.
    let later: Vec<_> = (11..=15)
        .map(|s| ("c-0".to_owned(), s, event("c-0", s, 2)))
        .collect();
    produce(&egress.topic, &later, None).await;
    let mut bridge = BridgeProcess::spawn(dir.path(), &egress.toml(), &[]);
    receiver
        .wait_delivered(events.len() + later.len(), Duration::from_secs(60))
        .await;
    assert_key_order(&receiver.requests());
    bridge.signal("-TERM");
    assert!(bridge.wait(Duration::from_secs(20)).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_bridges_in_one_group_split_partitions_and_survive_one_stopping() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::accepting().await;
    let mut egress = Egress::new("it-egress-group", &receiver.url, &dir);
    egress.source_extra = SHORT_SESSION.into();
    egress.sink_extra = "max_events = 2\n[sink.limits]\nrequests_per_second = 10".into();
    create_topic(&egress.topic, 4).await;
    let events = keyed_events("g", 16, 25);
    produce(&egress.topic, &events, None).await;
    let delivered =
        "entity_bridge_push_events_delivered_total{connector=\"it\",resource=\"Property\"}";

    let a = TestBridge::start_connector(&egress.toml()).await;
    receiver.wait_delivered(10, Duration::from_secs(60)).await;
    let b = TestBridge::start_connector(&egress.toml()).await;
    let deadline = Instant::now() + Duration::from_secs(45);
    while metric(&b.metrics().await, delivered).unwrap_or(0.0) < 4.0 {
        assert!(
            Instant::now() < deadline,
            "the second bridge never got partitions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let by_a = metric(&a.metrics().await, delivered).unwrap_or(0.0);
    assert!(by_a >= 10.0, "both bridges delivered ({by_a} by the first)");
    assert!(
        receiver.delivered().len() < events.len(),
        "the first stops mid-stream"
    );
    assert!(a.stop().await, "the first bridge stops cleanly");
    receiver
        .wait_delivered(events.len(), Duration::from_secs(90))
        .await;
    assert_key_order(&receiver.requests());
    assert!(b.stop().await);
}

/// Kills a member mid-stream, starts a replacement, and returns how long the replacement took
/// to send its first POST.
async fn takeover_after_a_crash(prefix: &str, source_extra: &str) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::accepting().await;
    let mut egress = Egress::new(prefix, &receiver.url, &dir);
    egress.source_extra = source_extra.into();
    egress.sink_extra = "max_events = 1\n[sink.limits]\nrequests_per_second = 5".into();
    create_topic(&egress.topic, 1).await;
    let events: Vec<_> = (1..=100)
        .map(|s| ("t".to_owned(), s, event("t", s, 2)))
        .collect();
    produce(&egress.topic, &events, None).await;
    let mut crashed = BridgeProcess::spawn(dir.path(), &egress.toml(), &[]);
    receiver.wait_delivered(3, Duration::from_secs(60)).await;
    crashed.signal("-KILL");
    crashed.wait(Duration::from_secs(10)).await;
    let before = receiver.requests().len();
    let started = Instant::now();
    let mut replacement = BridgeProcess::spawn(dir.path(), &egress.toml(), &[]);
    while receiver.requests().len() == before {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the replacement never delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    replacement.signal("-TERM");
    assert!(replacement.wait(Duration::from_secs(20)).await);
    took
}

/// Regression: a replacement for a crashed member delivered its first event 45 s later
/// (librdkafka's default session timeout); the bridge's default is 10 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_member_is_replaced_within_the_short_default_session() {
    require_kafka();
    let took = takeover_after_a_crash("it-egress-takeover", "").await;
    assert!(took < Duration::from_secs(25), "took {took:?}");
}

/// With static membership, a member restarted under the same `group_instance_id` gets its
/// partition back without waiting for the session to time out.
#[tokio::test(flavor = "multi_thread")]
async fn a_static_member_restarted_under_its_name_resumes_at_once() {
    require_kafka();
    let instance = unique("bridge");
    let extra = format!("group_instance_id = \"{instance}\"\n[source.librdkafka]\n\"session.timeout.ms\" = \"60000\"");
    let took = takeover_after_a_crash("it-egress-static", &extra).await;
    // Far below the 60 s session: the broker hands the partition to the same name at once.
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

/// A member that stops cleanly leaves the group, so its partition moves to the other member
/// at once instead of after `session.timeout.ms`.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_stops_cleanly_hands_its_partition_over_at_once() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::accepting().await;
    let mut egress = Egress::new("it-egress-leave", &receiver.url, &dir);
    egress.sink_extra = "max_events = 1\n[sink.limits]\nrequests_per_second = 5".into();
    create_topic(&egress.topic, 1).await;
    let events: Vec<_> = (1..=200)
        .map(|s| ("l".to_owned(), s, event("l", s, 2)))
        .collect();
    produce(&egress.topic, &events, None).await;
    let delivered =
        "entity_bridge_push_events_delivered_total{connector=\"it\",resource=\"Property\"}";
    let count = |text: String| metric(&text, delivered).unwrap_or(0.0);

    let first = TestBridge::start_connector(&egress.toml()).await;
    receiver.wait_delivered(2, Duration::from_secs(60)).await;
    let second = TestBridge::start_connector(&egress.toml()).await;
    // One partition, two members: after the rebalance one of them owns it and delivers.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (owner, other) = loop {
        let (a, b) = (count(first.metrics().await), count(second.metrics().await));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (a2, b2) = (count(first.metrics().await), count(second.metrics().await));
        if a2 > a && b2 == b {
            break (first, second);
        }
        if b2 > b && a2 == a {
            break (second, first);
        }
        assert!(Instant::now() < deadline, "no single owner emerged");
    };
    let before = count(other.metrics().await);
    assert!(owner.stop().await, "the owner stops cleanly");
    let stopped = Instant::now();
    while count(other.metrics().await) == before {
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "the other member never took over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Well below the 10 s session a crashed member would hold the partition for.
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(7), "took {took:?}");
    assert!(other.stop().await);
}
