//! Pages of an "events after sequence id" API (the third seed's shape): events with a sequence
//! id, a type, a resource type and id, and the resource after the event (`null` once deleted),
//! mapped to EntityEvents by [`EventMapping`].
//!
//! Each event becomes
//! `{"EntityEventSequence": …, "ResourceName": …, "ResourceRecordKey": …, "EntityEventType": …,
//! "Data": <resource>, "@EntityBridge.OriginalEvent": <the producer's event>}`, the resource
//! and the original event copied byte for byte. A deleted resource gives no `Data` and
//! `"@EntityBridge.Deleted": true`. Event types the producer adds later pass through like any
//! other (or are skipped, counted, when an allowlist is set); an event the mapping cannot read
//! is dead-lettered alone.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::config::EventMapping;
use super::page::{Page, PageError};
use crate::event::ParseOptions;

/// The annotation carrying the producer's original event.
pub const ORIGINAL_EVENT_ANNOTATION: &str = "@EntityBridge.OriginalEvent";
/// The annotation marking an event whose record is deleted (no `Data`).
pub const DELETED_ANNOTATION: &str = "@EntityBridge.Deleted";

/// The value at RFC 6901 `pointer` inside `raw`, without building a tree: each step reads one
/// object (or array) level as raw members.
pub fn raw_at<'a>(raw: &'a RawValue, pointer: &str) -> Option<&'a RawValue> {
    let mut current = raw;
    if pointer.is_empty() {
        return Some(current);
    }
    for token in pointer.strip_prefix('/')?.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        let text = current.get().trim_start();
        current = if text.starts_with('{') {
            let mut members: HashMap<Cow<'a, str>, &'a RawValue> =
                serde_json::from_str(current.get()).ok()?;
            members.remove(token.as_str())?
        } else if text.starts_with('[') {
            let items: Vec<&'a RawValue> = serde_json::from_str(current.get()).ok()?;
            let index: usize = token.parse().ok()?;
            *items.get(index)?
        } else {
            return None;
        };
    }
    Some(current)
}

/// A JSON string's text, or a number's literal (ids are often numbers).
fn text_of(raw: &RawValue) -> Option<String> {
    let s = raw.get();
    if s.starts_with('"') {
        serde_json::from_str::<String>(s).ok()
    } else if s.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Some(s.to_owned())
    } else {
        None
    }
}

/// Whether `event_type` passes the allowlist (empty: everything).
fn allowed(allow: &[String], event_type: Option<&str>) -> bool {
    if allow.is_empty() {
        return true;
    }
    let Some(t) = event_type else { return false };
    allow.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => t.starts_with(prefix),
        None => a == t,
    })
}

/// One producer event mapped.
struct Mapped {
    sequence: i64,
    event_type: Option<String>,
    /// The EntityEvent's bytes.
    built: Vec<u8>,
    /// Its resource is `null`: the record is deleted.
    deleted: bool,
}
/// Why an event cannot be mapped, with its sequence when that much was readable.
type Unmappable = (Option<i64>, String);

/// Builds one EntityEvent from a producer event, or says why it cannot.
fn map_event(event: &RawValue, m: &EventMapping) -> Result<Mapped, Unmappable> {
    let sequence = raw_at(event, &m.sequence)
        .and_then(text_of)
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|s| *s > 0);
    let Some(sequence) = sequence else {
        return Err((
            None,
            format!("`{}` must be a positive integer sequence id", m.sequence),
        ));
    };
    let fail = |pointer: &str, what: &str| Err((Some(sequence), format!("`{pointer}` {what}")));
    let event_type = raw_at(event, &m.event_type).and_then(text_of);
    let Some(resource_name) = raw_at(event, &m.resource_name).and_then(text_of) else {
        return fail(&m.resource_name, "must be a string (the resource type)");
    };
    let Some(record_key) = raw_at(event, &m.record_key).and_then(text_of) else {
        return fail(
            &m.record_key,
            "must be a string or number (the resource id)",
        );
    };
    // Missing is a mapping problem, not a delete: only an explicit `null` deletes a record.
    let Some(data) = raw_at(event, &m.data) else {
        return fail(&m.data, "is missing (the resource, or null for a delete)");
    };
    let data = Some(data).filter(|d| d.get() != "null");
    let mut out = Vec::with_capacity(event.get().len() * 2 + 128);
    out.extend_from_slice(b"{\"EntityEventSequence\":");
    out.extend_from_slice(sequence.to_string().as_bytes());
    let string = |v: &str| serde_json::to_string(v).expect("a string serializes");
    out.extend_from_slice(b",\"ResourceName\":");
    out.extend_from_slice(string(&resource_name).as_bytes());
    out.extend_from_slice(b",\"ResourceRecordKey\":");
    out.extend_from_slice(string(&record_key).as_bytes());
    if let Some(t) = &event_type {
        out.extend_from_slice(b",\"EntityEventType\":");
        out.extend_from_slice(string(t).as_bytes());
    }
    match data {
        Some(d) => {
            out.extend_from_slice(b",\"Data\":");
            out.extend_from_slice(d.get().as_bytes());
        }
        None => {
            out.extend_from_slice(format!(",\"{DELETED_ANNOTATION}\":true").as_bytes());
        }
    }
    if m.keep_original {
        out.extend_from_slice(format!(",\"{ORIGINAL_EVENT_ANNOTATION}\":").as_bytes());
        out.extend_from_slice(event.get().as_bytes());
    }
    out.push(b'}');
    Ok(Mapped {
        sequence,
        event_type,
        built: out,
        deleted: data.is_none(),
    })
}

/// Parses a page of an events API; events at or below `after` are skipped.
pub fn parse_events_page(
    body: &[u8],
    after: i64,
    m: &EventMapping,
    opts: ParseOptions,
    topic: &Arc<str>,
) -> Result<Page, PageError> {
    let broken = |detail: String| PageError {
        expected: "a page of events",
        detail,
    };
    let root: &RawValue = serde_json::from_slice(body).map_err(|e| broken(e.to_string()))?;
    let events =
        raw_at(root, &m.events).ok_or_else(|| broken(format!("nothing at `{}`", m.events)))?;
    let super::page::Items(events) = serde_json::from_str(events.get()).map_err(|e| {
        broken(format!(
            "`{}` is not an array of at most the page limit: {e}",
            m.events
        ))
    })?;
    let mut page = Page::default();
    for event in events {
        match map_event(event, m) {
            Ok(mapped) => {
                if !allowed(&m.event_types, mapped.event_type.as_deref()) {
                    page.received += 1;
                    page.saw(mapped.sequence);
                    page.skipped += 1;
                    continue;
                }
                let (invalid_before, published_before) = (page.invalid.len(), page.messages.len());
                page.add_event(&mapped.built, after, opts, topic);
                if let Some(published) = page.messages.get_mut(published_before) {
                    published.delete = mapped.deleted;
                }
                // Report the producer's own event, not the mapped one.
                if let Some(bad) = page.invalid.get_mut(invalid_before) {
                    bad.raw = bytes::Bytes::copy_from_slice(event.get().as_bytes());
                }
            }
            Err((sequence, reason)) => {
                page.received += 1;
                if let Some(s) = sequence {
                    page.saw(s);
                    if s <= after {
                        page.skipped += 1;
                        continue;
                    }
                }
                page.invalid.push(super::page::Invalid {
                    raw: bytes::Bytes::copy_from_slice(event.get().as_bytes()),
                    sequence,
                    reason,
                });
            }
        }
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> Arc<str> {
        Arc::from("https://x.example/events")
    }

    const PAGE: &str = r#"{"data":[
        {"id":"e1","eventType":"listing/updated","sequenceId":11,"resourceId":"L1","resourceType":"listing",
         "resource":{"id":"L1","title":"Bike"},"previousValues":{"title":"old"}},
        {"id":"e2","eventType":"listing/deleted","sequenceId":"12","resourceId":"L2","resourceType":"listing","resource":null},
        {"id":"e3","eventType":"shipment/created","sequenceId":13,"resourceId":7,"resourceType":"shipment","resource":{"n":1}},
        {"id":"e4","eventType":"user/created","resourceId":"U","resourceType":"user","resource":{}},
        {"id":"e5","eventType":"user/created","sequenceId":15,"resourceId":"U","resourceType":"a-b","resource":{}}
    ],"meta":{"perPage":100}}"#;

    #[test]
    fn events_map_to_entity_events_with_the_original_kept() {
        let page = parse_events_page(
            PAGE.as_bytes(),
            0,
            &EventMapping::default(),
            ParseOptions::default(),
            &topic(),
        )
        .unwrap();
        assert_eq!(page.received, 5);
        assert_eq!(page.messages.len(), 3, "{:?}", page.invalid);
        let first: serde_json::Value = serde_json::from_slice(&page.messages[0].payload).unwrap();
        assert_eq!(first["EntityEventSequence"], 11);
        assert_eq!(first["ResourceName"], "listing");
        assert_eq!(first["ResourceRecordKey"], "L1");
        assert_eq!(first["EntityEventType"], "listing/updated");
        assert_eq!(first["Data"]["title"], "Bike");
        assert_eq!(
            first[ORIGINAL_EVENT_ANNOTATION]["previousValues"]["title"],
            "old"
        );
        let deleted: serde_json::Value = serde_json::from_slice(&page.messages[1].payload).unwrap();
        assert_eq!(deleted[DELETED_ANNOTATION], true);
        assert!(page.messages[1].delete && !page.messages[0].delete);
        assert!(deleted.get("Data").is_none());
        assert_eq!(
            page.messages[1].sequence, 12,
            "a sequence given as a string"
        );
        // An event type nobody listed passes through; a numeric id is taken as text.
        assert_eq!(page.messages[2].resource_name, "shipment");
        assert_eq!(page.messages[2].record_key, "7");
        // No sequence: invalid, alone; a resource type that is no OData name: invalid too.
        assert_eq!(page.invalid.len(), 2);
        assert!(page.invalid[0].reason.contains("/sequenceId"));
        assert!(page.invalid[1].raw.starts_with(b"{\"id\":\"e5\""));
        assert_eq!(page.invalid[1].sequence, Some(15));
        assert_eq!(page.last_sequence, Some(15));
    }

    #[test]
    fn the_allowlist_skips_other_types_and_the_integration_format_maps() {
        let mapping = EventMapping {
            event_types: vec!["listing/*".into()],
            ..EventMapping::default()
        };
        let page = parse_events_page(
            PAGE.as_bytes(),
            11,
            &mapping,
            ParseOptions::default(),
            &topic(),
        )
        .unwrap();
        assert_eq!(page.messages.len(), 1, "only listing/deleted is after 11");
        assert_eq!(page.skipped, 3, "one at the checkpoint, two of other types");
        assert_eq!(
            page.invalid.len(),
            1,
            "no sequence: invalid whatever its type"
        );
        let integration = r#"{"data":[{"id":"e1","type":"event","attributes":{"sequenceId":3,
            "eventType":"user/updated","resourceId":"u~1","resourceType":"user",
            "resource":{"id":"u~1","attributes":{"email":"x"}}}}]}"#;
        let mapping = EventMapping {
            sequence: "/attributes/sequenceId".into(),
            event_type: "/attributes/eventType".into(),
            resource_name: "/attributes/resourceType".into(),
            record_key: "/attributes/resourceId".into(),
            data: "/attributes/resource".into(),
            keep_original: false,
            ..EventMapping::default()
        };
        let page = parse_events_page(
            integration.as_bytes(),
            0,
            &mapping,
            ParseOptions::default(),
            &topic(),
        )
        .unwrap();
        assert_eq!(page.messages[0].record_key, "u~1");
        assert!(!page.messages[0]
            .payload
            .windows(8)
            .any(|w| w == b"Original"));
    }

    #[test]
    fn pointers_unescape_and_a_bare_array_is_a_page() {
        let raw: &RawValue = serde_json::from_str(r#"{"a/b":{"~":[1,{"x":2}]}}"#).unwrap();
        assert_eq!(raw_at(raw, "/a~1b/~0/1/x").unwrap().get(), "2");
        assert!(raw_at(raw, "/a~1b/~0/9").is_none());
        let mapping = EventMapping {
            events: String::new(),
            ..EventMapping::default()
        };
        let page = parse_events_page(
            br#"[{"sequenceId":1,"resourceType":"user","resourceId":"u","resource":null}]"#,
            0,
            &mapping,
            ParseOptions::default(),
            &topic(),
        )
        .unwrap();
        assert_eq!(page.messages.len(), 1);
        assert!(parse_events_page(
            b"{}",
            0,
            &EventMapping::default(),
            ParseOptions::default(),
            &topic()
        )
        .is_err());
    }
}
