//! What a token endpoint allows whom: budgets of *failed* attempts per peer address and per
//! client id, and a request rate per client that authenticated.
//!
//! The endpoint once had one request budget for everyone, spent before authentication: a
//! guesser at 200 requests/s kept every real client at 429 (0 of 15 tokens). Now:
//!
//! - credentials are always checked (a SHA-256 digest and a constant-time comparison), so a
//!   client that authenticates gets its token whatever others do from its address or under
//!   its id: nobody is locked out by someone else's failures;
//! - each failure spends one unit of the peer address's budget and of the client id's (one
//!   shared budget for ids that are not configured). A failure beyond either budget is
//!   answered `429` + `Retry-After` instead of `401`, is not logged one by one (the first one
//!   over says so at WARN) and is counted (`throttled`). With client secrets of at least
//!   [`MIN_CLIENT_SECRET_BYTES`] bytes, guessing is hopeless anyway: the budgets tell a
//!   misconfigured or hostile client to back off and keep logs and CPU bounded;
//! - a client that authenticates may ask for tokens `requests_per_second` times a second (its
//!   own budget), so one client looping cannot starve the others.
//!
//! Peers are tracked in a bounded map ([`MAX_TRACKED_PEERS`]): idle entries are dropped, and
//! beyond the bound new peers share one budget.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

/// Shortest client secret accepted, in bytes.
pub const MIN_CLIENT_SECRET_BYTES: usize = 16;
/// Most peer addresses with a budget of their own; beyond, new peers share one.
pub const MAX_TRACKED_PEERS: usize = 10_000;
/// The peer every untracked address counts as, once [`MAX_TRACKED_PEERS`] are tracked.
const OVERFLOW_PEER: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// How much a failure is over budget: wait this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// Seconds until the budget allows another attempt (at least 1).
    pub retry_after_seconds: u64,
    /// Whether this failure is the first over the budget (log it once).
    pub first: bool,
}

/// The budgets of one token endpoint.
pub struct Guard {
    peers: DefaultKeyedRateLimiter<IpAddr>,
    clients: DefaultKeyedRateLimiter<Option<usize>>,
    issued: Vec<DefaultDirectRateLimiter>,
    clock: DefaultClock,
    /// Keys already over budget (to log a lockout once, not per attempt).
    over: std::sync::Mutex<std::collections::HashSet<String>>,
}

fn per_minute(n: u32) -> Quota {
    let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(n).allow_burst(n)
}

impl Guard {
    /// Budgets of `failed_per_peer` and `failed_per_client` failures a minute, and
    /// `per_second` issued tokens a second for each of `clients` clients.
    pub fn new(
        failed_per_peer: u32,
        failed_per_client: u32,
        per_second: f64,
        clients: usize,
    ) -> Guard {
        Guard {
            peers: DefaultKeyedRateLimiter::dashmap(per_minute(failed_per_peer)),
            clients: DefaultKeyedRateLimiter::dashmap(per_minute(failed_per_client)),
            issued: (0..clients)
                .map(|_| super::quota::limiter(per_second).0)
                .collect(),
            clock: DefaultClock::default(),
            over: Default::default(),
        }
    }

    /// Records a failed attempt from `peer` naming the configured client `client` (`None`: an
    /// unknown or missing id). `Err` when it is over either budget.
    pub fn failed(&self, peer: IpAddr, client: Option<usize>) -> Result<(), Throttled> {
        let peer = self.tracked(peer);
        let by_peer = self.peers.check_key(&peer).err().map(|n| self.wait(n));
        let by_client = self.clients.check_key(&client).err().map(|n| self.wait(n));
        let (peer_key, client_key) = (format!("peer {peer}"), format!("client {client:?}"));
        let (key, wait) = match (by_peer, by_client) {
            (None, None) => {
                self.forget(&peer_key);
                self.forget(&client_key);
                return Ok(());
            }
            (Some(p), c) => (peer_key, p.max(c.unwrap_or_default())),
            (None, Some(c)) => (client_key, c),
        };
        let first = (self.over.lock())
            .map(|mut over| over.len() < MAX_TRACKED_PEERS && over.insert(key))
            .unwrap_or(false);
        Err(Throttled {
            retry_after_seconds: wait.as_secs().max(1),
            first,
        })
    }

    /// Whether client `index` may have another token now; else how long to wait.
    pub fn issue(&self, index: usize) -> Result<(), Duration> {
        match self.issued.get(index).map(|l| l.check()) {
            Some(Err(not_until)) => Err(self.wait(not_until)),
            _ => Ok(()),
        }
    }

    fn wait(&self, not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> Duration {
        not_until.wait_time_from(self.clock.now())
    }

    fn forget(&self, key: &str) {
        if let Ok(mut over) = self.over.lock() {
            over.remove(key);
        }
    }

    /// `peer`, or the shared overflow peer when too many are tracked. Idle peers (whose budget
    /// is whole again) are dropped first.
    fn tracked(&self, peer: IpAddr) -> IpAddr {
        if self.peers.len() < MAX_TRACKED_PEERS {
            return peer;
        }
        self.peers.retain_recent();
        self.peers.shrink_to_fit();
        if self.peers.len() < MAX_TRACKED_PEERS {
            peer
        } else {
            OVERFLOW_PEER
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    #[test]
    fn failures_are_limited_per_peer_and_per_client_id() {
        let guard = Guard::new(3, 7, 10.0, 2);
        for _ in 0..3 {
            assert!(guard.failed(ip(2), None).is_ok());
        }
        let over = guard.failed(ip(2), None).unwrap_err();
        assert!(over.first && over.retry_after_seconds >= 1);
        assert!(!guard.failed(ip(2), None).unwrap_err().first, "logged once");
        // Another peer has its own budget; the unknown ids' shared budget (7) has two left.
        assert!(guard.failed(ip(3), None).is_ok());
        assert!(guard.failed(ip(3), None).is_ok());
        assert!(guard.failed(ip(3), None).unwrap_err().retry_after_seconds >= 1);
        // A configured client's budget is its own.
        assert!(guard.failed(ip(4), Some(0)).is_ok());
    }

    #[test]
    fn each_client_has_its_own_token_rate() {
        let guard = Guard::new(3, 3, 1.0, 2);
        assert!(guard.issue(0).is_ok());
        assert!(guard.issue(0).is_err());
        assert!(
            guard.issue(1).is_ok(),
            "client 1 is not held back by client 0"
        );
    }
}
