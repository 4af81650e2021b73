//! One supervised AMQP connection per sink or source, reconnected with backoff.
//!
//! lapin does not recover connections by itself. A background task owns the connection: it
//! connects (bounded by `connect_timeout_ms`), declares the topology, publishes the live
//! connection through a `watch` channel, and when the broker closes it (or the socket dies) it
//! withdraws it, waits a jittered exponential backoff and connects again. Users never block on
//! a dead connection: the sink fails fast (503) while disconnected and readiness reports it;
//! the source waits for the next connection. Each connection gets a new `generation`, so
//! channels opened on an older one are recognised as void.
//!
//! The URL holds the password: it lives only in a [`Secret`] and is handed to lapin; logs and
//! errors name the endpoint as `host:port/vhost`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::{ConnectionConfig, DEFAULT_URL};
use super::topology::TopologyConfig;
use crate::metrics::Metrics;
use crate::secret::{Secret, SecretError, SecretRef};

/// Why an AMQP sink or source could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AmqpBuildError {
    /// `url_env` / `url_file` could not be read.
    #[error("AMQP URL: {0}")]
    Secret(#[from] SecretError),
    /// The URL does not parse (its text is deliberately not repeated: it holds a password).
    #[error("the AMQP URL is not valid (expected amqp[s]://user:password@host:port/vhost)")]
    Url,
    /// The routing key template is invalid.
    #[error(transparent)]
    Template(#[from] crate::routing::TemplateError),
}

/// A connection that is currently open.
#[derive(Clone)]
pub struct Live {
    /// The lapin connection.
    pub connection: Arc<Connection>,
    /// Increases with every successful (re)connect.
    pub generation: u64,
}

impl Live {
    /// Whether the broker still considers it open.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }
}

/// Handle to a supervised connection; dropping it closes the connection.
pub struct AmqpConnection {
    endpoint: String,
    state: watch::Receiver<Option<Live>>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Everything the supervisor task needs.
struct Supervisor {
    connector: String,
    endpoint: String,
    uri: AMQPUri,
    config: ConnectionConfig,
    metrics: Metrics,
    state: watch::Sender<Option<Live>>,
}

/// Resolves and parses a URL reference (`None`: [`DEFAULT_URL`]); what start-up checks.
pub fn check_url(url: Option<&SecretRef>) -> Result<AMQPUri, AmqpBuildError> {
    let secret = match url {
        Some(reference) => reference.resolve()?,
        None => Secret::new(DEFAULT_URL),
    };
    secret.expose().parse().map_err(|_| AmqpBuildError::Url)
}

/// Resolves and parses the URL; returns it with its printable `host:port/vhost`.
fn resolve_url(config: &ConnectionConfig) -> Result<(AMQPUri, String), AmqpBuildError> {
    let uri = check_url(config.url.as_ref())?;
    let endpoint = format!(
        "{}:{}/{}",
        uri.authority.host, uri.authority.port, uri.vhost
    );
    Ok((uri, endpoint))
}

impl AmqpConnection {
    /// Resolves the URL and starts the supervisor (must run inside a tokio runtime). Does not
    /// wait for the broker: an unreachable RabbitMQ only makes the component not ready.
    pub fn start(
        connector: &str,
        config: ConnectionConfig,
        metrics: Metrics,
    ) -> Result<Self, AmqpBuildError> {
        let (uri, endpoint) = resolve_url(&config)?;
        let (tx, rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let supervisor = Supervisor {
            connector: connector.to_owned(),
            endpoint: endpoint.clone(),
            uri,
            config,
            metrics,
            state: tx,
        };
        let task = tokio::spawn(supervisor.run(stop.clone()));
        Ok(AmqpConnection {
            endpoint,
            state: rx,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// `host:port/vhost`, safe to log.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The open connection, if there is one right now.
    pub fn current(&self) -> Option<Live> {
        self.state.borrow().clone().filter(Live::is_connected)
    }

    /// A receiver that changes whenever the connection is opened or lost.
    pub fn watch(&self) -> watch::Receiver<Option<Live>> {
        self.state.clone()
    }

    /// Waits until a connection is open (cancel by dropping the future).
    pub async fn wait_connected(&self) -> Option<Live> {
        let mut state = self.state.clone();
        let live = state
            .wait_for(|s| s.as_ref().is_some_and(Live::is_connected))
            .await
            .ok()?;
        live.clone()
    }

    /// Stops reconnecting and closes the connection gracefully, waiting up to `timeout`.
    pub async fn close(&self, timeout: Duration) {
        self.stop.cancel();
        let task = self.task.lock().expect("connection task lock").take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(timeout, task).await;
        }
    }
}

impl Drop for AmqpConnection {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Opens a channel on `live`, mapping errors to text (no secrets in lapin errors).
pub async fn open_channel(live: &Live) -> Result<Channel, String> {
    live.connection
        .create_channel()
        .await
        .map_err(|e| format!("cannot open a channel: {e}"))
}

impl Supervisor {
    async fn run(self, stop: CancellationToken) {
        let mut backoff = self.config.backoff.backoff();
        let mut wait_first = false;
        let mut generation = 0;
        loop {
            if wait_first {
                let delay = backoff.next().unwrap_or(Duration::from_secs(1));
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            wait_first = true;
            let attempt = tokio::select! {
                _ = stop.cancelled() => break,
                attempt = tokio::time::timeout(self.config.connect_timeout, self.connect()) => attempt,
            };
            let connection = match attempt {
                Ok(Ok(connection)) => connection,
                Ok(Err(e)) => {
                    self.metrics.amqp_connection(&self.connector, "failed");
                    tracing::warn!(connector = %self.connector, endpoint = %self.endpoint, error = %e, "cannot connect to RabbitMQ; retrying");
                    continue;
                }
                Err(_) => {
                    self.metrics.amqp_connection(&self.connector, "failed");
                    tracing::warn!(connector = %self.connector, endpoint = %self.endpoint, "connecting to RabbitMQ timed out; retrying");
                    continue;
                }
            };
            backoff = self.config.backoff.backoff();
            generation += 1;
            if !self.hold(connection, generation, &stop).await {
                break;
            }
        }
        self.state.send_replace(None);
    }

    /// Connects and declares the topology.
    async fn connect(&self) -> Result<Connection, String> {
        let properties = ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio)
            .with_connection_name(self.config.name.clone().into());
        let connection = Connection::connect_uri(self.uri.clone(), properties)
            .await
            .map_err(|e| e.to_string())?;
        if !self.config.topology.is_empty() {
            declare(&connection, &self.config.topology)
                .await
                .inspect_err(|e| {
                    tracing::error!(connector = %self.connector, endpoint = %self.endpoint, error = %e, "RabbitMQ refused the configured topology; fix the config or the broker");
                })?;
        }
        Ok(connection)
    }

    /// Publishes an open connection until it is lost (`true`) or `stop` fires (`false`).
    async fn hold(
        &self,
        connection: Connection,
        generation: u64,
        stop: &CancellationToken,
    ) -> bool {
        let lost = Arc::new(Notify::new());
        let on_error = lost.clone();
        let connector = self.connector.clone();
        connection.on_error(move |e| {
            tracing::warn!(connector = %connector, error = %e, "RabbitMQ connection failed");
            on_error.notify_one();
        });
        let connection = Arc::new(connection);
        self.state.send_replace(Some(Live {
            connection: connection.clone(),
            generation,
        }));
        self.metrics.amqp_connection(&self.connector, "opened");
        tracing::info!(connector = %self.connector, endpoint = %self.endpoint, generation, "connected to RabbitMQ");
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    self.state.send_replace(None);
                    if connection.status().connected() {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            connection.close(200, "entity-bridge shutting down"),
                        )
                        .await;
                    }
                    return false;
                }
                _ = lost.notified() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if !connection.status().connected() {
                        break;
                    }
                }
            }
        }
        self.state.send_replace(None);
        self.metrics.amqp_connection(&self.connector, "lost");
        tracing::warn!(connector = %self.connector, endpoint = %self.endpoint, generation, "lost the RabbitMQ connection; reconnecting");
        true
    }
}

async fn declare(connection: &Connection, topology: &TopologyConfig) -> Result<(), String> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| format!("cannot open a channel: {e}"))?;
    topology
        .declare(&channel)
        .await
        .map_err(|e| e.to_string())?;
    let _ = channel.close(200, "topology declared").await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::AmqpSinkConfig;

    #[test]
    fn endpoint_never_shows_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("url");
        std::fs::write(&path, "amqp://bridge:s3cr3t@rabbit.example:5673/prod\n").unwrap();
        let config: AmqpSinkConfig =
            toml::from_str(&format!("url_file = {:?}", path.display().to_string())).unwrap();
        let (uri, endpoint) = resolve_url(&config.connection("c")).unwrap();
        assert_eq!(endpoint, "rabbit.example:5673/prod");
        assert_eq!(uri.authority.userinfo.password, "s3cr3t");

        std::fs::write(&path, "http://bridge:s3cr3t@[oops\n").unwrap();
        let err = resolve_url(&config.connection("c")).unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }

    #[test]
    fn default_url_is_local_guest() {
        let config: AmqpSinkConfig = toml::from_str("").unwrap();
        let (uri, endpoint) = resolve_url(&config.connection("c")).unwrap();
        assert_eq!(endpoint, "127.0.0.1:5672//");
        assert_eq!(uri.authority.userinfo.username, "guest");
    }
}
