//! The retry engine: caps, full jitter, `Retry-After`, budgets, cancellation.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

#[test]
fn caps_double_from_min_to_max_and_waits_are_full_jitter() {
    let mut b = Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
    let caps: Vec<u128> = (0..6).map(|_| b.next_cap().as_millis()).collect();
    assert_eq!(caps, [20, 40, 80, 160, 200, 200]);
    b.reset();
    assert_eq!(b.next_cap(), Duration::from_millis(20));
    // Full jitter: waits spread over [0, cap], some well below half of it.
    let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(100));
    let waits: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
    assert!(waits.iter().all(|w| *w <= Duration::from_millis(100)));
    assert!(
        waits.iter().any(|w| *w < Duration::from_millis(25)),
        "{waits:?}"
    );
    assert!(
        waits.iter().any(|w| *w > Duration::from_millis(75)),
        "{waits:?}"
    );
    // Huge configurations neither overflow nor panic.
    let mut b = Backoff::new(Duration::from_secs(u64::MAX / 4), Duration::MAX);
    for _ in 0..5 {
        b.next_delay();
    }
}

#[test]
fn retry_after_wins_only_when_longer() {
    let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(10));
    assert_eq!(
        wait_after(&mut b, Some(Duration::from_secs(5))),
        Duration::from_secs(5)
    );
    assert!(wait_after(&mut b, Some(Duration::ZERO)) <= Duration::from_millis(10));
    assert!(wait_after(&mut b, None) <= Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn the_budget_ignores_time_spent_waiting_for_the_peer() {
    let mut budget = Budget::new(Duration::from_secs(10));
    budget.waited(Duration::from_secs(100)); // before the first failure: not counted
    assert!(!budget.failed());
    tokio::time::sleep(Duration::from_secs(8)).await;
    budget.waited(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !budget.failed(),
        "13 s elapsed, 5 of them asked for by the peer"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(budget.failed());
}

#[tokio::test(start_paused = true)]
async fn until_ok_retries_with_backoff_and_stops_when_cancelled() {
    let tries = AtomicUsize::new(0);
    let cancel = CancellationToken::new();
    let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(40));
    let got = until_ok(backoff.clone(), &cancel, "write", "c", || async {
        match tries.fetch_add(1, Ordering::SeqCst) {
            0..=2 => Err("down"),
            n => Ok(n),
        }
    })
    .await;
    assert_eq!(got, Some(3));
    cancel.cancel();
    let never: Option<()> =
        until_ok(backoff, &cancel, "write", "c", || async { Err("down") }).await;
    assert_eq!(never, None);
    // Regression: `Instant + huge` panicked.
    let far = saturating_deadline(Duration::MAX);
    assert!(far > Instant::now() + Duration::from_secs(365 * 24 * 3600));
}

#[test]
fn zero_or_inverted_backoffs_are_refused_naming_the_key() {
    let config = |min, max| RetryConfig {
        min_backoff_ms: min,
        max_backoff_ms: max,
    };
    assert!(RetryConfig::default().validate().is_ok());
    assert_eq!(config(0, 100).validate().unwrap_err().0, "min_backoff_ms");
    assert_eq!(config(500, 100).validate().unwrap_err().0, "max_backoff_ms");
    assert_eq!(
        config(1, u64::MAX).validate().unwrap_err().0,
        "max_backoff_ms"
    );
}
