//! Parsing and validation of RESO EntityEvent (RCP-28) webhook payloads.
//!
//! A producer POSTs one JSON object in one of two shapes:
//!
//! - **multi-valued**: `{"@reso.context": "...", "value": [ {event}, {event}, ... ]}`;
//! - **single-valued**: the event's own fields at the top level, beside `@reso.context`:
//!   `{"@reso.context": "...", "EntityEventSequence": 1101, "ResourceName": "Showing",
//!   "ResourceRecordKey": "235021"}`.
//!
//! The key `value` at the top level means multi-valued. `@reso.context` is optional but must be a
//! string when present, and `value: []` is a valid, empty batch.
//!
//! Every event needs `EntityEventSequence` (a JSON integer, `> 0`, fitting `i64`), `ResourceName`
//! and `ResourceRecordKey` (non-empty strings of at most 255 characters; a `ResourceName` is an
//! OData identifier in ASCII, `[A-Za-z_][A-Za-z0-9_]*`, so it is safe in topic names, routing
//! keys, metric labels and logs). Everything else
//! (`Data`, `ResourceRecordUrl`, `EventTypes`, vendor fields, ...) passes through untouched.
//!
//! Why it looks the way it does:
//!
//! - **Raw bytes are kept, never re-serialized.** What goes onto the bus is exactly what the
//!   producer sent, so number formatting, key order, unicode escapes and vendor fields survive.
//!   For multi-valued payloads each [`ParsedEvent::raw`] is a zero-copy [`Bytes::slice`] of the
//!   request body. A single-valued event is rebuilt as an object of the top-level members minus
//!   `@reso.context`, each value copied byte for byte.
//! - **It is the ingress hot path.** The body is scanned once: each event's members are taken as
//!   borrowed [`RawValue`]s, the three required fields are kept, and the event's exact bytes are
//!   found from where its first key and last value lie. No `serde_json::Value` tree of `Data` is
//!   ever built, and no event is scanned twice.
//! - **Bounded by the bytes.** A payload carries at most [`ParseOptions::max_events`] events
//!   (checked while the array is read, so nothing is kept for the items beyond), a single-valued
//!   object at most [`MAX_TOP_LEVEL_MEMBERS`] members, and no event nests deeper than
//!   [`ParseOptions::max_depth`] (see [`depth`]).
//! - **Every problem at once.** Validation collects all violations (up to a cap), each named by an
//!   RFC 6901 JSON Pointer into the body, so a producer can fix a batch in one round trip. A payload
//!   with any violation is rejected as a whole.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Field names of the RCP-28 EntityEvent resource and envelope.
const CONTEXT: &str = "@reso.context";
const VALUE: &str = "value";
const SEQUENCE: &str = "EntityEventSequence";
const RESOURCE_NAME: &str = "ResourceName";
const RECORD_KEY: &str = "ResourceRecordKey";

/// Longest `ResourceName` / `ResourceRecordKey`, in characters.
const MAX_FIELD_CHARS: usize = 255;

/// Validation stops once this many violations are collected.
const MAX_VIOLATIONS: usize = 50;

const DETAIL_SEQUENCE: &str = "must be a positive integer (int64)";
const DETAIL_STRING: &str = "must be a string";
const DETAIL_NUMERIC_KEY: &str =
    "must be a string; numeric keys need coerce_numeric_record_key = true";
const DETAIL_TOO_LONG: &str = "must be at most 255 characters";
const DETAIL_RENDERED_ANNOTATION: &str =
    "is an annotation the bridge adds when it serves the event; producers may not send it";
const DETAIL_RESOURCE_CHARS: &str =
    "must be a resource name: ASCII letters, digits and `_`, not starting with a digit";
const DETAIL_EMPTY: &str = "must not be empty";
const DETAIL_BLANK: &str = "must not be empty or whitespace";
const DETAIL_REQUIRED: &str = "is required";
const DETAIL_DUPLICATE: &str = "must appear only once";
const DETAIL_NOT_OBJECT_EVENT: &str = "must be a JSON object (an EntityEvent)";
const DETAIL_NOT_ARRAY: &str = "must be an array of EntityEvent objects";
const DETAIL_NOT_OBJECT_ROOT: &str = "must be a JSON object";

/// Default most events accepted in one payload.
pub const DEFAULT_MAX_EVENTS: usize = 10_000;
/// Most members a single-valued payload's top-level object may have (an EntityEvent has about a
/// dozen fields): the parser keeps one entry per member, so their number is bounded too.
pub const MAX_TOP_LEVEL_MEMBERS: usize = 1_000;

/// Knobs for [`parse_payload`].
#[derive(Debug, Clone, Copy)]
pub struct ParseOptions {
    /// Accept a JSON number as `ResourceRecordKey` (some producers send numeric keys) and use the
    /// number's literal text as the key. The payload bytes are not changed. Off by default: RCP-28
    /// says the key is a string.
    pub coerce_numeric_record_key: bool,
    /// Most events in one payload, checked while the `value` array is read (nothing is kept for
    /// the items beyond it).
    pub max_events: usize,
    /// Deepest nesting of objects and arrays in one event, the event object being level 1.
    pub max_depth: usize,
    /// Refuse events that carry an annotation the bridge's replay resource adds itself
    /// ([`RENDERED_ANNOTATIONS`]): a producer could otherwise forge what consumers read as
    /// the bridge's word (the webhook source). Pull sources accept them: another bridge's
    /// replay carries them, and the replay resource writes its own in their place.
    pub refuse_rendered_annotations: bool,
}

/// Instance annotations the replay resource writes on every event: the producer's own
/// `EntityEventSequence` and the push's `EntityEventSource` header. A payload member of one of
/// these names is never served (the rendered one replaces it) and is refused on webhook
/// ingress.
pub const RENDERED_ANNOTATIONS: [&str; 2] = [
    "@EntityBridge.SourceEntityEventSequence",
    "@EntityBridge.EntityEventSource",
];

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            coerce_numeric_record_key: false,
            max_events: DEFAULT_MAX_EVENTS,
            max_depth: DEFAULT_MAX_DEPTH,
            refuse_rendered_annotations: false,
        }
    }
}

/// One validated EntityEvent.
#[derive(Debug, Clone)]
pub struct ParsedEvent {
    /// `EntityEventSequence`, always `> 0`.
    pub sequence: i64,
    /// `ResourceName`, decoded.
    pub resource_name: String,
    /// `ResourceRecordKey`, decoded (or a numeric key's literal text when coerced).
    pub record_key: String,
    /// The event object's exact JSON bytes.
    pub raw: Bytes,
}

/// A validated webhook payload.
#[derive(Debug, Clone)]
pub struct Payload {
    /// `@reso.context` when present.
    pub context: Option<String>,
    /// Whether the payload was multi-valued (`value` array) rather than single-valued.
    pub multi_valued: bool,
    /// The events, in payload order.
    pub events: Vec<ParsedEvent>,
}

impl Payload {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the payload carries no event (`value: []`).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// One failing item, named by an RFC 6901 JSON Pointer into the request body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// RFC 6901 JSON Pointer; `""` is the whole body.
    pub pointer: String,
    /// Short human sentence about the item, e.g. `is required`.
    pub detail: String,
}

/// A rejected payload: every violation found (at most 50), never empty.
#[derive(Debug, thiserror::Error)]
#[error("{}", summarize(.violations))]
pub struct PayloadError {
    /// The violations, in body order.
    pub violations: Vec<Violation>,
}

fn summarize(violations: &[Violation]) -> String {
    match violations.first() {
        None => "invalid EntityEvent payload".to_owned(),
        Some(first) => {
            let at = if first.pointer.is_empty() {
                "the document root".to_owned()
            } else {
                format!("`{}`", first.pointer)
            };
            format!(
                "{} invalid item(s) in EntityEvent payload, first at {}: {}",
                violations.len(),
                at,
                first.detail
            )
        }
    }
}

/// Parses and validates a webhook body.
///
/// On success every event has a valid sequence, resource name and record key, and its
/// [`ParsedEvent::raw`] holds the event object's exact bytes. On failure the error lists every
/// violation found (up to 50); nothing of the payload is accepted.
pub fn parse_payload(body: &Bytes, opts: ParseOptions) -> Result<Payload, PayloadError> {
    // SIMD validation: on 8 KiB events std's check was ~12 % of the parse (bench `ingress-parse`).
    let text = match simdutf8::basic::from_utf8(body) {
        Ok(text) => text,
        Err(_) => {
            let at = std::str::from_utf8(body)
                .err()
                .map_or(0, |e| e.valid_up_to());
            return Err(root_error(format!(
                "must be UTF-8 encoded JSON (invalid UTF-8 at byte {at})"
            )));
        }
    };
    let exceeded = Cell::new(None);
    let seed = TopSeed {
        max_events: opts.max_events,
        exceeded: &exceeded,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let top = seed
        .deserialize(&mut de)
        .and_then(|top| de.end().map(|()| top));
    let top: TopLevel<'_> = match (top, exceeded.get()) {
        (Ok(top), _) => top,
        (Err(_), Some(Exceeded::Events)) => {
            return Err(PayloadError {
                violations: vec![Violation {
                    pointer: format!("/{VALUE}/{}", opts.max_events),
                    detail: format!(
                        "is one event too many: at most {} events are accepted in one payload; \
                         split the batch",
                        opts.max_events
                    ),
                }],
            })
        }
        (Err(_), Some(Exceeded::Members)) => {
            return Err(root_error(format!(
                "must have at most {MAX_TOP_LEVEL_MEMBERS} members"
            )))
        }
        (Err(e), None) if e.classify() == serde_json::error::Category::Data => {
            return Err(root_error(DETAIL_NOT_OBJECT_ROOT.to_owned()))
        }
        (Err(e), None) => return Err(root_error(format!("is not valid JSON: {e}"))),
    };

    let mut sink = Violations::default();
    let mut context: Option<String> = None;
    let mut seen_context = false;
    let mut events_value: Option<&EventsValue<'_>> = None;
    for member in &top.members {
        match (&*member.key, &member.value) {
            (CONTEXT, MemberValue::Raw(raw)) => {
                if seen_context {
                    sink.push(pointer("", CONTEXT), DETAIL_DUPLICATE);
                    continue;
                }
                seen_context = true;
                match decode_string(raw) {
                    Some(s) => context = Some(s),
                    None => sink.push(pointer("", CONTEXT), DETAIL_STRING),
                }
            }
            (_, MemberValue::Events(events)) => events_value = Some(events),
            (_, MemberValue::DuplicateEvents) => sink.push(pointer("", VALUE), DETAIL_DUPLICATE),
            _ => {}
        }
    }

    let multi_valued = events_value.is_some();
    let events = match events_value {
        Some(value) => multi_valued_events(body, text, value, opts, &mut sink),
        None => single_valued_event(&top, opts, &mut sink),
    };

    if sink.list.is_empty() {
        Ok(Payload {
            context,
            multi_valued,
            events,
        })
    } else {
        Err(PayloadError {
            violations: sink.list,
        })
    }
}

mod build;
mod depth;
mod fields;
mod visitors;
use build::*;
pub use depth::{deeper_than, DEFAULT_MAX_DEPTH};

/// Highest `max_json_depth` accepted by any source: deeper events are unreadable for most
/// consumers.
pub const MAX_JSON_DEPTH_CEILING: usize = 1_000;
/// The detail of a `max_json_depth` out of range.
pub const MAX_JSON_DEPTH_RANGE: &str = "must be between 1 and 1000";

/// Default for `max_json_depth` (webhook, AMQP and Kafka sources).
pub fn default_max_json_depth() -> usize {
    DEFAULT_MAX_DEPTH
}
use fields::*;
use visitors::*;

#[cfg(test)]
mod tests;
