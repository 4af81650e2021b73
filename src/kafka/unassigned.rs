//! A Kafka source that holds no partition while its topics have lag nobody consumes is stuck:
//! the group coordinator can hand a member an empty assignment and never rebalance again (seen
//! with tansu, when a killed member expired during `SyncGroup`), and a member can own partitions
//! without consuming them. Either way the events wait and the bridge looked healthy.
//!
//! While its assignment is empty the source looks at its topics: per partition, the group's
//! committed offset and the high watermark. Partitions with lag whose committed offset does not
//! move are unconsumed; when some stay so for `unassigned_rejoin_after_ms`, the source reports
//! not ready and gives up, and its supervisor starts a new consumer, which joins the group
//! afresh and triggers a rebalance. A member left idle because the group has more members than
//! partitions is not affected: the other members consume, so the committed offsets move.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::source_config::OffsetReset;

/// Bound on each metadata and offset request of a check.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Partitions with lag and the group's committed offset of each (its position if none).
pub type Lagging = HashMap<(String, i32), i64>;

/// What the watch remembers between checks.
#[derive(Debug, Default)]
pub struct UnassignedWatch {
    /// Since when the source has held nothing while these partitions lagged, unmoved.
    since: Option<(Instant, Lagging)>,
}

impl UnassignedWatch {
    /// Takes a check's result (`None`: the source holds partitions, or nothing lags); returns
    /// why to rejoin once lagging partitions stayed unconsumed for `bound`.
    pub fn observe(&mut self, lagging: Option<Lagging>, bound: Duration) -> Option<String> {
        let Some(lagging) = lagging.filter(|l| !l.is_empty()) else {
            self.since = None;
            return None;
        };
        match &self.since {
            // Someone consumes (an offset moved) or the set changed: watch afresh.
            Some((_, before)) if before != &lagging => {
                self.since = Some((Instant::now(), lagging));
                None
            }
            Some((since, _)) if since.elapsed() >= bound => {
                // `lagging` is not empty (filtered above).
                let (topic, partition) = lagging.keys().min()?;
                Some(format!(
                    "no partition assigned for {} s while {} partition(s) of the subscribed \
                     topics have lag nobody consumes (e.g. {topic} partition {partition}); \
                     rejoining the group",
                    since.elapsed().as_secs(),
                    lagging.len()
                ))
            }
            Some(_) => None,
            None => {
                self.since = Some((Instant::now(), lagging));
                None
            }
        }
    }
}

/// The lagging partitions of `topics` (names, or `^regex`) when `consumer` holds none; `None`
/// when it holds some. Blocking: run on a blocking thread.
pub fn lagging<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topics: &[String],
    reset: OffsetReset,
) -> Result<Option<Lagging>, String> {
    let assigned = consumer.assignment().map_err(|e| e.to_string())?;
    if assigned.count() > 0 {
        return Ok(None);
    }
    let patterns = (topics.iter())
        .filter(|t| t.starts_with('^'))
        .map(|t| regex::Regex::new(t).map_err(|e| format!("topic pattern {t}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = consumer
        .fetch_metadata(None, REQUEST_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let mut wanted = TopicPartitionList::new();
    for topic in metadata.topics() {
        let name = topic.name();
        let subscribed =
            topics.iter().any(|t| t == name) || patterns.iter().any(|p| p.is_match(name));
        if subscribed && !name.starts_with("__") {
            for partition in topic.partitions() {
                wanted.add_partition(name, partition.id());
            }
        }
    }
    if wanted.count() == 0 {
        return Ok(Some(Lagging::new()));
    }
    let committed = consumer
        .committed_offsets(wanted, REQUEST_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let mut lagging = Lagging::new();
    for element in committed.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let position = match element.offset() {
            Offset::Offset(n) => n,
            // No commit yet: the group starts where `auto_offset_reset` says.
            _ if reset == OffsetReset::Earliest => low,
            _ => high,
        };
        if high > position {
            lagging.insert((topic.to_owned(), partition), position);
        }
    }
    Ok(Some(lagging))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag(offset: i64) -> Option<Lagging> {
        Some(HashMap::from([(("t".to_owned(), 0), offset)]))
    }

    #[test]
    fn only_unmoved_lag_for_the_whole_bound_rejoins() {
        let bound = Duration::from_millis(50);
        let mut watch = UnassignedWatch::default();
        assert_eq!(watch.observe(lag(3), bound), None, "the watch starts");
        std::thread::sleep(Duration::from_millis(60));
        // The committed offset moved: another member consumes; the watch starts over.
        assert_eq!(watch.observe(lag(4), bound), None);
        assert_eq!(watch.observe(lag(4), bound), None, "not yet");
        std::thread::sleep(Duration::from_millis(60));
        let why = watch.observe(lag(4), bound).expect("rejoin");
        assert!(why.contains("t partition 0"), "{why}");
        // Holding partitions, or nothing lagging, clears it.
        assert_eq!(watch.observe(None, bound), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(watch.observe(lag(4), bound), None, "watched afresh");
        assert_eq!(watch.observe(Some(Lagging::new()), bound), None);
    }
}
