//! Property tests (a bounded fuzzing pass) for the parsers of untrusted bytes: webhook payloads,
//! the replay resource's query string, the record collections' `$filter` and `Retry-After`. Each starts from the checked-in seed
//! corpus (`tests/fuzz-corpus/`, run as-is and mutated), then from generated inputs checked
//! against a model of what the parser must answer. Bounded by `ENTITY_BRIDGE_FUZZ_CASES` (cases
//! per property, default 256) so the test command stays short; no broker needed.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use entity_bridge::embedded::odata::{parse_query, MAX_FILTER_DEPTH, MAX_FILTER_TERMS};
use entity_bridge::embedded::records_query::{parse_record_query, MAX_KEYS};
use entity_bridge::event::{parse_payload, ParseOptions};
use entity_bridge::outbound::answer::parse_retry_after;
use entity_bridge::poll::events::parse_events_page;
use entity_bridge::poll::{parse_reso_page, EventMapping, Page};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Map, Value};

fn config() -> Config {
    let cases = std::env::var("ENTITY_BRIDGE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        ..Config::default()
    }
}

/// The seed files of one corpus directory; fails loudly when the corpus is missing.
fn corpus(kind: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty seed corpus {}", dir.display());
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// One edit of a seed: (kind, position, byte).
type Edit = (u8, usize, u8);

fn mutate(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for &(kind, at, byte) in edits {
        let at = if out.is_empty() {
            0
        } else {
            at % (out.len() + 1)
        };
        match kind % 5 {
            0 => out.insert(at, byte),
            1 if at < out.len() => {
                out.remove(at);
            }
            2 if at < out.len() => out[at] = byte,
            // Structural bytes are where parsers break: favour them.
            3 => {
                const STRUCTURAL: &[u8] = b"{}[]\",:\\0-e.";
                out.insert(at, STRUCTURAL[byte as usize % STRUCTURAL.len()])
            }
            _ => {
                // Duplicate a slice (repeats members, events, nesting).
                let end = (at + 1 + byte as usize % 32).min(out.len());
                let slice = out[at.min(end)..end].to_vec();
                out.splice(at..at, slice);
            }
        }
    }
    out
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..12)
}

/// Nesting depth of a JSON value, a scalar being 0 and the event object 1.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// What must hold of any answer of the payload parser, whatever the input.
fn check_payload_answer(body: &[u8], opts: ParseOptions) {
    match parse_payload(&Bytes::copy_from_slice(body), opts) {
        Ok(payload) => {
            assert!(payload.events.len() <= opts.max_events);
            for event in &payload.events {
                assert!(event.sequence > 0);
                assert!(entity_bridge::resources::well_formed(&event.resource_name));
                assert!(event.resource_name.chars().count() <= 255);
                assert!(!event.record_key.is_empty() && event.record_key.chars().count() <= 255);
                let raw: Value = serde_json::from_slice(&event.raw)
                    .unwrap_or_else(|e| panic!("raw event is not JSON ({e}): {:?}", event.raw));
                assert!(raw.is_object(), "raw event is not an object");
                assert!(depth(&raw) <= opts.max_depth, "event deeper than the limit");
            }
        }
        Err(e) => {
            assert!(!e.violations.is_empty() && e.violations.len() <= 50);
            for v in &e.violations {
                assert!(v.pointer.is_empty() || v.pointer.starts_with('/'), "{v:?}");
            }
        }
    }
}

/// A generated field value and whether the parser must accept it.
#[derive(Debug, Clone)]
struct Field {
    value: Option<Value>,
    valid: bool,
}

fn sequence_field() -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => (1..=i64::MAX).prop_map(|n| Field { value: Some(json!(n)), valid: true }),
        1 => prop_oneof![
            Just(json!(0)),
            Just(json!(-5)),
            Just(json!(1.5)),
            Just(json!("7")),
            Just(Value::Null),
            Just(json!(18446744073709551615u64)),
        ]
        .prop_map(|v| Field { value: Some(v), valid: false }),
        1 => Just(Field { value: None, valid: false }),
    ]
}

fn name_field() -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => "[A-Za-z_][A-Za-z0-9_]{0,24}".prop_map(|s| Field { value: Some(json!(s)), valid: true }),
        1 => prop_oneof![
            Just(json!("")),
            Just(json!("   ")),
            Just(json!("1Property")),
            Just(json!("Open House")),
            Just(json!("Prop\u{0}")),
            Just(json!("Média")),
            Just(json!("x".repeat(256))),
            Just(json!(5)),
        ]
        .prop_map(|v| Field { value: Some(v), valid: false }),
        1 => Just(Field { value: None, valid: false }),
    ]
}

fn key_field() -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => "\\PC{1,30}".prop_map(|s| Field { value: Some(json!(s)), valid: true }),
        1 => prop_oneof![Just(json!("")), Just(json!(17)), Just(json!("k".repeat(256))), Just(json!([]))]
            .prop_map(|v| Field { value: Some(v), valid: false }),
        1 => Just(Field { value: None, valid: false }),
    ]
}

/// Any JSON value, nested at most `levels` deep.
fn any_json(levels: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e9f64..1e9).prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(levels, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z@._]{1,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
struct GeneratedEvent {
    object: Map<String, Value>,
    valid: bool,
}

fn event() -> impl Strategy<Value = GeneratedEvent> {
    (
        sequence_field(),
        name_field(),
        key_field(),
        prop::option::of(any_json(5)),
    )
        .prop_map(|(sequence, name, key, data)| {
            let mut object = Map::new();
            for (member, field) in [
                ("EntityEventSequence", &sequence),
                ("ResourceName", &name),
                ("ResourceRecordKey", &key),
            ] {
                if let Some(v) = &field.value {
                    object.insert(member.into(), v.clone());
                }
            }
            if let Some(data) = data {
                object.insert("Data".into(), data);
            }
            GeneratedEvent {
                valid: sequence.valid && name.valid && key.valid,
                object,
            }
        })
}

/// What any page a poll source reads must satisfy: every event accounted for once, only
/// events after the checkpoint published, each as one JSON object whose fields match.
fn check_page(page: Result<Page, entity_bridge::poll::PageError>, after: i64) {
    let Ok(page) = page else { return };
    assert_eq!(
        page.received,
        page.messages.len() + page.invalid.len() + page.skipped,
        "{page:?}"
    );
    for m in &page.messages {
        assert!(m.sequence > after);
        let event: Value = serde_json::from_slice(&m.payload).expect("a published event is JSON");
        assert_eq!(event["EntityEventSequence"].as_i64(), Some(m.sequence));
        assert_eq!(
            event["ResourceName"].as_str(),
            Some(m.resource_name.as_str())
        );
    }
    if let Some(last) = page.last_sequence {
        assert!(page.messages.iter().all(|m| m.sequence <= last));
    }
}

fn poll_topic() -> std::sync::Arc<str> {
    std::sync::Arc::from("https://x.example/EntityEvent")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn poll_pages_mutated_never_panic(seed in 0usize..64, edits in edits(), after in 0i64..10, max_depth in 1usize..20) {
        let opts = ParseOptions { max_depth, ..ParseOptions::default() };
        let seeds = corpus("poll-page");
        let body = mutate(&seeds[seed % seeds.len()], &edits);
        check_page(parse_reso_page(&body, after, opts, &poll_topic()), after);
        let seeds = corpus("events-page");
        let body = mutate(&seeds[seed % seeds.len()], &edits);
        check_page(parse_events_page(&body, after, &EventMapping::default(), opts, &poll_topic()), after);
    }

    #[test]
    fn poll_pages_arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        check_page(parse_reso_page(&body, 0, ParseOptions::default(), &poll_topic()), 0);
        check_page(parse_events_page(&body, 0, &EventMapping::default(), ParseOptions::default(), &poll_topic()), 0);
    }

    #[test]
    fn payload_seeds_mutated_never_panic(seed in 0usize..64, edits in edits(), max_depth in 1usize..80) {
        let seeds = corpus("payload");
        let body = mutate(&seeds[seed % seeds.len()], &edits);
        check_payload_answer(&body, ParseOptions { max_depth, max_events: 3, ..ParseOptions::default() });
        check_payload_answer(&body, ParseOptions::default());
    }

    #[test]
    fn payload_arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        check_payload_answer(&body, ParseOptions::default());
    }

    /// Generated batches against the model: accepted exactly when every event is valid, and
    /// then each event's fields and exact bytes are the ones sent.
    #[test]
    fn payload_matches_the_model(events in prop::collection::vec(event(), 0..8), context in any::<bool>()) {
        let mut body = String::from("{");
        if context {
            body.push_str(r#""@reso.context":"urn:reso:metadata:2.0:resource:entityevent","#);
        }
        let texts: Vec<String> = events.iter().map(|e| Value::Object(e.object.clone()).to_string()).collect();
        body.push_str(&format!(r#""value":[{}]}}"#, texts.join(",")));
        let answer = parse_payload(&Bytes::from(body.clone()), ParseOptions::default());
        let all_valid = events.iter().all(|e| e.valid);
        prop_assert_eq!(answer.is_ok(), all_valid, "{}", body);
        if let Ok(payload) = answer {
            prop_assert_eq!(payload.events.len(), events.len());
            for ((parsed, generated), text) in payload.events.iter().zip(&events).zip(&texts) {
                prop_assert_eq!(Some(&json!(parsed.sequence)), generated.object.get("EntityEventSequence"));
                prop_assert_eq!(Some(&json!(parsed.resource_name)), generated.object.get("ResourceName"));
                prop_assert_eq!(Some(&json!(parsed.record_key)), generated.object.get("ResourceRecordKey"));
                prop_assert_eq!(&parsed.raw[..], text.as_bytes());
            }
        }
    }

    /// The depth limit holds exactly, however deep the input (no stack overflow).
    #[test]
    fn payload_depth_limit_is_exact(levels in 0usize..200_000, max_depth in 1usize..100) {
        let data = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        let body = format!(
            r#"{{"value":[{{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"k","Data":{data}}}]}}"#
        );
        let answer = parse_payload(&Bytes::from(body), ParseOptions { max_depth, ..ParseOptions::default() });
        prop_assert_eq!(answer.is_ok(), levels < max_depth, "the event is level 1, so {} levels inside it are {} deep", levels, levels + 1);
    }

    #[test]
    fn query_seeds_mutated_never_panic(seed in 0usize..64, edits in edits()) {
        let seeds = corpus("odata-query");
        let raw = String::from_utf8_lossy(&mutate(&seeds[seed % seeds.len()], &edits)).into_owned();
        if let Err(e) = parse_query(Some(&raw)) {
            prop_assert!(!e.option.is_empty());
        }
    }

    #[test]
    fn query_arbitrary_text_never_panics(raw in "[$a-zA-Z0-9 ()'&=%.+-]{0,300}") {
        if let Err(e) = parse_query(Some(&raw)) {
            prop_assert!(!e.option.is_empty());
        }
    }

    /// Generated filters against the model: the bounds are the intersection of the
    /// comparisons, and nesting or size beyond the limits is refused, never a crash.
    #[test]
    fn query_filter_matches_the_model(
        terms in prop::collection::vec((0usize..5, 1i64..1_000_000), 1..40),
        parens in 0usize..24,
    ) {
        let ops = ["gt", "ge", "lt", "le", "eq"];
        let (mut after, mut until) = (0i64, i64::MAX);
        for &(op, n) in &terms {
            match ops[op] {
                "gt" => after = after.max(n),
                "ge" => after = after.max(n - 1),
                "lt" => until = until.min(n - 1),
                "le" => until = until.min(n),
                _ => {
                    after = after.max(n - 1);
                    until = until.min(n);
                }
            }
        }
        let filter = terms
            .iter()
            .map(|&(op, n)| format!("EntityEventSequence {} {n}", ops[op]))
            .collect::<Vec<_>>()
            .join(" and ");
        let filter = format!("{}{filter}{}", "(".repeat(parens), ")".repeat(parens));
        let raw = format!("$filter={}", filter.replace(' ', "%20"));
        let answer = parse_query(Some(&raw));
        if terms.len() > MAX_FILTER_TERMS || parens > MAX_FILTER_DEPTH {
            prop_assert_eq!(answer.map_err(|e| e.option), Err("$filter".to_owned()));
        } else {
            let q = answer.unwrap();
            prop_assert_eq!((q.after, q.until), (after, until));
        }
    }

    #[test]
    fn record_query_seeds_mutated_never_panic(seed in 0usize..64, edits in edits()) {
        let seeds = corpus("record-query");
        let raw = String::from_utf8_lossy(&mutate(&seeds[seed % seeds.len()], &edits)).into_owned();
        match parse_record_query("ListingKey", Some(&raw)) {
            Ok(q) => prop_assert!(!q.keys.is_empty() && q.keys.len() <= MAX_KEYS),
            Err(e) => prop_assert!(!e.option.is_empty() && !e.detail.is_empty()),
        }
    }

    #[test]
    fn record_query_arbitrary_text_never_panics(raw in "[$a-zA-Z0-9 ()',&=%.+-]{0,300}") {
        if let Err(e) = parse_record_query("ListingKey", Some(&raw)) {
            prop_assert!(!e.option.is_empty());
        }
    }

    /// Generated key lists against the model: any key text (quotes, commas, parentheses,
    /// percent signs, non-ASCII) comes back exactly, each key once in first-named order, and
    /// more than `MAX_KEYS` named keys are refused.
    #[test]
    fn record_query_keys_match_the_model(
        keys in prop::collection::vec("[a-zA-Z0-9 ',()%&=+✓]{0,12}", 1..130),
        single in any::<bool>(),
    ) {
        let quote = |k: &String| format!("'{}'", k.replace('\'', "''"));
        let filter = if single {
            format!("ListingKey eq {}", quote(&keys[0]))
        } else {
            let list: Vec<String> = keys.iter().map(quote).collect();
            format!("ListingKey in ({})", list.join(","))
        };
        let raw: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("$filter", &filter)
            .finish();
        let answer = parse_record_query("ListingKey", Some(&raw));
        let named = if single { 1 } else { keys.len() };
        if named > MAX_KEYS {
            prop_assert_eq!(answer.map_err(|e| e.option), Err("$filter".to_owned()));
        } else {
            let mut model: Vec<String> = Vec::new();
            for k in keys.iter().take(named) {
                if !model.contains(k) {
                    model.push(k.clone());
                }
            }
            let q = answer.unwrap();
            prop_assert_eq!(q.keys, model);
            prop_assert_eq!(q.filter, filter);
        }
    }

    #[test]
    fn retry_after_seeds_mutated_never_panic(seed in 0usize..64, edits in edits()) {
        let seeds = corpus("retry-after");
        let raw = String::from_utf8_lossy(&mutate(&seeds[seed % seeds.len()], &edits)).into_owned();
        let _ = parse_retry_after(&raw, SystemTime::now());
    }

    #[test]
    fn retry_after_seconds_and_dates_match_the_model(secs in any::<u64>(), offset in -1_000_000i64..1_000_000) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        prop_assert_eq!(parse_retry_after(&secs.to_string(), now), Some(Duration::from_secs(secs)));
        let at = if offset >= 0 {
            now + Duration::from_secs(offset as u64)
        } else {
            now - Duration::from_secs(offset.unsigned_abs())
        };
        let expected = Duration::from_secs(offset.max(0) as u64);
        prop_assert_eq!(parse_retry_after(&httpdate::fmt_http_date(at), now), Some(expected));
    }

    #[test]
    fn retry_after_arbitrary_text_never_panics(raw in "\\PC{0,64}") {
        let _ = parse_retry_after(&raw, SystemTime::now());
    }
}

/// Every seed as-is gets a well-formed answer (the property tests above mutate them).
#[test]
fn seeds_as_they_are() {
    for seed in corpus("payload") {
        check_payload_answer(&seed, ParseOptions::default());
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus/payload");
    for accepted in [
        "guide-multi-valued.json",
        "single-valued.json",
        "edge-values.json",
    ] {
        let body = std::fs::read(dir.join(accepted)).unwrap();
        assert!(
            parse_payload(&Bytes::from(body), ParseOptions::default()).is_ok(),
            "{accepted}"
        );
    }
    for seed in corpus("odata-query") {
        let _ = parse_query(Some(&String::from_utf8(seed).unwrap()));
    }
    // Record queries: the first four are accepted, the rest refused naming the option.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus/record-query");
    let query = |name: &str| {
        let raw = std::fs::read_to_string(dir.join(name)).unwrap();
        parse_record_query("ListingKey", Some(&raw))
    };
    assert_eq!(query("eq.txt").unwrap().keys, ["235021"]);
    let q = query("in-quotes-commas.txt").unwrap();
    assert_eq!(
        (q.keys, q.top, q.skip),
        (vec!["a".into(), "b'c".into(), "d,e".into()], Some(2), 1)
    );
    assert_eq!(query("repeated.txt").unwrap().keys, ["x"]);
    assert_eq!(query("escaped-unicode.txt").unwrap().keys, ["''", "✓"]);
    assert_eq!(query("unquoted.txt").unwrap_err().option, "$filter");
    assert_eq!(query("bad-top.txt").unwrap_err().option, "$top");
    assert_eq!(query("unknown-option.txt").unwrap_err().option, "$select");
    assert_eq!(query("empty-name.txt").unwrap_err().option, "(empty name)");
    for seed in corpus("retry-after") {
        let text = String::from_utf8(seed).unwrap();
        assert!(
            parse_retry_after(&text, SystemTime::now()).is_some(),
            "seed {text:?}"
        );
    }
}
