//! Events acknowledged with 200 are in the log after a restart, byte-for-byte, and log
//! positions keep increasing across restarts.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_events_survive_a_restart_and_positions_keep_increasing() {
    let setup = Setup::new(&[]);
    setup.write_connector(
        "ingest",
        &format!(
            "{}\n[sink]\ntype = \"embedded\"\n",
            setup.webhook_source("")
        ),
    );
    let bridge = setup.start().await;
    let first = payload(&[(1101, "Property", "235021"), (1111, "Media", "ABC123")]);
    let r = bridge.post("/webhooks/ingest", &first).await;
    assert_eq!(r.status(), 200);
    let single = r#"{"@reso.context": "urn:reso:metadata:2.0:resource:entityevent",
        "EntityEventSequence": 1200, "ResourceName": "Showing", "ResourceRecordKey": "S-1",
        "Vendor_Field": {"kept": true}}"#;
    let r = bridge
        .post_with_source("/webhooks/ingest", single, "IDX Feed 123")
        .await;
    assert_eq!(r.status(), 200);
    bridge.stop().await;
    assert!(
        setup.path("data/ingest.db").is_file(),
        "the log is under data_dir"
    );

    let bridge = setup.start().await;
    let (status, body) = bridge.replay("").await;
    assert_eq!(status, 200, "{body}");
    let events = body["value"].as_array().unwrap();
    assert_eq!(sequences(events), vec![1, 2, 3]);
    assert_eq!(events[0]["@EntityBridge.SourceEntityEventSequence"], 1101);
    assert_eq!(events[0]["ResourceRecordKey"], "235021");
    assert_eq!(events[1]["ResourceName"], "Media");
    assert_eq!(events[2]["@EntityBridge.EntityEventSource"], "IDX Feed 123");
    assert_eq!(events[2]["Vendor_Field"]["kept"], true);
    assert!(
        events[2].get("@reso.context").is_none(),
        "the push envelope is not part of the event"
    );
    // Member values are the producer's bytes (odd spacing kept inside values).
    let (_, raw) = raw_replay(&bridge.base).await;
    assert!(
        raw.contains(r#""Data":{"Note": "e 1101",  "Spaced" : [1, 2]}"#),
        "{raw}"
    );

    let r = bridge
        .post("/webhooks/ingest", &payload(&[(1, "Property", "x")]))
        .await;
    assert_eq!(r.status(), 200);
    let (_, body) = bridge.replay("?$filter=EntityEventSequence gt 3").await;
    let events = body["value"].as_array().unwrap();
    assert_eq!(
        sequences(events),
        vec![4],
        "a lower producer sequence still gets a higher position"
    );
    assert_eq!(events[0]["@EntityBridge.SourceEntityEventSequence"], 1);
    bridge.stop().await;
}

async fn raw_replay(base: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!("{base}/EntityEvent"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

impl Bridge {
    /// POSTs with an `EntityEventSource` header.
    pub async fn post_with_source(
        &self,
        path: &str,
        body: &str,
        source: &str,
    ) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .header("EntityEventSource", source)
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }
}
