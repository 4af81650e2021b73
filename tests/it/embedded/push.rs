//! Embedded log → webhook push sink → a real local RESO consumer: everything arrives, once per
//! acknowledged batch, in order; a 503 from the consumer leaves the cursor where it was and the
//! same events come again.

use std::time::Duration;

use entity_bridge::embedded::Log;

use super::*;
use crate::common::{kafka, require_kafka, unique};
use crate::receiver::Receiver;

#[tokio::test(flavor = "multi_thread")]
async fn embedded_source_delivers_everything_to_a_consumer_endpoint() {
    require_kafka(); // the push sink's dead-letter topic
                     // The consumer refuses the first request once, politely.
    let receiver = Receiver::start(Box::new(|n, _, _| {
        if n == 0 {
            (503, vec![("retry-after", "1".to_owned())])
        } else {
            (200, vec![])
        }
    }))
    .await;
    let setup = Setup::new(&[]);
    setup.write_connector(
        "ingest",
        &format!(
            "{}\n[sink]\ntype = \"embedded\"\n",
            setup.webhook_source("")
        ),
    );
    setup.write_connector(
        "egress",
        &format!(
            "[source]\ntype = \"embedded\"\nfile = \"ingest.db\"\nmax_batch = 8\n\n[sink]\ntype = \"webhook\"\nurl = {:?}\n\
             [sink.auth]\ntype = \"token\"\ntoken = {{ file = {:?} }}\n\n\
             [sink.dead_letter]\ntype = \"kafka\"\nbootstrap_servers = {:?}\ntopic = {:?}\n\n\
             [retry]\nmin_backoff_ms = 50\nmax_backoff_ms = 500\n",
            receiver.url,
            setup.path("token").display().to_string(),
            kafka(),
            unique("it-embedded-dlq"),
        ),
    );
    let bridge = setup.start().await;
    let mut expected = Vec::new();
    for push in 0..4 {
        let events: Vec<(i64, &str, &str)> = (0..6)
            .map(|j| {
                (
                    push * 6 + j + 1,
                    "Property",
                    ["A", "B", "C"][j as usize % 3],
                )
            })
            .collect();
        let r = bridge.post("/webhooks/ingest", &payload(&events)).await;
        assert_eq!(r.status(), 200);
        expected.extend(events.iter().map(|(s, _, k)| (k.to_string(), *s)));
    }
    receiver.wait_delivered(24, Duration::from_secs(30)).await;
    let log = Log::open(&setup.path("data/ingest.db")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while log.cursor("egress").await.unwrap() != Some(24) {
        assert!(
            std::time::Instant::now() < deadline,
            "cursor never reached 24"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let requests = receiver.requests();
    assert_eq!(requests[0].status, 503);
    assert_eq!(
        requests[1].keys(),
        requests[0].keys(),
        "the refused batch comes again, unchanged"
    );
    // Every event exactly once among the accepted requests, in log order.
    let accepted: Vec<(String, i64)> = requests
        .iter()
        .filter(|r| r.status == 200)
        .flat_map(|r| r.keys())
        .collect();
    assert_eq!(accepted, expected);
    assert_eq!(
        requests[1].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    drop(log);
    bridge.stop().await;
}
