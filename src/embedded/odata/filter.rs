//! The `$filter` expressions of the replay resource: a tokenizer and a recursive-descent parser
//! for comparisons joined by `and`, bounded in depth ([`MAX_FILTER_DEPTH`]) and in comparisons
//! ([`MAX_FILTER_TERMS`]). Each comparison narrows the [`ReplayQuery`].

use super::{ReplayQuery, MAX_FILTER_DEPTH, MAX_FILTER_TERMS};

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Int(i64),
    Str(String),
    Open,
    Close,
    Comma,
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
            ',' => {
                chars.next();
                tokens.push(Token::Comma);
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

    /// `('a', 'b', …)` after `in`; each item counts as a comparison.
    fn list(&mut self) -> Result<Vec<String>, String> {
        if self.next() != Some(&Token::Open) {
            return Err("`in` needs a parenthesized list, e.g. ('Property', 'Member')".into());
        }
        let mut items = Vec::new();
        loop {
            match self.next().cloned() {
                Some(Token::Str(s)) => {
                    self.terms += 1;
                    if self.terms > MAX_FILTER_TERMS {
                        return Err(format!("more than {MAX_FILTER_TERMS} comparisons"));
                    }
                    items.push(s);
                }
                _ => return Err("`in` lists quoted strings".into()),
            }
            match self.next() {
                Some(Token::Comma) => continue,
                Some(Token::Close) => return Ok(items),
                _ => return Err("missing `)` after the `in` list".into()),
            }
        }
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
                if op == "in" {
                    let list = self.list()?;
                    return in_list(&property, list, q);
                }
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
                return Err(format!("`ResourceName {op}` is not supported (`eq`, `in`)"));
            }
            let Some(Token::Str(name)) = literal else {
                return Err("`ResourceName eq` needs a quoted string, e.g. 'Property'".into());
            };
            return in_list(property, vec![name], q);
        }
        "ResourceRecordKey" => {
            if op != "eq" {
                return Err(format!("`ResourceRecordKey {op}` is not supported (only `eq`)"));
            }
            let Some(Token::Str(key)) = literal else {
                return Err("`ResourceRecordKey eq` needs a quoted string, e.g. '235021'".into());
            };
            match &q.record_key {
                Some(existing) if *existing != key => q.contradiction = true,
                _ => q.record_key = Some(key),
            }
        }
        "and" | "or" | "not" => return Err(format!("unexpected `{property}`")),
        other => {
            return Err(format!(
            "property `{other}` cannot be filtered (supported: EntityEventSequence, ResourceName, ResourceRecordKey)"
        ))
        }
    }
    Ok(())
}

/// `ResourceName in (…)` (and `eq`, a list of one): intersected with what is already asked.
fn in_list(property: &str, items: Vec<String>, q: &mut ReplayQuery) -> Result<(), String> {
    if property != "ResourceName" {
        return Err(format!(
            "`{property} in` is not supported (only `ResourceName in`)"
        ));
    }
    let set = match q.resources.take() {
        Some(existing) => existing.into_iter().filter(|r| items.contains(r)).collect(),
        None => items,
    };
    if set.is_empty() {
        q.contradiction = true;
    }
    q.resources = Some(set);
    Ok(())
}

pub(super) fn parse_filter(text: &str, q: &mut ReplayQuery) -> Result<(), String> {
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
