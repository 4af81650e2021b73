//! RESO multi-valued payloads built from the events' raw bytes, and the cutting of a batch into
//! POST-sized chunks.
//!
//! The body is `{"@reso.context":"urn:reso:metadata:2.0:resource:entityevent","value":[e1,e2]}`
//! where each `eN` is the event object exactly as the producer sent it: nothing is parsed or
//! re-serialized on the way out. Chunks keep source order, respect `max_events` and `max_bytes`
//! (envelope included), and never mix `EntityEventSource` labels when the label is carried from
//! the events (it is one header per POST).

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::connector::Message;

/// `@reso.context` of every payload the sink sends.
pub const RESO_CONTEXT: &str = "urn:reso:metadata:2.0:resource:entityevent";

const PREFIX: &str =
    "{\"@reso.context\":\"urn:reso:metadata:2.0:resource:entityevent\",\"value\":[";
const SUFFIX: &str = "]}";

/// Bytes of the envelope around the events.
pub const ENVELOPE_BYTES: usize = PREFIX.len() + SUFFIX.len();

/// The POST body for `events`.
pub fn body(events: &[Message]) -> Bytes {
    let mut buf = BytesMut::with_capacity(body_len(events));
    buf.put_slice(PREFIX.as_bytes());
    for (i, m) in events.iter().enumerate() {
        if i > 0 {
            buf.put_u8(b',');
        }
        buf.put_slice(&m.payload);
    }
    buf.put_slice(SUFFIX.as_bytes());
    buf.freeze()
}

/// Length of [`body`] without building it.
pub fn body_len(events: &[Message]) -> usize {
    ENVELOPE_BYTES
        + events.iter().map(|m| m.payload.len()).sum::<usize>()
        + events.len().saturating_sub(1)
}

/// One POST's worth of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The events, as positions in the batch.
    pub range: Range<usize>,
    /// A single event whose payload alone exceeds `max_bytes`: it can never be sent.
    pub oversized: bool,
}

/// Cuts `batch` into chunks of at most `max_events` events and `max_bytes` body bytes, in
/// order; with `split_on_label`, events with different `EntityEventSource` never share a chunk.
pub fn chunks(
    batch: &[Message],
    max_events: usize,
    max_bytes: usize,
    split_on_label: bool,
) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = ENVELOPE_BYTES;
    for (i, m) in batch.iter().enumerate() {
        let alone = ENVELOPE_BYTES + m.payload.len();
        if alone > max_bytes {
            if start < i {
                out.push(Chunk {
                    range: start..i,
                    oversized: false,
                });
            }
            out.push(Chunk {
                range: i..i + 1,
                oversized: true,
            });
            start = i + 1;
            bytes = ENVELOPE_BYTES;
            continue;
        }
        let extra = m.payload.len() + usize::from(i > start);
        let label_changes = split_on_label
            && i > start
            && batch[start].source_label.as_deref() != m.source_label.as_deref();
        if i > start && (i - start >= max_events || bytes + extra > max_bytes || label_changes) {
            out.push(Chunk {
                range: start..i,
                oversized: false,
            });
            start = i;
            bytes = ENVELOPE_BYTES + m.payload.len();
        } else {
            bytes += extra;
        }
    }
    if start < batch.len() {
        out.push(Chunk {
            range: start..batch.len(),
            oversized: false,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn event(seq: i64, label: Option<&str>, pad: usize) -> Message {
        let raw = format!(
            r#"{{"EntityEventSequence": {seq}, "ResourceName":"Property","ResourceRecordKey":"k{seq}","Pad":"{}"}}"#,
            "x".repeat(pad)
        );
        Message {
            delete: false,
            conflict: None,
            sequence: seq,
            resource_name: "Property".into(),
            record_key: format!("k{seq}"),
            source_label: label.map(Arc::from),
            payload: Bytes::from(raw),
            origin: None,
        }
    }

    #[test]
    fn body_is_the_raw_events_in_a_reso_envelope() {
        let events = vec![event(1, None, 0), event(2, None, 3)];
        let body = body(&events);
        assert_eq!(body.len(), body_len(&events));
        let text = std::str::from_utf8(&body).unwrap();
        assert!(
            text.contains(r#"{"EntityEventSequence": 1, "#),
            "spacing kept: {text}"
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["@reso.context"], RESO_CONTEXT);
        assert_eq!(v["value"].as_array().unwrap().len(), 2);
        assert_eq!(v["value"][1]["Pad"], "xxx");
        let empty: serde_json::Value = serde_json::from_slice(&super::body(&[])).unwrap();
        assert_eq!(empty["value"], serde_json::json!([]));
    }

    #[test]
    fn chunks_respect_max_events() {
        let events: Vec<Message> = (1..=7).map(|i| event(i, None, 0)).collect();
        let c = chunks(&events, 3, 1 << 20, false);
        let ranges: Vec<_> = c.iter().map(|c| c.range.clone()).collect();
        assert_eq!(ranges, vec![0..3, 3..6, 6..7]);
    }

    #[test]
    fn chunks_respect_max_bytes_exactly() {
        let events: Vec<Message> = (1..=5).map(|i| event(i, None, 100)).collect();
        let two = body_len(&events[..2]);
        let c = chunks(&events, 100, two, false);
        for chunk in &c {
            assert!(body_len(&events[chunk.range.clone()]) <= two);
            assert!(!chunk.oversized);
        }
        assert_eq!(
            c.iter().map(|c| c.range.len()).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        // One byte less and only single events fit.
        let c = chunks(&events, 100, two - 1, false);
        assert_eq!(c.len(), 5);
    }

    #[test]
    fn oversized_events_stand_alone() {
        let events = vec![event(1, None, 0), event(2, None, 5000), event(3, None, 0)];
        let c = chunks(&events, 100, 2000, false);
        assert_eq!(
            c,
            vec![
                Chunk {
                    range: 0..1,
                    oversized: false
                },
                Chunk {
                    range: 1..2,
                    oversized: true
                },
                Chunk {
                    range: 2..3,
                    oversized: false
                },
            ]
        );
    }

    #[test]
    fn carried_labels_are_never_mixed() {
        let events = vec![
            event(1, Some("A"), 0),
            event(2, Some("A"), 0),
            event(3, Some("B"), 0),
            event(4, None, 0),
        ];
        let ranges: Vec<_> = chunks(&events, 100, 1 << 20, true)
            .into_iter()
            .map(|c| c.range)
            .collect();
        assert_eq!(ranges, vec![0..2, 2..3, 3..4]);
        assert_eq!(chunks(&events, 100, 1 << 20, false).len(), 1);
    }
}
