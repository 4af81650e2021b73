//! A full store (here: the `max_file_bytes` cap, which fails writes exactly like a full disk,
//! SQLITE_FULL) answers 503 + Retry-After, writes nothing of the refused push and damages
//! nothing that was acknowledged.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_full_log_answers_503_and_keeps_what_it_acknowledged() {
    let setup = Setup::new(&[]);
    setup.write_connector(
        "ingest",
        &format!(
            "{}\n[sink]\ntype = \"embedded\"\nmax_file_bytes = 131072\n",
            setup.webhook_source("unavailable_retry_after_seconds = 7")
        ),
    );
    let bridge = setup.start().await;
    let big = "x".repeat(6000);
    let mut accepted = 0;
    let refused = loop {
        let body = format!(
            r#"{{"value": [{{"EntityEventSequence": {a}, "ResourceName": "Property", "ResourceRecordKey": "k", "Blob": "{big}"}},
                          {{"EntityEventSequence": {b}, "ResourceName": "Property", "ResourceRecordKey": "k", "Blob": "{big}"}}]}}"#,
            a = 2 * accepted + 1,
            b = 2 * accepted + 2
        );
        let r = bridge.post("/webhooks/ingest", &body).await;
        if r.status() != 200 {
            break r;
        }
        accepted += 1;
        assert!(accepted < 200, "the cap was never reached");
    };
    assert!(accepted > 0, "the first pushes fit");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "7");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let body = refused.text().await.unwrap();
    assert!(
        !body.contains("SQLITE") && !body.contains("max_page"),
        "no internals: {body}"
    );

    let (events, _) = replay_all(&format!("{}/EntityEvent", bridge.base), TOKEN).await;
    assert_eq!(
        events.len(),
        2 * accepted,
        "all acknowledged events, none of the refused push"
    );
    let producer: Vec<i64> = events
        .iter()
        .map(|e| {
            e["@EntityBridge.SourceEntityEventSequence"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(producer, (1..=2 * accepted as i64).collect::<Vec<_>>());
    bridge.stop().await;

    let conn = rusqlite::Connection::open(setup.path("data/ingest.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}
