//! Nesting depth of JSON text, measured without recursion.
//!
//! Event members are kept as borrowed raw values, and serde_json skips raw values with an
//! explicit stack, so nothing in the parse limits how deeply `Data` nests. A 100,000-level event
//! would be accepted and published, and most consumers' parsers (serde_json stops at 128, many
//! recursive parsers overflow their stack) could never read it back. [`deeper_than`] bounds it.
//!
//! It is on the ingress hot path, so it answers cheaply in the common case: text with no more
//! opening brackets than the limit cannot nest deeper, and `memchr2` finds them with SIMD,
//! stopping at the one past the limit (a plain counting loop was 30 % of the parse on 8 KiB
//! events, see docs/benchmarks.md). Only text with more brackets than the limit is walked
//! exactly, jumping over string contents with `memchr`.

/// Default deepest nesting of objects and arrays accepted in one event (the event object itself
/// is level 1). Leaves room for a consumer's own envelope under serde_json's limit of 128.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Whether the JSON `text` nests objects and arrays more than `limit` levels deep.
///
/// `text` should already be valid JSON (the parser checked it); for invalid text the answer is
/// only a best effort, and it never panics.
pub fn deeper_than(text: &[u8], limit: usize) -> bool {
    let more_brackets_than_limit = memchr::memchr2_iter(b'{', b'[', text).nth(limit).is_some();
    more_brackets_than_limit && walk_deeper_than(text, limit)
}

fn walk_deeper_than(text: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut at = 0usize;
    while let Some(&byte) = text.get(at) {
        match byte {
            b'"' => {
                // Jump to the closing quote, stepping over escapes.
                at += 1;
                loop {
                    let Some(rest) = text.get(at..) else {
                        return false;
                    };
                    match memchr::memchr2(b'"', b'\\', rest) {
                        Some(offset) if rest[offset] == b'\\' => at += offset + 2,
                        Some(offset) => {
                            at += offset;
                            break;
                        }
                        None => return false,
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn counts_objects_and_arrays() {
        assert!(!deeper_than(b"{}", 1));
        assert!(deeper_than(b"{\"a\":{}}", 1));
        assert!(!deeper_than(b"{\"a\":{}}", 2));
        assert!(!deeper_than(nested(64).as_bytes(), 64));
        assert!(deeper_than(nested(65).as_bytes(), 64));
        assert!(deeper_than(nested(100_000).as_bytes(), 64));
        // Siblings do not add up: many brackets, little depth.
        let wide = format!("[{}]", vec!["{\"a\":[1]}"; 500].join(","));
        assert!(!deeper_than(wide.as_bytes(), 3));
        assert!(deeper_than(wide.as_bytes(), 2));
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let text = format!("{{\"a\":\"{}\\\"{}\"}}", "[".repeat(200), "{".repeat(200));
        assert!(!deeper_than(text.as_bytes(), 1));
        let escaped_backslash = format!("[\"\\\\\",{}]", nested(3));
        assert!(deeper_than(escaped_backslash.as_bytes(), 3));
        assert!(!deeper_than(escaped_backslash.as_bytes(), 4));
    }

    #[test]
    fn invalid_text_never_panics() {
        for text in ["\"", "\"\\", "[[[\"", "]]]]", "{\"\\"] {
            let _ = deeper_than(text.repeat(100).as_bytes(), 2);
        }
    }
}
