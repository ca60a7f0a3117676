//! What happened: the audit log, flagged egress flows, sampled drops, and the Prometheus
//! metrics read from the kernel's counters at scrape time.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
    http::header,
    response::{IntoResponse, Response},
};

use super::{
    ApiError, AppState, engine,
    extract::query,
    types::{AuditList, AuditQuery, DropList, EventsQuery, FlowList},
};
use crate::metrics;

/// The audit log: who added, deleted or expired which rule, when and why, newest first.
#[utoipa::path(get, path = "/v1/audit", params(AuditQuery),
    responses((status = 200, body = AuditList)))]
pub(super) async fn audit(
    State(state): State<Arc<AppState>>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditList>, ApiError> {
    let limit = query(q)?.limit.unwrap_or(100).min(10_000);
    let engine = engine(&state).await?;
    let entries = engine.audit_log(limit)?;
    Ok(Json(AuditList { entries }))
}

/// Flagged egress flows, most recently active first: 5-tuple, reason (watch, port, scan),
/// rule, action, packets, bytes, first and last seen (counters from the kernel's flow table).
#[utoipa::path(get, path = "/v1/flows", params(EventsQuery),
    responses((status = 200, body = FlowList)))]
pub(super) async fn flows(
    State(state): State<Arc<AppState>>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<FlowList>, ApiError> {
    let limit = query(q)?.limit.unwrap_or(1000);
    // Feed names for watch flows of feeds (`rule = "feed:NAME"`).
    let feed_names: BTreeMap<u32, String> = {
        let guard = state.engine.lock().await;
        guard
            .as_ref()
            .map(|e| e.feeds().map(|f| (f.id, f.name.clone())).collect())
            .unwrap_or_default()
    };
    let events = state.events.clone();
    let list =
        tokio::task::spawn_blocking(move || events.flows(limit, |id| feed_names.get(&id).cloned()))
            .await
            .map_err(ApiError::internal)??;
    Ok(Json(list))
}

/// Sampled ingress drops (1 in `[events] drop_sample_rate`), newest first.
#[utoipa::path(get, path = "/v1/drops", params(EventsQuery),
    responses((status = 200, body = DropList)))]
pub(super) async fn drops(
    State(state): State<Arc<AppState>>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<DropList>, ApiError> {
    let limit = query(q)?.limit.unwrap_or(1000);
    Ok(Json(state.events.drops(limit)?))
}

/// Prometheus metrics (text format), read from the BPF counters at scrape time.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", body = String)))]
pub(super) async fn metrics_endpoint(
    State(state): State<Arc<AppState>>,
) -> Result<Response, ApiError> {
    let snapshot = {
        let engine = engine(&state).await?;
        let mut snapshot = metrics::Snapshot::gather(&engine, &state.feeds)?;
        snapshot.add_events(&engine, &state.events)?;
        if let Some(crowdsec) = &state.crowdsec {
            snapshot.add_crowdsec(&engine, crowdsec);
        }
        if let Some(syn) = state.syn.get() {
            snapshot.syn = Some(syn.maps.counters()?);
        }
        snapshot
    };
    let text = metrics::render(&snapshot).map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
