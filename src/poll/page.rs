//! One page of a producer's event log, parsed: the valid events as [`Message`]s, the invalid
//! ones kept apart for the dead letter (a bad event never holds its good neighbours back), and
//! where the next page is.
//!
//! A RESO page is an OData collection, `{"value": [events], "@odata.nextLink": "…"}`. Each event
//! is validated by the same parser as a webhook push ([`crate::event::parse_payload`]), one event
//! at a time, and keeps its exact bytes.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::connector::{Message, Origin};
use crate::event::{parse_payload, ParseOptions};

/// A page parsed.
#[derive(Debug, Default)]
pub struct Page {
    /// Valid events after the checkpoint, in page order.
    pub messages: Vec<Message>,
    /// Events that are not valid EntityEvents: their bytes and why.
    pub invalid: Vec<Invalid>,
    /// Events left out: at or below the checkpoint (a producer that repeats itself), or not in
    /// the event type allowlist.
    pub skipped: usize,
    /// Events in the page, all kinds.
    pub received: usize,
    /// Highest sequence read in the page (valid, skipped or invalid with a readable sequence).
    pub last_sequence: Option<i64>,
    /// The producer's link to the next page, if it gave one.
    pub next_link: Option<String>,
}

/// An event of a page that cannot be published.
#[derive(Debug)]
pub struct Invalid {
    /// The event's bytes, as received.
    pub raw: Bytes,
    /// Its sequence, when it could be read.
    pub sequence: Option<i64>,
    /// Why it is invalid (no payload data).
    pub reason: String,
}

/// Why a page could not be read at all (retried: the producer's answer is broken, not one of
/// its events).
#[derive(Debug, thiserror::Error)]
#[error("the page is not {expected}: {detail}")]
pub struct PageError {
    /// What was expected.
    pub expected: &'static str,
    /// What is wrong.
    pub detail: String,
}

impl Page {
    /// Notes a sequence read in the page.
    pub fn saw(&mut self, sequence: i64) {
        self.last_sequence = Some(self.last_sequence.map_or(sequence, |s| s.max(sequence)));
    }

    /// Validates one event's bytes and adds it: published when after `after`, skipped when not,
    /// kept apart when invalid.
    pub fn add_event(&mut self, raw: &[u8], after: i64, opts: ParseOptions, topic: &Arc<str>) {
        self.received += 1;
        // Wrapped as a one-event multi-valued payload: the parser slices the event's exact
        // bytes out of it and reports violations under `/value/0/…`.
        let mut wrapped = Vec::with_capacity(raw.len() + 12);
        wrapped.extend_from_slice(b"{\"value\":[");
        wrapped.extend_from_slice(raw);
        wrapped.extend_from_slice(b"]}");
        let wrapped = Bytes::from(wrapped);
        let opts = ParseOptions {
            max_events: 1,
            ..opts
        };
        match parse_payload(&wrapped, opts) {
            Ok(payload) => {
                let Some(event) = payload.events.into_iter().next() else {
                    return self.invalid(raw, None, "is not an EntityEvent object".into());
                };
                self.saw(event.sequence);
                if event.sequence <= after {
                    self.skipped += 1;
                    return;
                }
                self.messages.push(Message {
                    delete: false,
                    conflict: None,
                    sequence: event.sequence,
                    resource_name: event.resource_name,
                    record_key: event.record_key,
                    source_label: None,
                    payload: event.raw,
                    origin: Some(Origin {
                        topic: topic.clone(),
                        partition: -1,
                        offset: event.sequence,
                    }),
                });
            }
            Err(e) => {
                let sequence = sequence_of(raw);
                if let Some(s) = sequence {
                    self.saw(s);
                    // Already behind the checkpoint: dead-lettered when it was first read.
                    if s <= after {
                        self.skipped += 1;
                        return;
                    }
                }
                let reason = e
                    .violations
                    .first()
                    .map(|v| {
                        let field = v.pointer.strip_prefix("/value/0").unwrap_or(&v.pointer);
                        format!(
                            "`{}` {}",
                            if field.is_empty() { "/" } else { field },
                            v.detail
                        )
                    })
                    .unwrap_or_else(|| e.to_string());
                self.invalid(raw, sequence, reason);
            }
        }
    }

    fn invalid(&mut self, raw: &[u8], sequence: Option<i64>, reason: String) {
        self.invalid.push(Invalid {
            raw: Bytes::copy_from_slice(raw),
            sequence,
            reason,
        });
    }
}

/// The `EntityEventSequence` of an event that failed validation, if it has a usable one.
fn sequence_of(raw: &[u8]) -> Option<i64> {
    #[derive(Deserialize)]
    struct Seq {
        #[serde(rename = "EntityEventSequence")]
        sequence: i64,
    }
    serde_json::from_slice::<Seq>(raw)
        .ok()
        .map(|s| s.sequence)
        .filter(|s| *s > 0)
}

/// Most events a page may hold, whatever was asked for: a producer that answers with more is
/// refused before it costs memory (an item costs a slice, an invalid one a copy).
pub const MAX_PAGE_ITEMS: usize = super::config::MAX_PAGE_SIZE;

/// A page's events as raw values, at most [`MAX_PAGE_ITEMS`] of them (counted while reading).
pub struct Items<'a>(pub Vec<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Items<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Items<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of events")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Items<'a>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<&'de RawValue>()? {
                    if items.len() == MAX_PAGE_ITEMS {
                        return Err(serde::de::Error::custom(format!(
                            "more than {MAX_PAGE_ITEMS} events in one page"
                        )));
                    }
                    items.push(item);
                }
                Ok(Items(items))
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// An OData collection page.
#[derive(Deserialize)]
struct Collection<'a> {
    #[serde(borrow)]
    value: Option<Items<'a>>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
}

/// Parses a RESO `EntityEvent` collection page; events at or below `after` are skipped.
pub fn parse_reso_page(
    body: &[u8],
    after: i64,
    opts: ParseOptions,
    topic: &Arc<str>,
) -> Result<Page, PageError> {
    let collection: Collection<'_> = serde_json::from_slice(body).map_err(|e| PageError {
        expected: "an OData collection",
        detail: e.to_string(),
    })?;
    let Some(Items(events)) = collection.value else {
        return Err(PageError {
            expected: "an OData collection",
            detail: "it has no `value` array".into(),
        });
    };
    let mut page = Page {
        next_link: collection.next_link,
        ..Page::default()
    };
    for raw in events {
        page.add_event(raw.get().as_bytes(), after, opts, topic);
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> Arc<str> {
        Arc::from("https://x.example/EntityEvent")
    }

    #[test]
    fn a_reso_page_keeps_exact_bytes_and_isolates_bad_events() {
        let body = br#"{"@odata.context":"$metadata#EntityEvent","value":[
            {"EntityEventSequence":5,"ResourceName":"Property","ResourceRecordKey":"a","Data":{"ListPrice": 1.50}},
            {"EntityEventSequence":6,"ResourceName":"Property"},
            {"EntityEventSequence":7,"ResourceName":"Property","ResourceRecordKey":"c"},
            "not an event",
            {"EntityEventSequence":3,"ResourceName":"Property","ResourceRecordKey":"old"}
        ],"@odata.nextLink":"https://x.example/EntityEvent?$skiptoken=7"}"#;
        let page = parse_reso_page(body, 4, ParseOptions::default(), &topic()).unwrap();
        assert_eq!(page.received, 5);
        assert_eq!(page.messages.len(), 2);
        assert_eq!(
            &page.messages[0].payload[..],
            br#"{"EntityEventSequence":5,"ResourceName":"Property","ResourceRecordKey":"a","Data":{"ListPrice": 1.50}}"#
        );
        assert_eq!(page.messages[1].sequence, 7);
        assert_eq!(page.invalid.len(), 2);
        assert_eq!(page.invalid[0].sequence, Some(6));
        assert!(
            page.invalid[0].reason.contains("/ResourceRecordKey"),
            "{}",
            page.invalid[0].reason
        );
        assert_eq!(page.invalid[1].sequence, None);
        assert_eq!(page.skipped, 1);
        assert_eq!(page.last_sequence, Some(7));
        assert_eq!(
            page.next_link.as_deref(),
            Some("https://x.example/EntityEvent?$skiptoken=7")
        );
    }

    #[test]
    fn a_broken_page_is_an_error_not_an_empty_page() {
        for body in [&b"<html>"[..], b"{\"values\":[]}", b"{\"value\":{}}"] {
            assert!(parse_reso_page(body, 0, ParseOptions::default(), &topic()).is_err());
        }
        let page = parse_reso_page(b"{\"value\":[]}", 0, ParseOptions::default(), &topic());
        assert_eq!(page.unwrap().received, 0);
    }

    /// Regression (review): a page's item count was unbounded (16M tiny items in 32 MiB cost
    /// gigabytes as invalid events); an invalid event behind the checkpoint was dead-lettered
    /// again at every poll.
    #[test]
    fn pages_are_bounded_and_old_invalid_events_are_skipped() {
        let huge = format!("{{\"value\":[{}1]}}", "1,".repeat(MAX_PAGE_ITEMS));
        let e = parse_reso_page(huge.as_bytes(), 0, ParseOptions::default(), &topic()).err();
        assert!(e.unwrap().detail.contains("more than"));
        let body = br#"{"value":[{"EntityEventSequence":3,"ResourceName":"Property"}]}"#;
        let page = parse_reso_page(body, 5, ParseOptions::default(), &topic()).unwrap();
        assert_eq!((page.invalid.len(), page.skipped), (0, 1));
    }

    #[test]
    fn deep_events_are_invalid_alone() {
        let deep = format!(
            r#"{{"EntityEventSequence":9,"ResourceName":"P","ResourceRecordKey":"k","Data":{}1{}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        let body = format!(r#"{{"value":[{deep}]}}"#);
        let opts = ParseOptions {
            max_depth: 10,
            ..ParseOptions::default()
        };
        let page = parse_reso_page(body.as_bytes(), 0, opts, &topic()).unwrap();
        assert_eq!(page.invalid.len(), 1);
        assert_eq!(page.last_sequence, Some(9));
    }
}
