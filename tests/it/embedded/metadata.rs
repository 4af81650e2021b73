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
