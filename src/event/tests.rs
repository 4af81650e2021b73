//! Unit tests of payload parsing: every shape in the seeds, vendor variants, each violation.
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
            ..ParseOptions::default()
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
    let p =
        parse_ok(r#"{"@reso.context":"urn:reso:metadata:2.0:resource:entityevent","value":[]}"#);
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
    let p =
        parse_ok(r#"{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"1"}"#);
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
    // Control characters, spaces, dots and non-ASCII letters are refused.
    for bad in [
        "\"Prop\\u0000erty\"",
        "\"Prop\\nerty\"",
        "\"Open House\"",
        "\"a.b\"",
        "\"Médias\"",
        "\"1Property\"",
    ] {
        assert_eq!(name(bad), vec![v(at, DETAIL_RESOURCE_CHARS)], "{bad}");
    }
    let ok = "x".repeat(255);
    let p = parse_ok(&multi(&format!(
        r#"{{"EntityEventSequence":1,"ResourceName":"{ok}","ResourceRecordKey":"k"}}"#
    )));
    assert_eq!(p.events[0].resource_name, ok);
}

#[test]
fn numeric_record_key_rejected_by_default() {
    let body =
        multi(r#"{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":235021}"#);
    assert_eq!(
        violations(&body),
        vec![v("/value/0/ResourceRecordKey", DETAIL_NUMERIC_KEY)]
    );
}

#[test]
fn numeric_record_key_coerced() {
    let ev = r#"{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":235021}"#;
    let p = parse_coerce(&multi(ev)).expect("coerced");
    assert_eq!(p.events[0].record_key, "235021");
    assert_eq!(raw_str(&p.events[0]), ev);
    // The literal text, not a normalized number.
    let ev = r#"{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":-1.50e2}"#;
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
    // Regression: each repeated `value` was read with its own event count, so 1000 members of
    // 10,000 items each were held before the duplicate was reported. A second `value` is now
    // skipped unread: its items count for nothing (here 4 items past a limit of 3).
    let opts = ParseOptions {
        max_events: 3,
        ..ParseOptions::default()
    };
    let repeated = Bytes::from_static(br#"{"value":[1,1,1],"value":[1,1,1,1],"value":[1,1,1,1]}"#);
    let err = parse_payload(&repeated, opts).unwrap_err();
    assert!(
        err.violations
            .iter()
            .any(|x| x.pointer == "/value" && x.detail == DETAIL_DUPLICATE),
        "{:?}",
        err.violations
    );
    assert!(err.violations.iter().all(|x| x.pointer != "/value/3"));
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
    let err =
        parse(&multi(r#"{"EntityEventSequence":1,"ResourceName":"P"}"#)).expect_err("missing key");
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

#[test]
fn escaped_keys_at_the_edges_of_an_event_keep_its_bytes() {
    // The first key and the last value delimit the event: escapes there must not shift it.
    let ev = r#"{"\u0045ntityEventSequence":9, "ResourceName":"Property","ResourceRecordKey":"K","X\"}":"{\"}"}"#;
    let p = parse_ok(&multi(ev));
    assert_eq!(p.events[0].sequence, 9);
    assert_eq!(raw_str(&p.events[0]), ev);
    // An escaped spelling inside the `value` array is still the same field.
    assert_eq!(
        violations(&multi(
            r#"{"EntityEventSequence":1,"ResourceName":"P","ResourceRecordKey":"k","Resource\u0052ecordKey":"j"}"#
        )),
        vec![v("/value/0/ResourceRecordKey", DETAIL_DUPLICATE)]
    );
}

#[test]
fn nested_events_are_not_confused_with_their_data() {
    // `Data` holding objects with the same field names must not change the event's fields.
    let ev = r#"{"EntityEventSequence":3,"ResourceName":"Media","ResourceRecordKey":"M1","Data":{"Media":[{"ResourceName":"Property","ResourceRecordKey":"P1","EntityEventSequence":99}]}}"#;
    let body = format!("{{\"value\":[{ev},[],{ev}]}}");
    assert_eq!(
        violations(&body),
        vec![v("/value/1", DETAIL_NOT_OBJECT_EVENT)]
    );
    let p = parse_ok(&format!("{{\"value\":[{ev},{ev}]}}"));
    assert_eq!(p.events[1].resource_name, "Media");
    assert_eq!(p.events[1].record_key, "M1");
    assert_eq!(p.events[1].sequence, 3);
    assert_eq!(raw_str(&p.events[1]), ev);
}

// --- bounds: count, members, depth ------------------------------------------------------

fn event(seq: usize, data: &str) -> String {
    format!(
        r#"{{"EntityEventSequence":{seq},"ResourceName":"Property","ResourceRecordKey":"k","Data":{data}}}"#
    )
}

#[test]
fn events_beyond_the_limit_are_refused_while_parsing() {
    let opts = ParseOptions {
        max_events: 3,
        ..ParseOptions::default()
    };
    let body = |n: usize| {
        let items: Vec<String> = (1..=n).map(|i| event(i, "{}")).collect();
        Bytes::from(format!(r#"{{"value":[{}]}}"#, items.join(",")))
    };
    assert_eq!(parse_payload(&body(3), opts).unwrap().len(), 3);
    let err = parse_payload(&body(4), opts).unwrap_err();
    assert_eq!(err.violations.len(), 1);
    assert_eq!(err.violations[0].pointer, "/value/3");
    assert!(err.violations[0].detail.contains("at most 3 events"));
    // Items that are not events count too: a body of a million `{}` stops at the limit (the
    // regression: every item was kept, ~100 bytes each, before any check).
    let flood = Bytes::from(format!(
        r#"{{"value":[{}]}}"#,
        vec!["{}"; 1_000_000].join(",")
    ));
    let err = parse_payload(&flood, ParseOptions::default()).unwrap_err();
    assert_eq!(
        err.violations[0].pointer,
        format!("/value/{DEFAULT_MAX_EVENTS}")
    );
}

#[test]
fn top_level_members_are_bounded() {
    let members: Vec<String> = (0..=MAX_TOP_LEVEL_MEMBERS)
        .map(|i| format!("\"m{i}\":1"))
        .collect();
    let got = violations(&format!("{{{}}}", members.join(",")));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "");
    assert!(got[0].1.contains("at most 1000 members"), "{got:?}");
}

#[test]
fn deep_data_is_refused_naming_the_event() {
    let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    // The event object is level 1, `Data` level 2: 63 more levels fit in the default 64.
    let ok = format!(
        r#"{{"value":[{},{}]}}"#,
        event(1, "{}"),
        event(2, &nested(63))
    );
    assert_eq!(parse_ok(&ok).len(), 2);
    // Regression: 100,000 levels were accepted and published.
    let deep = format!(
        r#"{{"value":[{},{}]}}"#,
        event(1, "{}"),
        event(2, &nested(100_000))
    );
    let got = violations(&deep);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "/value/1");
    assert!(got[0].1.contains("deeper than 64 levels"), "{got:?}");
    let just_over = format!(r#"{{"value":[{}]}}"#, event(1, &nested(64)));
    assert_eq!(violations(&just_over)[0].0, "/value/0");
}

#[test]
fn deep_single_valued_member_is_named() {
    let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let body = |n: usize| {
        format!(
            r#"{{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"k","Data":{}}}"#,
            nested(n)
        )
    };
    assert_eq!(parse_ok(&body(63)).len(), 1);
    let got = violations(&body(64));
    assert_eq!(got, vec![v("/Data", &too_deep(64))]);
}

/// Regression: a producer could send the annotations the replay resource adds; replay then
/// showed two members of one name and most parsers read the forged one.
#[test]
fn rendered_annotations_are_refused_on_webhook_ingress_only() {
    let forged = r#"{"value":[
        {"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"A"},
        {"EntityEventSequence":2,"ResourceName":"Property","ResourceRecordKey":"B",
         "@EntityBridge.SourceEntityEventSequence":999}]}"#;
    let webhook = ParseOptions {
        refuse_rendered_annotations: true,
        ..ParseOptions::default()
    };
    let err = parse_payload(&Bytes::from_static(forged.as_bytes()), webhook).unwrap_err();
    assert_eq!(
        err.violations[0].pointer,
        "/value/1/@EntityBridge.SourceEntityEventSequence"
    );
    assert!(err.violations[0]
        .detail
        .contains("producers may not send it"));
    let single = r#"{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"A","@EntityBridge.EntityEventSource":"x"}"#;
    let err = parse_payload(&Bytes::from_static(single.as_bytes()), webhook).unwrap_err();
    assert_eq!(
        err.violations[0].pointer,
        "/@EntityBridge.EntityEventSource"
    );
    // Other bridge annotations pass (a bridge pushing to a bridge), and pull sources accept
    // all of them: the replay resource writes its own in their place.
    let deleted = r#"{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"A","@EntityBridge.Deleted":true}"#;
    assert!(parse_payload(&Bytes::from_static(deleted.as_bytes()), webhook).is_ok());
    assert_eq!(parse_ok(forged).len(), 2);
}
