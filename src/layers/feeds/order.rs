//! One feed's sequence as the sink confirmed it: the high-water mark, gaps (sequence numbers
//! the producer skipped) and regressions (the producer's order going back).
//!
//! Confirmations come out of the feed's order where sends run side by side: a Kafka source
//! spreads a feed over partitions, one lane each, and lanes overtake each other; a producer may
//! push concurrently. So a number the mark jumps over is a gap only if it has not arrived
//! [`REORDER_WINDOW`] later: until then it waits in a bounded set of ranges, and an event that
//! fills one is late, not a regression. An event below the mark that fills no waiting gap is a
//! regression; on a Kafka source, an event below what its own partition published is one too
//! (each partition is in order, however long its lane lagged).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Where a feed's events come in order: a Kafka source's (topic, partition); `None` for one
/// stream (pushes, queues, the embedded log, poll sources).
pub type Stream = Option<(Arc<str>, i32)>;

/// How long a number the mark jumped over may still arrive before it counts as a gap.
pub const REORDER_WINDOW: Duration = Duration::from_secs(30);
/// Most gap ranges waiting per feed; past it the oldest count at once.
const MAX_WAITING: usize = 4_096;

/// What one confirmed stretch of events (or the passing of time) did to the feed's order.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Sequence numbers found skipped.
    pub gap_sequences: u64,
    /// Events that went back in the producer's order.
    pub regressions: u64,
}

/// The order of one feed.
#[derive(Debug, Clone, Default)]
pub struct FeedOrder {
    high_water_mark: Option<i64>,
    /// Kafka sources: the highest sequence each partition published (bounded by the partitions
    /// the connector reads).
    partitions: HashMap<(Arc<str>, i32), i64>,
    /// Numbers the mark jumped over that have not arrived yet: first → (last, since when).
    /// Disjoint; their order by first number is their order in time.
    waiting: BTreeMap<i64, (i64, SystemTime)>,
}

impl FeedOrder {
    /// The highest sequence published.
    pub fn high_water_mark(&self) -> Option<i64> {
        self.high_water_mark
    }

    /// Resumes after a restart at `high_water_mark` (from the dedupe store).
    pub fn resume(&mut self, high_water_mark: i64) {
        self.high_water_mark = Some(high_water_mark);
    }

    /// Takes `published` (in the order confirmed) from `stream`, and counts the gaps whose
    /// window has passed.
    pub fn observe(&mut self, stream: &Stream, published: &[i64], now: SystemTime) -> Observed {
        // Numbers whose window passed are gaps before these events are judged.
        let mut seen = Observed {
            gap_sequences: self.settle(now),
            regressions: 0,
        };
        for &sequence in published {
            let late = self.fill(sequence);
            let behind = match stream {
                Some(key) => {
                    let last = self.partitions.entry(key.clone()).or_insert(sequence);
                    let behind = sequence < *last;
                    *last = (*last).max(sequence);
                    behind
                }
                None => !late && self.high_water_mark.is_some_and(|hwm| sequence < hwm),
            };
            if behind {
                seen.regressions += 1;
            }
            match self.high_water_mark {
                Some(hwm) if sequence > hwm => {
                    if sequence > hwm + 1 {
                        self.waiting.insert(hwm + 1, (sequence - 1, now));
                    }
                    self.high_water_mark = Some(sequence);
                }
                Some(_) => {}
                None => self.high_water_mark = Some(sequence),
            }
        }
        seen.gap_sequences += self.settle(now);
        seen
    }

    /// Counts the waiting numbers older than the window (and the oldest beyond the bound).
    pub fn settle(&mut self, now: SystemTime) -> u64 {
        let mut gaps = 0;
        while let Some((&first, &(last, since))) = self.waiting.first_key_value() {
            let expired = now.duration_since(since).unwrap_or_default() >= REORDER_WINDOW;
            if !expired && self.waiting.len() <= MAX_WAITING {
                break;
            }
            // Both positive and first <= last, so this fits.
            gaps += (last - first + 1) as u64;
            self.waiting.remove(&first);
        }
        gaps
    }

    /// Takes `sequence` out of the waiting gaps; whether it was one.
    fn fill(&mut self, sequence: i64) -> bool {
        let Some((&first, &(last, since))) = self.waiting.range(..=sequence).next_back() else {
            return false;
        };
        if sequence > last {
            return false;
        }
        self.waiting.remove(&first);
        if first < sequence {
            self.waiting.insert(first, (sequence - 1, since));
        }
        if sequence < last {
            self.waiting.insert(sequence + 1, (last, since));
        }
        true
    }
}

#[cfg(test)]
#[path = "order_tests.rs"]
mod tests;
