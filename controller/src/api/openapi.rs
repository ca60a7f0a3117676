//! The OpenAPI document ([`ApiDoc`]), generated from the handlers' `#[utoipa::path]`
//! attributes; every route of the route table (`routes` in the module root) is in it, and a
//! test holds the two together. Its modifiers add the bearer scheme and the problem+json answers
//! every operation can give.

use axum::Json;
use utoipa::OpenApi;

// The handlers and the `__path_*` items utoipa generates beside them, by name: a handler named
// with its module (`rules::create_rule`) would get the module as an OpenAPI tag.
use super::{
    Problem,
    feeds::*,
    lists::*,
    observe::*,
    rules::*,
    status::*,
    types::{
        AuditEntry, AuditList, BatchBody, BatchResult, CrowdsecStatus, DropList, DropView,
        EgressView, FeatureState, FeedList, FeedView, FlowList, FlowView, InterfaceStats,
        InterfaceView, KernelReport, ListBody, ListIndex, ListReplaceResult, ListSummary, ListView,
        LookupResult, RuleBody, RuleList, RuleStats, RuleView, Stats, Status, SynStatus,
        SyncReport,
    },
};

#[derive(OpenApi)]
#[openapi(
    info(title = "xdpwall", description = "eBPF network-defense firewall API"),
    paths(
        create_rule, list_rules, get_rule, delete_rule, batch_rules, lookup, stats, status,
        replace_list, list_lists, get_list, delete_list,
        audit, list_feeds, sync_feed, flows, drops, metrics_endpoint, healthz, readyz, openapi
    ),
    components(schemas(RuleView, RuleBody, BatchBody, RuleList, BatchResult, LookupResult, Problem, Stats, Status,
        InterfaceStats, RuleStats, InterfaceView, EgressView,
        FeedView, FeedList, SyncReport, ListBody, ListIndex, ListReplaceResult, ListSummary, ListView,
        FlowView, FlowList, DropView, DropList, AuditList,
        AuditEntry, CrowdsecStatus, KernelReport, FeatureState, SynStatus)),
    modifiers(&BearerAuth, &ProblemResponses),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

/// Documents the error answers every operation can give, as `application/problem+json` with
/// the `Problem` schema: 401/403 (token), 500 (the daemon failed) and 503 (store or engine
/// unavailable) wherever a token is needed, 400/413/415/422 where a JSON body is read, 400 for
/// bad query or path parameters, 404 where a path names a resource. The handlers' own error responses get the problem+json
/// content type too. Checked against the real server by schemathesis (tests/tests/schema.rs).
struct ProblemResponses;

impl utoipa::Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{
            Content, Ref, RefOr, ResponseBuilder,
            path::{Operation, ParameterIn},
        };
        const PROBLEM: &str = "application/problem+json";
        let problem = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        PROBLEM,
                        Content::new(Some(Ref::from_schema_name("Problem"))),
                    )
                    .build(),
            )
        };
        for item in openapi.paths.paths.values_mut() {
            let operations: [&mut Option<Operation>; 4] = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                let public = is_public(operation);
                let responses = &mut operation.responses.responses;
                for (code, response) in responses.iter_mut() {
                    if code.starts_with('2') {
                        continue;
                    }
                    if let RefOr::T(response) = response
                        && let Some(content) = response.content.shift_remove("application/json")
                    {
                        response.content.insert(PROBLEM.to_string(), content);
                    }
                }
                let mut add = |code: &str, description: &str| {
                    responses
                        .entry(code.to_string())
                        .or_insert_with(|| problem(description));
                };
                if !public {
                    add("401", "no valid bearer token");
                    add("403", "the token's scope does not allow this");
                    add("503", "the rule store or the engine is not available");
                    add(
                        "500",
                        "the daemon failed, not the request: the detail gives a request id, the daemon's log the cause",
                    );
                }
                if operation.request_body.is_some() {
                    add("400", "the body is not valid JSON for this operation");
                    add("413", "the body or the batch is too large");
                    add("415", "the body is not application/json");
                    add("422", "the JSON does not have the operation's shape");
                }
                let parameters = operation.parameters.iter().flatten();
                for parameter in parameters {
                    match parameter.parameter_in {
                        ParameterIn::Path => {
                            add("400", "a path parameter is malformed");
                            add("404", "no such resource");
                        }
                        ParameterIn::Query => add("400", "a query parameter is malformed"),
                        _ => {}
                    }
                }
            }
        }
    }
}

/// An operation documented with `security(())`: no token needed.
fn is_public(operation: &utoipa::openapi::path::Operation) -> bool {
    operation.security.as_ref().is_some_and(|requirements| {
        requirements
            .iter()
            .all(|r| *r == utoipa::openapi::security::SecurityRequirement::default())
    })
}

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", security(()),
    responses((status = 200, description = "the OpenAPI 3.1 document", body = Object)))]
pub(super) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
