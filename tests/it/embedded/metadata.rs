//! The replay resource's OData documents, read the way a RESO client starts: the service
//! document, then `$metadata` (checked with an XML parser against the fields events are served
//! with), CSDL JSON when asked, and `@odata.context` resolving to it.

use super::*;

async fn get(url: &str, token: Option<&str>, accept: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(a) = accept {
        request = request.header("accept", a);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reso_client_finds_the_service_and_metadata_documents() {
    let setup = Setup::new(&[]);
    setup.write_connector(
        "mls",
        &format!(
            "{}\n[sink]\ntype = \"embedded\"\n",
            setup.webhook_source("")
        ),
    );
    let bridge = setup.start().await;
    let push = r#"{"value":[{"EntityEventSequence":7,"ResourceName":"Property","ResourceRecordKey":"235021","ResourceRecordUrl":"https://x.example/Property('235021')"}]}"#;
    assert_eq!(bridge.post("/webhooks/mls", push).await.status(), 200);

    let service = get(&format!("{}/", bridge.base), Some(TOKEN), None).await;
    assert_eq!(service.status(), 200);
    assert_eq!(service.headers()["odata-version"], "4.0");
    let service: serde_json::Value = service.json().await.unwrap();
    assert_eq!(service["value"][0]["name"], "EntityEvent");
    assert_eq!(service["value"][0]["url"], "EntityEvent");

    let (_, page) = bridge.replay("").await;
    let context = page["@odata.context"].as_str().unwrap();
    let (document, fragment) = context.split_once('#').unwrap();
    let metadata_url = reqwest::Url::parse(&format!("{}/EntityEvent", bridge.base))
        .unwrap()
        .join(document)
        .unwrap();
    assert_eq!(fragment, "EntityEvent");
    assert_eq!(
        metadata_url.path(),
        "/$metadata",
        "@odata.context resolves to $metadata"
    );

    let unauthorized = get(metadata_url.as_str(), None, None).await;
    assert_eq!(unauthorized.status(), 401);
    let xml = get(metadata_url.as_str(), Some(TOKEN), None).await;
    assert_eq!(xml.status(), 200);
    assert!(xml.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/xml"));
    let xml = xml.text().await.unwrap();
    let doc = roxmltree::Document::parse(&xml).expect("the CSDL is well-formed XML");
    let edm = "http://docs.oasis-open.org/odata/ns/edm";
    let entity = doc
        .descendants()
        .find(|n| n.has_tag_name((edm, "EntityType")) && n.attribute("Name") == Some("EntityEvent"))
        .expect("EntityEvent entity type");
    assert_eq!(entity.attribute("OpenType"), Some("true"));
    let key = entity
        .descendants()
        .find(|n| n.has_tag_name((edm, "PropertyRef")))
        .and_then(|n| n.attribute("Name"));
    assert_eq!(key, Some("EntityEventSequence"));
    let properties: std::collections::BTreeMap<&str, &str> = entity
        .children()
        .filter(|n| n.has_tag_name((edm, "Property")))
        .map(|n| (n.attribute("Name").unwrap(), n.attribute("Type").unwrap()))
        .collect();
    assert_eq!(properties["EntityEventSequence"], "Edm.Int64");
    let terms: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name((edm, "Term")))
        .map(|n| n.attribute("Name").unwrap())
        .collect();
    // Every member a replayed event carries is a declared property or an EntityBridge term.
    let event = page["value"][0].as_object().unwrap();
    for member in event.keys() {
        let declared = properties.contains_key(member.as_str())
            || member
                .strip_prefix("@EntityBridge.")
                .is_some_and(|t| terms.contains(&t));
        assert!(declared, "`{member}` is not in $metadata: {xml}");
    }
    assert!(doc
        .descendants()
        .any(|n| n.has_tag_name((edm, "EntitySet")) && n.attribute("Name") == Some("EntityEvent")));

    let json = get(metadata_url.as_str(), Some(TOKEN), Some("application/json")).await;
    assert!(json.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let json: serde_json::Value = json.json().await.unwrap();
    assert_eq!(json["$EntityContainer"], "org.reso.metadata.Default");
    assert_eq!(
        json["org.reso.metadata"]["EntityEvent"]["$Key"][0],
        "EntityEventSequence"
    );
    let by_format = get(&format!("{metadata_url}?$format=json"), Some(TOKEN), None).await;
    assert!(by_format.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    bridge.stop().await;
}

/// The query pattern of a RESO replicator: the latest event (`desc`), an initial load following
/// `@odata.nextLink`, incremental `gt N`, events of a record, key access, `$select`, a count
/// alone, and the OData headers.
#[tokio::test(flavor = "multi_thread")]
async fn the_query_options_reso_clients_send() {
    let setup = Setup::new(&[]);
    setup.write_connector(
        "mls",
        &format!(
            "{}\n[sink]\ntype = \"embedded\"\nreplay_max_page_size = 4\n",
            setup.webhook_source("")
        ),
    );
    let bridge = setup.start().await;
    let events: Vec<String> = (1..=10)
        .map(|s| {
            let resource = if s % 3 == 0 { "Member" } else { "Property" };
            format!(
                r#"{{"EntityEventSequence":{s},"ResourceName":"{resource}","ResourceRecordKey":"K{}","ResourceRecordUrl":"https://x.example/{resource}('K{}')"}}"#,
                s % 4,
                s % 4
            )
        })
        .collect();
    let push = format!(r#"{{"value":[{}]}}"#, events.join(","));
    assert_eq!(bridge.post("/webhooks/mls", &push).await.status(), 200);
    let sequences = |page: &serde_json::Value| -> Vec<i64> {
        page["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["EntityEventSequence"].as_i64().unwrap())
            .collect()
    };

    // The newest event.
    let (status, latest) = bridge
        .replay("?$orderby=EntityEventSequence%20desc&$top=1")
        .await;
    assert_eq!(status, 200, "{latest}");
    assert_eq!(sequences(&latest), vec![10]);
    // Newest first, paged.
    let (events_desc, pages) = replay_all(
        &format!(
            "{}/EntityEvent?$orderby=EntityEventSequence%20desc",
            bridge.base
        ),
        TOKEN,
    )
    .await;
    let desc: Vec<i64> = events_desc
        .iter()
        .map(|e| e["EntityEventSequence"].as_i64().unwrap())
        .collect();
    assert_eq!(desc, (1..=10).rev().collect::<Vec<_>>());
    assert_eq!(pages, 3);
    // Initial load, then incremental.
    let (all, _) = replay_all(
        &format!(
            "{}/EntityEvent?$filter=EntityEventSequence%20ge%200",
            bridge.base
        ),
        TOKEN,
    )
    .await;
    assert_eq!(all.len(), 10);
    let (_, newer) = bridge.replay("?$filter=EntityEventSequence%20gt%208").await;
    assert_eq!(sequences(&newer), vec![9, 10]);
    // The events of one record, and of a set of resources.
    let (_, record) = bridge
        .replay("?$filter=ResourceRecordKey%20eq%20'K1'")
        .await;
    assert_eq!(sequences(&record), vec![1, 5, 9]);
    let (_, members) = bridge
        .replay("?$filter=ResourceName%20in%20('Member','Office')&$count=true")
        .await;
    assert_eq!(sequences(&members), vec![3, 6, 9]);
    assert_eq!(members["@odata.count"], 3);
    // A count alone.
    let (_, count) = bridge.replay("?$top=0&$count=true").await;
    assert_eq!(count["@odata.count"], 10);
    assert_eq!(count["value"].as_array().unwrap().len(), 0);
    // $select.
    let (_, selected) = bridge
        .replay("?$select=EntityEventSequence,ResourceRecordKey&$top=1")
        .await;
    let first = selected["value"][0].as_object().unwrap();
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        vec!["EntityEventSequence", "ResourceRecordKey"]
    );
    // Key access.
    let (status, one) = get_json(&format!("{}/EntityEvent(7)", bridge.base), Some(TOKEN)).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["EntityEventSequence"], 7);
    assert_eq!(one["@odata.context"], "$metadata#EntityEvent/$entity");
    let (status, _) = get_json(&format!("{}/EntityEvent(99)", bridge.base), Some(TOKEN)).await;
    assert_eq!(status, 404);
    let (status, _) = get_json(&format!("{}/EntityEvent(7)", bridge.base), None).await;
    assert_eq!(status, 401);
    // Headers.
    let none = get(
        &format!("{}/EntityEvent?$top=1", bridge.base),
        Some(TOKEN),
        Some("application/json;odata.metadata=none"),
    )
    .await;
    assert!(none.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("odata.metadata=none"));
    let none: serde_json::Value = none.json().await.unwrap();
    assert!(none.get("@odata.context").is_none());
    let xml_only = get(
        &format!("{}/EntityEvent", bridge.base),
        Some(TOKEN),
        Some("application/xml"),
    )
    .await;
    assert_eq!(xml_only.status(), 406);
    let old = reqwest::Client::new()
        .get(format!("{}/EntityEvent", bridge.base))
        .bearer_auth(TOKEN)
        .header("OData-MaxVersion", "3.0")
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 400);
    // Still refused, and named.
    let (status, refused) = bridge.replay("?$expand=Data").await;
    assert_eq!(status, 400);
    assert!(refused.to_string().contains("$expand"), "{refused}");
    bridge.stop().await;
}

/// Record resources: a replicator fetches the record each replayed event points at; the latest
/// record wins, a delete answers 404, `$metadata` describes the resource, and retention keeps
/// the latest record after its events expired.
#[tokio::test(flavor = "multi_thread")]
async fn a_replicator_fetches_the_records_replayed_events_point_at() {
    let setup = Setup::new(&[]);
    setup.write_connector(
        "mls",
        &format!(
            "{}\n[sink]\ntype = \"embedded\"\n[sink.records]\nresources = [\"Property\"]\n",
            setup.webhook_source("")
        ),
    );
    let bridge = setup.start().await;
    let push = r#"{"value":[
        {"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"A1","Data":{"ListingKey":"A1","ListPrice":100}},
        {"EntityEventSequence":2,"ResourceName":"Property","ResourceRecordKey":"B'2","Data":{"ListingKey":"B'2","ListPrice":200}},
        {"EntityEventSequence":3,"ResourceName":"Property","ResourceRecordKey":"A1","Data":{"ListingKey":"A1","ListPrice":150}},
        {"EntityEventSequence":4,"ResourceName":"Member","ResourceRecordKey":"M1","Data":{"MemberKey":"M1"}}]}"#;
    assert_eq!(bridge.post("/webhooks/mls", push).await.status(), 200);

    // The replicator: replay, then fetch each Property event's record where it points.
    let (_, page) = bridge.replay("").await;
    let mut fetched = Vec::new();
    for event in page["value"].as_array().unwrap() {
        if event["ResourceName"] != "Property" {
            assert!(
                event.get("ResourceRecordUrl").is_none(),
                "Member records are not served"
            );
            continue;
        }
        let url = event["ResourceRecordUrl"].as_str().unwrap();
        let absolute = reqwest::Url::parse(&format!("{}/EntityEvent", bridge.base))
            .unwrap()
            .join(url)
            .unwrap();
        let (status, record) = get_json(absolute.as_str(), Some(TOKEN)).await;
        assert_eq!(status, 200, "{url}: {record}");
        fetched.push((
            record["ListingKey"].as_str().unwrap().to_owned(),
            record["ListPrice"].as_i64().unwrap(),
        ));
        assert_eq!(record["@odata.context"], "$metadata#Property/$entity");
    }
    assert_eq!(
        fetched,
        vec![("A1".into(), 150), ("B'2".into(), 200), ("A1".into(), 150)],
        "the latest record of each key"
    );
    let (status, many) = get_json(
        &format!(
            "{}/Property?$filter=ListingKey%20in%20('A1','B''2','nope')",
            bridge.base
        ),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{many}");
    assert_eq!(many["value"].as_array().unwrap().len(), 2);
    let (status, _) = get_json(
        &format!("{}/Property?$orderby=ListPrice", bridge.base),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = get_json(&format!("{}/Property('A1')", bridge.base), None).await;
    assert_eq!(status, 401);

    // A delete removes the record.
    let delete = r#"{"value":[{"EntityEventSequence":5,"ResourceName":"Property","ResourceRecordKey":"A1","@EntityBridge.Deleted":true}]}"#;
    assert_eq!(bridge.post("/webhooks/mls", delete).await.status(), 200);
    let (status, _) = get_json(&format!("{}/Property('A1')", bridge.base), Some(TOKEN)).await;
    assert_eq!(status, 404);

    // $metadata and the service document know the resource.
    let xml = get(&format!("{}/$metadata", bridge.base), Some(TOKEN), None)
        .await
        .text()
        .await
        .unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let edm = "http://docs.oasis-open.org/odata/ns/edm";
    let property = doc
        .descendants()
        .find(|n| n.has_tag_name((edm, "EntityType")) && n.attribute("Name") == Some("Property"))
        .expect("Property entity type");
    let key = property
        .descendants()
        .find(|n| n.has_tag_name((edm, "PropertyRef")));
    assert_eq!(key.and_then(|k| k.attribute("Name")), Some("ListingKey"));
    let (_, service) = get_json(&format!("{}/", bridge.base), Some(TOKEN)).await;
    assert_eq!(service["value"][1]["name"], "Property");
    bridge.stop().await;
}
