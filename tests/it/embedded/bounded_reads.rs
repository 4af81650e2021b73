//! Reads of the log over HTTP cost what the log allows, whatever the client repeats (issue 26,
//! items 2 and 5): record collections name each key once and stop at the byte budget with a
//! next link; replay pages are rendered inside their slot, off the async workers, so wide
//! reads do not hold up another connector's pushes; `$select` refuses repeated names.

use std::time::{Duration, Instant};

use super::{get_json, Setup, TOKEN};

/// A Property event of `key` whose `Data` holds about `bytes` bytes.
fn big_record(sequence: i64, key: &str, bytes: usize) -> String {
    format!(
        r#"{{"EntityEventSequence":{sequence},"ResourceName":"Property","ResourceRecordKey":"{key}","Data":{{"ListingKey":"{key}","Remarks":"{}"}}}}"#,
        "x".repeat(bytes)
    )
}

/// Regression: `$filter=ListingKey in ('big', … ×100)` on a 1 MiB record answered 100 MiB.
#[tokio::test(flavor = "multi_thread")]
async fn record_collections_name_each_key_once_and_page_at_the_byte_budget() {
    let setup = Setup::new(&[]);
    setup.write_connector(
        "mls",
        &format!(
            "{}\n[sink]\ntype = \"embedded\"\nreplay_max_page_bytes = 1500000\n\
             [sink.records]\nresources = [\"Property\"]\n",
            setup.webhook_source("")
        ),
    );
    let bridge = setup.start().await;
    let events = [
        big_record(1, "big", 1 << 20),
        big_record(2, "other", 1 << 20),
        big_record(3, "small", 10),
    ];
    let push = format!(r#"{{"value":[{}]}}"#, events.join(","));
    assert_eq!(bridge.post("/webhooks/mls", &push).await.status(), 200);

    let hundred = vec!["'big'"; 100].join(",");
    let url = format!("{}/Property?$filter=ListingKey in ({hundred})", bridge.base);
    let response = reqwest::Client::new()
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    assert!(
        body.len() < (1 << 20) + 4096,
        "one record, not one per repetition: {} bytes",
        body.len()
    );
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["value"].as_array().unwrap().len(), 1);
    assert!(page.get("@odata.nextLink").is_none());

    // Two 1 MiB records do not fit the 1.5 MB budget: the second comes by the next link.
    let url = format!(
        "{}/Property?$filter=ListingKey in ('big','other','small','big')",
        bridge.base
    );
    let (status, first) = get_json(&url, Some(TOKEN)).await;
    assert_eq!(status, 200);
    let keys = |page: &serde_json::Value| -> Vec<String> {
        (page["value"].as_array().unwrap().iter())
            .map(|r| r["ListingKey"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(keys(&first), ["big"]);
    let link = first["@odata.nextLink"].as_str().expect("a next link");
    assert!(link.starts_with("/Property?"), "{link}");
    let (status, second) = get_json(&format!("{}{link}", bridge.base), Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(keys(&second), ["other", "small"], "{link}");
    assert!(second.get("@odata.nextLink").is_none());

    // `$top` bounds the keys read.
    let (status, top) = get_json(&format!("{url}&$top=1&$skip=2"), Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(keys(&top), ["small"]);
    bridge.stop().await;
}

/// Regression: twelve reads of one wide event, rendered on the async workers after their slot
/// was released, delayed another connector's one-event push by seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_replays_do_not_hold_up_another_connectors_pushes() {
    let setup = Setup::new(&[]);
    setup.write_connector(
        "wide",
        &format!(
            "{}\n[sink]\ntype = \"embedded\"\nreplay_max_concurrent_requests = 12\n",
            setup.webhook_source("")
        ),
    );
    setup.write_connector(
        "other",
        &format!(
            "{}\n[sink]\ntype = \"embedded\"\nreplay_path = \"/other/EntityEvent\"\n",
            setup.webhook_source("")
        ),
    );
    let bridge = setup.start().await;
    // One event of 300 000 top-level vendor members.
    let members: Vec<String> = (0..300_000).map(|i| format!("\"F{i}\":{i}")).collect();
    let wide = format!(
        r#"{{"value":[{{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"W",{}}}]}}"#,
        members.join(",")
    );
    assert_eq!(bridge.post("/webhooks/wide", &wide).await.status(), 200);

    let readers: Vec<_> = (0..12)
        .map(|_| {
            let url = format!("{}/EntityEvent", bridge.base);
            // Only the status: parsing the answer here would load the same workers.
            let get = reqwest::Client::new().get(url).bearer_auth(TOKEN).send();
            tokio::spawn(async move { get.await.unwrap().status().as_u16() })
        })
        .collect();
    // Pushes to the other connector while the reads run: the slowest one counts.
    let mut slowest = Duration::ZERO;
    let mut sequence = 0;
    while readers.iter().any(|r| !r.is_finished()) {
        sequence += 1;
        let one = format!(
            r#"{{"value":[{{"EntityEventSequence":{sequence},"ResourceName":"Property","ResourceRecordKey":"K"}}]}}"#
        );
        let started = Instant::now();
        assert_eq!(bridge.post("/webhooks/other", &one).await.status(), 200);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for reader in readers {
        let status = reader.await.unwrap();
        assert!(status == 200 || status == 429, "{status}");
    }
    eprintln!("slowest of {sequence} pushes: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(1500),
        "a one-event push waited {slowest:?} behind replay rendering"
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn select_refuses_a_name_given_twice() {
    let setup = Setup::new(&[]);
    setup.write_connector(
        "mls",
        &format!(
            "{}\n[sink]\ntype = \"embedded\"\n",
            setup.webhook_source("")
        ),
    );
    let bridge = setup.start().await;
    let (status, body) = bridge.replay("?$select=Data,ResourceName,Data").await;
    assert_eq!(status, 400);
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("`Data` is named twice"),
        "{body}"
    );
    bridge.stop().await;
}
