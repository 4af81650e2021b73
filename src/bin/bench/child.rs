//! Runs the bridge as a child process, so its memory is measured apart from the load generator.
//!
//! The bench binary re-executes itself as `bench __bridge <config-dir>`: that child starts the
//! bridge from the library exactly as `entity-bridge run` does, prints one `READY` line with the
//! bound addresses, and stops on SIGTERM or when its stdin closes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A bridge child process.
pub struct BridgeChild {
    child: Child,
    pub webhook_addr: String,
    pub admin_addr: String,
}

impl BridgeChild {
    /// Starts the bridge on `config_dir` (bridge.toml + connectors/) and waits until it listens.
    pub fn start(config_dir: &Path, opts: &crate::Opts) -> BridgeChild {
        let exe = std::env::current_exe().expect("own path");
        let mut child = Command::new(exe)
            .arg("__bridge")
            .arg(config_dir)
            .env("BENCH_AMQP_URL", &opts.amqp)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn bridge child");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("READY line");
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert!(
            parts.len() == 3 && parts[0] == "READY",
            "bridge child did not start: {line:?}"
        );
        BridgeChild {
            webhook_addr: parts[1].to_owned(),
            admin_addr: parts[2].to_owned(),
            child,
        }
    }

    /// Mean of a histogram (`<name>_sum / <name>_count`, all series added up) from the
    /// bridge's own `/metrics`, in milliseconds.
    pub async fn mean_ms(&self, histogram: &str) -> f64 {
        let url = format!("http://{}/metrics", self.admin_addr);
        let text = reqwest::get(&url)
            .await
            .expect("bridge /metrics")
            .text()
            .await
            .expect("metrics text");
        let total = |suffix: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(&format!("{histogram}{suffix}")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        total("_sum") * 1000.0 / total("_count").max(1.0)
    }

    /// CPU seconds the bridge has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(Some(self.child.id()))
    }

    /// Current and peak resident set size in MiB.
    pub fn rss_mib(&self) -> (f64, f64) {
        rss_of(self.child.id())
    }

    /// Stops the child gracefully (SIGTERM) and waits.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system, all threads) a process has used so far, from /proc.
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = pid.map_or("/proc/self/stat".to_owned(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Linux reports in USER_HZ, which is 100 on every mainstream distribution.
    (ticks(11) + ticks(12)) / 100.0
}

/// The pid of a running process whose command name is `comm` (e.g. `tansu`, `beam.smp`), so
/// the broker's CPU per event can be reported when it runs on this machine.
pub fn pid_of(comm: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
}

/// (VmRSS, VmHWM) of a process in MiB, from /proc.
pub fn rss_of(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The child side: run the bridge until SIGTERM or stdin closes.
pub fn serve(config_dir: PathBuf) -> ! {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = runtime.block_on(async move {
        let (config, _) = entity_bridge::config::load(&[config_dir]).unwrap_or_else(|e| {
            eprintln!("bench bridge config: {e}");
            std::process::exit(2)
        });
        let running = entity_bridge::app::start(config).await.unwrap_or_else(|e| {
            eprintln!("bench bridge cannot start: {e}");
            std::process::exit(2)
        });
        println!("READY {} {}", running.webhook_addr, running.admin_addr);
        let stop = running.shutdown_token();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            let stdin_closed = tokio::task::spawn_blocking(|| {
                let mut sink = String::new();
                while std::io::stdin()
                    .read_line(&mut sink)
                    .map(|n| n > 0)
                    .unwrap_or(false)
                {}
            });
            tokio::select! {
                _ = term.recv() => {},
                _ = stdin_closed => {},
            }
            stop.cancel();
        });
        i32::from(!running.run_until_stopped().await)
    });
    std::process::exit(code)
}
