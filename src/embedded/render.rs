//! How the replay resource writes one stored event: the producer's members byte for byte, the
//! log position as `EntityEventSequence`, the producer's own sequence (and source label) as
//! instance annotations.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::replay::{SOURCE_LABEL_ANNOTATION, SOURCE_SEQUENCE_ANNOTATION};
use super::store::StoredEvent;

/// An event object's members in document order, values kept as raw JSON text.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// Writes `event` as served: the position as `EntityEventSequence`, the producer's values
/// otherwise untouched, the producer's sequence (and source label) as annotations. With
/// `select` (`$select`), only those members, without annotations. With `record_url` (the log
/// serves the event's record resource), `ResourceRecordUrl` points there.
pub fn render_event(
    out: &mut Vec<u8>,
    event: &StoredEvent,
    select: Option<&[String]>,
    record_url: Option<&str>,
) {
    let Ok(Members(members)) = serde_json::from_slice::<Members>(&event.payload) else {
        // Cannot happen for events validated at ingress; serve them as stored.
        out.extend_from_slice(&event.payload);
        return;
    };
    let json = |s: &str| serde_json::to_vec(s).expect("string serializes");
    let wanted = |key: &str| select.is_none_or(|fields| fields.iter().any(|f| f == key));
    let mut first = true;
    let mut member = |out: &mut Vec<u8>, key: &str, value: &[u8]| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        out.extend_from_slice(&json(key));
        out.push(b':');
        out.extend_from_slice(value);
    };
    out.push(b'{');
    if select.is_none() {
        member(
            out,
            SOURCE_SEQUENCE_ANNOTATION,
            event.sequence.to_string().as_bytes(),
        );
        if let Some(label) = &event.source_label {
            member(out, SOURCE_LABEL_ANNOTATION, &json(label));
        }
    }
    let mut has_sequence = false;
    let mut has_url = false;
    for (key, value) in &members {
        // The annotations written above replace any of the same name the event came with
        // (another bridge's, seen through a pull source): one member per name.
        if !wanted(key) || crate::event::RENDERED_ANNOTATIONS.contains(&key.as_str()) {
            continue;
        }
        if key == "EntityEventSequence" {
            has_sequence = true;
            member(out, key, event.position.to_string().as_bytes());
        } else if let (Some(url), "ResourceRecordUrl") = (record_url, key.as_str()) {
            has_url = true;
            member(out, key, &json(url));
        } else {
            member(out, key, value.get().as_bytes());
        }
    }
    if !has_sequence && wanted("EntityEventSequence") {
        member(
            out,
            "EntityEventSequence",
            event.position.to_string().as_bytes(),
        );
    }
    if let (false, Some(url), true) = (has_url, record_url, wanted("ResourceRecordUrl")) {
        member(out, "ResourceRecordUrl", &json(url));
    }
    out.push(b'}');
}
