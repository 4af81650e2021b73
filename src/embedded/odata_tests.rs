//! Unit tests of [`super`].

use super::*;

fn ok(raw: &str) -> ReplayQuery {
    parse_query(Some(raw)).unwrap_or_else(|e| panic!("{raw}: {e}"))
}

fn refused(raw: &str) -> QueryError {
    parse_query(Some(raw)).expect_err(raw)
}

#[test]
fn empty_query_is_everything() {
    assert_eq!(parse_query(None).unwrap(), ReplayQuery::default());
    assert_eq!(ok(""), ReplayQuery::default());
}

#[test]
fn sequence_bounds() {
    assert_eq!(ok("$filter=EntityEventSequence gt 5").after, 5);
    assert_eq!(ok("$filter=EntityEventSequence%20ge%205").after, 4);
    assert_eq!(ok("$filter=EntityEventSequence+lt+9").until, 8);
    assert_eq!(ok("$filter=EntityEventSequence le 9").until, 9);
    let q = ok("$filter=EntityEventSequence eq 7");
    assert_eq!((q.after, q.until), (6, 7));
    let q = ok("$filter=EntityEventSequence gt 3 and EntityEventSequence gt 10");
    assert_eq!(q.after, 10, "the tighter bound wins");
}

#[test]
fn resource_and_combinations() {
    let q = ok("$filter=EntityEventSequence gt 1101 and ResourceName eq 'Property'");
    assert_eq!(q.after, 1101);
    assert_eq!(q.resources, Some(vec!["Property".to_owned()]));
    assert_eq!(
        q.filter.as_deref(),
        Some("EntityEventSequence gt 1101 and ResourceName eq 'Property'")
    );
    let q = ok("$filter=(ResourceName eq 'O''Brien') and (EntityEventSequence ge 1)");
    assert_eq!(q.resources, Some(vec!["O'Brien".to_owned()]));
    assert_eq!(q.after, 0);
    let q = ok("$filter=ResourceName eq 'Property' and ResourceName eq 'Media'");
    assert!(q.contradiction);
}

#[test]
fn the_options_reso_clients_send() {
    let q = ok(&filter(
        "ResourceName in ('Property', 'Member') and ResourceRecordKey eq '235021'",
    ));
    assert_eq!(
        q.resources,
        Some(vec!["Property".to_owned(), "Member".to_owned()])
    );
    assert_eq!(q.record_key.as_deref(), Some("235021"));
    let q = ok(&filter(
        "ResourceName in ('Property','Member') and ResourceName eq 'Member'",
    ));
    assert_eq!(q.resources, Some(vec!["Member".to_owned()]), "intersected");
    assert!(ok(&filter("ResourceName in ('A') and ResourceName in ('B')")).contradiction);
    assert!(
        ok(&filter(
            "ResourceRecordKey eq 'a' and ResourceRecordKey eq 'b'"
        ))
        .contradiction
    );
    let q = ok("$orderby=EntityEventSequence desc&$top=1");
    assert!(q.descending);
    let q = ok("$select=EntityEventSequence,ResourceRecordKey");
    assert_eq!(q.select.as_deref().unwrap().len(), 2);
    for (raw, option) in [
        ("$select=ListPrice", "$select"),
        (&*filter("ResourceRecordKey in ('a')"), "$filter"),
        (&*filter("ResourceName in 'a'"), "$filter"),
        (&*filter("ResourceName in ('a'"), "$filter"),
        (&*filter("ResourceName in ('a' 'b')"), "$filter"),
        (&*filter("ResourceRecordKey gt 'a'"), "$filter"),
    ] {
        assert_eq!(refused(raw).option, option, "{raw}");
    }
}

#[test]
fn paging_options() {
    let q = ok("$orderby=EntityEventSequence asc&$top=10&$skip=5&$count=true&$skiptoken=42");
    assert_eq!(q.top, Some(10));
    assert_eq!(q.skip, 5);
    assert!(q.count);
    assert_eq!(q.skiptoken, Some(42));
    assert!(!ok("$orderby=EntityEventSequence&$count=false").count);
    ok("$format=json");
}

#[test]
fn unsupported_options_are_named() {
    for (raw, option) in [
        ("$expand=Data", "$expand"),
        ("filter=EntityEventSequence gt 1", "filter"),
        ("$orderby=EntityEventSequence descending", "$orderby"),
        ("$orderby=ModificationTimestamp", "$orderby"),
        ("$top=-1", "$top"),
        ("$top=ten", "$top"),
        ("$skip=1.5", "$skip"),
        ("$count=yes", "$count"),
        ("$skiptoken=abc", "$skiptoken"),
        ("$top=1&$top=2", "$top"),
        ("=x", "query"),
    ] {
        assert_eq!(refused(raw).option, option, "{raw}");
    }
    // Empty segments are nothing.
    assert_eq!(parse_query(Some("&$top=1&&=")).unwrap().top, Some(1));
}

fn filter(text: &str) -> String {
    format!(
        "$filter={}",
        form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>()
    )
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    // Regression: 100,000 nested parentheses overflowed the stack and aborted the process.
    let deep = format!(
        "{}ResourceName eq 'x'{}",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    let raw = format!("$filter={deep}");
    let e = refused(&raw);
    assert_eq!(e.option, "query", "the size bound answers first: {e}");
    // Within the size bound, the depth bound answers.
    let nested = |n: usize| format!("{}ResourceName eq 'x'{}", "(".repeat(n), ")".repeat(n));
    let e = parse_query(Some(&filter(&nested(MAX_FILTER_DEPTH + 1)))).unwrap_err();
    assert_eq!(e.option, "$filter");
    assert!(e.detail.contains("nest deeper"), "{e}");
    ok(&filter(&nested(MAX_FILTER_DEPTH)));
    // The parser itself stays bounded without the size check too.
    let mut q = ReplayQuery::default();
    let err = parse_filter(&nested(100_000), &mut q).unwrap_err();
    assert!(err.contains("nest deeper"), "{err}");
}

#[test]
fn term_count_is_bounded() {
    let terms = |n: usize| vec!["EntityEventSequence gt 1"; n].join(" and ");
    ok(&filter(&terms(MAX_FILTER_TERMS)));
    let e = parse_query(Some(&filter(&terms(MAX_FILTER_TERMS + 1)))).unwrap_err();
    assert!(e.detail.contains("comparisons"), "{e}");
}

#[test]
fn unsupported_filters_are_refused() {
    for raw in [
        "EntityEventSequence gt 1 or EntityEventSequence lt 0",
        "not ResourceName eq 'Property'",
        "ResourceName ne 'Property'",
        "ResourceName eq Property",
        "EntityEventSequence gt '5'",
        "EntityEventSequence gt 99999999999999999999",
        "ListPrice eq 1",
        "EntityEventSequence gt",
        "EntityEventSequence gt 1 and",
        "(EntityEventSequence gt 1",
        "EntityEventSequence gt 1)",
        "ResourceName eq 'open",
        "contains(ResourceName,'Prop')",
        "EntityEventSequence gt 1 ResourceName eq 'x'",
        "",
    ] {
        let e = refused(&format!(
            "$filter={}",
            form_urlencoded::byte_serialize(raw.as_bytes()).collect::<String>()
        ));
        assert_eq!(e.option, "$filter", "{raw}");
    }
}
