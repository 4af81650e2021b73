//! The order of a feed with an explicit clock: gaps after the reorder window, late events
//! that are not regressions, partitions, and the bound on waiting ranges.

use super::*;

const T0: Duration = Duration::from_secs(1_800_000_000);

fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(seconds)
}

fn p(n: i32) -> Stream {
    Some((Arc::from("mls.Property"), n))
}

fn sum(a: Observed, b: Observed) -> Observed {
    Observed {
        gap_sequences: a.gap_sequences + b.gap_sequences,
        regressions: a.regressions + b.regressions,
    }
}

#[test]
fn a_skipped_number_is_a_gap_once_the_window_has_passed() {
    let mut o = FeedOrder::default();
    let seen = o.observe(&None, &[1101, 1111, 1112], at(0));
    assert_eq!(seen, Observed::default(), "1102..=1110 may still come");
    assert_eq!(o.high_water_mark(), Some(1112));
    assert_eq!(o.settle(at(29)), 0);
    assert_eq!(o.settle(at(30)), 9);
    // After the window, an old number is a regression (a resend, a reset producer).
    let seen = o.observe(&None, &[1105], at(31));
    assert_eq!(seen.regressions, 1);
}

#[test]
fn concurrent_pushes_confirmed_out_of_order_make_neither_gaps_nor_regressions() {
    let mut o = FeedOrder::default();
    let mut total = o.observe(&None, &[1, 2, 3], at(0));
    // The push holding 4..=6 is confirmed after the one holding 7..=9.
    total = sum(total, o.observe(&None, &[7, 8, 9], at(1)));
    total = sum(total, o.observe(&None, &[4, 5, 6], at(2)));
    total = sum(total, o.observe(&None, &[10], at(60)));
    assert_eq!(total, Observed::default());
}

#[test]
fn partitions_overtaking_each_other_are_judged_per_partition() {
    let mut o = FeedOrder::default();
    let mut total = Observed::default();
    for (stream, seqs, second) in [
        (p(0), vec![3, 6, 9, 12], 0),
        (p(1), vec![1, 4, 7], 1),
        (p(2), vec![2, 5, 8, 11], 2),
        (p(1), vec![10, 13], 3),
        (p(0), vec![15], 4), // 14 skipped by the producer
        (p(2), vec![16], 50),
    ] {
        total = sum(total, o.observe(&stream, &seqs, at(second)));
    }
    assert_eq!(
        total,
        Observed {
            gap_sequences: 1,
            regressions: 0
        },
        "only 14, after its window"
    );
    assert_eq!(o.high_water_mark(), Some(16));
    // A partition going back is a regression, however long its lane lagged.
    let seen = o.observe(&p(2), &[4], at(51));
    assert_eq!(seen.regressions, 1);
    // A lagging partition's in-order event below the mark is not.
    let seen = o.observe(&p(1), &[14], at(52));
    assert_eq!(seen.regressions, 0);
}

#[test]
fn waiting_ranges_split_as_late_events_fill_them() {
    let mut o = FeedOrder::default();
    o.observe(&None, &[1, 10], at(0));
    o.observe(&None, &[5], at(1));
    o.observe(&None, &[2, 9], at(2));
    assert_eq!(o.settle(at(30)), 5, "3, 4, 6, 7, 8");
    assert!(o.waiting.is_empty());
}

#[test]
fn the_waiting_ranges_stay_bounded() {
    let mut o = FeedOrder::default();
    let every_other: Vec<i64> = (0..10_000).map(|i| 1 + 2 * i).collect();
    let seen = o.observe(&None, &every_other, at(0));
    assert!(o.waiting.len() <= MAX_WAITING);
    assert_eq!(
        seen.gap_sequences as usize,
        9_999 - MAX_WAITING,
        "the oldest count at once"
    );
}

#[test]
fn a_resumed_feed_goes_on_from_its_mark() {
    let mut o = FeedOrder::default();
    o.resume(100);
    let seen = o.observe(&None, &[101, 103], at(0));
    assert_eq!(seen, Observed::default());
    assert_eq!(o.settle(at(30)), 1);
    assert_eq!(o.high_water_mark(), Some(103));
}
