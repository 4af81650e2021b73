//! Turning AMQP deliveries into [`Message`]s: the body is one EntityEvent, validated with the
//! webhook's parser; the `EntityEventSource` header gives the source label.
//!
//! The body is authoritative for `EntityEventSequence`, `ResourceName` and `ResourceRecordKey`
//! (headers carry no record key, and a body that disagrees with its headers is still the event).
//! A body that fails validation can never succeed, so the source dead-letters it at once.

use std::sync::Arc;

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable};

use crate::connector::{Message, Origin};
use crate::event::{parse_payload, ParseOptions};

/// Longest `EntityEventSource` label taken from a header (RCP-28: String(255)).
const MAX_SOURCE_LABEL_CHARS: usize = 255;

/// Turns a delivery into a message, or says why it can never be one.
pub fn to_message(
    queue: &Arc<str>,
    delivery_tag: u64,
    headers: Option<&FieldTable>,
    body: Bytes,
    opts: ParseOptions,
) -> Result<Message, String> {
    let payload = parse_payload(&body, opts).map_err(|e| e.to_string())?;
    if payload.multi_valued {
        return Err(
            "the body is a multi-valued payload; publish one EntityEvent per message".into(),
        );
    }
    let Some(event) = payload.events.into_iter().next() else {
        return Err("the body holds no EntityEvent".into());
    };
    // Keep the producer's exact bytes unless an `@reso.context` member has to be dropped.
    let raw = if payload.context.is_none() {
        body
    } else {
        event.raw
    };
    Ok(Message {
        delete: false,
        conflict: None,
        sequence: event.sequence,
        resource_name: event.resource_name,
        record_key: event.record_key,
        source_label: source_label(headers),
        payload: raw,
        origin: Some(Origin {
            topic: queue.clone(),
            partition: -1,
            offset: i64::try_from(delivery_tag).unwrap_or(i64::MAX),
        }),
    })
}

/// The `EntityEventSource` header as a label (string types only, trimmed, ≤ 255 chars).
fn source_label(headers: Option<&FieldTable>) -> Option<Arc<str>> {
    let value = headers?.inner().get("EntityEventSource")?;
    let text = match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.to_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        _ => return None,
    };
    let text = text.trim();
    (!text.is_empty() && text.chars().count() <= MAX_SOURCE_LABEL_CHARS).then(|| Arc::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;

    #[test]
    fn bodies_become_messages_or_poison() {
        let queue: Arc<str> = Arc::from("q");
        let opts = ParseOptions::default();
        let body = Bytes::from_static(
            br#"{ "EntityEventSequence": 5, "ResourceName": "Property", "ResourceRecordKey": "K" }"#,
        );
        let m = to_message(&queue, 9, None, body.clone(), opts).unwrap();
        assert_eq!((m.sequence, m.record_key.as_str()), (5, "K"));
        assert_eq!(m.payload, body, "exact bytes kept");
        assert_eq!(m.origin.unwrap().offset, 9);

        let with_context = Bytes::from_static(
            br#"{"@reso.context":"x","EntityEventSequence":5,"ResourceName":"P","ResourceRecordKey":"K"}"#,
        );
        let m = to_message(&queue, 1, None, with_context, opts).unwrap();
        assert!(!m.payload.starts_with(b"{\"@reso"));

        for bad in [
            &b"not json"[..],
            br#"{"ResourceName":"P","ResourceRecordKey":"K"}"#,
            br#"{"value":[{"EntityEventSequence":1,"ResourceName":"P","ResourceRecordKey":"K"}]}"#,
        ] {
            assert!(to_message(&queue, 1, None, Bytes::from(bad.to_vec()), opts).is_err());
        }
        // Nesting beyond `max_json_depth` is poison, however deep (no stack overflow).
        let deep = format!(
            r#"{{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"K","Data":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let shallow = ParseOptions {
            max_depth: 8,
            ..opts
        };
        let why = to_message(&queue, 1, None, Bytes::from(deep), shallow).unwrap_err();
        assert!(why.contains("deeper than 8"), "{why}");
    }

    #[test]
    fn source_label_from_headers() {
        let mut h = FieldTable::default();
        assert_eq!(source_label(Some(&h)), None);
        h.insert(
            "EntityEventSource".into(),
            AMQPValue::LongString(LongString::from(" feed 7 ")),
        );
        assert_eq!(source_label(Some(&h)).as_deref(), Some("feed 7"));
        h.insert("EntityEventSource".into(), AMQPValue::LongLongInt(3));
        assert_eq!(source_label(Some(&h)), None);
        assert_eq!(source_label(None), None);
    }
}
