//! The query string of a record collection request (`GET {root}Property?$filter=ListingKey eq
//! '…'` or `ListingKey in ('…', …)`, `$top`, `$skip`): untrusted text, parsed here without I/O
//! so the fuzzing pass (`tests/it/fuzz.rs`) can drive it directly. A key named twice is read
//! once (first occurrence order); at most [`MAX_KEYS`] keys.

use std::collections::HashSet;

/// Most keys one collection request may name.
pub const MAX_KEYS: usize = 100;

/// What a collection request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordQuery {
    /// The filter as given (repeated in next links).
    pub filter: String,
    /// Distinct keys, in the order first named.
    pub keys: Vec<String>,
    /// `$top`: most records answered over all pages.
    pub top: Option<usize>,
    /// `$skip`: keys passed over.
    pub skip: usize,
}

/// Why a query is refused: the option and what is wrong (answered 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordQueryError {
    /// The failing query option (`$filter`, `$top`, …, or the unknown name).
    pub option: String,
    /// What is wrong with it.
    pub detail: String,
}

fn bad(option: &str, detail: impl Into<String>) -> RecordQueryError {
    RecordQueryError {
        option: option.to_owned(),
        detail: detail.into(),
    }
}

/// A quoted OData string literal (`'K''5'` → `K'5`).
pub fn literal(text: &str) -> Option<String> {
    let inner = text.trim().strip_prefix('\'')?.strip_suffix('\'')?;
    let mut out = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' && chars.next() != Some('\'') {
            return None;
        }
        out.push(c);
    }
    Some(out)
}

/// Splits `('a', 'b')` into its literals (quotes respected).
pub fn list(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    let mut items = Vec::new();
    let (mut current, mut quoted) = (String::new(), false);
    for c in inner.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => items.push(literal(&std::mem::take(&mut current))?),
            _ => current.push(c),
        }
    }
    items.push(literal(&current)?);
    Some(items)
}

/// Parses the raw query of a collection request on a resource keyed by `key_field`.
pub fn parse_record_query(
    key_field: &str,
    query: Option<&str>,
) -> Result<RecordQuery, RecordQueryError> {
    let (mut filter, mut top, mut skip) = (None, None, None);
    let number = |option: &str, v: &str| {
        v.parse::<usize>()
            .map_err(|_| bad(option, "must be a non-negative integer"))
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "$filter" if filter.is_none() => filter = Some(v.into_owned()),
            "$top" if top.is_none() => top = Some(number("$top", &v)?),
            "$skip" if skip.is_none() => skip = Some(number("$skip", &v)?),
            "$format" if v == "json" || v == "application/json" => {}
            // Found by the fuzzing pass: `?=` named no option in its 400.
            "" => return Err(bad("(empty name)", "a query option needs a name")),
            other => {
                return Err(bad(
                    other,
                    "unsupported here (supported: $filter on the key, $top, $skip)",
                ))
            }
        }
    }
    let need = format!("`{key_field} eq '…'` or `{key_field} in ('…', …)` is required");
    let filter = filter.ok_or_else(|| bad("$filter", need.clone()))?;
    let rest = filter
        .trim()
        .strip_prefix(key_field)
        .ok_or_else(|| bad("$filter", need.clone()))?
        .trim_start();
    let named = if let Some(v) = rest.strip_prefix("eq ") {
        vec![literal(v).ok_or_else(|| bad("$filter", need.clone()))?]
    } else if let Some(v) = rest.strip_prefix("in ") {
        list(v).ok_or_else(|| bad("$filter", need.clone()))?
    } else {
        return Err(bad("$filter", need));
    };
    if named.len() > MAX_KEYS {
        return Err(bad(
            "$filter",
            format!("at most {MAX_KEYS} keys per request"),
        ));
    }
    let mut seen = HashSet::new();
    let keys = named
        .into_iter()
        .filter(|k| seen.insert(k.clone()))
        .collect();
    Ok(RecordQuery {
        filter,
        keys,
        top,
        skip: skip.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_lists() {
        assert_eq!(literal("'K''5'").as_deref(), Some("K'5"));
        assert_eq!(literal("'a'b'"), None);
        assert_eq!(
            list("('a', 'b,c')").unwrap(),
            vec!["a".to_owned(), "b,c".to_owned()]
        );
        assert!(list("('a', b)").is_none());
    }
}
