//! Politeness towards one consumer endpoint, shared by every partition of a connector: a cap on
//! concurrent POSTs, request and event rates (governor, GCRA), and the endpoint-wide pause a
//! consumer asks for with `429`/`503` + `Retry-After`.
//!
//! A POST takes, in this order: the end of any pause, a concurrency permit, a request cell, the
//! batch's event cells, and once more the end of any pause (one may have started while it
//! waited). Holding the permit while waiting for the rate limiter keeps the measured rate at or
//! under the configured one: cells are only taken by requests that are about to be sent.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::config::LimitsConfig;

/// One endpoint's shared limits.
pub struct Endpoint {
    permits: Arc<Semaphore>,
    requests: Option<DefaultDirectRateLimiter>,
    events: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
    paused_until: Mutex<Option<Instant>>,
}

fn quota(per_second: f64, burst: NonZeroU32) -> Quota {
    // `per_second` is validated (one a day to a million); `try_` keeps a bad value from panicking.
    let period = Duration::try_from_secs_f64(1.0 / per_second)
        .unwrap_or(Duration::from_secs(86_400))
        .max(Duration::from_nanos(1));
    Quota::with_period(period)
        .expect("positive period")
        .allow_burst(burst)
}

/// The request bucket's burst: what the rate allows in one millisecond, at least one. Waiting
/// callers sleep on the tokio timer, which ticks in milliseconds: with a burst of one, a rate
/// above a few thousand per second could never be reached (one cell per tick), so cells are
/// spaced evenly at the timer's resolution instead.
fn per_millisecond(per_second: f64) -> NonZeroU32 {
    let cells = (per_second / 1000.0).ceil().clamp(1.0, f64::from(u32::MAX)) as u32;
    NonZeroU32::new(cells).unwrap_or(NonZeroU32::MIN)
}

impl Endpoint {
    /// Limits from config; `max_events` sizes the event bucket so a full batch can pass.
    pub fn new(limits: &LimitsConfig, max_events: usize) -> Self {
        let requests = limits
            .requests_per_second
            .map(|r| RateLimiter::direct(quota(r, per_millisecond(r))));
        let events = limits.events_per_second.map(|r| {
            // Just enough burst for one full batch: smooth, and a batch never waits forever.
            let burst = u32::try_from(max_events).unwrap_or(u32::MAX);
            let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            (RateLimiter::direct(quota(r, burst)), burst)
        });
        Endpoint {
            permits: Arc::new(Semaphore::new(limits.max_concurrent_requests.max(1))),
            requests,
            events,
            paused_until: Mutex::new(None),
        }
    }

    /// Pauses the whole endpoint for `pause` (never shortens a longer pause already set).
    pub fn pause(&self, pause: Duration) -> Instant {
        let until = crate::runtime::retry::saturating_deadline(pause);
        let mut current = self.paused_until.lock().expect("pause lock");
        let until = match *current {
            Some(existing) if existing > until => existing,
            _ => until,
        };
        *current = Some(until);
        until
    }

    /// When the current pause ends, if one is in force.
    pub fn paused_until(&self) -> Option<Instant> {
        let until = *self.paused_until.lock().expect("pause lock");
        until.filter(|u| *u > Instant::now())
    }

    async fn wait_unpaused(&self) {
        while let Some(until) = self.paused_until() {
            tokio::time::sleep_until(until).await;
        }
    }

    /// Waits until a POST of `events` events may go out; the permit ends with the POST.
    pub async fn acquire(&self, events: usize) -> OwnedSemaphorePermit {
        self.wait_unpaused().await;
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        if let Some(limiter) = &self.requests {
            limiter.until_ready().await;
        }
        if let Some((limiter, burst)) = &self.events {
            let n = u32::try_from(events.max(1))
                .unwrap_or(u32::MAX)
                .min(burst.get());
            let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
            // n never exceeds the burst, so capacity is always sufficient.
            let _ = limiter.until_n_ready(n).await;
        }
        self.wait_unpaused().await;
        permit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_concurrent_requests: usize) -> LimitsConfig {
        LimitsConfig {
            max_concurrent_requests,
            ..LimitsConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pause_holds_every_caller_until_it_ends() {
        let endpoint = Arc::new(Endpoint::new(&limits(4), 100));
        let start = Instant::now();
        endpoint.pause(Duration::from_secs(2));
        // A shorter pause requested later does not shorten it.
        endpoint.pause(Duration::from_secs(1));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let e = endpoint.clone();
                tokio::spawn(async move {
                    let _permit = e.acquire(1).await;
                    Instant::now()
                })
            })
            .collect();
        for w in waiters {
            assert!(w.await.unwrap() - start >= Duration::from_secs(2));
        }
        assert!(endpoint.paused_until().is_none());
    }

    /// governor runs on its own (real) clock, so this one takes ~0.3 s of wall time.
    #[tokio::test]
    async fn event_and_request_rates_are_enforced() {
        let limits = LimitsConfig {
            requests_per_second: Some(100.0),
            events_per_second: Some(100.0),
            max_concurrent_requests: 4,
        };
        // A full batch (10) may go at once, then the events bucket refills at 100/s.
        let endpoint = Endpoint::new(&limits, 10);
        let start = std::time::Instant::now();
        for _ in 0..4 {
            drop(endpoint.acquire(10).await);
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(290),
            "40 events at 100/s: {elapsed:?}"
        );
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        // Requests alone: 11 single-event POSTs at 100/s need at least 100 ms.
        let endpoint = Endpoint::new(
            &LimitsConfig {
                events_per_second: None,
                ..limits
            },
            10,
        );
        let start = std::time::Instant::now();
        for _ in 0..11 {
            drop(endpoint.acquire(1).await);
        }
        assert!(
            start.elapsed() >= Duration::from_millis(95),
            "{:?}",
            start.elapsed()
        );
    }

    /// Regression: with a burst of one cell, a caller woken by the millisecond timer found one
    /// cell at most, so `requests_per_second = 10000` gave about 5000 (bench `hydrate`).
    #[test]
    fn the_request_bucket_holds_what_one_millisecond_allows() {
        assert_eq!(per_millisecond(2.0).get(), 1);
        assert_eq!(per_millisecond(1000.0).get(), 1);
        assert_eq!(per_millisecond(1001.0).get(), 2);
        assert_eq!(per_millisecond(10_000.0).get(), 10);
        assert_eq!(per_millisecond(1e12).get(), 1_000_000_000);
        assert_eq!(per_millisecond(f64::NAN).get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_capped() {
        let endpoint = Endpoint::new(&limits(2), 100);
        let a = endpoint.acquire(1).await;
        let _b = endpoint.acquire(1).await;
        let third = tokio::time::timeout(Duration::from_secs(5), endpoint.acquire(1)).await;
        assert!(third.is_err(), "a third POST must wait for a permit");
        drop(a);
        let _permit = tokio::time::timeout(Duration::from_secs(1), endpoint.acquire(1))
            .await
            .expect("a freed permit is reused");
    }
}
