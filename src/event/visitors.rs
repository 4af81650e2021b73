//! Borrowed deserialization of the envelope and of the three required event fields, in one pass.
//!
//! Custom serde visitors keep top-level members in order with raw values. Inside the `value`
//! array each event object is read once: its keys and values are taken as borrowed
//! [`RawValue`]s (so nothing is decoded or allocated), `EntityEventSequence`, `ResourceName` and
//! `ResourceRecordKey` are kept, and the first key and last value mark where the object's own
//! bytes are in the body. No second scan of an event is needed to find its exact bytes: this is
//! what keeps ingress cheap for events with large inline `Data`.

use super::*;

/// The scalar visits of a visitor to which every JSON scalar (null, bool, number, string) is
/// the wrong shape: each answers `$value` (a violation to report, not a parse error).
macro_rules! scalars_are {
    ($value:expr) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// The top-level object: its members in order, values kept raw (the `value` array split into
/// raw items).
pub(super) struct TopLevel<'a> {
    pub(super) members: Vec<Member<'a>>,
}

pub(super) struct Member<'a> {
    /// Decoded key (borrowed unless it had escapes).
    pub(super) key: Cow<'a, str>,
    pub(super) value: MemberValue<'a>,
}

pub(super) enum MemberValue<'a> {
    Raw(&'a RawValue),
    Events(EventsValue<'a>),
    /// A second `value` member: skipped unread (a violation), so repeating `value` cannot
    /// multiply what `max_events` allows.
    DuplicateEvents,
}

pub(super) enum EventsValue<'a> {
    Array(Vec<EventItem<'a>>),
    NotArray,
}

/// One item of the `value` array, read in the envelope's single pass.
pub(super) enum EventItem<'a> {
    /// A JSON object: its required fields, and the bounds of its members in the body.
    Object {
        fields: EventFields<'a>,
        /// The first member's key, raw (starts at its opening quote); `None` for `{}`.
        first_key: Option<&'a RawValue>,
        /// The last member's value, raw; `None` for `{}`.
        last_value: Option<&'a RawValue>,
    },
    /// Anything else (a violation, not a parse error).
    NotObject,
}

/// Which bound a payload went beyond while it was read (the parse then stops with an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exceeded {
    /// More than `max_events` items in `value`.
    Events,
    /// More than [`MAX_TOP_LEVEL_MEMBERS`] top-level members.
    Members,
}

/// Reads the top-level object, stopping (and saying why in `exceeded`) at the first bound passed.
pub(super) struct TopSeed<'c> {
    pub(super) max_events: usize,
    pub(super) exceeded: &'c Cell<Option<Exceeded>>,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = TopLevel<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = TopLevel<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::with_capacity(4);
        let mut seen_value = false;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if members.len() == MAX_TOP_LEVEL_MEMBERS {
                self.exceeded.set(Some(Exceeded::Members));
                return Err(de::Error::custom("too many top-level members"));
            }
            let value = if key == VALUE && seen_value {
                map.next_value::<IgnoredAny>()?;
                MemberValue::DuplicateEvents
            } else if key == VALUE {
                seen_value = true;
                MemberValue::Events(map.next_value_seed(EventsVisitor {
                    max_events: self.max_events,
                    exceeded: self.exceeded,
                })?)
            } else {
                MemberValue::Raw(map.next_value::<&'de RawValue>()?)
            };
            members.push(Member { key, value });
        }
        Ok(TopLevel { members })
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }

        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Reads the `value` member in one pass: an array becomes its raw items (at most `max_events`),
/// anything else is skipped and reported as [`EventsValue::NotArray`] (a violation, not a parse
/// error).
struct EventsVisitor<'c> {
    max_events: usize,
    exceeded: &'c Cell<Option<Exceeded>>,
}

impl<'de> DeserializeSeed<'de> for EventsVisitor<'_> {
    type Value = EventsValue<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EventsVisitor<'_> {
    type Value = EventsValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(16);
        while let Some(item) = seq.next_element_seed(EventSeed)? {
            if items.len() == self.max_events {
                self.exceeded.set(Some(Exceeded::Events));
                return Err(de::Error::custom("too many events"));
            }
            items.push(item);
        }
        Ok(EventsValue::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(EventsValue::NotArray)
    }

    scalars_are!(EventsValue::NotArray);
}

/// State of one required field while reading an event.
#[derive(Default, Clone, Copy)]
pub(super) enum Slot<'a> {
    #[default]
    Missing,
    One(&'a RawValue),
    Duplicate,
}

impl<'a> Slot<'a> {
    fn set(&mut self, raw: &'a RawValue) {
        *self = match self {
            Slot::Missing => Slot::One(raw),
            Slot::One(_) | Slot::Duplicate => Slot::Duplicate,
        };
    }

    pub(super) fn get(&self) -> Result<&'a RawValue, &'static str> {
        match *self {
            Slot::One(raw) => Ok(raw),
            Slot::Missing => Err(DETAIL_REQUIRED),
            Slot::Duplicate => Err(DETAIL_DUPLICATE),
        }
    }
}

/// The three required fields of one event, raw; every other field is skipped.
#[derive(Default)]
pub(super) struct EventFields<'a> {
    pub(super) sequence: Slot<'a>,
    pub(super) resource_name: Slot<'a>,
    pub(super) record_key: Slot<'a>,
    /// A member named like an annotation the replay resource adds, if any.
    pub(super) rendered_annotation: Option<&'static str>,
}

impl<'a> EventFields<'a> {
    pub(super) fn record(&mut self, key: &str, raw: &'a RawValue) {
        match key {
            SEQUENCE => self.sequence.set(raw),
            RESOURCE_NAME => self.resource_name.set(raw),
            RECORD_KEY => self.record_key.set(raw),
            other if other.starts_with("@EntityBridge.") => {
                if let Some(name) = RENDERED_ANNOTATIONS.iter().find(|a| **a == other) {
                    self.rendered_annotation = Some(name);
                }
            }
            _ => {}
        }
    }
}

/// Reads one item of the `value` array; see [`EventItem`].
struct EventSeed;

impl<'de> DeserializeSeed<'de> for EventSeed {
    type Value = EventItem<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(EventVisitor)
    }
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = EventItem<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = EventFields::default();
        let mut first_key = None;
        let mut last_value = None;
        while let Some(key) = map.next_key::<&'de RawValue>()? {
            first_key.get_or_insert(key);
            let value = map.next_value::<&'de RawValue>()?;
            last_value = Some(value);
            // Keys almost never carry escapes; only the three names matter here.
            match decode_key(key) {
                Some(name) => fields.record(&name, value),
                None => return Err(de::Error::custom("object key is not a string")),
            }
        }
        Ok(EventItem::Object {
            fields,
            first_key,
            last_value,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(EventItem::NotObject)
    }

    scalars_are!(EventItem::NotObject);
}

/// Decodes a raw object key (a JSON string token), borrowing it when it has no escapes.
fn decode_key(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}
