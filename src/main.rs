//! The `entity-bridge` command: `run` the bridge or `check` a configuration.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 invalid configuration.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use entity_bridge::config::{self, Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// RESO EntityEvent webhooks at the edge of Kafka.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge (the default command).
    Run(ConfigArgs),
    /// Validate the configuration and print it resolved, secrets masked.
    Check(ConfigArgs),
}

#[derive(clap::Args, Default)]
struct ConfigArgs {
    /// A directory (its bridge.toml and connectors/*.toml), a bridge.toml (plus the connectors/
    /// beside it), or a single connector file. Repeatable; later layers win.
    #[arg(long, short, default_value = ".", env = "ENTITY_BRIDGE_CONFIG")]
    config: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or_else(|| {
        Command::Run(ConfigArgs {
            config: vec![std::env::var_os("ENTITY_BRIDGE_CONFIG")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."))],
        })
    });
    let (args, check) = match command {
        Command::Run(a) => (a, false),
        Command::Check(a) => (a, true),
    };
    // `check` and `run` refuse a configuration the same way, with the same message.
    let config = match config::load(&args.config).and_then(|(config, sources)| {
        entity_bridge::app::preflight(&config, &|name| sources.file_of(name)).map(|()| config)
    }) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("entity-bridge: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if check {
        return match toml::to_string_pretty(&config.masked()) {
            Ok(text) => {
                println!(
                    "# configuration is valid ({} connectors)\n{text}",
                    config.connectors.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("entity-bridge: cannot print configuration: {e}");
                ExitCode::from(1)
            }
        };
    }
    init_tracing(&config);
    match run(config) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            tracing::error!(error = causes(&e), "entity-bridge failed");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    // lapin logs each returned (unroutable) message at WARN with its body: payloads never go to
    // logs, and the AMQP sink reports returns itself.
    let filter = filter.add_directive(
        "lapin::returned_messages=error"
            .parse()
            .expect("valid directive"),
    );
    // Colour only on a terminal: a log file or a collector gets no escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn run(config: Config) -> anyhow::Result<bool> {
    if config.connectors.is_empty() {
        anyhow::bail!(
            "no connectors configured: add a file to connectors/ (see docs/configuration.md)"
        );
    }
    // Install the handlers before anything can announce "started": a SIGTERM that arrives
    // right after start-up must drain, not kill the process with the default action.
    let signals = Signals::install().context("cannot install signal handlers")?;
    let running = entity_bridge::app::start(config)
        .await
        .context("cannot start")?;
    for line in &running.notices {
        println!("{line}");
    }
    let stop = running.shutdown_token();
    tokio::spawn(async move {
        signals.wait().await;
        tracing::info!("shutdown requested; draining in-flight work");
        stop.cancel();
    });
    Ok(running.run_until_stopped().await)
}

/// SIGTERM / SIGINT, registered up front.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn wait(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The error and its causes, `: `-joined, leaving out a cause whose text the message before it
/// already holds (most errors here print their cause in their own message).
fn causes(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}
