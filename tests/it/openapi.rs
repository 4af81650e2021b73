//! docs/openapi.yaml against the code: it is a valid OpenAPI 3.1 document (typed model, every
//! `$ref` resolves), it lists exactly the routes of `surface::routes()`, and those are
//! exactly what a running bridge's routers serve.

use std::collections::BTreeSet;
use std::path::PathBuf;

use entity_bridge::surface::{self, Listener};
use serde_json::Value;

use crate::common::TOKEN;

fn document() -> (Value, oas3::Spec) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let value: Value = serde_yaml_ng::from_str(&text).expect("openapi.yaml is YAML");
    let spec = oas3::from_json(serde_json::to_string(&value).unwrap())
        .expect("openapi.yaml fits the OpenAPI 3.1 model");
    (value, spec)
}

/// `(listener, METHOD, path)` of every operation; admin operations are the ones whose path
/// overrides `servers` with the admin port.
fn documented(spec: &oas3::Spec) -> BTreeSet<(Listener, String, String)> {
    let paths = spec.paths.as_ref().expect("paths");
    spec.operations()
        .map(|(path, method, _)| {
            let item = &paths[&path];
            let admin = item.servers.iter().any(|s| s.url.ends_with(":8081"));
            let listener = if admin {
                Listener::Admin
            } else {
                Listener::Webhook
            };
            (listener, method.as_str().to_owned(), path)
        })
        .collect()
}

fn served() -> BTreeSet<(Listener, String, String)> {
    surface::routes()
        .into_iter()
        .map(|r| (r.listener, r.method.as_str().to_owned(), r.path))
        .collect()
}

/// Every `$ref` in the document points at something that exists.
fn check_refs(root: &Value, node: &Value, problems: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                let pointer = r.strip_prefix('#').unwrap_or("<external>");
                if root.pointer(pointer).is_none() {
                    problems.push(format!("unresolved $ref {r}"));
                }
            }
            map.values().for_each(|v| check_refs(root, v, problems));
        }
        Value::Array(items) => items.iter().for_each(|v| check_refs(root, v, problems)),
        _ => {}
    }
}

#[test]
fn openapi_is_valid_3_1_and_lists_exactly_the_served_routes() {
    let (value, spec) = document();
    assert!(spec.openapi.starts_with("3.1."), "{}", spec.openapi);
    spec.validate_version().expect("supported OpenAPI version");
    let mut problems = Vec::new();
    check_refs(&value, &value, &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");

    let documented = documented(&spec);
    let served = served();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served, not in docs/openapi.yaml: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "in docs/openapi.yaml, not served: {stale:?}"
    );

    // Every operation's responses resolve, and error answers of the webhook listener are
    // problem+json; 429/503 carry Retry-After and 401 the Bearer challenge.
    for (path, method, op) in spec.operations() {
        let responses = op.responses.as_ref().expect("responses");
        for (status, response) in responses {
            let response = response
                .resolve(&spec)
                .unwrap_or_else(|e| panic!("{path} {status}: {e}"));
            let webhook_listener = !path.starts_with("/metrics")
                && !path.starts_with("/healthz")
                && !path.starts_with("/readyz");
            // The OAuth2 token endpoint answers errors as RFC 6749 §5.2 JSON, which its
            // clients (OAuth2 libraries) parse; not problem+json. 408 and 413 come from the
            // listener before the endpoint sees the request.
            let oauth = path.ends_with("/token");
            let listener_level = status == "408" || status == "413";
            if oauth && !status.starts_with('2') && !listener_level {
                assert!(
                    response.content.contains_key("application/json"),
                    "{method} {path} {status} is not an RFC 6749 error"
                );
            }
            if webhook_listener && !oauth && !status.starts_with('2') {
                assert!(
                    response.content.contains_key("application/problem+json"),
                    "{method} {path} {status} is not problem+json"
                );
            }
            if webhook_listener && (status == "429" || status == "503") {
                assert!(
                    response.headers.contains_key("Retry-After"),
                    "{path} {status}"
                );
            }
            if status == "401" {
                assert!(response.headers.contains_key("WWW-Authenticate"), "{path}");
            }
        }
    }
    let push = spec
        .operation(&http::Method::POST, "/webhooks/{connector}")
        .unwrap();
    let statuses: BTreeSet<&str> = push
        .responses
        .as_ref()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for want in ["200", "400", "401", "413", "415", "429", "503"] {
        assert!(statuses.contains(want), "push does not document {want}");
    }
}

#[test]
fn openapi_request_examples_are_accepted_by_the_parser() {
    let (value, _) = document();
    let examples = &value["paths"]["/webhooks/{connector}"]["post"]["requestBody"]["content"]
        ["application/json"]["examples"];
    let examples = examples.as_object().expect("push examples");
    assert!(!examples.is_empty());
    for (name, example) in examples {
        let body = bytes::Bytes::from(serde_json::to_vec(&example["value"]).unwrap());
        entity_bridge::event::parse_payload(&body, Default::default())
            .unwrap_or_else(|e| panic!("example {name} is refused: {e}"));
    }
}

/// The surface list is what the live routers serve: each route answers on its listener (not
/// the 404 fallback), a wrong method is 405, and an undocumented path is 404.
#[tokio::test(flavor = "multi_thread")]
async fn surface_routes_are_the_live_routes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    std::fs::write(
        dir.path().join("bridge.toml"),
        format!(
            "data_dir = {:?}\n[http]\nlisten_addr = \"127.0.0.1:0\"\n[admin]\nlisten_addr = \"127.0.0.1:0\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("connectors")).unwrap();
    // Default paths: /webhooks/it, its token endpoint and the replay resource at its default
    // path.
    std::fs::write(dir.path().join("key"), "k".repeat(40)).unwrap();
    std::fs::write(
        dir.path().join("connectors/it.toml"),
        format!(
            "[source]\ntype = \"webhook\"\ntokens = [{{ file = {token:?} }}]\n\
             [source.token_endpoint]\nsigning_key = {{ file = {key:?} }}\n\
             clients = [{{ client_id = \"c\", client_secret = {{ file = {key:?} }} }}]\n\
             [sink]\ntype = \"embedded\"\n[sink.records]\nresources = [\"Property\"]\n",
            token = dir.path().join("token").display().to_string(),
            key = dir.path().join("key").display().to_string(),
        ),
    )
    .unwrap();
    // A pull feed keeping its dead letters in its log: `/dead-letters/feed` (its producer
    // does not answer; that only leaves it degraded).
    std::fs::write(
        dir.path().join("connectors/feed.toml"),
        "readiness = \"report\"\n[source]\ntype = \"reso_poll\"\n\
         url = \"http://127.0.0.1:9/odata/EntityEvent\"\n[sink]\ntype = \"embedded\"\nreplay = false\n",
    )
    .unwrap();
    let (config, _) = entity_bridge::config::load(&[dir.path().to_path_buf()]).unwrap();
    let running = entity_bridge::app::start(config).await.unwrap();
    let client = reqwest::Client::new();
    for route in surface::routes() {
        let addr = match route.listener {
            Listener::Webhook => running.webhook_addr,
            Listener::Admin => running.admin_addr,
        };
        let url = format!(
            "http://{addr}{}",
            route
                .path
                .replace("/dead-letters/{connector}", "/dead-letters/feed")
                .replace("{connector}", "it")
                .replace("{Resource}", "Property")
        );
        let method = reqwest::Method::from_bytes(route.method.as_str().as_bytes()).unwrap();
        let answer = client.request(method.clone(), &url).send().await.unwrap();
        let status = answer.status().as_u16();
        let want = match route.listener {
            Listener::Webhook => 401, // served, and protected by the bearer token
            Listener::Admin => 200,
        };
        assert_eq!(
            status,
            want,
            "{method} {url}: {}",
            answer.text().await.unwrap()
        );
        let other = if method == reqwest::Method::GET {
            reqwest::Method::POST
        } else {
            reqwest::Method::GET
        };
        let wrong = client.request(other.clone(), &url).send().await.unwrap();
        assert_eq!(wrong.status(), 405, "{other} {url}");
    }
    for (addr, path) in [
        (running.webhook_addr, "/webhooks/nobody"),
        (running.webhook_addr, "/metrics"),
        (running.admin_addr, "/webhooks/it"),
        (running.admin_addr, "/EntityEvent"),
    ] {
        let answer = client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 404, "{path} on {addr}");
    }
    assert!(running.shutdown().await);
}
