//! Per-producer quotas of a webhook connector (`[source.quotas]`), so one noisy feed cannot take
//! every slot: each producer — a fixed token (`token-1`, `token-2`, … in the order of `tokens`)
//! or a token endpoint client (its `client_id`) — has its own request rate, event rate and
//! share of in-flight requests. A producer over its quota gets `429` with a `Retry-After`
//! computed from its own quota; the others are not affected.
//!
//! The producers are the configured ones only, so the limiters (and the `producer` metric
//! label) are bounded by the configuration, whatever clients send.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One producer's quota; absent keys are unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Pushes per second (a burst of one second's worth is allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// Events per second summed over pushes (a push larger than one second's worth waits for
    /// its whole share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_second: Option<f64>,
    /// Pushes of this producer in flight at once (its share of `max_in_flight_requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight_requests: Option<usize>,
}

/// The producer name of every token of the external issuer (`[source.jwt]`) together.
pub const EXTERNAL_PRODUCER: &str = "jwt";

/// The producer name of fixed token number `index` (0-based) of `tokens`.
pub fn token_producer(index: usize) -> String {
    format!("token-{}", index + 1)
}

fn check_rate(key: &str, rate: Option<f64>) -> Result<(), (String, String)> {
    match rate {
        Some(r) if !(r.is_finite() && (0.001..=1_000_000.0).contains(&r)) => {
            Err((key.to_owned(), "must be between 0.001 and 1000000".into()))
        }
        _ => Ok(()),
    }
}

/// Checks `[source.quotas]`: keys are `*` (every producer without its own entry), `token-N`
/// for a configured token, or a token endpoint client id.
pub fn validate(
    quotas: &BTreeMap<String, QuotaConfig>,
    tokens: usize,
    clients: &[&str],
) -> Result<(), (String, String)> {
    for (name, q) in quotas {
        let known = name == "*"
            || clients.contains(&name.as_str())
            || (1..=tokens).any(|n| *name == format!("token-{n}"));
        if !known {
            return Err((
                format!("quotas.\"{name}\""),
                "names no producer: use \"*\", token-N for the N-th of `tokens`, a token_endpoint client_id, or jwt (the tokens of [source.jwt])".into(),
            ));
        }
        check_rate(
            &format!("quotas.\"{name}\".requests_per_second"),
            q.requests_per_second,
        )?;
        check_rate(
            &format!("quotas.\"{name}\".events_per_second"),
            q.events_per_second,
        )?;
        if q.max_in_flight_requests == Some(0) {
            return Err((
                format!("quotas.\"{name}\".max_in_flight_requests"),
                "must be at least 1".into(),
            ));
        }
    }
    Ok(())
}

/// A limiter of `per_second` cells (a second's worth may go at once) and its burst. Never panics:
/// a rate outside what a `Duration` holds saturates.
pub(crate) fn limiter(per_second: f64) -> (DefaultDirectRateLimiter, NonZeroU32) {
    let burst = NonZeroU32::new(per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32)
        .unwrap_or(NonZeroU32::MIN);
    let period = Duration::try_from_secs_f64(1.0 / per_second)
        .unwrap_or(Duration::from_secs(1000))
        .max(Duration::from_nanos(1));
    // Invariant: `period` is at least one nanosecond, so `with_period` is `Some`.
    let quota = Quota::with_period(period)
        .expect("a period of at least 1 ns")
        .allow_burst(burst);
    (RateLimiter::direct(quota), burst)
}

/// One producer's limiters.
struct Limits {
    requests: Option<DefaultDirectRateLimiter>,
    events: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
    in_flight: Option<Arc<Semaphore>>,
}

/// Why a push is refused: the `Retry-After` to send, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverQuota {
    /// Seconds until the producer's quota allows it.
    pub retry_after_seconds: u64,
    /// What is exhausted (`requests`, `events`, `in_flight`).
    pub what: &'static str,
}

/// A granted push: holds the producer's in-flight slot until dropped.
pub struct Admitted {
    _slot: Option<OwnedSemaphorePermit>,
}

/// A connector's quotas by producer.
pub struct Quotas {
    by_producer: HashMap<String, Limits>,
}

fn seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl Quotas {
    /// Limiters for every producer in `producers`, from its own entry or `*`.
    pub fn new(config: &BTreeMap<String, QuotaConfig>, producers: &[String]) -> Quotas {
        let by_producer = producers
            .iter()
            .filter_map(|p| {
                let q = config.get(p).or_else(|| config.get("*"))?;
                Some((
                    p.clone(),
                    Limits {
                        requests: q.requests_per_second.map(|r| limiter(r).0),
                        events: q.events_per_second.map(limiter),
                        in_flight: q
                            .max_in_flight_requests
                            .map(|n| Arc::new(Semaphore::new(n))),
                    },
                ))
            })
            .collect();
        Quotas { by_producer }
    }

    /// Admits one push of `producer` (its request rate and in-flight share).
    pub fn admit(&self, producer: &str) -> Result<Admitted, OverQuota> {
        let Some(limits) = self.by_producer.get(producer) else {
            return Ok(Admitted { _slot: None });
        };
        if let Some(r) = &limits.requests {
            if let Err(not_until) = r.check() {
                return Err(OverQuota {
                    retry_after_seconds: seconds(
                        not_until.wait_time_from(DefaultClock::default().now()),
                    )
                    .max(1),
                    what: "requests",
                });
            }
        }
        let slot = match &limits.in_flight {
            Some(s) => Some(s.clone().try_acquire_owned().map_err(|_| OverQuota {
                retry_after_seconds: 1,
                what: "in_flight",
            })?),
            None => None,
        };
        Ok(Admitted { _slot: slot })
    }

    /// Takes `events` from `producer`'s event rate.
    pub fn admit_events(&self, producer: &str, events: usize) -> Result<(), OverQuota> {
        let Some((limiter, burst)) = self
            .by_producer
            .get(producer)
            .and_then(|l| l.events.as_ref())
        else {
            return Ok(());
        };
        // A push larger than the burst can never pass at once: it takes the whole burst.
        let n = u32::try_from(events.max(1))
            .unwrap_or(u32::MAX)
            .min(burst.get());
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        match limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(OverQuota {
                retry_after_seconds: seconds(
                    not_until.wait_time_from(DefaultClock::default().now()),
                )
                .max(1),
                what: "events",
            }),
            // n never exceeds the burst.
            Err(_) => Err(OverQuota {
                retry_after_seconds: 1,
                what: "events",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(entries: &[(&str, QuotaConfig)], producers: &[&str]) -> Quotas {
        let config: BTreeMap<String, QuotaConfig> = entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let producers: Vec<String> = producers.iter().map(|p| p.to_string()).collect();
        Quotas::new(&config, &producers)
    }

    #[test]
    fn a_noisy_producer_is_refused_with_its_own_retry_after_and_others_pass() {
        let q = quotas(
            &[
                (
                    "*",
                    QuotaConfig {
                        requests_per_second: Some(100.0),
                        ..Default::default()
                    },
                ),
                (
                    "noisy",
                    QuotaConfig {
                        requests_per_second: Some(0.5),
                        ..Default::default()
                    },
                ),
            ],
            &["noisy", "quiet"],
        );
        assert!(q.admit("noisy").is_ok());
        let refused = q.admit("noisy").err().unwrap();
        assert_eq!(refused.what, "requests");
        assert!(
            (1..=2).contains(&refused.retry_after_seconds),
            "{refused:?}"
        );
        for _ in 0..50 {
            assert!(q.admit("quiet").is_ok());
        }
        assert!(q.admit("unknown").is_ok(), "no entry: unlimited");
    }

    #[test]
    fn in_flight_shares_and_event_rates() {
        let q = quotas(
            &[(
                "p",
                QuotaConfig {
                    max_in_flight_requests: Some(1),
                    events_per_second: Some(100.0),
                    ..Default::default()
                },
            )],
            &["p"],
        );
        let held = q.admit("p").unwrap();
        assert_eq!(q.admit("p").err().unwrap().what, "in_flight");
        drop(held);
        assert!(q.admit("p").is_ok());
        assert!(q.admit_events("p", 100).is_ok());
        let over = q.admit_events("p", 50).unwrap_err();
        assert_eq!(over.what, "events");
        assert_eq!(over.retry_after_seconds, 1);
    }

    #[test]
    fn quota_keys_must_name_producers() {
        let ok: BTreeMap<String, QuotaConfig> = [
            ("*".into(), QuotaConfig::default()),
            ("token-2".into(), QuotaConfig::default()),
            ("listhub".into(), QuotaConfig::default()),
        ]
        .into();
        validate(&ok, 2, &["listhub"]).unwrap();
        let bad: BTreeMap<String, QuotaConfig> =
            [("token-3".into(), QuotaConfig::default())].into();
        assert_eq!(validate(&bad, 2, &[]).unwrap_err().0, "quotas.\"token-3\"");
        let bad: BTreeMap<String, QuotaConfig> = [(
            "*".into(),
            QuotaConfig {
                requests_per_second: Some(0.0),
                ..Default::default()
            },
        )]
        .into();
        assert!(validate(&bad, 0, &[]).is_err());
    }
}
