//! The OData documents a RESO client reads before it replays: the metadata document
//! (`{root}$metadata`, CSDL XML by default, CSDL JSON when asked) and the service document
//! (`{root}`), where `{root}` is the replay path's parent (`/` for `/EntityEvent`). Every
//! replay answer's `@odata.context` (`$metadata#EntityEvent`) resolves to the metadata
//! document.
//!
//! The `EntityEvent` entity type is described as RESO's Data Dictionary does
//! (`EntityEventSequence` `Edm.Int64` key, `ResourceName`, `ResourceRecordKey`,
//! `ResourceRecordUrl`), open (events carry `Data` and vendor fields), and the instance
//! annotations the bridge adds are declared as terms of the `EntityBridge` namespace. The same
//! bearer tokens as the replay resource are required.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::http::problem::Problem;
use crate::http::TokenSet;

/// The namespace of the RESO types.
pub const NAMESPACE: &str = "org.reso.metadata";

/// One `EntityEvent` property: name, EDM type, max length, nullable.
pub const EVENT_PROPERTIES: &[(&str, &str, Option<u32>, bool)] = &[
    ("EntityEventSequence", "Edm.Int64", None, false),
    ("ResourceName", "Edm.String", Some(255), false),
    ("ResourceRecordKey", "Edm.String", Some(255), false),
    ("ResourceRecordUrl", "Edm.String", Some(8000), true),
];

/// The instance annotations the bridge adds (term name, EDM type, what it says).
pub const BRIDGE_TERMS: &[(&str, &str, &str)] = &[
    ("SourceEntityEventSequence", "Edm.Int64", "The producer's own EntityEventSequence of the event (EntityEventSequence is the log position)."),
    ("EntityEventSource", "Edm.String", "The EntityEventSource header of the push that carried the event."),
    ("Deleted", "Edm.Boolean", "The record is gone: the event carries no Data."),
    ("OriginalEvent", "Edm.Untyped", "The producer's event as an events API served it, unchanged."),
];

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The CSDL XML metadata document; `records`: the served record resources and their keys.
pub fn csdl_xml(records: &[(String, String)]) -> String {
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <edmx:Edmx xmlns:edmx=\"http://docs.oasis-open.org/odata/ns/edmx\" Version=\"4.0\">\n\
         <edmx:DataServices>\n",
    );
    x.push_str(&format!(
        "<Schema xmlns=\"http://docs.oasis-open.org/odata/ns/edm\" Namespace=\"{NAMESPACE}\">\n\
         <EntityType Name=\"EntityEvent\" OpenType=\"true\">\n\
         <Key><PropertyRef Name=\"EntityEventSequence\"/></Key>\n"
    ));
    for (name, ty, max, nullable) in EVENT_PROPERTIES {
        x.push_str(&format!("<Property Name=\"{name}\" Type=\"{ty}\""));
        if let Some(m) = max {
            x.push_str(&format!(" MaxLength=\"{m}\""));
        }
        if !nullable {
            x.push_str(" Nullable=\"false\"");
        }
        x.push_str("/>\n");
    }
    x.push_str("</EntityType>\n");
    for (resource, key) in records {
        x.push_str(&format!(
            "<EntityType Name=\"{resource}\" OpenType=\"true\">\n<Key><PropertyRef Name=\"{key}\"/></Key>\n\
             <Property Name=\"{key}\" Type=\"Edm.String\" Nullable=\"false\"/>\n</EntityType>\n"
        ));
    }
    x.push_str(
        "<EntityContainer Name=\"Default\">\n\
         <EntitySet Name=\"EntityEvent\" EntityType=\"org.reso.metadata.EntityEvent\"/>\n",
    );
    for (resource, _) in records {
        x.push_str(&format!(
            "<EntitySet Name=\"{resource}\" EntityType=\"org.reso.metadata.{resource}\"/>\n"
        ));
    }
    x.push_str(
        "</EntityContainer>\n</Schema>\n\
         <Schema xmlns=\"http://docs.oasis-open.org/odata/ns/edm\" Namespace=\"EntityBridge\">\n",
    );
    for (name, ty, description) in BRIDGE_TERMS {
        x.push_str(&format!(
            "<Term Name=\"{name}\" Type=\"{ty}\"><Annotation Term=\"Org.OData.Core.V1.Description\" String=\"{}\"/></Term>\n",
            xml_escape(description)
        ));
    }
    x.push_str("</Schema>\n</edmx:DataServices>\n</edmx:Edmx>\n");
    x
}

/// The CSDL JSON metadata document (OData CSDL JSON 4.01, version 4.0 service).
pub fn csdl_json(records: &[(String, String)]) -> serde_json::Value {
    let mut event = serde_json::json!({
        "$Kind": "EntityType",
        "$OpenType": true,
        "$Key": ["EntityEventSequence"],
    });
    for (name, ty, max, nullable) in EVENT_PROPERTIES {
        let mut p = serde_json::Map::new();
        if *ty != "Edm.String" {
            p.insert("$Type".into(), (*ty).into());
        }
        if let Some(m) = max {
            p.insert("$MaxLength".into(), (*m).into());
        }
        if *nullable {
            p.insert("$Nullable".into(), true.into());
        }
        event[*name] = serde_json::Value::Object(p);
    }
    let mut terms = serde_json::Map::new();
    for (name, ty, description) in BRIDGE_TERMS {
        terms.insert(
            (*name).into(),
            serde_json::json!({"$Kind": "Term", "$Type": ty, "$Nullable": true, "@Org.OData.Core.V1.Description": description}),
        );
    }
    let mut doc = serde_json::json!({
        "$Version": "4.0",
        "$EntityContainer": "org.reso.metadata.Default",
        NAMESPACE: {
            "EntityEvent": event,
            "Default": {
                "$Kind": "EntityContainer",
                "EntityEvent": {"$Collection": true, "$Type": "org.reso.metadata.EntityEvent"},
            },
        },
        "EntityBridge": terms,
    });
    for (resource, key) in records {
        doc[NAMESPACE][resource] = serde_json::json!({
            "$Kind": "EntityType", "$OpenType": true, "$Key": [key], key: {},
        });
        doc[NAMESPACE]["Default"][resource] =
            serde_json::json!({"$Collection": true, "$Type": format!("{NAMESPACE}.{resource}")});
    }
    doc
}

/// The service root of a replay path: its parent, ending in `/`.
pub fn service_root(replay_path: &str) -> String {
    match replay_path.rfind('/') {
        Some(i) => replay_path[..=i].to_owned(),
        None => "/".to_owned(),
    }
}

/// The GET routes of one log on the webhook listener, as [`super::replay_router`] registers
/// them and as the start-up checks look for collisions (`app::routes`).
pub struct LogRoutes {
    /// The replay collection: `<replay_path>`.
    pub collection: String,
    /// One event: `<replay_path>({key}`.
    pub entity: String,
    /// Per record resource: the resource, its key field, one record `<root><Resource>({key}`
    /// and the collection `<root><Resource>`.
    pub records: Vec<RecordRoutes>,
    /// The service root (`/` for `/EntityEvent`); its documents are `<root>` and
    /// `<root>$metadata`, served by the first log of a root.
    pub root: String,
}

/// The routes of one record resource.
pub struct RecordRoutes {
    /// The resource (`Property`).
    pub resource: String,
    /// Its key field (`ListingKey`).
    pub key_field: String,
    /// One record: `<root><Resource>({key}`.
    pub one: String,
    /// The collection: `<root><Resource>`.
    pub many: String,
}

impl LogRoutes {
    /// The routes of the log `sink` writes.
    pub fn of(sink: &super::EmbeddedSinkConfig) -> Self {
        let path = sink.replay_path.clone();
        let root = service_root(&path);
        let served = (sink.records.as_ref())
            .map(|r| r.served())
            .unwrap_or_default();
        LogRoutes {
            entity: format!("{path}({{key}}"),
            records: (served.into_iter())
                .map(|(resource, key_field)| RecordRoutes {
                    one: format!("{root}{resource}({{key}}"),
                    many: format!("{root}{resource}"),
                    resource,
                    key_field,
                })
                .collect(),
            collection: path,
            root,
        }
    }

    /// The metadata document's path: `<root>$metadata`.
    pub fn metadata(&self) -> String {
        format!("{}$metadata", self.root)
    }
}

/// What the metadata and service documents of one root need.
pub struct Documents {
    /// The tokens that may read them (those of the log).
    pub tokens: TokenSet,
    /// The entity set's URL relative to the root (`EntityEvent`).
    pub entity_set: String,
    /// The record resources served and their key fields.
    pub records: Vec<(String, String)>,
}

/// The check of every replay-listener resource of a log (events, records): one of its tokens
/// (401 otherwise), then [`negotiate`].
pub fn admit(tokens: &TokenSet, headers: &HeaderMap) -> Result<bool, Problem> {
    if !tokens.verify(headers.get(header::AUTHORIZATION)) {
        return Err(unauthorized());
    }
    negotiate(headers)
}

/// The 401 of a request without a valid bearer token.
pub fn unauthorized() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "a valid `Authorization: Bearer <token>` header is required",
    )
}

/// What a replay request's OData headers ask for: `Ok(true)` for `odata.metadata=none` (no
/// `@odata.context`), `Ok(false)` for the default `minimal`. Refused: an `OData-MaxVersion`
/// below 4.0 (400), an `Accept` that allows no JSON or asks for `odata.metadata=full` (406).
pub fn negotiate(headers: &HeaderMap) -> Result<bool, Problem> {
    if let Some(max) = headers.get("OData-MaxVersion") {
        let max = max.to_str().ok().and_then(|v| v.trim().parse::<f64>().ok());
        if max.is_none_or(|v| v < 4.0) {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "`OData-MaxVersion` must allow 4.0: this service speaks OData 4.0",
            ));
        }
    }
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(false);
    };
    let accept = accept.to_ascii_lowercase();
    let mut json = None;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        if !matches!(media, "application/json" | "application/*" | "*/*") {
            continue;
        }
        let metadata = parts.find_map(|p| p.strip_prefix("odata.metadata="));
        match metadata {
            Some("none") => json = json.or(Some(true)),
            Some("minimal") | None => json = json.or(Some(false)),
            Some(_) => {}
        }
    }
    json.ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_ACCEPTABLE,
            "`Accept`: this resource answers application/json with odata.metadata=minimal or none",
        )
    })
}

/// A replay answer: JSON with the OData headers of `odata.metadata=minimal` or `none`.
pub fn odata_json(body: Vec<u8>, no_metadata: bool) -> Response {
    let content_type = if no_metadata {
        "application/json; odata.metadata=none"
    } else {
        "application/json; odata.metadata=minimal"
    };
    odata((StatusCode::OK, body).into_response(), content_type)
}

fn odata(mut response: Response, content_type: &'static str) -> Response {
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("OData-Version", HeaderValue::from_static("4.0"));
    response
}

/// The 401 for a request without one of the log's tokens.
fn refusal(docs: &Documents, headers: &HeaderMap) -> Option<Response> {
    if docs.tokens.verify(headers.get(header::AUTHORIZATION)) {
        return None;
    }
    Some(unauthorized().into_response())
}

/// Whether the client asked for JSON (`$format=json` or an `Accept` preferring it).
fn wants_json(headers: &HeaderMap, query: Option<&str>) -> bool {
    let format = query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .find(|(k, _)| k == "$format")
        .map(|(_, v)| v.to_ascii_lowercase());
    if let Some(f) = format {
        return f.starts_with("json") || f.starts_with("application/json");
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    accept.contains("application/json") && !accept.contains("application/xml")
}

/// `GET {root}$metadata`.
pub async fn metadata(
    State(docs): State<Arc<Documents>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if let Some(refused) = refusal(&docs, &headers) {
        return refused;
    }
    if wants_json(&headers, query.as_deref()) {
        // Invariant: a `serde_json::Value` built in memory always serializes.
        let body = serde_json::to_vec(&csdl_json(&docs.records)).expect("metadata serializes");
        return odata((StatusCode::OK, body).into_response(), "application/json");
    }
    odata(
        (StatusCode::OK, csdl_xml(&docs.records)).into_response(),
        "application/xml",
    )
}

/// `GET {root}`: the service document.
pub async fn service(State(docs): State<Arc<Documents>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&docs, &headers) {
        return refused;
    }
    let mut sets = vec![
        serde_json::json!({"name": "EntityEvent", "kind": "EntitySet", "url": docs.entity_set}),
    ];
    sets.extend(
        (docs.records.iter())
            .map(|(r, _)| serde_json::json!({"name": r, "kind": "EntitySet", "url": r})),
    );
    let body = serde_json::json!({"@odata.context": "$metadata", "value": sets});
    odata(
        (StatusCode::OK, axum::Json(body)).into_response(),
        "application/json; odata.metadata=minimal",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_of_replay_paths() {
        assert_eq!(service_root("/EntityEvent"), "/");
        assert_eq!(service_root("/mls/EntityEvent"), "/mls/");
    }

    #[test]
    fn the_json_document_names_the_key_and_the_terms() {
        let doc = csdl_json(&[("Property".into(), "ListingKey".into())]);
        assert_eq!(
            doc["org.reso.metadata"]["Property"]["$Key"][0],
            "ListingKey"
        );
        assert_eq!(
            doc["org.reso.metadata"]["EntityEvent"]["$Key"][0],
            "EntityEventSequence"
        );
        assert_eq!(
            doc["org.reso.metadata"]["EntityEvent"]["EntityEventSequence"]["$Type"],
            "Edm.Int64"
        );
        assert_eq!(
            doc["EntityBridge"]["SourceEntityEventSequence"]["$Kind"],
            "Term"
        );
        assert!(csdl_xml(&[]).contains("<PropertyRef Name=\"EntityEventSequence\"/>"));
    }
}
