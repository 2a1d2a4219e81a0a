//! The OpenAPI document against the router it describes.

use std::collections::BTreeSet;

use serde_json::Value;

use super::*;

/// `(path, METHOD)` pairs.
type Operations = BTreeSet<(String, String)>;

/// What a router serves, read from its `Debug` output, as axum has no public way to list
/// routes: the path router's `node` maps route ids to paths, and each route's `allow_header`
/// is the `Allow` header axum answers 405 with, so it names exactly the methods served there.
/// Panics when the output no longer has that shape, so the walk cannot come back empty.
fn served(router: &Router<Arc<Platform>>) -> Operations {
    let debug = format!("{router:?}");
    let (path_router, _) = debug
        .split_once("fallback_router:")
        .expect("axum's Router Debug output changed: no fallback_router");
    let (routes, node) = path_router
        .split_once("node: Node { paths: {")
        .expect("axum's Router Debug output changed: no node paths");
    let route_id = |text: &str| -> (String, usize) {
        let end = text.find(')').expect("a route id");
        (text[..end].to_owned(), end)
    };
    let mut paths = std::collections::BTreeMap::new();
    for entry in node.split("RouteId(").skip(1) {
        let (id, end) = route_id(entry);
        let path = entry[end..]
            .strip_prefix("): \"")
            .and_then(|rest| rest.split_once('"'))
            .expect("a quoted path")
            .0;
        paths.insert(id, path.to_owned());
    }
    let mut served = Operations::new();
    for entry in routes.split("RouteId(").skip(1) {
        let (id, end) = route_id(entry);
        let allow = entry[end..]
            .split_once("allow_header: Bytes(b\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .unwrap_or_else(|| panic!("route {id} has no Allow header list: {entry}"))
            .0;
        let path = paths.get(&id).unwrap_or_else(|| panic!("route {id} has no path"));
        let methods: BTreeSet<&str> = allow.split(',').collect();
        for method in &methods {
            // axum answers HEAD with the GET handler; the document lists GET only.
            if *method == "HEAD" && methods.contains("GET") {
                continue;
            }
            served.insert((path.clone(), (*method).to_owned()));
        }
    }
    assert_eq!(
        served.iter().map(|(p, _)| p).collect::<BTreeSet<_>>().len(),
        paths.len(),
        "every path of the router must have been read with its methods"
    );
    served
}

fn documented(doc: &OpenApi) -> Operations {
    let mut documented = Operations::new();
    for (path, item) in &doc.paths.paths {
        let operations = [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("OPTIONS", &item.options),
            ("HEAD", &item.head),
            ("PATCH", &item.patch),
            ("TRACE", &item.trace),
        ];
        for (method, operation) in operations {
            if operation.is_some() {
                documented.insert((path.clone(), method.to_owned()));
            }
        }
    }
    documented
}

/// Adding a route with a plain `.route(…)`, which bypasses `#[utoipa::path]`, fails here.
#[test]
fn every_route_is_documented_and_every_documented_route_is_served() {
    let (router, doc) = routes().split_for_parts();
    let served = served(&router);
    let documented = documented(&doc);
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(unserved.is_empty(), "documented but not served: {unserved:?}");
    // The routes OSCAR clients call (shared/OSCAR-COMPAT.md) and Cloister's own.
    for (path, method) in [
        ("/health", "GET"),
        ("/openapi.json", "GET"),
        ("/system/info", "GET"),
        ("/system/config", "GET"),
        ("/system/config/", "GET"),
        ("/system/services", "GET"),
        ("/system/services", "POST"),
        ("/system/services", "PUT"),
        ("/system/services/{name}", "GET"),
        ("/system/services/{name}", "DELETE"),
        ("/system/logs/{svc}", "GET"),
        ("/system/logs/{svc}", "DELETE"),
        ("/system/logs/{svc}/{job}", "GET"),
        ("/system/logs/{svc}/{job}", "DELETE"),
        ("/system/logs/{svc}/{job}/sealed", "GET"),
        ("/system/buckets", "GET"),
        ("/system/buckets", "POST"),
        ("/system/buckets", "PUT"),
        ("/system/buckets/{bucket}", "GET"),
        ("/system/buckets/{bucket}", "DELETE"),
        ("/system/buckets/{bucket}/presign", "POST"),
        ("/job/{svc}", "POST"),
        ("/run/{svc}", "POST"),
    ] {
        assert!(
            served.contains(&(path.to_owned(), method.to_owned())),
            "{method} {path} is not served"
        );
    }
}

/// The walk itself must see a route that bypassed the documentation, or the test above
/// could not fail.
#[test]
fn the_route_walk_sees_undocumented_routes() {
    let (router, doc) = routes()
        .route("/system/undocumented", axum::routing::get(|| async { "" }))
        .split_for_parts();
    let undocumented: Vec<_> = served(&router).difference(&documented(&doc)).cloned().collect();
    assert_eq!(
        undocumented,
        [("/system/undocumented".to_owned(), "GET".to_owned())]
    );
}

fn document() -> Value {
    serde_json::from_str(openapi_json()).expect("the served document is JSON")
}

#[test]
fn the_served_document_is_the_generated_one() {
    assert_eq!(document(), serde_json::to_value(openapi()).unwrap());
    let doc = document();
    assert_eq!(doc["info"]["title"], "Cloister API");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
}

/// What the router enforces is what the document says: `/system/*` behind Basic auth (and
/// so possibly 401), `/job` and `/run` behind the service token, the rest open.
#[test]
fn every_operation_states_its_authentication() {
    let doc = document();
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes[BASIC_AUTH]["scheme"], "basic");
    assert_eq!(schemes[SERVICE_TOKEN]["scheme"], "bearer");
    let paths = doc["paths"].as_object().unwrap();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let security = &operation["security"];
            let expected = if path.starts_with("/system/") {
                Some(BASIC_AUTH)
            } else if path.starts_with("/job/") || path.starts_with("/run/") {
                Some(SERVICE_TOKEN)
            } else {
                None
            };
            match expected {
                Some(scheme) => {
                    assert_eq!(security, &serde_json::json!([{ scheme: [] }]), "{method} {path}");
                    assert!(
                        operation["responses"]["401"].is_object(),
                        "{method} {path} does not document 401"
                    );
                }
                None => assert!(security.is_null(), "{method} {path} claims {security}"),
            }
            assert!(
                operation["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{method} {path} has no summary"
            );
        }
    }
}

/// Every `$ref` in the document points at a schema it defines.
#[test]
fn every_schema_reference_resolves() {
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let doc = document();
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(found.len() > 10, "{found:?}");
    for reference in found {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {reference}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{reference} is not defined"
        );
    }
}

/// The request bodies keep what the server enforces: a service needs a name and a script,
/// bucket and presign bodies refuse unknown fields, `cpu` may be a number, presign takes what
/// oscar-python sends and answers what OSCAR answers.
#[test]
fn request_schemas_say_what_the_server_enforces() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let service = &schemas["Service"];
    let required: BTreeSet<&str> = service["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, BTreeSet::from(["name", "script"]));
    assert_eq!(service["properties"]["token"]["readOnly"], true);
    let cpu_types: Vec<&Value> = service["properties"]["cpu"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["type"])
        .collect();
    assert_eq!(cpu_types, ["string", "number"]);
    for name in ["Bucket", "Presign"] {
        assert_eq!(schemas[name]["additionalProperties"], false, "{name}");
    }
    assert_eq!(schemas["Presign"]["required"], serde_json::json!(["object_key"]));
    // What oscar-python 2.2.0 sends, and OSCAR's own name for the validity.
    let presign = &schemas["Presign"]["properties"];
    for field in ["expires", "expires_in"] {
        assert_eq!(presign[field]["minimum"], 0, "{field}");
        assert_eq!(presign[field]["maximum"], 604800, "{field}");
        assert_eq!(presign[field]["default"], 900, "{field}");
    }
    assert_eq!(presign["content_type"]["type"], "string");
    assert_eq!(presign["extra_headers"]["additionalProperties"]["type"], "string");
    // OSCAR's answer.
    let answer: BTreeSet<&str> = schemas["Presigned"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        answer,
        BTreeSet::from([
            "object_key",
            "operation",
            "method",
            "url",
            "expires_at",
            "headers"
        ])
    );
}
