//! `GET /EntityEvent`: filters, `$top` / `$skip` / `$count`, server-driven paging that returns
//! every event exactly once in order, 400 for what is not supported, bearer auth.

use super::*;

/// 25 events in 5 pushes; producer sequences run backwards and repeat, resources alternate.
async fn filled() -> (Setup, Bridge, Vec<(i64, String)>) {
    let setup = Setup::new(&[]);
    std::fs::write(setup.path("replay-token"), "replay-only-token\n").unwrap();
    setup.write_connector(
        "ingest",
        &format!(
            "{}\n[sink]\ntype = \"embedded\"\nreplay_max_page_size = 4\nreplay_tokens = [{{ file = {:?} }}]\n",
            setup.webhook_source(""),
            setup.path("replay-token").display().to_string()
        ),
    );
    let bridge = setup.start().await;
    let mut expected = Vec::new();
    for push in 0..5 {
        let events: Vec<(i64, &str, String)> = (0..5)
            .map(|j| {
                let i = push * 5 + j;
                let resource = if i % 3 == 0 { "Media" } else { "Property" };
                (1000 - (i / 2) * 3, resource, format!("K{i}"))
            })
            .collect();
        let refs: Vec<(i64, &str, &str)> = events
            .iter()
            .map(|(s, r, k)| (*s, *r, k.as_str()))
            .collect();
        let r = bridge.post("/webhooks/ingest", &payload(&refs)).await;
        assert_eq!(r.status(), 200);
        expected.extend(events.into_iter().map(|(s, r, _)| (s, r.to_owned())));
    }
    (setup, bridge, expected)
}

#[tokio::test(flavor = "multi_thread")]
async fn paging_returns_every_event_once_in_order() {
    let (_setup, bridge, expected) = filled().await;
    let url = format!("{}/EntityEvent?$count=true", bridge.base);
    let (first_status, first) = get_json(&url, Some(TOKEN)).await;
    assert_eq!(first_status, 200);
    assert_eq!(first["@odata.context"], "$metadata#EntityEvent");
    assert_eq!(first["@odata.count"], 25);
    assert_eq!(
        first["value"].as_array().unwrap().len(),
        4,
        "server page limit"
    );
    let next = first["@odata.nextLink"].as_str().unwrap();
    assert!(next.starts_with("/EntityEvent?"), "relative: {next}");
    let (next_status, second) = get_json(&format!("{}{next}", bridge.base), Some(TOKEN)).await;
    assert_eq!(next_status, 200);
    assert_eq!(second["@odata.count"], 25, "count is stable across pages");

    let (events, pages) = replay_all(&url, TOKEN).await;
    assert_eq!(pages, 7);
    assert_eq!(sequences(&events), (1..=25).collect::<Vec<_>>());
    let producer: Vec<(i64, String)> = events
        .iter()
        .map(|e| {
            (
                e["@EntityBridge.SourceEntityEventSequence"]
                    .as_i64()
                    .unwrap(),
                e["ResourceName"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(producer, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_top_skip_and_count() {
    let (_setup, bridge, expected) = filled().await;
    assert_eq!(
        sequences(&replay_all_query(&bridge, "$filter=EntityEventSequence gt 20").await),
        vec![21, 22, 23, 24, 25]
    );
    assert_eq!(
        sequences(&replay_all_query(&bridge, "$filter=EntityEventSequence ge 20").await),
        vec![20, 21, 22, 23, 24, 25]
    );
    let property: Vec<i64> = (1..=25)
        .filter(|p| expected[*p as usize - 1].1 == "Property")
        .collect();
    assert_eq!(
        sequences(&replay_all_query(&bridge, "$filter=ResourceName eq 'Property'").await),
        property
    );
    assert_eq!(
        sequences(
            &replay_all_query(&bridge, "$filter=EntityEventSequence gt 10 and ResourceName eq 'Media'&$orderby=EntityEventSequence asc")
                .await
        ),
        vec![13, 16, 19, 22, 25]
    );
    assert!(
        replay_all_query(&bridge, "$filter=ResourceName eq 'Member'")
            .await
            .is_empty()
    );

    let (_, body) = bridge.replay("?$top=3").await;
    assert_eq!(sequences(body["value"].as_array().unwrap()), vec![1, 2, 3]);
    assert!(
        body.get("@odata.nextLink").is_none(),
        "$top below the page size: one page"
    );
    // $top above the page size pages, and the pages together honour $top.
    assert_eq!(
        sequences(&replay_all_query(&bridge, "$top=10").await),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        sequences(&replay_all_query(&bridge, "$skip=20").await),
        vec![21, 22, 23, 24, 25]
    );
    assert_eq!(
        sequences(
            &replay_all_query(&bridge, "$skip=2&$top=5&$filter=ResourceName eq 'Property'").await
        ),
        property[2..7].to_vec()
    );
    let (_, body) = bridge
        .replay("?$count=true&$top=0&$filter=ResourceName%20eq%20'Media'")
        .await;
    assert_eq!(body["@odata.count"], 25 - property.len());
    assert!(body["value"].as_array().unwrap().is_empty());
}

async fn replay_all_query(bridge: &Bridge, query: &str) -> Vec<serde_json::Value> {
    let url = format!(
        "{}/EntityEvent?{}",
        bridge.base,
        query.replace(' ', "%20").replace('\'', "%27")
    );
    replay_all(&url, TOKEN).await.0
}

#[tokio::test(flavor = "multi_thread")]
async fn unsupported_queries_are_400_and_auth_is_required() {
    let (setup, bridge, _) = filled().await;
    for (query, option) in [
        ("$select=ListPrice", "$select"),
        ("$orderby=ModificationTimestamp%20desc", "$orderby"),
        (
            "$filter=EntityEventSequence%20gt%201%20or%20ResourceName%20eq%20'x'",
            "$filter",
        ),
        ("$filter=ModificationTimestamp%20gt%202024-01-01", "$filter"),
        ("$top=many", "$top"),
        ("$expand=Data", "$expand"),
    ] {
        let r = reqwest::Client::new()
            .get(format!("{}/EntityEvent?{query}", bridge.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["detail"].as_str().unwrap().contains(option),
            "{query}: {body}"
        );
    }
    let (status, _) = get_json(&format!("{}/EntityEvent", bridge.base), None).await;
    assert_eq!(status, 401);
    let (status, _) = get_json(&format!("{}/EntityEvent", bridge.base), Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, body) = get_json(
        &format!("{}/EntityEvent?$top=1", bridge.base),
        Some("replay-only-token"),
    )
    .await;
    assert_eq!(status, 200, "replay_tokens are accepted: {body}");
    // ... but they cannot push.
    let r = post(
        &format!("{}/webhooks/ingest", bridge.base),
        "replay-only-token",
        &payload(&[(1, "Property", "x")]),
    )
    .await;
    assert_eq!(r.status(), 401);
    let metrics = reqwest::get(format!("{}/metrics", bridge.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains("entity_bridge_replay_requests_total{connector=\"ingest\",status=\"400\"} 6"),
        "{metrics}"
    );
    assert!(metrics.contains("entity_bridge_embedded_log_events{connector=\"ingest\"} 25"));
    drop(setup);
}

/// Regression: `@odata.nextLink` echoed the request's `Host` (and `X-Forwarded-Proto`), so a
/// forged header made the bridge hand out links to another site.
#[tokio::test(flavor = "multi_thread")]
async fn next_link_never_comes_from_the_host_header() {
    let (setup, bridge, _) = filled().await;
    let r = reqwest::Client::new()
        .get(format!("{}/EntityEvent", bridge.base))
        .bearer_auth(TOKEN)
        .header("host", "evil.example")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let next = body["@odata.nextLink"].as_str().unwrap();
    assert!(next.starts_with("/EntityEvent?$skiptoken=4"), "{next}");
    bridge.stop().await;

    // With a public base URL the links are absolute, from the configuration.
    let bridge_toml = std::fs::read_to_string(setup.path("bridge.toml")).unwrap();
    std::fs::write(
        setup.path("bridge.toml"),
        bridge_toml.replace(
            "[http]\n",
            "[http]\npublic_base_url = \"https://bridge.example.com/reso/\"\n",
        ),
    )
    .unwrap();
    let bridge = setup.start().await;
    let (_, body) = bridge.replay("").await;
    let next = body["@odata.nextLink"].as_str().unwrap();
    assert!(
        next.starts_with("https://bridge.example.com/reso/EntityEvent?$skiptoken=4"),
        "{next}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_are_bounded_in_bytes_and_skip_is_capped() {
    let setup = Setup::new(&[]);
    setup.write_connector(
        "ingest",
        &format!(
            "{}\n[sink]\ntype = \"embedded\"\nreplay_max_page_bytes = 8192\nreplay_max_skip = 10\n",
            setup.webhook_source("")
        ),
    );
    let bridge = setup.start().await;
    let big = "x".repeat(3000);
    let body = format!(
        r#"{{"value":[{}]}}"#,
        (1..=9)
            .map(|i| format!(
                r#"{{"EntityEventSequence":{i},"ResourceName":"Property","ResourceRecordKey":"K{i}","Data":{{"Remarks":"{big}"}}}}"#
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(bridge.post("/webhooks/ingest", &body).await.status(), 200);
    let (_, first) = bridge.replay("").await;
    assert_eq!(
        first["value"].as_array().unwrap().len(),
        2,
        "about 3 KB per event, 8 KiB per page"
    );
    let (events, pages) = replay_all(&format!("{}/EntityEvent", bridge.base), TOKEN).await;
    assert_eq!(sequences(&events), (1..=9).collect::<Vec<_>>());
    assert_eq!(pages, 5);

    let (status, problem) = bridge.replay("?$skip=11").await;
    assert_eq!(status, 400);
    let detail = problem["errors"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("$skip") && detail.contains("at most 10"),
        "{problem}"
    );
    let (status, _) = bridge.replay("?$skip=10").await;
    assert_eq!(status, 200);
}

/// Regression: connectors on the default file shared one log and one replay resource, so
/// producer A's token read producer B's events.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_replays_only_its_own_connectors_log() {
    let setup = Setup::new(&[]);
    std::fs::write(setup.path("token-b"), "token-of-producer-b\n").unwrap();
    setup.write_connector(
        "a",
        &format!(
            "{}\n[sink]\ntype = \"embedded\"\n",
            setup.webhook_source("")
        ),
    );
    setup.write_connector(
        "b",
        &format!(
            "[source]\ntype = \"webhook\"\ntokens = [{{ file = {:?} }}]\n\
             [sink]\ntype = \"embedded\"\nreplay_path = \"/b/EntityEvent\"\n",
            setup.path("token-b").display().to_string()
        ),
    );
    let bridge = setup.start().await;
    assert_eq!(
        bridge
            .post("/webhooks/a", &payload(&[(1, "Property", "A1")]))
            .await
            .status(),
        200
    );
    let r = post(
        &format!("{}/webhooks/b", bridge.base),
        "token-of-producer-b",
        &payload(&[(1, "Property", "B1"), (2, "Property", "B2")]),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(setup.path("data/a.db").is_file() && setup.path("data/b.db").is_file());

    let a_log = format!("{}/EntityEvent", bridge.base);
    let b_log = format!("{}/b/EntityEvent", bridge.base);
    let (status, body) = get_json(&a_log, Some(TOKEN)).await;
    assert_eq!((status, body["value"].as_array().unwrap().len()), (200, 1));
    let (status, body) = get_json(&b_log, Some("token-of-producer-b")).await;
    assert_eq!((status, body["value"].as_array().unwrap().len()), (200, 2));
    assert_eq!(get_json(&b_log, Some(TOKEN)).await.0, 401);
    assert_eq!(get_json(&a_log, Some("token-of-producer-b")).await.0, 401);
}
