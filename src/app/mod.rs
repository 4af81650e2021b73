//! Builds the running bridge from a [`Config`] and shuts it down cleanly.
//!
//! Start-up resolves secrets and builds every sink and source before binding a port, so a bad
//! config fails fast. Push sources (webhooks) become routes; pull sources get a task (a
//! [`crate::runtime::pump::Pump`], or the Kafka source's own driver with one ordered lane per
//! partition) that runs under its connector's supervisor, which restarts it when it fails
//! ([`crate::runtime`]). Each connector has a [`Health`] that `/readyz` and the metrics read.
//! Shutdown is ordered: `/readyz` turns 503, pumps stop taking batches and settle the one in
//! flight, the webhook listener stops accepting and finishes in-flight pushes (all bounded by
//! `shutdown_timeout_ms`), then every sink is flushed with the time left, and only then does
//! the admin listener stop.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod preflight;
mod prepare;
mod replay;
pub mod routes;
mod tasks;

pub use preflight::{preflight, secret_refs};

use crate::config::{Config, SourceConfig};
use crate::connector::Sink;
use crate::http::admin::{self, AdminState, ConnectorReadiness, FeedsOf};
use crate::http::{webhook_router, WebhookConnector};
use crate::layers::feeds;
use crate::layers::hydrate::Hydrate;
use crate::layers::Observed;
use crate::metrics::Metrics;
use crate::runtime::build::{BuildContext, BuildError};
use crate::runtime::{supervise, Health, Run};
use tasks::TaskContext;

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A connector's secret could not be read.
    #[error("connector `{connector}`: {source}")]
    Secret {
        /// The connector.
        connector: String,
        /// Why.
        source: crate::secret::SecretError,
    },
    /// A connector's sink or source could not be built (the cause names the part and key).
    #[error("connector `{connector}`: {source}")]
    Build {
        /// The connector.
        connector: String,
        /// Why.
        source: BuildError,
    },
    /// The embedded log, its replay resource or a generated token could not be set up.
    #[error("{0}")]
    Embedded(#[source] crate::embedded::EmbeddedError),
    /// A connector's `[dedupe]` store could not be opened.
    #[error("connector `{connector}`: dedupe: {source}")]
    Dedupe {
        /// The connector.
        connector: String,
        /// Why.
        source: crate::layers::feeds::SeenStoreError,
    },
    /// The configuration refers to something that does not resolve (a secret, a key, a
    /// route); [`preflight`] names the key to fix.
    #[error("{0}")]
    Config(crate::config::ConfigError),
    /// An admin token (`admin.tokens`) could not be read.
    #[error("admin.tokens: {0}")]
    AdminToken(crate::secret::SecretError),
    /// `[http.tls]`: the certificate or key could not be loaded.
    #[error("http.tls: {0}")]
    Tls(#[source] crate::http::tls::TlsError),
}

/// A running bridge.
pub struct Running {
    /// Where the webhook listener is bound (useful with port 0).
    pub webhook_addr: SocketAddr,
    /// Where the admin listener is bound.
    pub admin_addr: SocketAddr,
    /// The process metrics.
    pub metrics: Metrics,
    /// Lines for the operator's terminal (stdout), e.g. how to use a generated webhook token.
    pub notices: Vec<String>,
    shutdown: CancellationToken,
    admin_stop: CancellationToken,
    webhook_task: JoinHandle<std::io::Result<()>>,
    admin_task: JoinHandle<std::io::Result<()>>,
    pump_stop: CancellationToken,
    supervisors: Vec<(String, JoinHandle<()>)>,
    sinks: Vec<(String, Arc<dyn Sink>)>,
    shutdown_timeout: Duration,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })
}

/// Builds every connector and starts both listeners.
pub async fn start(config: Config) -> Result<Running, AppError> {
    // The same checks as `entity-bridge check` (the command runs them before this, with the
    // file names): nothing below may fail on what the configuration alone decides.
    preflight(&config, &|name| format!("connector `{name}`")).map_err(AppError::Config)?;
    // Resolves embedded log files under `data_dir` and generates missing webhook tokens.
    let (config, token_notices) = prepare::prepare(config).map_err(AppError::Embedded)?;
    let metrics = Metrics::new();
    let mut sinks = Vec::new();
    let mut routes = Vec::new();
    let mut token_routes = Vec::new();
    let mut tasks: Vec<(TaskContext, Run)> = Vec::new();
    let mut readiness = Vec::new();
    let mut feed_views = Vec::new();
    // Cancelled first at shutdown: pumps stop taking batches, sinks stop waiting to retry.
    let pump_stop = CancellationToken::new();
    let shutdown_timeout = Duration::from_millis(config.shutdown_timeout_ms);
    for (name, connector) in &config.connectors {
        let health = Health::new(name, connector.readiness, metrics.clone());
        let build = BuildContext {
            connector: name.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            stop: pump_stop.clone(),
            shutdown_timeout,
            retry: connector.retry.clone(),
            sink_dead_letter: connector.sink_dead_letter(),
            data_dir: config.data_dir.clone(),
        };
        let sink = (connector.sink.builder().build_sink(&build).await).map_err(|source| {
            AppError::Build {
                connector: name.clone(),
                source,
            }
        })?;
        // Publish metrics are the layer's: recorded once per send, whatever the sink.
        let sink: Arc<dyn Sink> = Arc::new(Observed::new(name, sink, metrics.clone()));
        // Inside the feeds layer: a duplicate is suppressed before its record is fetched.
        let sink: Arc<dyn Sink> = match &connector.hydrate {
            Some(h) => {
                // A webhook producer retries a 503; a pull source dead-letters what fails.
                let refuse = !matches!(connector.source, SourceConfig::Webhook(_));
                let layer = Hydrate::new(name, h, sink, refuse, metrics.clone()).map_err(|e| {
                    AppError::Build {
                        connector: name.clone(),
                        source: crate::runtime::build::BuildError {
                            part: "hydrate",
                            source: Box::new(e),
                        },
                    }
                })?;
                Arc::new(layer)
            }
            None => sink,
        };
        // Outermost: feeds see only confirmed sends, and suppressed duplicates never reach the
        // publish metrics.
        let wrapped = feeds::wrap(
            name,
            connector.dedupe.as_ref(),
            feeds::Tracking {
                mark_before_answer: !matches!(connector.source, SourceConfig::Webhook(_)),
                max_tracked_feeds: connector.max_tracked_feeds,
                evict_idle_feeds_after_hours: connector.evict_idle_feeds_after_hours,
            },
            &config.data_dir,
            sink,
            metrics.clone(),
        )
        .await
        .map_err(|source| AppError::Dedupe {
            connector: name.clone(),
            source,
        })?;
        let sink = wrapped.sink.clone();
        if let SourceConfig::Webhook(w) = &connector.source {
            let mut webhook = WebhookConnector::build(name, w, sink.clone(), metrics.clone())
                .map_err(|source| AppError::Secret {
                    connector: name.clone(),
                    source,
                })?;
            if wrapped.dedupe {
                webhook = webhook.reporting_duplicates();
            }
            if let Some(j) = &w.jwt {
                let external =
                    crate::http::jwks::ExternalIssuer::new(j).map_err(|e| AppError::Build {
                        connector: name.clone(),
                        source: crate::runtime::build::BuildError::source(e),
                    })?;
                webhook = webhook.accepting_external_tokens(Arc::new(external));
            }
            if let Some(t) = &w.token_endpoint {
                let (issuer, endpoint) =
                    crate::http::token::build_endpoint(name, t, metrics.clone()).map_err(|e| {
                        AppError::Build {
                            connector: name.clone(),
                            source: crate::runtime::build::BuildError {
                                part: "source",
                                source: Box::new(e),
                            },
                        }
                    })?;
                webhook = webhook.accepting_issued_tokens(issuer);
                let token_path = w.token_path(name);
                tracing::info!(connector = %name, path = %token_path, "token endpoint ready");
                token_routes.push((token_path, endpoint));
            }
            let path = w.route_path(name);
            tracing::info!(connector = %name, %path, "webhook connector ready");
            routes.push((path, Arc::new(webhook)));
        }
        let ctx = TaskContext {
            config: connector.clone(),
            sink: sink.clone(),
            build,
        };
        // Built now so that a bad source fails the start; restarts rebuild it the same way.
        if let Some(run) = tasks::build_task(&ctx, pump_stop.clone()).await? {
            tasks.push((ctx, run));
        }
        feed_views.push(FeedsOf {
            name: name.clone(),
            monitor: wrapped.monitor,
            dedupe: wrapped.dedupe,
        });
        readiness.push(ConnectorReadiness {
            name: name.clone(),
            sink: sink.clone(),
            health,
        });
        sinks.push((name.clone(), sink));
    }
    let replay = replay::router(&config, &metrics)
        .await
        .map_err(AppError::Embedded)?;

    let shutdown = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let tls = (config.http.tls.as_ref())
        .map(|t| t.server_config())
        .transpose()
        .map_err(AppError::Tls)?;
    let webhook_listener = bind(config.http.listen_addr).await?;
    let admin_listener = bind(config.admin.listen_addr).await?;
    let webhook_addr = webhook_listener.local_addr().expect("bound address");
    let admin_addr = admin_listener.local_addr().expect("bound address");

    let webhook_app = webhook_router(routes, token_routes, replay);
    let stop = shutdown.clone();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let limits = config.http.connections.clone();
    let body_timeout = Duration::from_millis(config.http.body_read_timeout_ms);
    let webhook_task = tokio::spawn(async move {
        let serve = crate::http::serve::serve;
        serve(
            webhook_listener,
            webhook_app,
            tls,
            &limits,
            body_timeout,
            stop,
        )
        .await
    });
    let admin_tokens = (config.admin.tokens.iter())
        .map(|t| t.resolve())
        .collect::<Result<Vec<_>, _>>()
        .map_err(AppError::AdminToken)?;
    // Connectors that dead-letter into an embedded log: `/dead-letters/{connector}` lists them.
    let mut dead_letters = crate::http::DeadLetterLogs::new();
    for (name, connector) in &config.connectors {
        let embedded = (connector.source_dead_letter().into_iter())
            .chain(connector.sink.dead_letter().cloned())
            .find_map(|d| match d {
                crate::dead_letter::DeadLetterConfig::Embedded(e) => e.file,
                _ => None,
            });
        if let Some(file) = embedded {
            let log = crate::embedded::Log::open_async(file)
                .await
                .map_err(|source| {
                    AppError::Embedded(crate::embedded::EmbeddedError::Log {
                        connector: name.clone(),
                        source,
                    })
                })?;
            dead_letters.insert(name.clone(), log);
        }
    }
    let admin_app = admin::router(AdminState {
        dead_letters: Arc::new(crate::http::DeadLetterPages {
            logs: dead_letters,
            max_page_bytes: config.admin.dead_letters_max_page_bytes,
        }),
        tokens: (!admin_tokens.is_empty()).then(|| crate::http::TokenSet::new(&admin_tokens)),
        metrics_without_token: config.admin.metrics_without_token,
        metrics: metrics.clone(),
        connectors: readiness,
        feeds: feed_views,
        ready_timeout: Duration::from_millis(config.admin.ready_timeout_ms),
        shutdown: shutdown.clone(),
    });
    let stop = admin_stop.clone();
    let limits = config.admin.connections.clone();
    let body_timeout = Duration::from_millis(config.admin.body_read_timeout_ms);
    let admin_task = tokio::spawn(async move {
        let serve = crate::http::serve::serve;
        serve(admin_listener, admin_app, None, &limits, body_timeout, stop).await
    });
    let supervisors = (tasks.into_iter())
        .map(|(ctx, first)| {
            let name = ctx.build.connector.clone();
            let handle = supervise(
                ctx.build.health.clone(),
                ctx.config.retry.clone(),
                metrics.clone(),
                first,
                tasks::rebuild(ctx),
                pump_stop.clone(),
            );
            (name, handle)
        })
        .collect();
    tracing::info!(%webhook_addr, %admin_addr, scheme, connectors = sinks.len(), "entity-bridge started");
    Ok(Running {
        webhook_addr,
        admin_addr,
        metrics,
        notices: (token_notices.iter())
            .map(|n| {
                n.line(webhook_addr, std::io::stdout().is_terminal())
                    .replacen(" http://", &format!(" {scheme}://"), 1)
            })
            .collect(),
        shutdown,
        admin_stop,
        webhook_task,
        admin_task,
        pump_stop,
        supervisors,
        sinks,
        shutdown_timeout,
    })
}

impl Running {
    /// A token that, when cancelled, begins the shutdown (e.g. from a signal handler).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Drains and stops everything. Returns `false` when the bound was hit and work was cut off.
    pub async fn shutdown(self) -> bool {
        let deadline = Instant::now() + self.shutdown_timeout;
        self.shutdown.cancel();
        self.pump_stop.cancel();
        let mut clean = true;
        // Each supervisor logs how its task ended; it returns once the task has drained.
        for (name, supervisor) in self.supervisors {
            match tokio::time::timeout_at(deadline.into(), supervisor).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(connector = %name, error = %e, "connector supervisor failed")
                }
                Err(_) => {
                    clean = false;
                    tracing::warn!(connector = %name, "in-flight batch did not settle within shutdown_timeout_ms");
                }
            }
        }
        match tokio::time::timeout_at(deadline.into(), self.webhook_task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "webhook listener ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "webhook listener task failed"),
            Err(_) => {
                clean = false;
                tracing::warn!("in-flight pushes did not finish within shutdown_timeout_ms");
            }
        }
        for (name, sink) in &self.sinks {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = sink.flush(left.max(Duration::from_millis(100))).await {
                clean = false;
                tracing::warn!(connector = %name, error = %e, "sink not fully flushed");
            }
        }
        self.admin_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.admin_task).await;
        tracing::info!(clean, "entity-bridge stopped");
        clean
    }

    /// Runs until `shutdown_token()` is cancelled, then drains like [`Running::shutdown`].
    pub async fn run_until_stopped(self) -> bool {
        self.shutdown.cancelled().await;
        self.shutdown().await
    }
}
