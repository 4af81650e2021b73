//! The rules for the three required fields of an EntityEvent: `EntityEventSequence` (a
//! positive int64), `ResourceName` and `ResourceRecordKey` (non-empty strings of at most 255
//! characters; numeric keys only when coercion is on). Each check turns a raw JSON value into
//! the decoded field or a short human detail for the violation.

use super::*;

/// Checks the three required fields; returns them when all are valid.
pub(super) fn check_fields<F>(
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
    if let (true, Some(annotation)) = (opts.refuse_rendered_annotations, fields.rendered_annotation)
    {
        report(annotation, Cow::Borrowed(DETAIL_RENDERED_ANNOTATION));
        return None;
    }
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
    let name = check_length(name)?;
    if !crate::resources::well_formed(&name) {
        return Err(Cow::Borrowed(DETAIL_RESOURCE_CHARS));
    }
    Ok(name)
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
pub(super) fn decode_string(raw: &RawValue) -> Option<String> {
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
