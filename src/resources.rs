//! Which `ResourceName`s a bus sink accepts, so producers cannot create topics without bound.
//!
//! `ResourceName` comes from the producer and a Kafka sink derives topics from it (and creates
//! them): one push with 200 distinct names once created 200 topics. By default the Kafka and
//! AMQP sinks accept the resources of the RESO Data Dictionary 2.0 ([`RESO_RESOURCES`]) plus the
//! sink's `extra_resource_names`; anything else is refused (400 naming the `ResourceName`) before
//! anything of the push is published. `resource_names = "any"` accepts every well-formed name,
//! but only the first `max_resource_names` distinct ones: past that cap the sink refuses new
//! names, so a misbehaving producer still creates a bounded number of topics.
//!
//! Every sink relies on the parser's character rule as well ([`crate::event`]): a
//! `ResourceName` is an OData simple identifier in ASCII, `[A-Za-z_][A-Za-z0-9_]*`.

use std::collections::HashSet;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The resources of the RESO Data Dictionary 2.0 (and the EntityEvent resource itself).
pub const RESO_RESOURCES: &[&str] = &[
    "Association",
    "Caravan",
    "CaravanStop",
    "ContactListingNotes",
    "ContactListings",
    "Contacts",
    "EntityEvent",
    "Field",
    "HistoryTransactional",
    "InternetTracking",
    "Lookup",
    "Media",
    "Member",
    "MemberAssociation",
    "MemberStateLicense",
    "OUID",
    "Office",
    "OfficeAssociation",
    "OfficeCorporateLicense",
    "OpenHouse",
    "OtherPhone",
    "Property",
    "PropertyGreenVerification",
    "PropertyPowerProduction",
    "PropertyPowerStorage",
    "PropertyRooms",
    "PropertyUnitTypes",
    "Prospecting",
    "Queue",
    "Rules",
    "SavedSearch",
    "Showing",
    "ShowingAppointment",
    "ShowingAvailability",
    "ShowingRequest",
    "SocialMedia",
    "TeamMembers",
    "Teams",
];

/// Default of `max_resource_names` (distinct names under `resource_names = "any"`).
pub const DEFAULT_MAX_RESOURCE_NAMES: usize = 256;

/// `resource_names`: which names a sink accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AcceptResources {
    /// The RESO Data Dictionary resources plus `extra_resource_names`.
    #[default]
    Reso,
    /// Any well-formed name, up to `max_resource_names` distinct ones.
    Any,
}

/// Whether `name` is a well-formed `ResourceName` (ASCII OData simple identifier).
pub fn well_formed(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks `extra_resource_names` of a sink config; `Err((key, detail))`.
pub fn validate(extra: &[String], max: usize) -> Result<(), (String, String)> {
    for (i, name) in extra.iter().enumerate() {
        if !well_formed(name) || name.len() > 255 {
            return Err((
                format!("extra_resource_names[{i}]"),
                format!("`{name}` is not a ResourceName (letters, digits and `_`, not starting with a digit)"),
            ));
        }
    }
    if max == 0 {
        return Err(("max_resource_names".into(), "must be at least 1".into()));
    }
    Ok(())
}

/// A sink's resource policy (see the module docs).
#[derive(Debug)]
pub struct ResourcePolicy {
    accept: AcceptResources,
    extra: HashSet<String>,
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl ResourcePolicy {
    /// The policy of a sink.
    pub fn new(accept: AcceptResources, extra: &[String], max: usize) -> Self {
        ResourcePolicy {
            accept,
            extra: extra.iter().cloned().collect(),
            max,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// `Ok` when the sink may route `name`, else the refusal's detail.
    pub fn check(&self, name: &str) -> Result<(), String> {
        if !well_formed(name) {
            return Err(format!("`{name}` is not a well-formed ResourceName"));
        }
        match self.accept {
            AcceptResources::Reso => {
                if RESO_RESOURCES.contains(&name) || self.extra.contains(name) {
                    Ok(())
                } else {
                    Err(format!(
                        "ResourceName `{name}` is not a RESO Data Dictionary resource this sink \
                         accepts (the operator can add it to extra_resource_names)"
                    ))
                }
            }
            AcceptResources::Any => {
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                if seen.contains(name) {
                    return Ok(());
                }
                if seen.len() >= self.max {
                    return Err(format!(
                        "ResourceName `{name}` would be distinct name number {} for this sink, \
                         beyond max_resource_names = {}",
                        self.max + 1,
                        self.max
                    ));
                }
                seen.insert(name.to_owned());
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_identifiers() {
        for ok in ["Property", "OUID", "X_Vendor1", "_private"] {
            assert!(well_formed(ok), "{ok}");
        }
        for bad in [
            "",
            "1Property",
            "Prop erty",
            "Prop\u{0}",
            "Prop\n",
            "a.b",
            "Média",
        ] {
            assert!(!well_formed(bad), "{bad:?}");
        }
    }

    #[test]
    fn reso_names_and_extras_pass_others_are_refused() {
        let policy = ResourcePolicy::new(AcceptResources::Reso, &["X_Custom".into()], 1);
        assert!(policy.check("Property").is_ok());
        assert!(policy.check("X_Custom").is_ok());
        let err = policy.check("Topic42").unwrap_err();
        assert!(err.contains("extra_resource_names"), "{err}");
    }

    #[test]
    fn any_is_capped_in_distinct_names() {
        let policy = ResourcePolicy::new(AcceptResources::Any, &[], 2);
        assert!(policy.check("A").is_ok());
        assert!(policy.check("B").is_ok());
        assert!(
            policy.check("A").is_ok(),
            "a name already seen stays accepted"
        );
        let err = policy.check("C").unwrap_err();
        assert!(err.contains("max_resource_names = 2"), "{err}");
    }
}
