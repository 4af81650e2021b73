//! Turning a consumed Kafka record back into a [`Message`].
//!
//! Records written by the Kafka sink carry everything in headers (`EntityEventSequence`,
//! `ResourceName`, `EntityEventSource`) and the key (`ResourceRecordKey`); records written by
//! other producers may only have the JSON value, so missing facts are read from it. The value is
//! always checked to be one well-formed JSON object, because it is spliced byte for byte into
//! the outgoing payload. A record that fails is *poison*: it is dead-lettered, never dropped.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use crate::connector::{Message, Origin};

/// A record as read from Kafka, borrowed.
#[derive(Debug, Clone, Default)]
pub struct RecordView<'a> {
    /// The record key.
    pub key: Option<&'a [u8]>,
    /// The record value.
    pub payload: Option<&'a [u8]>,
    /// Headers with a value, in record order.
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// Some header could not be read (a key that is not UTF-8): the record is unparseable.
    pub unreadable_header: bool,
}

impl<'a> RecordView<'a> {
    fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// A record that is not a usable EntityEvent.
#[derive(Debug, Clone)]
pub struct PoisonRecord {
    /// The record key, as read.
    pub key: Option<Bytes>,
    /// The record value, as read (empty when the record had none).
    pub payload: Bytes,
    /// `ResourceName` header, if readable.
    pub resource_name: Option<String>,
    /// `EntityEventSource` header, if readable.
    pub source_label: Option<String>,
    /// Where it was read.
    pub origin: Origin,
    /// What is wrong with it (no payload data).
    pub reason: String,
}

/// The fields read from the JSON value when headers lack them; unknown fields are skipped.
#[derive(Deserialize)]
struct EventFields {
    #[serde(rename = "EntityEventSequence")]
    sequence: Option<serde_json::Number>,
    #[serde(rename = "ResourceName")]
    resource_name: Option<String>,
    #[serde(rename = "ResourceRecordKey")]
    record_key: Option<serde_json::Value>,
}

fn short_name(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= 255
}

/// What [`parse_fields`] extracts: sequence, resource name, record key, label, payload.
type Fields = (i64, String, String, Option<Arc<str>>, Bytes);

/// Parses a record; `Err` carries the reason it is poison.
fn parse_fields(record: &RecordView<'_>, max_depth: usize) -> Result<Fields, String> {
    if record.unreadable_header {
        return Err("a header key is not UTF-8".into());
    }
    let Some(payload) = record.payload else {
        return tombstone(record);
    };
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err("value is not a JSON object".into());
    }
    if crate::event::deeper_than(payload, max_depth) {
        return Err(format!(
            "value nests objects and arrays deeper than {max_depth} levels (max_json_depth)"
        ));
    }
    let fields: EventFields =
        serde_json::from_slice(payload).map_err(|e| format!("value is not valid JSON: {e}"))?;
    let sequence = match record.header("EntityEventSequence") {
        Some(h) => h
            .trim()
            .parse::<i64>()
            .map_err(|_| "EntityEventSequence header is not an integer".to_owned())?,
        None => fields
            .sequence
            .as_ref()
            .and_then(serde_json::Number::as_i64)
            .ok_or("EntityEventSequence is missing or not an integer")?,
    };
    if sequence <= 0 {
        return Err("EntityEventSequence must be positive".into());
    }
    let resource_name = match record.header("ResourceName") {
        Some(h) => h.to_owned(),
        None => fields.resource_name.ok_or("ResourceName is missing")?,
    };
    if !short_name(&resource_name) {
        return Err("ResourceName must be 1 to 255 characters".into());
    }
    if !crate::resources::well_formed(&resource_name) {
        return Err(
            "ResourceName must be ASCII letters, digits and `_`, not starting with a digit".into(),
        );
    }
    let record_key = match record.key.map(std::str::from_utf8) {
        Some(Ok(k)) if !k.is_empty() => k.to_owned(),
        Some(Err(_)) => return Err("record key is not UTF-8".into()),
        _ => match fields.record_key {
            Some(serde_json::Value::String(s)) => s,
            _ => {
                return Err("ResourceRecordKey is missing (no record key, no string field)".into())
            }
        },
    };
    if !short_name(&record_key) {
        return Err("ResourceRecordKey must be 1 to 255 characters".into());
    }
    let label = label_of(record);
    Ok((
        sequence,
        resource_name,
        record_key,
        label,
        Bytes::copy_from_slice(payload),
    ))
}

/// The record's `EntityEventSource` header, when usable.
fn label_of(record: &RecordView<'_>) -> Option<Arc<str>> {
    record
        .header("EntityEventSource")
        .filter(|l| short_name(l))
        .map(Arc::from)
}

/// A record without value: a tombstone the Kafka sink wrote for a deleted record (key =
/// ResourceRecordKey, headers `EntityEventSequence` and `ResourceName`), read back as the
/// delete-marked event it stands for. Without those headers it is no EntityEvent.
fn tombstone(record: &RecordView<'_>) -> Result<Fields, String> {
    let sequence = record
        .header("EntityEventSequence")
        .and_then(|h| h.trim().parse::<i64>().ok())
        .filter(|s| *s > 0)
        .ok_or("record has no value (and is no tombstone of the bridge's: no EntityEventSequence header)")?;
    let resource_name = record
        .header("ResourceName")
        .filter(|r| short_name(r) && crate::resources::well_formed(r))
        .ok_or("record has no value (and is no tombstone of the bridge's: no valid ResourceName header)")?;
    let record_key = match record.key.map(std::str::from_utf8) {
        Some(Ok(k)) if short_name(k) => k,
        _ => return Err("tombstone without a valid record key".into()),
    };
    let payload = serde_json::json!({
        "EntityEventSequence": sequence,
        "ResourceName": resource_name,
        "ResourceRecordKey": record_key,
        crate::poll::events::DELETED_ANNOTATION: true,
    });
    let label = label_of(record);
    Ok((
        sequence,
        resource_name.to_owned(),
        record_key.to_owned(),
        label,
        Bytes::from(payload.to_string()),
    ))
}

/// Turns a record into a message, or into a poison record to dead-letter.
pub fn parse_record(
    record: &RecordView<'_>,
    origin: Origin,
    max_depth: usize,
) -> Result<Message, Box<PoisonRecord>> {
    match parse_fields(record, max_depth) {
        Ok((sequence, resource_name, record_key, source_label, payload)) => Ok(Message {
            delete: record.payload.is_none(),
            conflict: None,
            sequence,
            resource_name,
            record_key,
            source_label,
            payload,
            origin: Some(origin),
        }),
        Err(reason) => Err(Box::new(PoisonRecord {
            key: record.key.map(Bytes::copy_from_slice),
            payload: record
                .payload
                .map(Bytes::copy_from_slice)
                .unwrap_or_default(),
            resource_name: record.header("ResourceName").map(str::to_owned),
            source_label: record.header("EntityEventSource").map(str::to_owned),
            origin,
            reason,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPTH: usize = crate::event::DEFAULT_MAX_DEPTH;

    fn origin() -> Origin {
        Origin {
            topic: Arc::from("t"),
            partition: 2,
            offset: 41,
        }
    }

    const EVENT: &[u8] =
        br#"{"EntityEventSequence": 7, "ResourceName":"Media","ResourceRecordKey":"K1","Data":{"x":[1,2]}}"#;

    #[test]
    fn headers_and_key_win() {
        let view = RecordView {
            key: Some(b"key-from-kafka"),
            payload: Some(EVENT),
            headers: vec![
                ("EntityEventSequence", b"9"),
                ("ResourceName", b"Property"),
                ("EntityEventSource", b"IDX Feed 123"),
            ],
            unreadable_header: false,
        };
        let m = parse_record(&view, origin(), DEPTH).unwrap();
        assert_eq!(
            (m.sequence, m.resource_name.as_str(), m.record_key.as_str()),
            (9, "Property", "key-from-kafka")
        );
        assert_eq!(m.source_label.as_deref(), Some("IDX Feed 123"));
        assert_eq!(&m.payload[..], EVENT, "bytes untouched");
        assert_eq!(m.origin.unwrap().offset, 41);
    }

    #[test]
    fn json_fields_fill_in_missing_headers() {
        let view = RecordView {
            payload: Some(EVENT),
            ..RecordView::default()
        };
        let m = parse_record(&view, origin(), DEPTH).unwrap();
        assert_eq!(
            (m.sequence, m.resource_name.as_str(), m.record_key.as_str()),
            (7, "Media", "K1")
        );
        assert!(m.source_label.is_none());
    }

    #[test]
    fn unusable_records_are_poison() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not a JSON object"),
            (b"[1,2]", "not a JSON object"),
            (b"{\"EntityEventSequence\": 1, ", "not valid JSON"),
            (
                br#"{"ResourceName":"P","ResourceRecordKey":"k"}"#,
                "EntityEventSequence",
            ),
            (
                br#"{"EntityEventSequence":-1,"ResourceName":"P","ResourceRecordKey":"k"}"#,
                "positive",
            ),
            (
                br#"{"EntityEventSequence":1,"ResourceRecordKey":"k"}"#,
                "ResourceName",
            ),
            (
                br#"{"EntityEventSequence":1,"ResourceName":"P","ResourceRecordKey":5}"#,
                "ResourceRecordKey",
            ),
        ];
        for (payload, why) in cases {
            let view = RecordView {
                key: Some(b"k"),
                payload: Some(payload),
                headers: vec![("ResourceName", b"P")],
                unreadable_header: false,
            };
            let view = if why.contains("ResourceName") || why.contains("ResourceRecordKey") {
                RecordView {
                    key: None,
                    headers: vec![],
                    ..view
                }
            } else {
                view
            };
            let poison = parse_record(&view, origin(), DEPTH).unwrap_err();
            assert!(
                poison.reason.contains(why),
                "{poison:?} should mention {why}"
            );
            assert_eq!(&poison.payload[..], *payload);
        }
        let empty = parse_record(&RecordView::default(), origin(), DEPTH).unwrap_err();
        assert!(empty.reason.starts_with("record has no value"), "{empty:?}");
    }

    #[test]
    fn the_bridges_tombstones_read_back_as_deletes() {
        let view = RecordView {
            key: Some(b"L1"),
            payload: None,
            headers: vec![
                ("EntityEventSequence", b"12"),
                ("ResourceName", b"Property"),
            ],
            unreadable_header: false,
        };
        let m = parse_record(&view, origin(), DEPTH).unwrap();
        assert!(m.delete);
        assert_eq!((m.sequence, m.record_key.as_str()), (12, "L1"));
        let event: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(event["@EntityBridge.Deleted"], true);
        assert_eq!(event["ResourceName"], "Property");
        // Someone else's tombstone (no headers) is no EntityEvent.
        let foreign = RecordView {
            headers: vec![],
            ..view
        };
        assert!(parse_record(&foreign, origin(), DEPTH).is_err());
    }

    #[test]
    fn unreadable_headers_and_deep_values_are_poison() {
        let event = br#"{"EntityEventSequence":1,"ResourceName":"P","ResourceRecordKey":"k"}"#;
        let view = RecordView {
            payload: Some(event),
            unreadable_header: true,
            ..RecordView::default()
        };
        let poison = parse_record(&view, origin(), DEPTH).unwrap_err();
        assert_eq!(poison.reason, "a header key is not UTF-8");
        let deep = format!(
            r#"{{"EntityEventSequence":1,"ResourceName":"P","ResourceRecordKey":"k","Data":{}{}}}"#,
            "[".repeat(DEPTH),
            "]".repeat(DEPTH)
        );
        let view = RecordView {
            payload: Some(deep.as_bytes()),
            ..RecordView::default()
        };
        let poison = parse_record(&view, origin(), DEPTH).unwrap_err();
        assert!(poison.reason.contains("deeper than 64"), "{poison:?}");
        // The ResourceName character rule of the webhook holds for records too.
        let view = RecordView {
            payload: Some(event),
            headers: vec![("ResourceName", b"Open\nHouse")],
            ..RecordView::default()
        };
        let poison = parse_record(&view, origin(), DEPTH).unwrap_err();
        assert!(poison.reason.contains("ASCII letters"), "{poison:?}");
    }
}
