//! The rule handlers: add one or a batch, list, get, delete, and look up which rule decides an
//! address.

use std::sync::Arc;

use axum::{
    Extension, Json,
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
    http::StatusCode,
};

use super::{
    ApiError, ApiJson, AppState, Caller, Problem, engine,
    extract::{parse_id, parse_ip, path_segment, query},
    types::{
        BatchBody, BatchQuery, BatchResult, LookupQuery, LookupResult, RuleBody, RuleFilter,
        RuleList, RuleView,
    },
};
use crate::{
    engine::{Engine, EngineError, RuleRequest},
    rules::{RuleId, Verdict},
};

/// Add a rule (enforced in the kernel before the answer). Repeating an existing
/// cidr+action+list returns the existing rule with 200.
#[utoipa::path(post, path = "/v1/rules", request_body = RuleBody,
    responses(
        (status = 201, description = "created and enforced", body = RuleView),
        (status = 200, description = "already present", body = RuleView),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 409, description = "refused by the lock-out guard", body = Problem),
        (status = 413, body = Problem), (status = 507, description = "map full", body = Problem)))]
pub(super) async fn create_rule(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Result<ApiJson<RuleBody>, ApiError>,
) -> Result<(StatusCode, Json<RuleView>), ApiError> {
    let ApiJson(body) = body?;
    let mut engine = engine(&state).await?;
    let added = engine.add(
        &[body.into()],
        &caller.name,
        caller.addr,
        crate::store::unix_now(),
    )?;
    let added = added.into_iter().next().expect("one rule in, one out");
    let status = if added.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(stored_view(&engine, added.id))))
}

/// Add many rules, all or nothing: one bad entry fails the request (naming its index) and
/// changes nothing. Answers counts; `echo=true` adds the stored rules.
#[utoipa::path(post, path = "/v1/rules/batch", request_body = BatchBody, params(BatchQuery),
    responses((status = 200, body = BatchResult), (status = 400, body = Problem), (status = 409, body = Problem),
        (status = 413, body = Problem), (status = 507, body = Problem)))]
pub(super) async fn batch_rules(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    options: Result<Query<BatchQuery>, QueryRejection>,
    body: Result<ApiJson<BatchBody>, ApiError>,
) -> Result<Json<BatchResult>, ApiError> {
    let echo = query(options)?.echo == Some(true);
    let ApiJson(body) = body?;
    if body.rules.len() > state.max_batch {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} rules in one batch; the limit is {} ([api] max_batch)",
                body.rules.len(),
                state.max_batch
            ),
        ));
    }
    let requests: Vec<RuleRequest> = body.rules.into_iter().map(Into::into).collect();
    let mut engine = engine(&state).await?;
    let added = engine.add(
        &requests,
        &caller.name,
        caller.addr,
        crate::store::unix_now(),
    )?;
    let rules = echo.then(|| added.iter().map(|a| stored_view(&engine, a.id)).collect());
    drop(engine);
    let created = added.iter().filter(|a| a.created).count();
    Ok(Json(BatchResult {
        created,
        existing: added.len() - created,
        rules,
    }))
}

/// The view of a rule the engine just answered for (it holds it until the lock is released).
fn stored_view(engine: &Engine, id: RuleId) -> RuleView {
    RuleView::from(engine.rule(id).expect("an added rule is stored"))
}

/// List rules, optionally filtered.
#[utoipa::path(get, path = "/v1/rules", params(RuleFilter),
    responses((status = 200, body = RuleList), (status = 400, body = Problem), (status = 401, body = Problem)))]
pub(super) async fn list_rules(
    State(state): State<Arc<AppState>>,
    filter: Result<Query<RuleFilter>, QueryRejection>,
) -> Result<Json<RuleList>, ApiError> {
    let filter = query(filter)?;
    let ip = filter.ip.as_deref().map(parse_ip).transpose()?;
    let engine = engine(&state).await?;
    let rules = engine
        .rules()
        .filter(|r| filter.list.as_ref().is_none_or(|l| &r.list == l))
        .filter(|r| filter.action.is_none_or(|a| r.action == a))
        .filter(|r| ip.is_none_or(|ip| r.cidr.contains(&ip)))
        .map(RuleView::from)
        .collect();
    Ok(Json(RuleList { rules }))
}

/// One rule.
#[utoipa::path(get, path = "/v1/rules/{id}", params(("id" = u32, Path, description = "rule id")),
    responses((status = 200, body = RuleView), (status = 404, body = Problem)))]
pub(super) async fn get_rule(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RuleView>, ApiError> {
    let id = parse_id(&path_segment(id)?)?;
    let engine = engine(&state).await?;
    let rule = engine
        .rule(id)
        .ok_or_else(|| ApiError::from(EngineError::NotFound(id)))?;
    Ok(Json(RuleView::from(rule)))
}

/// Delete a rule (removed from the kernel before the answer). Config rules are refused.
#[utoipa::path(delete, path = "/v1/rules/{id}", params(("id" = u32, Path, description = "rule id")),
    responses((status = 204, description = "deleted"), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(super) async fn delete_rule(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&path_segment(id)?)?;
    let mut engine = engine(&state).await?;
    engine.delete(id, &caller.name, crate::store::unix_now())?;
    Ok(StatusCode::NO_CONTENT)
}

/// Which rule, if any, decides a source address (allow wins over block).
#[utoipa::path(get, path = "/v1/lookup", params(LookupQuery),
    responses((status = 200, body = LookupResult), (status = 400, body = Problem)))]
pub(super) async fn lookup(
    State(state): State<Arc<AppState>>,
    q: Result<Query<LookupQuery>, QueryRejection>,
) -> Result<Json<LookupResult>, ApiError> {
    let ip = parse_ip(&query(q)?.ip)?;
    let engine = engine(&state).await?;
    let (verdict, rule) = engine.lookup(ip);
    let scoped = match verdict {
        Verdict::Pass => engine.scoped_covering(ip).map(RuleView::from).collect(),
        Verdict::Allow | Verdict::Block => Vec::new(),
    };
    Ok(Json(LookupResult {
        ip: ip.to_string(),
        verdict,
        rule: rule.as_ref().map(RuleView::from),
        scoped,
    }))
}
