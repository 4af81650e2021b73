//! A small, strict parser for the OData query subset the replay resource serves.
//!
//! Supported: `$filter` with `EntityEventSequence` `gt|ge|lt|le|eq` an integer,
//! `ResourceName eq '…'` or `ResourceName in ('…', …)` and `ResourceRecordKey eq '…'`, joined by
//! `and` (parentheses allowed); `$orderby=EntityEventSequence [asc|desc]`; `$top`; `$skip`;
//! `$count=true|false`; `$select` of the event's fields; `$skiptoken` (what our
//! `@odata.nextLink` carries); `$format=json`. Anything else is refused with the option named,
//! rather than silently ignored: a consumer that asks for `or` must not get a wrong answer.
//!
//! The query comes from the network, so the parser is bounded: the query string is at most
//! [`MAX_QUERY_BYTES`], parentheses nest at most [`MAX_FILTER_DEPTH`] deep and a filter holds at
//! most [`MAX_FILTER_TERMS`] comparisons. Beyond that the answer is a 400 naming the option; no
//! input can make the parser recurse or allocate without bound.

/// Longest raw query string accepted (bytes, percent-encoded). A RESO client's replay query
/// (`$filter` on sequence and resource, paging options) is well under 1 KiB.
pub const MAX_QUERY_BYTES: usize = 4096;
/// Deepest parenthesis nesting accepted in `$filter`.
pub const MAX_FILTER_DEPTH: usize = 16;
/// Most comparisons accepted in one `$filter`.
pub const MAX_FILTER_TERMS: usize = 32;

/// A parsed replay request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayQuery {
    /// Only positions greater than this.
    pub after: i64,
    /// Only positions up to and including this.
    pub until: i64,
    /// Only these `ResourceName`s (`eq` and `in`, intersected).
    pub resources: Option<Vec<String>>,
    /// Only this `ResourceRecordKey`.
    pub record_key: Option<String>,
    /// `$orderby=EntityEventSequence desc`: newest first.
    pub descending: bool,
    /// `$select`: only these fields of each event.
    pub select: Option<Vec<String>>,
    /// The filter can match nothing (e.g. two different `ResourceName eq`).
    pub contradiction: bool,
    /// `$top`: at most this many events in total (over all pages).
    pub top: Option<u64>,
    /// `$skip`: leave out this many matching events first.
    pub skip: u64,
    /// `$count=true`: include `@odata.count`.
    pub count: bool,
    /// `$skiptoken`: continue after this position (server-driven paging).
    pub skiptoken: Option<i64>,
    /// The `$filter` text as received (repeated in `@odata.nextLink`).
    pub filter: Option<String>,
}

impl Default for ReplayQuery {
    fn default() -> Self {
        ReplayQuery {
            after: 0,
            until: i64::MAX,
            resources: None,
            record_key: None,
            descending: false,
            select: None,
            contradiction: false,
            top: None,
            skip: 0,
            count: false,
            skiptoken: None,
            filter: None,
        }
    }
}

/// The fields `$select` may name: the EntityEvent's own, and `Data`.
pub const SELECTABLE: &[&str] = &[
    "EntityEventSequence",
    "ResourceName",
    "ResourceRecordKey",
    "ResourceRecordUrl",
    "Data",
];

/// A refused query option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{option}`: {detail}")]
pub struct QueryError {
    /// The query option, e.g. `$filter`.
    pub option: String,
    /// What is wrong or unsupported.
    pub detail: String,
}

fn error(option: &str, detail: impl Into<String>) -> QueryError {
    QueryError {
        option: option.to_owned(),
        detail: detail.into(),
    }
}

/// Parses a raw (percent-encoded) query string.
pub fn parse_query(raw: Option<&str>) -> Result<ReplayQuery, QueryError> {
    let mut q = ReplayQuery::default();
    let raw = raw.unwrap_or_default();
    if raw.len() > MAX_QUERY_BYTES {
        return Err(error(
            "query",
            format!(
                "the query string is {} bytes; at most {MAX_QUERY_BYTES} are accepted",
                raw.len()
            ),
        ));
    }
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        if key.is_empty() {
            // `?&$top=1`, `?=`: an empty segment is nothing; a value without a name is refused
            // (found by the property tests: it was answered as the option ``).
            if value.is_empty() {
                continue;
            }
            return Err(error("query", "a query option has a value but no name"));
        }
        if seen.iter().any(|k| *k == key) {
            return Err(error(&key, "given more than once"));
        }
        seen.push(key.to_string());
        let value = value.trim();
        match &*key {
            "$filter" => {
                parse_filter(value, &mut q).map_err(|d| error("$filter", d))?;
                q.filter = Some(value.to_owned());
            }
            "$orderby" => {
                let words: Vec<&str> = value.split_whitespace().collect();
                match words.as_slice() {
                    ["EntityEventSequence"] | ["EntityEventSequence", "asc"] => {}
                    ["EntityEventSequence", "desc"] => q.descending = true,
                    _ => return Err(error(
                        "$orderby",
                        "only `EntityEventSequence asc` or `EntityEventSequence desc` is supported",
                    )),
                }
            }
            "$select" => {
                let fields: Vec<String> = value.split(',').map(|f| f.trim().to_owned()).collect();
                if let Some(bad) = fields.iter().find(|f| !SELECTABLE.contains(&f.as_str())) {
                    return Err(error(
                        "$select",
                        format!(
                            "`{bad}` cannot be selected (supported: {})",
                            SELECTABLE.join(", ")
                        ),
                    ));
                }
                // Every name is one of a few fields now, so a repeat shows within the first few.
                let twice = (fields.iter().enumerate())
                    .find_map(|(i, f)| fields[..i].contains(f).then_some(f));
                if let Some(twice) = twice {
                    return Err(error("$select", format!("`{twice}` is named twice")));
                }
                q.select = Some(fields);
            }
            "$top" => q.top = Some(number(&key, value)?),
            "$skip" => q.skip = number(&key, value)?,
            "$count" => {
                q.count = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(error("$count", "must be `true` or `false`")),
                }
            }
            "$skiptoken" => {
                q.skiptoken = Some(
                    value
                        .parse::<i64>()
                        .ok()
                        .filter(|v| *v >= 0)
                        .ok_or_else(|| error("$skiptoken", "not a token this server issued"))?,
                )
            }
            "$format" if value == "json" || value == "application/json" => {}
            other => {
                return Err(error(
                    other,
                    "unsupported query option (supported: $filter, $orderby, $top, $skip, \
                     $count, $select, $skiptoken, $format=json)",
                ))
            }
        }
    }
    Ok(q)
}

fn number(option: &str, value: &str) -> Result<u64, QueryError> {
    value
        .parse::<u64>()
        .map_err(|_| error(option, "must be a non-negative integer"))
}

mod filter;
use filter::parse_filter;

#[cfg(test)]
#[path = "odata_tests.rs"]
mod tests;
