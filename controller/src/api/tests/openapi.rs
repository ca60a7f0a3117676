//! The OpenAPI document against the route table.

use axum::http::Method;

use super::*;
use crate::api::{Access, routes};

/// Every route the router serves is in the OpenAPI document with its method and its access
/// (token or public), the document describes no route the router lacks, and every schema
/// it refers to is in it. `app` builds the router from `routes()` only, and each of those
/// routes answers (not the fallback's 404, not 405).
#[tokio::test]
async fn every_route_is_in_the_openapi_document() {
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "patch", "head", "options", "trace",
    ];
    let h = harness();
    let (status, _, doc) = h.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let mut documented = std::collections::BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if METHODS.contains(&method.as_str()) {
                let public = operation["security"] == json!([{}]);
                documented.insert((method.to_uppercase(), path.clone()), public);
            }
        }
    }
    let routed: std::collections::BTreeMap<_, _> = routes()
        .into_iter()
        .map(|r| {
            (
                (r.method.to_string(), r.path.to_string()),
                r.access == Access::Public,
            )
        })
        .collect();
    let undocumented: Vec<_> = routed
        .keys()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the OpenAPI document (give the handler #[utoipa::path] and list \
         it in ApiDoc's paths): {undocumented:?}"
    );
    let unrouted: Vec<_> = documented
        .keys()
        .filter(|k| !routed.contains_key(*k))
        .collect();
    assert!(unrouted.is_empty(), "documented, not routed: {unrouted:?}");
    assert_eq!(
        routed, documented,
        "public routes must be security(()), and only they"
    );
    // A query struct's fields default to `in: path` when utoipa cannot see the `Query`
    // extractor (ours are wrapped in `Result`): every path parameter must be in the path.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let name = parameter["name"].as_str().unwrap();
                if parameter["in"] == "path" {
                    assert!(
                        path.contains(&format!("{{{name}}}")),
                        "{method} {path}: {name} is documented as a path parameter; give \
                         its struct #[into_params(parameter_in = Query)]"
                    );
                }
            }
        }
    }

    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{r} is not in components.schemas"
        );
    }

    for route in routes() {
        let path = route
            .path
            .replace("{id}", "1")
            .replace("{name}", "no-such-feed");
        let body = (route.method == Method::POST).then(|| "{}".to_string());
        let (status, _, answer) = h
            .call(route.method.as_str(), &path, Some(WRITE), body)
            .await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert!(
            !answer.to_string().contains("no such endpoint"),
            "{} {path} is not routed: {answer}",
            route.method
        );
    }
}
