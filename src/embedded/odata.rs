//! A small, strict parser for the OData query subset the replay resource serves.
//!
//! Supported: `$filter` with `EntityEventSequence` `gt|ge|lt|le|eq` an integer and
//! `ResourceName eq '…'`, joined by `and` (parentheses allowed); `$orderby=EntityEventSequence
//! [asc]`; `$top`; `$skip`; `$count=true|false`; `$skiptoken` (what our `@odata.nextLink`
//! carries); `$format=json`. Anything else is refused with the option named, rather than
//! silently ignored: a consumer that asks for `or` or `desc` must not get a wrong answer.
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
    /// Only this `ResourceName`.
    pub resource: Option<String>,
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
            resource: None,
            contradiction: false,
            top: None,
            skip: 0,
            count: false,
            skiptoken: None,
            filter: None,
        }
    }
}

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
                    _ => {
                        return Err(error(
                            "$orderby",
                            "only `EntityEventSequence asc` is supported",
                        ))
                    }
                }
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
                     $count, $skiptoken, $format=json)",
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

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Int(i64),
    Str(String),
    Open,
    Close,
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' => {
                chars.next();
                tokens.push(if c == '(' { Token::Open } else { Token::Close });
            }
            '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            s.push('\'');
                        }
                        Some('\'') => break,
                        Some(c) => s.push(c),
                        None => return Err("unterminated string literal".into()),
                    }
                }
                tokens.push(Token::Str(s));
            }
            c if c == '-' || c.is_ascii_digit() => {
                let mut s = String::new();
                while let Some(&d) = chars.peek() {
                    if (d == '-' && s.is_empty()) || d.is_ascii_digit() {
                        s.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                let n = s
                    .parse::<i64>()
                    .map_err(|_| format!("`{s}` is not a 64-bit integer"))?;
                tokens.push(Token::Int(n));
            }
            c if c.is_alphabetic() || c == '_' || c == '$' => {
                let mut s = String::new();
                while let Some(&d) = chars.peek() {
                    if d.is_alphanumeric() || d == '_' || d == '.' || d == '$' || d == '/' {
                        s.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push(Token::Word(s));
            }
            other => return Err(format!("unexpected character `{other}`")),
        }
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: &'a [Token],
    at: usize,
    /// Open parentheses around the current position.
    depth: usize,
    /// Comparisons read so far.
    terms: usize,
}

impl Parser<'_> {
    fn next(&mut self) -> Option<&Token> {
        let t = self.tokens.get(self.at);
        self.at += 1;
        t
    }

    fn expr(&mut self, q: &mut ReplayQuery) -> Result<(), String> {
        self.term(q)?;
        while let Some(Token::Word(w)) = self.tokens.get(self.at) {
            match w.as_str() {
                "and" => {
                    self.at += 1;
                    self.term(q)?;
                }
                "or" | "not" => return Err(format!("`{w}` is not supported (only `and`)")),
                _ => return Err(format!("expected `and`, found `{w}`")),
            }
        }
        Ok(())
    }

    fn term(&mut self, q: &mut ReplayQuery) -> Result<(), String> {
        match self.next().cloned() {
            Some(Token::Open) => {
                if self.depth == MAX_FILTER_DEPTH {
                    return Err(format!(
                        "parentheses nest deeper than {MAX_FILTER_DEPTH} levels"
                    ));
                }
                self.depth += 1;
                self.expr(q)?;
                self.depth -= 1;
                match self.next() {
                    Some(Token::Close) => Ok(()),
                    _ => Err("missing `)`".into()),
                }
            }
            Some(Token::Word(property)) => {
                self.terms += 1;
                if self.terms > MAX_FILTER_TERMS {
                    return Err(format!("more than {MAX_FILTER_TERMS} comparisons"));
                }
                let op = match self.next() {
                    Some(Token::Word(op)) => op.clone(),
                    _ => return Err(format!("expected an operator after `{property}`")),
                };
                let literal = self.next().cloned();
                comparison(&property, &op, literal, q)
            }
            Some(other) => Err(format!("expected a property, found {other:?}")),
            None => Err("unexpected end of filter".into()),
        }
    }
}

fn comparison(
    property: &str,
    op: &str,
    literal: Option<Token>,
    q: &mut ReplayQuery,
) -> Result<(), String> {
    match property {
        "EntityEventSequence" => {
            let Some(Token::Int(n)) = literal else {
                return Err(format!("`EntityEventSequence {op}` needs an integer"));
            };
            match op {
                "gt" => q.after = q.after.max(n),
                "ge" => q.after = q.after.max(n.saturating_sub(1)),
                "lt" => q.until = q.until.min(n.saturating_sub(1)),
                "le" => q.until = q.until.min(n),
                "eq" => {
                    q.after = q.after.max(n.saturating_sub(1));
                    q.until = q.until.min(n);
                }
                _ => {
                    return Err(format!(
                        "operator `{op}` is not supported (gt, ge, lt, le, eq)"
                    ))
                }
            }
        }
        "ResourceName" => {
            if op != "eq" {
                return Err(format!("`ResourceName {op}` is not supported (only `eq`)"));
            }
            let Some(Token::Str(name)) = literal else {
                return Err("`ResourceName eq` needs a quoted string, e.g. 'Property'".into());
            };
            match &q.resource {
                Some(existing) if *existing != name => q.contradiction = true,
                _ => q.resource = Some(name),
            }
        }
        "and" | "or" | "not" => return Err(format!("unexpected `{property}`")),
        other => {
            return Err(format!(
            "property `{other}` cannot be filtered (supported: EntityEventSequence, ResourceName)"
        ))
        }
    }
    Ok(())
}

fn parse_filter(text: &str, q: &mut ReplayQuery) -> Result<(), String> {
    let tokens = tokenize(text)?;
    let mut parser = Parser {
        tokens: &tokens,
        at: 0,
        depth: 0,
        terms: 0,
    };
    parser.expr(q)?;
    if parser.at < tokens.len() {
        return Err(format!("unexpected {:?}", tokens[parser.at]));
    }
    Ok(())
}

#[cfg(test)]
#[path = "odata_tests.rs"]
mod tests;
