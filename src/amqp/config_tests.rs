//! Unit tests of [`super`].

use super::*;

fn sink(toml_text: &str) -> AmqpSinkConfig {
    toml::from_str(toml_text).unwrap()
}

fn source(toml_text: &str) -> AmqpSourceConfig {
    toml::from_str(toml_text).unwrap()
}

#[test]
fn sink_defaults_are_valid_and_safe() {
    let c = sink("");
    c.validate().unwrap();
    assert_eq!(c.exchange, "reso");
    assert_eq!(c.exchange_type, ExchangeType::Topic);
    assert_eq!(c.routing_key_template, "{ResourceName}");
    assert_eq!(c.on_unroutable, OnUnroutable::Fail);
    let conn = c.connection("mls");
    assert!(conn.url.is_none());
    assert_eq!(conn.name, "entity-bridge.mls.sink");
    assert_eq!(conn.topology.exchanges[0].name, "reso");
}

#[test]
fn sink_errors_name_the_key() {
    let both = sink("url_env = \"A\"\nurl_file = \"/x\"");
    assert_eq!(both.validate().unwrap_err().0, "url_env");
    let template = sink("routing_key_template = \"{Nope}\"");
    assert_eq!(template.validate().unwrap_err().0, "routing_key_template");
    let default_exchange = sink("exchange = \"\"");
    assert_eq!(
        default_exchange.validate().unwrap_err().0,
        "declare_exchange"
    );
    sink("exchange = \"\"\ndeclare_exchange = false")
        .validate()
        .unwrap();
    assert!(toml::from_str::<AmqpSinkConfig>("url = \"amqp://x\"").is_err());
}

#[test]
fn source_rules() {
    assert_eq!(source("").validate().unwrap_err().0, "queues");
    source("queues = [\"a\", \"b\"]").validate().unwrap();
    let twice = source("queues = [\"a\", \"a\"]");
    assert_eq!(twice.validate().unwrap_err().0, "queues[1]");
    let batch = source("queues = [\"a\"]\nprefetch_count = 10\nmax_batch = 11");
    assert_eq!(batch.validate().unwrap_err().0, "max_batch");
    let conn = source("queues = [\"a\"]\nurl_file = \"/run/secrets/amqp\"").connection("x");
    assert_eq!(conn.name, "entity-bridge.x.source");
    assert!(matches!(conn.url, Some(SecretRef::File(_))));
}
