//! Building the events of a parsed payload: each event's fields checked, its exact bytes
//! located in the body, its depth bounded; and the violation list with RFC 6901 pointers.

use super::*;

/// Validates the events of a `value` array; each raw is a slice of `body`.
pub(super) fn multi_valued_events(
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
        let EventItem::Object {
            fields,
            first_key,
            last_value,
        } = item
        else {
            sink.push(prefix(), DETAIL_NOT_OBJECT_EVENT);
            continue;
        };
        let Some((sequence, resource_name, record_key)) = check_fields(fields, opts, &prefix, sink)
        else {
            continue;
        };
        // Once anything failed the payload is rejected: stop building events.
        if !sink.list.is_empty() {
            continue;
        }
        match object_bytes(body, text, *first_key, *last_value) {
            Some(raw) if deeper_than(&raw, opts.max_depth) => {
                sink.push(prefix(), too_deep(opts.max_depth))
            }
            Some(raw) => events.push(ParsedEvent {
                sequence,
                resource_name,
                record_key,
                raw,
            }),
            // Unreachable for a body serde_json accepted: the bounds come from it.
            None => sink.push(prefix(), "could not be delimited in the body"),
        }
    }
    events
}

/// The exact bytes of an event object, from the `{` before its first key to the `}` after its
/// last value (only JSON whitespace can sit between them), as a zero-copy slice of `body`.
pub(super) fn object_bytes(
    body: &Bytes,
    text: &str,
    first_key: Option<&RawValue>,
    last_value: Option<&RawValue>,
) -> Option<Bytes> {
    let (first_key, last_value) = (first_key?.get(), last_value?.get());
    let base = text.as_ptr() as usize;
    let key_at = (first_key.as_ptr() as usize).checked_sub(base)?;
    let value_end = (last_value.as_ptr() as usize)
        .checked_sub(base)?
        .checked_add(last_value.len())?;
    let bytes = text.as_bytes();
    if value_end > bytes.len() || key_at >= value_end || bytes.len() != body.len() {
        return None;
    }
    let is_space = |b: &&u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let open = key_at.checked_sub(1 + bytes[..key_at].iter().rev().take_while(is_space).count())?;
    let close = value_end + bytes[value_end..].iter().take_while(is_space).count();
    (bytes.get(open) == Some(&b'{') && bytes.get(close) == Some(&b'}'))
        .then(|| body.slice(open..=close))
}

/// Validates a single-valued payload and rebuilds its event object without `@reso.context`.
pub(super) fn single_valued_event(
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
    // The member values sit one level below the event object.
    for member in &top.members {
        if let MemberValue::Raw(raw) = member.value {
            if deeper_than(raw.get().as_bytes(), opts.max_depth.saturating_sub(1)) {
                sink.push(pointer("", &member.key), too_deep(opts.max_depth));
            }
        }
    }
    if !sink.list.is_empty() {
        return Vec::new();
    }

    let capacity = top
        .members
        .iter()
        .map(|m| match m.value {
            MemberValue::Raw(raw) => m.key.len() + raw.get().len() + 4,
            MemberValue::Events(_) | MemberValue::DuplicateEvents => 0,
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
pub(super) fn write_json_string(out: &mut Vec<u8>, s: &str) {
    if serde_json::to_writer(&mut *out, s).is_err() {
        // Serializing a `str` into a `Vec` cannot fail; keep a correct fallback anyway.
        out.extend_from_slice(format!("{s:?}").as_bytes());
    }
}

/// Builds `prefix/segment` with the segment escaped per RFC 6901.
pub(super) fn pointer(prefix: &str, segment: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + segment.len() + 1);
    out.push_str(prefix);
    out.push('/');
    out.push_str(&escape_segment(segment));
    out
}

/// RFC 6901 escaping of one reference token: `~` → `~0`, `/` → `~1`.
pub(super) fn escape_segment(segment: &str) -> Cow<'_, str> {
    if segment.contains(['~', '/']) {
        Cow::Owned(segment.replace('~', "~0").replace('/', "~1"))
    } else {
        Cow::Borrowed(segment)
    }
}

pub(super) fn too_deep(limit: usize) -> String {
    format!("nests objects and arrays deeper than {limit} levels (max_json_depth)")
}

pub(super) fn root_error(detail: String) -> PayloadError {
    PayloadError {
        violations: vec![Violation {
            pointer: String::new(),
            detail,
        }],
    }
}

/// Collected violations, capped at [`MAX_VIOLATIONS`].
#[derive(Default)]
pub(super) struct Violations {
    pub(super) list: Vec<Violation>,
}

impl Violations {
    pub(super) fn push(&mut self, pointer: String, detail: impl Into<Cow<'static, str>>) {
        if !self.is_full() {
            self.list.push(Violation {
                pointer,
                detail: detail.into().into_owned(),
            });
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.list.len() >= MAX_VIOLATIONS
    }
}
