//! Choosing a Kafka topic for an event: template rendering, sanitizing and the routing policy.
//!
//! Kept apart from the producer so the rules are unit-testable without a broker and so the
//! sink can route a whole batch before producing anything (a rejected event must leave the
//! rest of its push unpublished).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use super::config::{KafkaSinkConfig, UnknownResource};
use crate::resources::ResourcePolicy;
pub use crate::routing::{TemplateError, TopicTemplate};

/// Longest legal Kafka topic name.
pub const MAX_TOPIC_LEN: usize = 249;

/// Makes `name` a legal Kafka topic: characters outside `[A-Za-z0-9._-]` become `_`, the result
/// is cut to 249 bytes, and `.` / `..` / empty become `_`.
pub fn sanitize_topic(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_TOPIC_LEN)
        .collect();
    if out.is_empty() || out == "." || out == ".." {
        out = "_".into();
    }
    out
}

/// Checks a configured (not templated) topic name; configured names are never rewritten.
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_TOPIC_LEN || name == "." || name == ".." {
        return Err(format!("`{name}` is not a legal Kafka topic name"));
    }
    if sanitize_topic(name) != name {
        return Err(format!(
            "`{name}` is not a legal Kafka topic name (allowed: A-Z a-z 0-9 . _ -)"
        ));
    }
    Ok(())
}

/// Distinct ResourceNames whose routing is cached (producer-supplied, so bounded).
const MAX_CACHED_ROUTES: usize = 1024;

/// Decides the topic of each event. Decisions are cached per ResourceName when the template
/// does not depend on the push's `EntityEventSource`, so the hot path neither renders nor
/// allocates.
#[derive(Debug)]
pub struct TopicRouter {
    template: TopicTemplate,
    topics: BTreeMap<String, String>,
    unknown: UnknownResource,
    default_topic: Option<String>,
    policy: ResourcePolicy,
    cache: Option<RwLock<HashMap<String, Route>>>,
    /// With `{EntityEventSource}` in the template the producer picks part of each topic name:
    /// the distinct topics derived so far, capped at `max_derived_topics`.
    derived: Option<(std::sync::Mutex<std::collections::HashSet<Arc<str>>>, usize)>,
}

/// A routing decision: the topic, or why the event cannot be routed.
pub type Route = Result<Arc<str>, Arc<str>>;

impl TopicRouter {
    /// Builds the router from validated config.
    pub fn new(config: &KafkaSinkConfig) -> Result<Self, TemplateError> {
        let template = TopicTemplate::parse(&config.topic_template)?;
        let cache = (!template.uses_source()).then(|| RwLock::new(HashMap::new()));
        let derived = template
            .uses_source()
            .then(|| (Default::default(), config.max_derived_topics));
        Ok(TopicRouter {
            derived,
            template,
            topics: config.topics.clone(),
            unknown: config.unknown_resource,
            default_topic: config.default_topic.clone(),
            policy: ResourcePolicy::new(
                config.resource_names,
                &config.extra_resource_names,
                config.max_resource_names,
            ),
            cache,
        })
    }

    /// The topic for an event, or why its ResourceName cannot be routed (policy, see
    /// [`crate::resources`]).
    pub fn route(&self, resource_name: &str, source_label: Option<&str>) -> Route {
        let Some(cache) = &self.cache else {
            return self.decide(resource_name, source_label);
        };
        if let Some(hit) = cache.read().expect("route cache").get(resource_name) {
            return hit.clone();
        }
        let topic = self.decide(resource_name, source_label);
        let mut cache = cache.write().expect("route cache");
        if cache.len() < MAX_CACHED_ROUTES {
            cache.insert(resource_name.to_owned(), topic.clone());
        }
        topic
    }

    /// Counts a topic derived with the push's label; refuses new ones past the cap.
    fn admit_derived(&self, topic: &Arc<str>, source_label: Option<&str>) -> Result<(), Arc<str>> {
        let Some((seen, max)) = &self.derived else {
            return Ok(());
        };
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(topic) {
            return Ok(());
        }
        if seen.len() >= *max {
            return Err(Arc::from(format!(
                "EntityEventSource `{}` would make topic `{topic}`, beyond max_derived_topics = {max} \
                 distinct topics for this sink",
                source_label.unwrap_or_default()
            )));
        }
        seen.insert(topic.clone());
        Ok(())
    }

    fn decide(&self, resource_name: &str, source_label: Option<&str>) -> Route {
        if let Some(topic) = self.topics.get(resource_name) {
            return Ok(Arc::from(topic.as_str()));
        }
        // A topic named after the ResourceName only for names the policy accepts.
        let from_template = || {
            self.policy.check(resource_name).map_err(Arc::<str>::from)?;
            let topic: Arc<str> = Arc::from(sanitize_topic(
                &self.template.render(resource_name, source_label),
            ));
            self.admit_derived(&topic, source_label)?;
            Ok(topic)
        };
        if self.topics.is_empty() {
            return from_template();
        }
        match self.unknown {
            UnknownResource::Template => from_template(),
            UnknownResource::DefaultTopic => self
                .default_topic
                .as_deref()
                .map(Arc::from)
                .ok_or_else(|| Arc::from("no default_topic is configured")),
            UnknownResource::Reject => Err(Arc::from(format!(
                "no topic is configured for ResourceName `{resource_name}`"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_renders_and_sanitizes() {
        let t = TopicTemplate::parse("reso.{EntityEventSource}.{ResourceName}").unwrap();
        assert_eq!(
            sanitize_topic(&t.render("Property", Some("IDX Feed 123"))),
            "reso.IDX_Feed_123.Property"
        );
        assert_eq!(t.render("Media", None), "reso..Media");
        assert_eq!(sanitize_topic("a/b:c\u{e9}"), "a_b_c_");
        assert_eq!(sanitize_topic(".."), "_");
        assert_eq!(sanitize_topic(&"x".repeat(300)).len(), MAX_TOPIC_LEN);
    }

    #[test]
    fn routing_policy() {
        let mut config = KafkaSinkConfig::default();
        let router = TopicRouter::new(&config).unwrap();
        assert_eq!(
            router.route("Property", None).as_deref().ok(),
            Some("reso.Property")
        );
        // Regression: any ResourceName made (and created) a topic.
        let refused = router.route("Topic42", None).unwrap_err();
        assert!(refused.contains("extra_resource_names"), "{refused}");

        config
            .topics
            .insert("Property".into(), "mls.listings".into());
        let router = TopicRouter::new(&config).unwrap();
        assert_eq!(
            router.route("Property", None).as_deref().ok(),
            Some("mls.listings")
        );
        assert_eq!(
            router.route("Media", None).as_deref().ok(),
            Some("reso.Media")
        );

        config.unknown_resource = UnknownResource::DefaultTopic;
        config.default_topic = Some("reso.other".into());
        let router = TopicRouter::new(&config).unwrap();
        assert_eq!(
            router.route("Media", None).as_deref().ok(),
            Some("reso.other")
        );
        assert!(
            router.route("Anything_Else", None).is_ok(),
            "no topic is derived"
        );

        // The label is the producer's: topics derived with it are capped.
        let mut labelled = KafkaSinkConfig {
            topic_template: "reso.{EntityEventSource}.{ResourceName}".into(),
            max_derived_topics: 2,
            ..KafkaSinkConfig::default()
        };
        let router = TopicRouter::new(&labelled).unwrap();
        assert!(router.route("Property", Some("a")).is_ok());
        assert!(router.route("Property", Some("b")).is_ok());
        assert!(
            router.route("Property", Some("a")).is_ok(),
            "known topics stay"
        );
        let refused = router.route("Property", Some("c")).unwrap_err();
        assert!(refused.contains("max_derived_topics = 2"), "{refused}");
        labelled.max_derived_topics = 3;
        assert!(TopicRouter::new(&labelled)
            .unwrap()
            .route("Media", Some("c"))
            .is_ok());

        config.unknown_resource = UnknownResource::Reject;
        let router = TopicRouter::new(&config).unwrap();
        assert!(router.route("Media", None).is_err());
        assert!(router.route("Media", None).is_err(), "cached rejection");
        assert_eq!(
            router.route("Property", None).as_deref().ok(),
            Some("mls.listings")
        );
    }

    #[test]
    fn configured_names_are_checked_not_rewritten() {
        assert!(check_topic_name("reso.Property").is_ok());
        assert!(check_topic_name("bad topic").is_err());
        assert!(check_topic_name("..").is_err());
    }
}
