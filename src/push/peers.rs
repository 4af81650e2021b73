//! The webhook sink's readiness: whether the peers it depends on answered recently.
//!
//! Probing a consumer would mean POSTing data, so readiness is judged from real traffic: each
//! POST, token request and dead-letter write reports here, and the sink is not ready once one
//! of them has kept failing for longer than `not_ready_after_ms`. An answer that is not a
//! failure clears it at once. A sink with nothing to send stays as it was last seen (ready at
//! start): an idle egress connector is not an outage.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// What the sink depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The consumer's webhook endpoint.
    Consumer,
    /// The consumer's OAuth2 token endpoint.
    Token,
    /// Where refused and oversized events are written.
    DeadLetter,
}

impl Peer {
    const ALL: [Peer; 3] = [Peer::Consumer, Peer::Token, Peer::DeadLetter];

    fn name(self) -> &'static str {
        match self {
            Peer::Consumer => "consumer endpoint",
            Peer::Token => "token endpoint",
            Peer::DeadLetter => "dead-letter destination",
        }
    }
}

#[derive(Debug)]
struct Failing {
    since: Instant,
    cause: String,
}

/// The failing state of each peer. Each lock guards one plain assignment, so it is never
/// poisoned (the `expect`s state that invariant).
#[derive(Debug)]
pub struct Peers {
    failing: [Mutex<Option<Failing>>; 3],
    not_ready_after: Duration,
}

impl Peers {
    /// Every peer answering; not ready after `not_ready_after` of continuous failure.
    pub fn new(not_ready_after: Duration) -> Peers {
        Peers {
            failing: Default::default(),
            not_ready_after,
        }
    }

    fn slot(&self, peer: Peer) -> std::sync::MutexGuard<'_, Option<Failing>> {
        self.failing[peer as usize].lock().expect("peers lock")
    }

    /// `peer` answered (or worked): it is not failing.
    pub fn answered(&self, peer: Peer) {
        *self.slot(peer) = None;
    }

    /// `peer` failed (no secrets, no payload data in `cause`); keeps when it started failing.
    pub fn failed(&self, peer: Peer, cause: impl std::fmt::Display) {
        let mut slot = self.slot(peer);
        let cause = cause.to_string();
        match &mut *slot {
            Some(failing) => failing.cause = cause,
            None => {
                *slot = Some(Failing {
                    since: Instant::now(),
                    cause,
                })
            }
        }
    }

    /// `Err` naming the first peer that has been failing for longer than the grace.
    pub fn ready(&self) -> Result<(), String> {
        for peer in Peer::ALL {
            if let Some(f) = &*self.slot(peer) {
                let failing = f.since.elapsed();
                if failing >= self.not_ready_after {
                    return Err(format!(
                        "{} failing for {:.1} s: {}",
                        peer.name(),
                        failing.as_secs_f64(),
                        f.cause
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn not_ready_only_after_the_grace_and_ready_at_the_next_answer() {
        let peers = Peers::new(Duration::from_secs(10));
        assert!(peers.ready().is_ok(), "ready before any traffic");
        peers.failed(Peer::Consumer, "HTTP 503");
        tokio::time::sleep(Duration::from_secs(6)).await;
        peers.failed(Peer::Consumer, "connect");
        assert!(peers.ready().is_ok(), "a blip is not an outage");
        tokio::time::sleep(Duration::from_secs(5)).await;
        let why = peers.ready().unwrap_err();
        assert_eq!(why, "consumer endpoint failing for 11.0 s: connect");
        peers.answered(Peer::Consumer);
        assert!(peers.ready().is_ok());
        peers.failed(Peer::Token, "token endpoint answered 500");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(peers.ready().unwrap_err().starts_with("token endpoint"));
    }
}
