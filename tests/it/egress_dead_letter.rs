//! Egress dead letters: a 400 and an unparseable record to a Kafka topic, exhausted retries
//! under `on_exhausted = "dead_letter"`, and a RabbitMQ exchange as the destination.

use std::time::Duration;

use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use rdkafka::message::Message as _;

use crate::common::*;
use crate::egress::{create_topic, event, produce, sequences_by_key, Egress};
use crate::receiver::Receiver;

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_are_retried_and_a_400_is_dead_lettered() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(Box::new(|n, _, body| {
        if n < 3 {
            (500, vec![])
        } else if String::from_utf8_lossy(body).contains("POISON") {
            (400, vec![])
        } else {
            (200, vec![])
        }
    }))
    .await;
    let mut egress = Egress::new("it-egress-dlq", &receiver.url, &dir);
    egress.sink_extra = "max_events = 1".into();
    create_topic(&egress.topic, 1).await;
    let mut events: Vec<(String, i64, String)> = (1..=8)
        .map(|s| ("rk".to_owned(), s, event("rk", s, 10)))
        .collect();
    events[5].2 = events[5].2.replace("xxxxxxxxxx", "POISON");
    produce(&egress.topic, &events, Some("Feed B")).await;
    // A record that is no EntityEvent at all, after them.
    produce(
        &egress.topic,
        &[("rk".to_owned(), 9, "not json".to_owned())],
        None,
    )
    .await;
    let bridge = TestBridge::start_connector(&egress.toml()).await;
    receiver.wait_delivered(7, Duration::from_secs(60)).await;

    let requests = receiver.requests();
    assert_eq!(
        requests
            .iter()
            .take(3)
            .map(|r| r.status)
            .collect::<Vec<_>>(),
        vec![500, 500, 500]
    );
    assert!(
        requests[..4].iter().all(|r| r.body == requests[0].body),
        "the same batch is retried until it succeeds"
    );
    let seqs = sequences_by_key(&requests).remove("rk").unwrap();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4, 5, 7, 8],
        "in order, the poison event skipped"
    );
    let poison_posts = requests.iter().filter(|r| r.status == 400).count();
    assert_eq!(poison_posts, 1, "a 400 is never retried");

    let dlq = egress.dlq.clone();
    let dead = tokio::task::spawn_blocking(move || consume_n(&[&dlq], 2))
        .await
        .unwrap();
    let rejected = dead
        .iter()
        .find(|m| header(m, "dead_letter_reason").as_deref() == Some("rejected"))
        .unwrap();
    assert_eq!(
        std::str::from_utf8(rejected.payload().unwrap()).unwrap(),
        events[5].2,
        "exact bytes"
    );
    assert_eq!(rejected.key(), Some("rk".as_bytes()));
    assert_eq!(header(rejected, "http_status").as_deref(), Some("400"));
    assert_eq!(header(rejected, "attempts").as_deref(), Some("1"));
    assert_eq!(header(rejected, "connector").as_deref(), Some("it"));
    assert_eq!(
        header(rejected, "original_topic").as_deref(),
        Some(egress.topic.as_str())
    );
    assert_eq!(header(rejected, "original_partition").as_deref(), Some("0"));
    assert_eq!(header(rejected, "original_offset").as_deref(), Some("5"));
    assert_eq!(
        header(rejected, "EntityEventSequence").as_deref(),
        Some("6")
    );
    assert_eq!(
        header(rejected, "EntityEventSource").as_deref(),
        Some("Feed B")
    );
    let garbage = dead
        .iter()
        .find(|m| header(m, "dead_letter_reason").as_deref() == Some("unparseable"))
        .unwrap();
    assert_eq!(garbage.payload(), Some("not json".as_bytes()));
    assert_eq!(header(garbage, "original_offset").as_deref(), Some("8"));

    let text = bridge.metrics().await;
    assert_eq!(
        metric(
            &text,
            "entity_bridge_push_retries_total{connector=\"it\",outcome=\"status_5xx\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "entity_bridge_dead_lettered_events_total{connector=\"it\",outcome=\"rejected\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "entity_bridge_dead_lettered_events_total{connector=\"it\",outcome=\"unparseable\"}"
        ),
        Some(1.0)
    );
    assert!(bridge.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausted_retries_are_dead_lettered_under_that_policy() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(Box::new(|_, _, body| {
        if String::from_utf8_lossy(body).contains("FLAKY") {
            (503, vec![])
        } else {
            (200, vec![])
        }
    }))
    .await;
    let mut egress = Egress::new("it-egress-exhaust", &receiver.url, &dir);
    egress.sink_extra = "max_events = 1".into();
    create_topic(&egress.topic, 1).await;
    let mut events: Vec<(String, i64, String)> = (1..=3)
        .map(|s| ("ex".to_owned(), s, event("ex", s, 5)))
        .collect();
    events[1].2 = events[1].2.replace("xxxxx", "FLAKY");
    produce(&egress.topic, &events, None).await;
    let toml = egress.toml().replace(
        "max_backoff_ms = 200\n",
        "max_backoff_ms = 200\nmax_retry_duration_ms = 500\non_exhausted = \"dead_letter\"\n",
    );
    let bridge = TestBridge::start_connector(&toml).await;
    receiver.wait_delivered(2, Duration::from_secs(60)).await;
    let dlq = egress.dlq.clone();
    let dead = tokio::task::spawn_blocking(move || consume_n(&[&dlq], 1))
        .await
        .unwrap();
    assert_eq!(
        header(&dead[0], "dead_letter_reason").as_deref(),
        Some("retries_exhausted")
    );
    assert_eq!(header(&dead[0], "http_status").as_deref(), Some("503"));
    let attempts: u32 = header(&dead[0], "attempts").unwrap().parse().unwrap();
    assert!(attempts >= 2, "retried before giving up: {attempts}");
    let seqs = sequences_by_key(&receiver.requests()).remove("ex").unwrap();
    assert_eq!(seqs, vec![1, 3]);
    assert!(bridge.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_can_be_dead_lettered_to_a_rabbitmq_exchange() {
    require_kafka();
    let amqp = require_amqp().await;
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("amqp-url");
    std::fs::write(&url_file, amqp_url()).unwrap();
    let receiver = Receiver::start(Box::new(|_, _, _| (422, vec![]))).await;
    let egress = Egress::new("it-egress-amqp-dlx", &receiver.url, &dir);
    create_topic(&egress.topic, 1).await;
    let events: Vec<_> = (1..=3)
        .map(|s| ("ak".to_owned(), s, event("ak", s, 4)))
        .collect();
    produce(&egress.topic, &events, None).await;
    let (exchange, queue) = (unique("it.dlx"), unique("it.dead"));
    let toml = egress.toml().replace(
        &format!("type = \"kafka\"\nbootstrap_servers = \"{}\"\ntopic = \"{}\"", kafka(), egress.dlq),
        &format!(
            "type = \"amqp\"\nurl = {{ file = {:?} }}\nexchange = \"{exchange}\"\nqueue = \"{queue}\"",
            url_file.display().to_string()
        ),
    );
    assert!(toml.contains("type = \"amqp\""), "{toml}");
    let bridge = TestBridge::start_connector(&toml).await;

    let channel = amqp.create_channel().await.unwrap();
    // Declared here too (same arguments as the bridge's), so polling never hits a missing queue.
    let durable = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(&queue, durable, lapin::types::FieldTable::default())
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while got.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} dead letters",
            got.len()
        );
        match channel
            .basic_get(&queue, BasicGetOptions { no_ack: true })
            .await
        {
            Ok(Some(m)) => got.push(m),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    for (m, (_, seq, raw)) in got.iter().zip(&events) {
        assert_eq!(
            std::str::from_utf8(&m.delivery.data).unwrap(),
            raw,
            "exact bytes, in order"
        );
        let headers = m.delivery.properties.headers().as_ref().unwrap();
        let text = |k: &str| match headers.inner().get(k) {
            Some(AMQPValue::LongString(s)) => Some(s.to_string()),
            _ => None,
        };
        assert_eq!(text("dead_letter_reason").as_deref(), Some("rejected"));
        assert_eq!(text("http_status").as_deref(), Some("422"));
        assert_eq!(text("connector").as_deref(), Some("it"));
        assert_eq!(
            text("original_topic").as_deref(),
            Some(egress.topic.as_str())
        );
        assert_eq!(text("original_offset"), Some((seq - 1).to_string()));
        assert_eq!(
            m.delivery.properties.delivery_mode(),
            &Some(2),
            "persistent"
        );
    }
    assert!(bridge.stop().await);
}

/// Produces one record whose only header key is not UTF-8 (rdkafka's safe API cannot write
/// one; any other client can).
#[allow(unsafe_code)]
async fn produce_with_binary_header_key(topic: &str, key: &str, value: &str) {
    use rdkafka::message::OwnedHeaders;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("acks", "all")
        .create()
        .unwrap();
    let headers = OwnedHeaders::new_with_capacity(1);
    let name: &[u8] = b"\xff\xfeEntity";
    // SAFETY: `as_borrowed` is the headers' own librdkafka pointer, exclusively owned here;
    // librdkafka copies the name (given with its length) and the value.
    unsafe {
        let ptr = (headers.as_borrowed() as *const rdkafka::message::BorrowedHeaders)
            .cast_mut()
            .cast::<rdkafka::bindings::rd_kafka_headers_t>();
        let err = rdkafka::bindings::rd_kafka_header_add(
            ptr,
            name.as_ptr().cast(),
            name.len() as isize,
            b"v".as_ptr().cast(),
            1,
        );
        assert_eq!(
            err,
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        );
    }
    let record = FutureRecord::to(topic)
        .key(key)
        .payload(value)
        .headers(headers);
    producer
        .send(record, Duration::from_secs(15))
        .await
        .expect("produced");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_utf8_header_key_is_dead_lettered_and_the_lane_goes_on() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::accepting().await;
    let egress = Egress::new("it-egress-hdr", &receiver.url, &dir);
    create_topic(&egress.topic, 1).await;
    let first = vec![("hk".to_owned(), 1, event("hk", 1, 4))];
    produce(&egress.topic, &first, None).await;
    // Regression: rdkafka's header accessor panicked on this record and killed the source.
    produce_with_binary_header_key(&egress.topic, "hk", &event("hk", 2, 4)).await;
    let last = vec![("hk".to_owned(), 3, event("hk", 3, 4))];
    produce(&egress.topic, &last, None).await;
    let bridge = TestBridge::start_connector(&egress.toml()).await;
    receiver.wait_delivered(2, Duration::from_secs(60)).await;
    let seqs = sequences_by_key(&receiver.requests()).remove("hk").unwrap();
    assert_eq!(
        seqs,
        vec![1, 3],
        "the lane went on past the unreadable record"
    );
    let dlq = egress.dlq.clone();
    let dead = tokio::task::spawn_blocking(move || consume_n(&[&dlq], 1))
        .await
        .unwrap();
    assert_eq!(
        header(&dead[0], "dead_letter_reason").as_deref(),
        Some("unparseable")
    );
    assert_eq!(header(&dead[0], "original_offset").as_deref(), Some("1"));
    assert!(bridge.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_too_large_for_its_topic_is_written_without_payload() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(Box::new(|_, _, body| {
        if String::from_utf8_lossy(body).contains("HUGE") {
            (400, vec![])
        } else {
            (200, vec![])
        }
    }))
    .await;
    let mut egress = Egress::new("it-egress-bigdlq", &receiver.url, &dir);
    egress.sink_extra = "max_events = 1".into();
    create_topic(&egress.topic, 1).await;
    let mut big = event("bk", 1, 5000);
    big = big.replacen("xxxx", "HUGE", 1);
    let events = vec![
        ("bk".to_owned(), 1, big.clone()),
        ("bk".to_owned(), 2, event("bk", 2, 4)),
    ];
    produce(&egress.topic, &events, None).await;
    // The dead-letter producer refuses records over 2000 bytes, as a small topic limit would.
    let toml = format!(
        "{}librdkafka = {{ \"message.max.bytes\" = \"2000\" }}\n",
        egress.toml()
    );
    let bridge = TestBridge::start_connector(&toml).await;
    receiver.wait_delivered(1, Duration::from_secs(60)).await;
    let dlq = egress.dlq.clone();
    let dead = tokio::task::spawn_blocking(move || consume_n(&[&dlq], 1))
        .await
        .unwrap();
    let slim = &dead[0];
    assert_eq!(slim.payload(), None, "written without its payload");
    assert_eq!(
        header(slim, "dead_letter_payload_omitted").as_deref(),
        Some("too_large")
    );
    assert_eq!(
        header(slim, "dead_letter_payload_bytes").as_deref(),
        Some(big.len().to_string().as_str())
    );
    assert_eq!(
        header(slim, "dead_letter_reason").as_deref(),
        Some("rejected")
    );
    assert_eq!(header(slim, "original_offset").as_deref(), Some("0"));
    // The partition went on: the next event was delivered after the dead letter.
    let seqs = sequences_by_key(&receiver.requests()).remove("bk").unwrap();
    assert_eq!(seqs, vec![2]);
    assert!(bridge.stop().await);
}

/// Redirects are never followed: the bearer token must not reach another origin, and a POST
/// turned into a GET must not count as delivered. A redirect is a poison answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_is_not_followed_and_the_token_stays_with_its_origin() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = Receiver::start(Box::new(|_, _, _| (200, vec![]))).await;
    let location = elsewhere.url.clone();
    let receiver = Receiver::start(Box::new(move |n, _, _| {
        if n == 0 {
            (307, vec![("location", location.clone())])
        } else {
            (200, vec![])
        }
    }))
    .await;
    let mut egress = Egress::new("it-egress-redirect", &receiver.url, &dir);
    egress.sink_extra = "max_events = 1".into();
    create_topic(&egress.topic, 1).await;
    let events: Vec<(String, i64, String)> = (1..=2)
        .map(|s| ("rk".to_owned(), s, event("rk", s, 10)))
        .collect();
    produce(&egress.topic, &events, None).await;
    let bridge = TestBridge::start_connector(&egress.toml()).await;
    receiver.wait_delivered(1, Duration::from_secs(60)).await;

    let dlq = egress.dlq.clone();
    let dead = tokio::task::spawn_blocking(move || consume_n(&[&dlq], 1))
        .await
        .unwrap();
    assert_eq!(header(&dead[0], "http_status").as_deref(), Some("307"));
    assert_eq!(
        header(&dead[0], "EntityEventSequence").as_deref(),
        Some("1")
    );
    assert_eq!(
        sequences_by_key(&receiver.requests()).remove("rk"),
        Some(vec![2])
    );
    assert!(
        elsewhere.requests().is_empty(),
        "the redirect target got a request"
    );
    assert!(bridge.stop().await);
}

/// Regression: with 100 events in one batch and a consumer that refuses the batch holding one
/// bad event, none of the 99 good events was delivered and all 100 were dead-lettered. The
/// sink now splits a refused batch until the refused events are alone.
#[tokio::test(flavor = "multi_thread")]
async fn one_poison_event_does_not_take_its_batch_with_it() {
    require_kafka();
    for poison in [vec![37], vec![1, 50, 100]] {
        let dir = tempfile::tempdir().unwrap();
        let receiver = Receiver::start(Box::new(|_, _, body| {
            if String::from_utf8_lossy(body).contains("POISON") {
                (422, vec![])
            } else {
                (200, vec![])
            }
        }))
        .await;
        let mut egress = Egress::new("it-egress-isolate", &receiver.url, &dir);
        egress.sink_extra = "max_events = 100".into();
        create_topic(&egress.topic, 1).await;
        // Interleaved keys, so order is checked per key across the split halves.
        let events: Vec<(String, i64, String)> = (1..=100)
            .map(|s| {
                let key = format!("k{}", s % 3);
                let mut e = event(&key, s, 10);
                if poison.contains(&s) {
                    e = e.replace("xxxxxxxxxx", "POISON");
                }
                (key, s, e)
            })
            .collect();
        produce(&egress.topic, &events, None).await;
        let bridge = TestBridge::start_connector(&egress.toml()).await;
        receiver
            .wait_delivered(100 - poison.len(), Duration::from_secs(60))
            .await;

        let delivered = sequences_by_key(&receiver.requests());
        for (key, seqs) in &delivered {
            let expected: Vec<i64> = events
                .iter()
                .filter(|(k, s, _)| k == key && !poison.contains(s))
                .map(|(_, s, _)| *s)
                .collect();
            assert_eq!(seqs, &expected, "{key}: every good event once, in order");
        }
        assert_eq!(
            delivered.values().map(Vec::len).sum::<usize>(),
            100 - poison.len()
        );
        let dlq = egress.dlq.clone();
        let n = poison.len();
        let dead = tokio::task::spawn_blocking(move || consume_n(&[&dlq], n))
            .await
            .unwrap();
        let mut dead_seqs: Vec<i64> = dead
            .iter()
            .map(|m| {
                assert_eq!(header(m, "http_status").as_deref(), Some("422"));
                assert_eq!(header(m, "dead_letter_reason").as_deref(), Some("rejected"));
                header(m, "EntityEventSequence").unwrap().parse().unwrap()
            })
            .collect();
        dead_seqs.sort();
        assert_eq!(
            dead_seqs, poison,
            "only the refused events are dead-lettered"
        );
        let text = bridge.metrics().await;
        assert!(
            metric(
                &text,
                "entity_bridge_push_retries_total{connector=\"it\",outcome=\"isolating_poison\"}"
            )
            .is_some_and(|n| n >= 1.0),
            "{text}"
        );
        assert!(bridge.stop().await);
    }
}

/// Kafka source → Kafka sink (a shovel): a record the sink refuses (here a ResourceName outside
/// the Data Dictionary) is dead-lettered alone; the other 99 reach the sink's topic in order.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_lanes_isolate_a_poison_record() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    require_kafka();
    for poison in [vec![37i64], vec![1, 50, 100]] {
        let source_topic = unique("it-lane-isolate");
        let prefix = unique("it-lane-out");
        let dlq = unique("it-lane-dlq");
        create_topic(&source_topic, 1).await;
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka())
            .set("batch.num.messages", "1")
            .create()
            .unwrap();
        for s in 1..=100i64 {
            let resource = if poison.contains(&s) {
                "X_NotReso"
            } else {
                "Property"
            };
            let key = format!("k{}", s % 3);
            let value = format!(
                r#"{{"EntityEventSequence":{s},"ResourceName":"{resource}","ResourceRecordKey":"{key}"}}"#
            );
            let seq = s.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "EntityEventSequence",
                    value: Some(seq.as_bytes()),
                })
                .insert(Header {
                    key: "ResourceName",
                    value: Some(resource.as_bytes()),
                });
            producer
                .send(
                    FutureRecord::to(&source_topic)
                        .key(&key)
                        .payload(&value)
                        .headers(headers),
                    Duration::from_secs(15),
                )
                .await
                .expect("produced");
        }
        let toml = format!(
            "[source]\ntype = \"kafka\"\nbootstrap_servers = \"{kafka}\"\ngroup_id = \"{group}\"\n\
             topics = [\"{source_topic}\"]\ncommit_interval_ms = 200\n\
             [source.dead_letter]\ntype = \"kafka\"\nbootstrap_servers = \"{kafka}\"\ntopic = \"{dlq}\"\n\
             [sink]\n{sink}\n[retry]\nmin_backoff_ms = 20\nmax_backoff_ms = 200\n",
            kafka = kafka(),
            group = unique("it-lane-group"),
            sink = TestBridge::kafka_sink(&prefix, "").trim_end(),
        );
        let bridge = TestBridge::start_connector(&toml).await;
        let out = format!("{prefix}.Property");
        let good = 100 - poison.len();
        let wanted = out.clone();
        tokio::task::spawn_blocking(move || wait_for_topic(&wanted, Duration::from_secs(60)))
            .await
            .unwrap();
        let got = tokio::task::spawn_blocking(move || consume_n(&[&out], good))
            .await
            .unwrap();
        let mut by_key: std::collections::BTreeMap<Vec<u8>, Vec<i64>> = Default::default();
        for m in &got {
            let s: i64 = header(m, "EntityEventSequence").unwrap().parse().unwrap();
            by_key.entry(m.key().unwrap().to_vec()).or_default().push(s);
        }
        for (key, seqs) in &by_key {
            let k: i64 = std::str::from_utf8(&key[1..]).unwrap().parse().unwrap();
            let expected: Vec<i64> = (1..=100)
                .filter(|s| s % 3 == k && !poison.contains(s))
                .collect();
            assert_eq!(seqs, &expected, "every good record once, in order per key");
        }
        let n = poison.len();
        let dead = tokio::task::spawn_blocking(move || consume_n(&[&dlq], n))
            .await
            .unwrap();
        let mut dead_seqs: Vec<i64> = dead
            .iter()
            .map(|m| header(m, "EntityEventSequence").unwrap().parse().unwrap())
            .collect();
        dead_seqs.sort();
        assert_eq!(
            dead_seqs, poison,
            "only the refused records are dead-lettered"
        );
        assert!(bridge.stop().await);
    }
}

/// Regression: time spent honouring `Retry-After` counted toward `max_retry_duration_ms`
/// (the docs say throttling never counts as failing), so a consumer that asked for pauses
/// between two failures got the batch dead-lettered as `retries_exhausted`.
#[tokio::test(flavor = "multi_thread")]
async fn retry_after_pauses_do_not_count_toward_the_retry_budget() {
    require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(Box::new(|n, _, _| match n {
        0 | 3 => (503, vec![]),
        1 | 2 => (429, vec![("retry-after", "1".to_owned())]),
        _ => (200, vec![]),
    }))
    .await;
    let mut egress = Egress::new("it-egress-budget", &receiver.url, &dir);
    egress.sink_extra = "max_events = 1".into();
    create_topic(&egress.topic, 1).await;
    let events = vec![("bk".to_owned(), 1, event("bk", 1, 5))];
    produce(&egress.topic, &events, None).await;
    let toml = egress.toml().replace(
        "max_backoff_ms = 200\n",
        "max_backoff_ms = 200\nmax_retry_duration_ms = 1500\non_exhausted = \"dead_letter\"\n",
    );
    let bridge = TestBridge::start_connector(&toml).await;
    receiver.wait_delivered(1, Duration::from_secs(60)).await;
    let statuses: Vec<u16> = receiver.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![503, 429, 429, 503, 200]);
    let text = bridge.metrics().await;
    assert_eq!(
        metric(
            &text,
            "entity_bridge_dead_lettered_events_total{connector=\"it\",outcome=\"retries_exhausted\"}"
        ),
        None,
        "about 2 s of pauses, under 0.5 s of failing: not exhausted"
    );
    assert!(bridge.stop().await);
}
