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
//! and `ResourceRecordKey` (non-empty strings of at most 255 characters). Everything else
//! (`Data`, `ResourceRecordUrl`, `EventTypes`, vendor fields, ...) passes through untouched.
//!
//! Why it looks the way it does:
//!
//! - **Raw bytes are kept, never re-serialized.** What goes onto the bus is exactly what the
//!   producer sent, so number formatting, key order, unicode escapes and vendor fields survive.
//!   For multi-valued payloads each [`ParsedEvent::raw`] is a zero-copy [`Bytes::slice`] of the
//!   request body. A single-valued event is rebuilt as an object of the top-level members minus
//!   `@reso.context`, each value copied byte for byte.
//! - **It is the ingress hot path.** The envelope is read once with borrowed
//!   [`RawValue`]s; for each event only the three required fields are read from its raw text. No
//!   `serde_json::Value` tree of `Data` is ever built.
//! - **Every problem at once.** Validation collects all violations (up to a cap), each named by an
//!   RFC 6901 JSON Pointer into the body, so a producer can fix a batch in one round trip. A payload
//!   with any violation is rejected as a whole.

use std::borrow::Cow;
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
const DETAIL_EMPTY: &str = "must not be empty";
const DETAIL_BLANK: &str = "must not be empty or whitespace";
const DETAIL_REQUIRED: &str = "is required";
const DETAIL_DUPLICATE: &str = "must appear only once";
const DETAIL_NOT_OBJECT_EVENT: &str = "must be a JSON object (an EntityEvent)";
const DETAIL_NOT_ARRAY: &str = "must be an array of EntityEvent objects";
const DETAIL_NOT_OBJECT_ROOT: &str = "must be a JSON object";

/// Knobs for [`parse_payload`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseOptions {
    /// Accept a JSON number as `ResourceRecordKey` (some producers send numeric keys) and use the
    /// number's literal text as the key. The payload bytes are not changed. Off by default: RCP-28
    /// says the key is a string.
    pub coerce_numeric_record_key: bool,
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
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(e) => {
            return Err(root_error(format!(
                "must be UTF-8 encoded JSON (invalid UTF-8 at byte {})",
                e.valid_up_to()
            )))
        }
    };
    let top: TopLevel<'_> = match serde_json::from_str(text) {
        Ok(top) => top,
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            return Err(root_error(DETAIL_NOT_OBJECT_ROOT.to_owned()))
        }
        Err(e) => return Err(root_error(format!("is not valid JSON: {e}"))),
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
            (_, MemberValue::Events(events)) => {
                if events_value.is_some() {
                    sink.push(pointer("", VALUE), DETAIL_DUPLICATE);
                } else {
                    events_value = Some(events);
                }
            }
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

/// Validates the events of a `value` array; each raw is a slice of `body`.
fn multi_valued_events(
    body: &Bytes,
    text: &str,
    value: &EventsValue<'_>,
    opts: ParseOptions,
    sink: &mut Violations,
) -> Vec<ParsedEvent> {
    let items = match value {
        EventsValue::Array(items) => items,
        EventsValue::NotArray => {
            sink.push(pointer("", VALUE), DETAIL_NOT_ARRAY);
            return Vec::new();
        }
    };
    let mut events = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        if sink.is_full() {
            break;
        }
        let prefix = || format!("/{VALUE}/{index}");
        let raw_text = item.get();
        if !raw_text.starts_with('{') {
            sink.push(prefix(), DETAIL_NOT_OBJECT_EVENT);
            continue;
        }
        let fields: EventFields<'_> = match serde_json::from_str(raw_text) {
            Ok(fields) => fields,
            Err(e) => {
                // Unreachable in practice: the envelope already parsed this object.
                sink.push(prefix(), format!("could not be read: {e}"));
                continue;
            }
        };
        let Some((sequence, resource_name, record_key)) =
            check_fields(&fields, opts, &prefix, sink)
        else {
            continue;
        };
        // Once anything failed the payload is rejected: stop building events.
        if sink.list.is_empty() {
            events.push(ParsedEvent {
                sequence,
                resource_name,
                record_key,
                raw: slice_of(body, text, raw_text),
            });
        }
    }
    events
}

/// Validates a single-valued payload and rebuilds its event object without `@reso.context`.
fn single_valued_event(
    top: &TopLevel<'_>,
    opts: ParseOptions,
    sink: &mut Violations,
) -> Vec<ParsedEvent> {
    let mut fields = EventFields::default();
    for member in &top.members {
        if let MemberValue::Raw(raw) = member.value {
            fields.record(&member.key, raw);
        }
    }
    let prefix = String::new;
    let Some((sequence, resource_name, record_key)) = check_fields(&fields, opts, &prefix, sink)
    else {
        return Vec::new();
    };
    if !sink.list.is_empty() {
        return Vec::new();
    }

    let capacity = top
        .members
        .iter()
        .map(|m| match m.value {
            MemberValue::Raw(raw) => m.key.len() + raw.get().len() + 4,
            MemberValue::Events(_) => 0,
        })
        .sum::<usize>()
        + 2;
    let mut out = Vec::with_capacity(capacity);
    out.push(b'{');
    let mut first = true;
    for member in &top.members {
        let MemberValue::Raw(raw) = member.value else {
            continue;
        };
        if member.key == CONTEXT {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_json_string(&mut out, &member.key);
        out.push(b':');
        out.extend_from_slice(raw.get().as_bytes());
    }
    out.push(b'}');

    vec![ParsedEvent {
        sequence,
        resource_name,
        record_key,
        raw: Bytes::from(out),
    }]
}

/// Appends `s` as a JSON string literal, escaped by serde_json.
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    if serde_json::to_writer(&mut *out, s).is_err() {
        // Serializing a `str` into a `Vec` cannot fail; keep a correct fallback anyway.
        out.extend_from_slice(format!("{s:?}").as_bytes());
    }
}

/// Zero-copy slice of `body` covering `part`, which must borrow from `text` (= `body` as str).
fn slice_of(body: &Bytes, text: &str, part: &str) -> Bytes {
    let start = (part.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
    match start.checked_add(part.len()) {
        Some(end) if start <= text.len() && end <= text.len() && end <= body.len() => {
            body.slice(start..end)
        }
        // Not borrowed from the body (cannot happen with borrowed RawValues): copy.
        _ => Bytes::copy_from_slice(part.as_bytes()),
    }
}

/// Checks the three required fields; returns them when all are valid.
fn check_fields<F>(
    fields: &EventFields<'_>,
    opts: ParseOptions,
    prefix: &F,
    sink: &mut Violations,
) -> Option<(i64, String, String)>
where
    F: Fn() -> String,
{
    let sequence = match fields.sequence.get() {
        Ok(raw) => check_sequence(raw),
        Err(detail) => Err(Cow::Borrowed(detail)),
    };
    let name = match fields.resource_name.get() {
        Ok(raw) => check_resource_name(raw),
        Err(detail) => Err(Cow::Borrowed(detail)),
    };
    let key = match fields.record_key.get() {
        Ok(raw) => check_record_key(raw, opts),
        Err(detail) => Err(Cow::Borrowed(detail)),
    };
    let mut report = |field: &str, detail: Cow<'static, str>| {
        sink.push(pointer(&prefix(), field), detail);
    };
    let sequence = sequence.map_err(|d| report(SEQUENCE, d)).ok();
    let name = name.map_err(|d| report(RESOURCE_NAME, d)).ok();
    let key = key.map_err(|d| report(RECORD_KEY, d)).ok();
    Some((sequence?, name?, key?))
}

fn check_sequence(raw: &RawValue) -> Result<i64, Cow<'static, str>> {
    let text = raw.get();
    let bytes = text.as_bytes();
    let is_number = matches!(bytes.first(), Some(b'-' | b'0'..=b'9'));
    let is_integer = is_number && !bytes.iter().any(|b| matches!(b, b'.' | b'e' | b'E'));
    match text.parse::<i64>() {
        Ok(n) if is_integer && n > 0 => Ok(n),
        _ => Err(Cow::Borrowed(DETAIL_SEQUENCE)),
    }
}

fn check_resource_name(raw: &RawValue) -> Result<String, Cow<'static, str>> {
    let name = decode_string(raw).ok_or(Cow::Borrowed(DETAIL_STRING))?;
    if name.trim().is_empty() {
        return Err(Cow::Borrowed(DETAIL_BLANK));
    }
    check_length(name)
}

fn check_record_key(raw: &RawValue, opts: ParseOptions) -> Result<String, Cow<'static, str>> {
    let text = raw.get();
    let key = match text.as_bytes().first() {
        Some(b'"') => decode_string(raw).ok_or(Cow::Borrowed(DETAIL_STRING))?,
        Some(b'-' | b'0'..=b'9') if opts.coerce_numeric_record_key => text.to_owned(),
        Some(b'-' | b'0'..=b'9') => return Err(Cow::Borrowed(DETAIL_NUMERIC_KEY)),
        _ => return Err(Cow::Borrowed(DETAIL_STRING)),
    };
    if key.is_empty() {
        return Err(Cow::Borrowed(DETAIL_EMPTY));
    }
    check_length(key)
}

fn check_length(s: String) -> Result<String, Cow<'static, str>> {
    // Fewer bytes than the limit means fewer characters too; count only when it matters.
    if s.len() > MAX_FIELD_CHARS && s.chars().count() > MAX_FIELD_CHARS {
        Err(Cow::Borrowed(DETAIL_TOO_LONG))
    } else {
        Ok(s)
    }
}

/// Decodes a raw JSON string; `None` when the value is not a string.
fn decode_string(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    // A valid JSON string token without backslashes is its own content, verbatim.
    if !text.contains('\\') && text.len() >= 2 && text.ends_with('"') {
        return text.get(1..text.len() - 1).map(str::to_owned);
    }
    serde_json::from_str::<String>(text).ok()
}

/// Builds `prefix/segment` with the segment escaped per RFC 6901.
fn pointer(prefix: &str, segment: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + segment.len() + 1);
    out.push_str(prefix);
    out.push('/');
    out.push_str(&escape_segment(segment));
    out
}

/// RFC 6901 escaping of one reference token: `~` → `~0`, `/` → `~1`.
fn escape_segment(segment: &str) -> Cow<'_, str> {
    if segment.contains(['~', '/']) {
        Cow::Owned(segment.replace('~', "~0").replace('/', "~1"))
    } else {
        Cow::Borrowed(segment)
    }
}

fn root_error(detail: String) -> PayloadError {
    PayloadError {
        violations: vec![Violation {
            pointer: String::new(),
            detail,
        }],
    }
}

/// Collected violations, capped at [`MAX_VIOLATIONS`].
#[derive(Default)]
struct Violations {
    list: Vec<Violation>,
}

impl Violations {
    fn push(&mut self, pointer: String, detail: impl Into<Cow<'static, str>>) {
        if !self.is_full() {
            self.list.push(Violation {
                pointer,
                detail: detail.into().into_owned(),
            });
        }
    }

    fn is_full(&self) -> bool {
        self.list.len() >= MAX_VIOLATIONS
    }
}

// ---------------------------------------------------------------------------------------------
// Borrowed deserialization of the envelope and of the three required event fields.
// ---------------------------------------------------------------------------------------------

/// The top-level object: its members in order, values kept raw (the `value` array split into
/// raw items).
struct TopLevel<'a> {
    members: Vec<Member<'a>>,
}

struct Member<'a> {
    /// Decoded key (borrowed unless it had escapes).
    key: Cow<'a, str>,
    value: MemberValue<'a>,
}

enum MemberValue<'a> {
    Raw(&'a RawValue),
    Events(EventsValue<'a>),
}

enum EventsValue<'a> {
    Array(Vec<&'a RawValue>),
    NotArray,
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TopVisitor;

        impl<'de> Visitor<'de> for TopVisitor {
            type Value = TopLevel<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let value = if key == VALUE {
                        MemberValue::Events(map.next_value_seed(EventsSeed)?)
                    } else {
                        MemberValue::Raw(map.next_value::<&'de RawValue>()?)
                    };
                    members.push(Member { key, value });
                }
                Ok(TopLevel { members })
            }
        }

        deserializer.deserialize_map(TopVisitor)
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }

        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Reads the `value` member in one pass: an array becomes its raw items, anything else is
/// skipped and reported as [`EventsValue::NotArray`] (a violation, not a parse error).
struct EventsSeed;

impl<'de> DeserializeSeed<'de> for EventsSeed {
    type Value = EventsValue<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(EventsVisitor)
    }
}

struct EventsVisitor;

impl<'de> Visitor<'de> for EventsVisitor {
    type Value = EventsValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(16));
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            items.push(item);
        }
        Ok(EventsValue::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(EventsValue::NotArray)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(EventsValue::NotArray)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(EventsValue::NotArray)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(EventsValue::NotArray)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(EventsValue::NotArray)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(EventsValue::NotArray)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(EventsValue::NotArray)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(EventsValue::NotArray)
    }
}

/// State of one required field while reading an event.
#[derive(Default, Clone, Copy)]
enum Slot<'a> {
    #[default]
    Missing,
    One(&'a RawValue),
    Duplicate,
}

impl<'a> Slot<'a> {
    fn set(&mut self, raw: &'a RawValue) {
        *self = match self {
            Slot::Missing => Slot::One(raw),
            Slot::One(_) | Slot::Duplicate => Slot::Duplicate,
        };
    }

    fn get(&self) -> Result<&'a RawValue, &'static str> {
        match *self {
            Slot::One(raw) => Ok(raw),
            Slot::Missing => Err(DETAIL_REQUIRED),
            Slot::Duplicate => Err(DETAIL_DUPLICATE),
        }
    }
}

/// The three required fields of one event, raw; every other field is skipped.
#[derive(Default)]
struct EventFields<'a> {
    sequence: Slot<'a>,
    resource_name: Slot<'a>,
    record_key: Slot<'a>,
}

impl<'a> EventFields<'a> {
    fn record(&mut self, key: &str, raw: &'a RawValue) {
        match key {
            SEQUENCE => self.sequence.set(raw),
            RESOURCE_NAME => self.resource_name.set(raw),
            RECORD_KEY => self.record_key.set(raw),
            _ => {}
        }
    }
}

/// Which member of an event object is being read.
enum FieldId {
    Sequence,
    ResourceName,
    RecordKey,
    Other,
}

impl<'de> Deserialize<'de> for FieldId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;

        impl Visitor<'_> for FieldVisitor {
            type Value = FieldId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(match v {
                    SEQUENCE => FieldId::Sequence,
                    RESOURCE_NAME => FieldId::ResourceName,
                    RECORD_KEY => FieldId::RecordKey,
                    _ => FieldId::Other,
                })
            }
        }

        deserializer.deserialize_identifier(FieldVisitor)
    }
}

impl<'de> Deserialize<'de> for EventFields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EventVisitor;

        impl<'de> Visitor<'de> for EventVisitor {
            type Value = EventFields<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an EntityEvent object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = EventFields::default();
                while let Some(id) = map.next_key::<FieldId>()? {
                    match id {
                        FieldId::Sequence => fields.sequence.set(map.next_value()?),
                        FieldId::ResourceName => fields.resource_name.set(map.next_value()?),
                        FieldId::RecordKey => fields.record_key.set(map.next_value()?),
                        FieldId::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(fields)
            }
        }

        deserializer.deserialize_map(EventVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: &str = "urn:reso:metadata:2.0:resource:entityevent";

    fn parse(body: &str) -> Result<Payload, PayloadError> {
        parse_payload(
            &Bytes::copy_from_slice(body.as_bytes()),
            ParseOptions::default(),
        )
    }

    fn parse_ok(body: &str) -> Payload {
        match parse(body) {
            Ok(p) => p,
            Err(e) => panic!("expected success, got {e}: {:?}", e.violations),
        }
    }

    fn parse_coerce(body: &str) -> Result<Payload, PayloadError> {
        parse_payload(
            &Bytes::copy_from_slice(body.as_bytes()),
            ParseOptions {
                coerce_numeric_record_key: true,
            },
        )
    }

    fn violations(body: &str) -> Vec<(String, String)> {
        match parse(body) {
            Ok(p) => panic!("expected violations, got {} event(s)", p.len()),
            Err(e) => e
                .violations
                .into_iter()
                .map(|v| (v.pointer, v.detail))
                .collect(),
        }
    }

    fn v(pointer: &str, detail: &str) -> (String, String) {
        (pointer.to_owned(), detail.to_owned())
    }

    fn raw_str(e: &ParsedEvent) -> &str {
        std::str::from_utf8(&e.raw).expect("raw is UTF-8")
    }

    /// Wraps one event object in a multi-valued envelope.
    fn multi(event: &str) -> String {
        format!(r#"{{"@reso.context":"{CTX}","value":[{event}]}}"#)
    }

    // --- RCP-28 spec shapes ---------------------------------------------------------------

    #[test]
    fn spec_single_valued_showing() {
        let body = r#"{
  "@reso.context": "urn:reso:metadata:2.0:resource:entityevent",
  "EntityEventSequence": 1101,
  "ResourceName": "Showing",
  "ResourceRecordKey": "235021"
}"#;
        let p = parse_ok(body);
        assert!(!p.multi_valued);
        assert_eq!(p.context.as_deref(), Some(CTX));
        assert_eq!(p.len(), 1);
        let e = &p.events[0];
        assert_eq!(e.sequence, 1101);
        assert_eq!(e.resource_name, "Showing");
        assert_eq!(e.record_key, "235021");
        assert_eq!(
            raw_str(e),
            r#"{"EntityEventSequence":1101,"ResourceName":"Showing","ResourceRecordKey":"235021"}"#
        );
    }

    #[test]
    fn spec_multi_valued_property_and_media() {
        let body = r#"{
  "@reso.context": "urn:reso:metadata:2.0:resource:entityevent",
  "value": [
    {
      "EntityEventSequence": 1100,
      "ResourceName": "Property",
      "ResourceRecordKey": "12345"
    },
    {
      "EntityEventSequence": 1101,
      "ResourceName": "Media",
      "ResourceRecordKey": "M-778"
    }
  ]
}"#;
        let p = parse_ok(body);
        assert!(p.multi_valued);
        assert_eq!(p.context.as_deref(), Some(CTX));
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p.events[0].sequence, p.events[0].resource_name.as_str()),
            (1100, "Property")
        );
        assert_eq!(p.events[0].record_key, "12345");
        assert_eq!(
            (p.events[1].sequence, p.events[1].resource_name.as_str()),
            (1101, "Media")
        );
        assert_eq!(p.events[1].record_key, "M-778");
        assert_eq!(
            raw_str(&p.events[0]),
            "{\n      \"EntityEventSequence\": 1100,\n      \"ResourceName\": \"Property\",\n      \"ResourceRecordKey\": \"12345\"\n    }"
        );
        assert_eq!(
            raw_str(&p.events[1]),
            "{\n      \"EntityEventSequence\": 1101,\n      \"ResourceName\": \"Media\",\n      \"ResourceRecordKey\": \"M-778\"\n    }"
        );
    }

    #[test]
    fn spec_empty_batch() {
        let p = parse_ok(
            r#"{"@reso.context":"urn:reso:metadata:2.0:resource:entityevent","value":[]}"#,
        );
        assert!(p.multi_valued);
        assert!(p.is_empty());
        assert_eq!(p.len(), 0);
        let p = parse_ok(r#"{ "value" : [ ] }"#);
        assert!(p.multi_valued && p.is_empty() && p.context.is_none());
    }

    // --- producer guide example ---------------------------------------------------------------

    #[test]
    fn producer_guide_inline_data() {
        let property = r#"{
      "EntityEventSequence": 2001,
      "ResourceName": "Property",
      "ResourceRecordKey": "P-1",
      "ResourceRecordUrl": "https://api.example.com/Property('P-1')",
      "Data": {
        "@odata.context": "https://api.example.com/$metadata#Property/$entity",
        "ListingKey": "P-1",
        "ListPrice": 525000.00,
        "BedroomsTotal": 3,
        "StandardStatus": "Active",
        "PublicRemarks": "Sunny \"corner\" lot\nwith view",
        "Latitude": 47.6062,
        "Longitude": -122.3321,
        "ModificationTimestamp": "2024-05-01T12:34:56.789Z",
        "Appliances": ["Dishwasher", "Refrigerator"],
        "OpenHouse": null
      }
    }"#;
        let media = r#"{
      "EntityEventSequence": 2002,
      "ResourceName": "Media",
      "ResourceRecordKey": "MED-9",
      "Data": {
        "ResourceRecordID": "P-1",
        "OriginatingSystemName": "ExampleMLS",
        "Media": [
          {"MediaKey": "MED-9", "MediaURL": "https://cdn.example.com/1.jpg", "Order": 1},
          {"MediaKey": "MED-10", "MediaURL": "https://cdn.example.com/2.jpg", "Order": 2}
        ]
      }
    }"#;
        let body = format!(
            "{{\n  \"@reso.context\": \"{CTX}\",\n  \"value\": [\n    {property},\n    {media}\n  ]\n}}"
        );
        let p = parse_ok(&body);
        assert_eq!(p.len(), 2);
        assert_eq!(raw_str(&p.events[0]), property);
        assert_eq!(raw_str(&p.events[1]), media);
        assert_eq!(p.events[0].sequence, 2001);
        assert_eq!(p.events[0].record_key, "P-1");
        assert_eq!(p.events[1].resource_name, "Media");
        assert_eq!(p.events[1].record_key, "MED-9");
    }

    // --- vendor variants ----------------------------------------------------------------------

    #[test]
    fn vendor_event_types_array_and_timestamp() {
        let ev = r#"{"EntityEventSequence":7,"ResourceName":"Property","ResourceRecordKey":"A1","EventTypes":["Created","PriceChange"],"ModificationTimestamp":"2024-01-02T03:04:05Z"}"#;
        let p = parse_ok(&multi(ev));
        assert_eq!(raw_str(&p.events[0]), ev);
    }

    #[test]
    fn vendor_entity_event_type_and_unknown_fields() {
        let ev = r#"{"X_Vendor":{"deep":[1,2,{"a":null}]},"EntityEventType":"Deleted","ResourceRecordKey":"k","EntityEventSequence":9,"ResourceName":"Member","OriginatingSystemName":"Mls","x~y/z":true}"#;
        let p = parse_ok(&multi(ev));
        let e = &p.events[0];
        assert_eq!(
            (e.sequence, e.resource_name.as_str(), e.record_key.as_str()),
            (9, "Member", "k")
        );
        assert_eq!(raw_str(e), ev);
    }

    #[test]
    fn vendor_thin_events_without_data() {
        let body = r#"{"value":[{"EntityEventSequence":1,"ResourceName":"Office","ResourceRecordKey":"O1"},{"EntityEventSequence":2,"ResourceName":"Office","ResourceRecordKey":"O2"}]}"#;
        let p = parse_ok(body);
        assert!(p.context.is_none());
        assert_eq!(p.len(), 2);
        assert_eq!(
            raw_str(&p.events[1]),
            r#"{"EntityEventSequence":2,"ResourceName":"Office","ResourceRecordKey":"O2"}"#
        );
    }

    #[test]
    fn unicode_and_escapes_pass_through() {
        let ev = "{\"EntityEventSequence\":3,\"ResourceName\":\"Prop\\u0065rty\",\"ResourceRecordKey\":\"caf\u{e9}-\\\"1\\\"\",\"Data\":{\"Remarks\":\"M\u{fc}nchen \u{1f3e0} \\u00e9\\n\\/tab\\t\",\"Zip\":\"\\ud83d\\ude00\"}}";
        let p = parse_ok(&multi(ev));
        let e = &p.events[0];
        assert_eq!(e.resource_name, "Property");
        assert_eq!(e.record_key, "caf\u{e9}-\"1\"");
        assert_eq!(raw_str(e), ev);
    }

    #[test]
    fn odd_whitespace_inside_event_kept() {
        let ev = "{ \"EntityEventSequence\" :\t42 ,\r\n\"ResourceName\"  : \"Property\",\n\n  \"ResourceRecordKey\":\"K\"   ,\"Data\" : { }\t}";
        let body = format!("{{\"value\" :[\n\t {ev} \r\n , {ev}]  }}\n");
        let p = parse_ok(&body);
        assert_eq!(p.len(), 2);
        assert_eq!(raw_str(&p.events[0]), ev);
        assert_eq!(raw_str(&p.events[1]), ev);
    }

    #[test]
    fn raw_is_zero_copy_slice_of_body() {
        let body = Bytes::from(multi(
            r#"{"EntityEventSequence":5,"ResourceName":"Property","ResourceRecordKey":"Z"}"#,
        ));
        let p = parse_payload(&body, ParseOptions::default()).expect("valid");
        let raw = &p.events[0].raw;
        let start = raw.as_ptr() as usize - body.as_ptr() as usize;
        assert!(start + raw.len() <= body.len());
        assert_eq!(&body[start..start + raw.len()], &raw[..]);
        assert_eq!(body.as_ptr().wrapping_add(start), raw.as_ptr());
    }

    #[test]
    fn single_valued_raw_rebuilt_without_context() {
        let body = "{ \"ResourceName\" : \"Property\",\n \"@reso.context\": \"urn:x\", \"Data\": {\"a\" : [1, 2.50, 1e3]},\n \"EntityEventSequence\": 77, \"Key\\u0041\\\"q\": \"x\\u00e9\", \"ResourceRecordKey\" : \"R\" }";
        let p = parse_ok(body);
        assert!(!p.multi_valued);
        assert_eq!(p.context.as_deref(), Some("urn:x"));
        let e = &p.events[0];
        assert_eq!(
            raw_str(e),
            r#"{"ResourceName":"Property","Data":{"a" : [1, 2.50, 1e3]},"EntityEventSequence":77,"KeyA\"q":"x\u00e9","ResourceRecordKey":"R"}"#
        );
        // The rebuilt object is valid JSON with the same fields.
        let back: serde_json::Value = serde_json::from_slice(&e.raw).expect("valid JSON");
        assert_eq!(back["EntityEventSequence"], 77);
        assert!(back.get(CONTEXT).is_none());
    }

    #[test]
    fn no_context_at_all() {
        let p = parse_ok(
            r#"{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"1"}"#,
        );
        assert!(p.context.is_none());
        assert!(!p.multi_valued);
        assert_eq!(
            raw_str(&p.events[0]),
            r#"{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"1"}"#
        );
        let p = parse_ok(
            r#"{"value":[{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"1"}]}"#,
        );
        assert!(p.context.is_none());
        assert!(p.multi_valued);
    }

    #[test]
    fn max_sequence_accepted() {
        let p = parse_ok(&multi(
            r#"{"EntityEventSequence":9223372036854775807,"ResourceName":"P","ResourceRecordKey":"k"}"#,
        ));
        assert_eq!(p.events[0].sequence, i64::MAX);
    }

    // --- validation errors ----------------------------------------------------------------

    fn seq_violation(seq_json: &str) -> Vec<(String, String)> {
        violations(&multi(&format!(
            r#"{{"EntityEventSequence":{seq_json},"ResourceName":"Property","ResourceRecordKey":"k"}}"#
        )))
    }

    #[test]
    fn bad_sequences() {
        for bad in [
            "0",
            "-1",
            "-0",
            "\"1101\"",
            "1.5",
            "1.0",
            "1e3",
            "1E3",
            "9223372036854775808",
            "99999999999999999999999",
            "null",
            "true",
            "[1]",
            "{\"n\":1}",
        ] {
            assert_eq!(
                seq_violation(bad),
                vec![v("/value/0/EntityEventSequence", DETAIL_SEQUENCE)],
                "sequence {bad}"
            );
        }
    }

    #[test]
    fn missing_fields() {
        assert_eq!(
            violations(&multi(
                r#"{"ResourceName":"Property","ResourceRecordKey":"k"}"#
            )),
            vec![v("/value/0/EntityEventSequence", "is required")]
        );
        let body = r#"{"value":[
            {"EntityEventSequence":1,"ResourceName":"P","ResourceRecordKey":"a"},
            {"EntityEventSequence":2,"ResourceRecordKey":"b"},
            {"EntityEventSequence":3,"ResourceName":"P"}]}"#;
        assert_eq!(
            violations(body),
            vec![
                v("/value/1/ResourceName", "is required"),
                v("/value/2/ResourceRecordKey", "is required"),
            ]
        );
        assert_eq!(
            violations(&multi("{}")),
            vec![
                v("/value/0/EntityEventSequence", "is required"),
                v("/value/0/ResourceName", "is required"),
                v("/value/0/ResourceRecordKey", "is required"),
            ]
        );
    }

    #[test]
    fn bad_resource_names() {
        let name = |json: &str| {
            violations(&multi(&format!(
                r#"{{"EntityEventSequence":1,"ResourceName":{json},"ResourceRecordKey":"k"}}"#
            )))
        };
        let at = "/value/0/ResourceName";
        assert_eq!(name("\"\""), vec![v(at, DETAIL_BLANK)]);
        assert_eq!(name("\"  \\t \""), vec![v(at, DETAIL_BLANK)]);
        assert_eq!(name("42"), vec![v(at, DETAIL_STRING)]);
        assert_eq!(name("null"), vec![v(at, DETAIL_STRING)]);
        assert_eq!(name("[\"Property\"]"), vec![v(at, DETAIL_STRING)]);
        let long = "x".repeat(256);
        assert_eq!(name(&format!("\"{long}\"")), vec![v(at, DETAIL_TOO_LONG)]);
        let ok = "x".repeat(255);
        let p = parse_ok(&multi(&format!(
            r#"{{"EntityEventSequence":1,"ResourceName":"{ok}","ResourceRecordKey":"k"}}"#
        )));
        assert_eq!(p.events[0].resource_name, ok);
    }

    #[test]
    fn numeric_record_key_rejected_by_default() {
        let body = multi(
            r#"{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":235021}"#,
        );
        assert_eq!(
            violations(&body),
            vec![v("/value/0/ResourceRecordKey", DETAIL_NUMERIC_KEY)]
        );
    }

    #[test]
    fn numeric_record_key_coerced() {
        let ev =
            r#"{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":235021}"#;
        let p = parse_coerce(&multi(ev)).expect("coerced");
        assert_eq!(p.events[0].record_key, "235021");
        assert_eq!(raw_str(&p.events[0]), ev);
        // The literal text, not a normalized number.
        let ev =
            r#"{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":-1.50e2}"#;
        let p = parse_coerce(&multi(ev)).expect("coerced");
        assert_eq!(p.events[0].record_key, "-1.50e2");
        // Single-valued too.
        let p = parse_coerce(
            r#"{"EntityEventSequence":1,"ResourceName":"Showing","ResourceRecordKey": 7}"#,
        )
        .expect("coerced");
        assert_eq!(p.events[0].record_key, "7");
        assert_eq!(
            raw_str(&p.events[0]),
            r#"{"EntityEventSequence":1,"ResourceName":"Showing","ResourceRecordKey":7}"#
        );
        // Coercion does not make other types acceptable.
        let err = parse_coerce(&multi(
            r#"{"EntityEventSequence":1,"ResourceName":"P","ResourceRecordKey":true}"#,
        ))
        .expect_err("bool key");
        assert_eq!(
            err.violations,
            vec![Violation {
                pointer: "/value/0/ResourceRecordKey".into(),
                detail: DETAIL_STRING.into()
            }]
        );
    }

    #[test]
    fn record_key_length_counts_chars() {
        let key = |k: &str| {
            multi(&format!(
                r#"{{"EntityEventSequence":1,"ResourceName":"P","ResourceRecordKey":"{k}"}}"#
            ))
        };
        // 255 two-byte characters (510 bytes) are fine.
        let ok = "\u{e9}".repeat(255);
        assert_eq!(parse_ok(&key(&ok)).events[0].record_key, ok);
        // 255 four-byte characters too.
        let ok = "\u{1f3e0}".repeat(255);
        assert_eq!(parse_ok(&key(&ok)).events[0].record_key, ok);
        // 256 characters are not.
        let long = "\u{e9}".repeat(256);
        assert_eq!(
            violations(&key(&long)),
            vec![v("/value/0/ResourceRecordKey", DETAIL_TOO_LONG)]
        );
        let long = "k".repeat(256);
        assert_eq!(
            violations(&key(&long)),
            vec![v("/value/0/ResourceRecordKey", DETAIL_TOO_LONG)]
        );
        // Escapes count as the character they decode to.
        let escaped = "\\u00e9".repeat(255);
        assert_eq!(
            parse_ok(&key(&escaped)).events[0].record_key,
            "\u{e9}".repeat(255)
        );
        assert_eq!(
            violations(&key("")),
            vec![v("/value/0/ResourceRecordKey", DETAIL_EMPTY)]
        );
    }

    #[test]
    fn non_object_events() {
        let body = r#"{"value":[{"EntityEventSequence":1,"ResourceName":"P","ResourceRecordKey":"a"},"oops",42,null,[],true]}"#;
        assert_eq!(
            violations(body),
            vec![
                v("/value/1", DETAIL_NOT_OBJECT_EVENT),
                v("/value/2", DETAIL_NOT_OBJECT_EVENT),
                v("/value/3", DETAIL_NOT_OBJECT_EVENT),
                v("/value/4", DETAIL_NOT_OBJECT_EVENT),
                v("/value/5", DETAIL_NOT_OBJECT_EVENT),
            ]
        );
    }

    #[test]
    fn value_not_array() {
        for bad in [
            "{}",
            r#"{"EntityEventSequence":1,"ResourceName":"P","ResourceRecordKey":"a"}"#,
            "null",
            "\"x\"",
            "1",
            "-2.5",
            "18446744073709551615",
            "false",
        ] {
            assert_eq!(
                violations(&format!(r#"{{"@reso.context":"{CTX}","value":{bad}}}"#)),
                vec![v("/value", DETAIL_NOT_ARRAY)],
                "value {bad}"
            );
        }
    }

    #[test]
    fn context_not_a_string() {
        assert_eq!(
            violations(r#"{"@reso.context":1,"value":[]}"#),
            vec![v("/@reso.context", DETAIL_STRING)]
        );
        assert_eq!(
            violations(
                r#"{"@reso.context":{"a":1},"EntityEventSequence":1,"ResourceName":"P","ResourceRecordKey":"k"}"#
            ),
            vec![v("/@reso.context", DETAIL_STRING)]
        );
        assert_eq!(
            violations(r#"{"@reso.context":null,"value":[]}"#),
            vec![v("/@reso.context", DETAIL_STRING)]
        );
    }

    #[test]
    fn single_valued_pointers() {
        assert_eq!(
            violations(
                r#"{"@reso.context":"x","EntityEventSequence":"1","ResourceName":"","ResourceRecordKey":5}"#
            ),
            vec![
                v("/EntityEventSequence", DETAIL_SEQUENCE),
                v("/ResourceName", DETAIL_BLANK),
                v("/ResourceRecordKey", DETAIL_NUMERIC_KEY),
            ]
        );
        assert_eq!(
            violations(r#"{"@reso.context":"x"}"#),
            vec![
                v("/EntityEventSequence", "is required"),
                v("/ResourceName", "is required"),
                v("/ResourceRecordKey", "is required"),
            ]
        );
    }

    #[test]
    fn duplicates_rejected() {
        assert_eq!(
            violations(&multi(
                r#"{"EntityEventSequence":1,"ResourceName":"P","ResourceRecordKey":"k","ResourceRecordKey":"j"}"#
            )),
            vec![v("/value/0/ResourceRecordKey", DETAIL_DUPLICATE)]
        );
        assert_eq!(
            violations(r#"{"value":[],"value":[]}"#),
            vec![v("/value", DETAIL_DUPLICATE)]
        );
        assert_eq!(
            violations(r#"{"@reso.context":"a","@reso.context":"b","value":[]}"#),
            vec![v("/@reso.context", DETAIL_DUPLICATE)]
        );
        // An escaped spelling of a required field is the same field.
        assert_eq!(
            violations(
                r#"{"EntityEventSequence":1,"ResourceName":"P","Resource\u004eame":"Q","ResourceRecordKey":"k"}"#
            ),
            vec![v("/ResourceName", DETAIL_DUPLICATE)]
        );
    }

    #[test]
    fn invalid_json_at_root() {
        let got = violations(r#"{"value":[{"EntityEventSequence":1,}]}"#);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "");
        assert!(got[0].1.starts_with("is not valid JSON: "), "{}", got[0].1);
        assert!(got[0].1.contains("line 1 column"), "{}", got[0].1);

        let got = violations("{\n\"value\": [\n}");
        assert_eq!(got[0].0, "");
        assert!(got[0].1.contains("line 3 column 1"), "{}", got[0].1);

        for bad in ["", "   ", "{", "{} {}", "{\"a\":1}x", "nul"] {
            let got = violations(bad);
            assert_eq!(got.len(), 1, "{bad:?}");
            assert_eq!(got[0].0, "", "{bad:?}");
            assert!(
                got[0].1.starts_with("is not valid JSON"),
                "{bad:?}: {}",
                got[0].1
            );
        }
    }

    #[test]
    fn non_object_root() {
        for bad in [
            r#"[{"EntityEventSequence":1,"ResourceName":"P","ResourceRecordKey":"k"}]"#,
            "\"value\"",
            "42",
            "null",
            "true",
        ] {
            assert_eq!(
                violations(bad),
                vec![v("", DETAIL_NOT_OBJECT_ROOT)],
                "{bad}"
            );
        }
    }

    #[test]
    fn non_utf8_body() {
        let body = Bytes::from_static(b"{\"value\":[\xff]}");
        let err = parse_payload(&body, ParseOptions::default()).expect_err("not UTF-8");
        assert_eq!(err.violations.len(), 1);
        assert_eq!(err.violations[0].pointer, "");
        assert!(err.violations[0].detail.contains("UTF-8"));
        assert!(err.violations[0].detail.contains("byte 10"));
    }

    #[test]
    fn multiple_violations_collected() {
        let body = r#"{"@reso.context":5,"value":[
            {"EntityEventSequence":0,"ResourceName":"P","ResourceRecordKey":"a"},
            {"EntityEventSequence":2,"ResourceName":"P","ResourceRecordKey":"b"},
            7,
            {"EntityEventSequence":-3,"ResourceName":" ","ResourceRecordKey":12}]}"#;
        assert_eq!(
            violations(body),
            vec![
                v("/@reso.context", DETAIL_STRING),
                v("/value/0/EntityEventSequence", DETAIL_SEQUENCE),
                v("/value/2", DETAIL_NOT_OBJECT_EVENT),
                v("/value/3/EntityEventSequence", DETAIL_SEQUENCE),
                v("/value/3/ResourceName", DETAIL_BLANK),
                v("/value/3/ResourceRecordKey", DETAIL_NUMERIC_KEY),
            ]
        );
    }

    #[test]
    fn violations_capped_at_50() {
        let items = vec!["{}"; 40].join(",");
        let got = violations(&format!(r#"{{"value":[{items}]}}"#));
        assert_eq!(got.len(), MAX_VIOLATIONS);
        assert_eq!(got[49], v("/value/16/ResourceName", "is required"));
    }

    #[test]
    fn rfc6901_escaping() {
        assert_eq!(escape_segment("plain"), "plain");
        assert_eq!(escape_segment("a/b"), "a~1b");
        assert_eq!(escape_segment("m~n"), "m~0n");
        assert_eq!(escape_segment("~1/"), "~01~1");
        assert_eq!(pointer("/value/3", "x/y~z"), "/value/3/x~1y~0z");
        assert_eq!(pointer("", "@reso.context"), "/@reso.context");
        assert_eq!(pointer("", ""), "/");
    }

    #[test]
    fn error_display_and_serialize() {
        let err = parse(&multi(r#"{"EntityEventSequence":1,"ResourceName":"P"}"#))
            .expect_err("missing key");
        assert_eq!(
            err.to_string(),
            "1 invalid item(s) in EntityEvent payload, first at `/value/0/ResourceRecordKey`: is required"
        );
        let err = parse("[]").expect_err("array");
        assert_eq!(
            err.to_string(),
            "1 invalid item(s) in EntityEvent payload, first at the document root: must be a JSON object"
        );
        let json = serde_json::to_string(&err.violations).expect("serialize");
        assert_eq!(json, r#"[{"pointer":"","detail":"must be a JSON object"}]"#);
        let empty = PayloadError { violations: vec![] };
        assert_eq!(empty.to_string(), "invalid EntityEvent payload");
    }

    #[test]
    fn other_top_level_members_ignored_when_multi_valued() {
        let body = r#"{"@odata.nextLink":"x","value":[{"EntityEventSequence":1,"ResourceName":"P","ResourceRecordKey":"k"}],"EntityEventSequence":"junk"}"#;
        let p = parse_ok(body);
        assert_eq!(p.len(), 1);
        assert_eq!(
            raw_str(&p.events[0]),
            r#"{"EntityEventSequence":1,"ResourceName":"P","ResourceRecordKey":"k"}"#
        );
    }
}
