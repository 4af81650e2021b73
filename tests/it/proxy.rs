//! A TCP proxy the test controls, to cut the network between the bridge and a broker, and a
//! Kafka-protocol broker of the test's own behind it (cutting the shared one would disturb the
//! other tests).
//!
//! A cut behaves like a partition, not like a refused connection: bytes stop flowing both ways
//! on every open connection and new connections are accepted but not forwarded, so clients see
//! timeouts. Restoring lets everything flow again.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy; dropping it stops it and closes every connection.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on `listener`, forwarding to `upstream`.
    pub fn start(listener: TcpListener, upstream: SocketAddr) -> Proxy {
        let addr = listener.local_addr().unwrap();
        let (cut, watching) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(forward(client, upstream, watching.clone()));
            }
        });
        Proxy { addr, cut, task }
    }

    /// Stops all traffic (a partition).
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets traffic flow again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until the network is not cut.
async fn flowing(cut: &mut watch::Receiver<bool>) {
    let _ = cut.wait_for(|c| !*c).await;
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    flowing(&mut cut).await;
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut up, mut down) = ([0u8; 16 * 1024], [0u8; 16 * 1024]);
    loop {
        flowing(&mut cut).await;
        // Which way bytes arrived (`true`: from the client), or `None` when cut meanwhile.
        let read = tokio::select! {
            read = client.read(&mut up) => Some((true, read)),
            read = server.read(&mut down) => Some((false, read)),
            // Cut while waiting: stop reading, leave the bytes in the kernel's buffers.
            _ = cut.wait_for(|c| *c) => None,
        };
        let Some((from_client, read)) = read else {
            continue;
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just before a cut are held until it ends.
        flowing(&mut cut).await;
        let written = if from_client {
            server.write_all(&up[..n]).await
        } else {
            client.write_all(&down[..n]).await
        };
        if written.is_err() {
            return;
        }
    }
}

/// A tansu broker of the test's own, reachable only through a [`Proxy`] (it advertises the
/// proxy's address, so every connection a client opens goes through it).
pub struct OwnBroker {
    /// The proxy in front of the broker: the address to give the bridge (and, once restored,
    /// the test's own clients).
    pub proxy: Proxy,
    child: Child,
}

async fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

impl OwnBroker {
    /// Starts `tansu` (installed by the test command; fails loudly when missing).
    pub async fn start() -> OwnBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxied = listener.local_addr().unwrap();
        let direct = free_port().await;
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{direct}"),
                "--advertised-listener-url",
                &format!("tcp://{proxied}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu is not installed: run the tests with `bash deploy/dev/test.sh`");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(direct).await.is_err() {
            assert!(Instant::now() < deadline, "tansu did not open {direct}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        OwnBroker {
            proxy: Proxy::start(listener, direct),
            child,
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
