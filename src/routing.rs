//! Routing templates: `{ResourceName}` and `{EntityEventSource}` placeholders in a Kafka topic
//! or an AMQP routing key.
//!
//! Shared by every bus that routes by resource (the Kafka sink's `topic_template`, the AMQP
//! sink's `routing_key_template`) so the placeholders and their errors are one thing; each bus
//! sanitizes the rendered name by its own rules.

/// A template that failed to parse.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// `{Name}` is not a known placeholder.
    #[error("unknown placeholder `{{{0}}}` (known: {{ResourceName}}, {{EntityEventSource}})")]
    UnknownPlaceholder(String),
    /// A `{` without its `}`.
    #[error("unclosed `{{` in template")]
    Unclosed,
    /// The template has no text at all.
    #[error("template is empty")]
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    ResourceName,
    Source,
}

/// A parsed topic/routing-key template with `{ResourceName}` and `{EntityEventSource}`.
#[derive(Debug, Clone)]
pub struct TopicTemplate {
    parts: Vec<Part>,
}

impl TopicTemplate {
    /// Parses a template.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..].find('}').ok_or(TemplateError::Unclosed)? + open;
            parts.push(match &rest[open + 1..close] {
                "ResourceName" => Part::ResourceName,
                "EntityEventSource" => Part::Source,
                other => return Err(TemplateError::UnknownPlaceholder(other.to_owned())),
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(TopicTemplate { parts })
    }

    /// Whether the template contains `{EntityEventSource}`.
    pub fn uses_source(&self) -> bool {
        self.parts.contains(&Part::Source)
    }

    /// Renders the template; the result is not yet sanitized.
    pub fn render(&self, resource_name: &str, source_label: Option<&str>) -> String {
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::ResourceName => out.push_str(resource_name),
                Part::Source => out.push_str(source_label.unwrap_or_default()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_errors() {
        assert!(matches!(
            TopicTemplate::parse("reso.{Nope}"),
            Err(TemplateError::UnknownPlaceholder(p)) if p == "Nope"
        ));
        assert!(matches!(
            TopicTemplate::parse("reso.{ResourceName"),
            Err(TemplateError::Unclosed)
        ));
        assert!(matches!(
            TopicTemplate::parse(""),
            Err(TemplateError::Empty)
        ));
    }

    #[test]
    fn renders_placeholders() {
        let t = TopicTemplate::parse("reso.{EntityEventSource}.{ResourceName}").unwrap();
        assert!(t.uses_source());
        assert_eq!(t.render("Property", Some("Feed")), "reso.Feed.Property");
        assert_eq!(t.render("Media", None), "reso..Media");
    }
}
