//! Counters, status and the probes: what the daemon is doing and whether it is ready.

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};

use super::{
    ApiError, AppState, Problem, engine,
    types::{EgressView, InterfaceStats, InterfaceView, RuleStats, Stats, Status, mode_name},
};

/// Packet counters by interface and verdict, and per block rule.
#[utoipa::path(get, path = "/v1/stats", responses((status = 200, body = Stats)))]
pub(super) async fn stats(State(state): State<Arc<AppState>>) -> Result<Json<Stats>, ApiError> {
    let engine = engine(&state).await?;
    let interfaces = engine
        .verdict_counts()?
        .into_iter()
        .map(|(a, packets)| InterfaceStats {
            iface: a.iface,
            ifindex: a.ifindex,
            mode: mode_name(a.mode),
            packets: packets
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        })
        .collect();
    let rules = engine
        .rule_counters()?
        .into_iter()
        .filter_map(|(id, c)| {
            let rule = engine.rule(id)?;
            Some(RuleStats {
                rule: id,
                list: rule.list.clone(),
                packets: c.packets,
                bytes: c.bytes,
            })
        })
        .collect();
    Ok(Json(Stats { interfaces, rules }))
}

/// Daemon status: version, readiness, interfaces and attach modes, rule counts.
#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = Status)))]
pub(super) async fn status(State(state): State<Arc<AppState>>) -> Result<Json<Status>, ApiError> {
    let engine = engine(&state).await?;
    let config = engine.datapath_config()?;
    Ok(Json(Status {
        version: state.version.to_string(),
        ready: state.ready.load(Ordering::Acquire),
        monitor: config.monitor != 0,
        interfaces: engine
            .attachments()
            .iter()
            .map(InterfaceView::from)
            .collect(),
        egress: state
            .events
            .egress_attachments()
            .iter()
            .map(EgressView::from)
            .collect(),
        rules: engine.rules().count(),
        map_entries: engine.applied().len(),
        management: engine
            .management()
            .iter()
            .map(ToString::to_string)
            .collect(),
        ipv4_lookup: engine.ipv4_lookup().as_str().to_string(),
        ipv6_lookup: engine.ipv6_lookup().as_str().to_string(),
        crowdsec: state.crowdsec.as_ref().map(|c| c.status(&engine)),
        kernel: state.kernel.clone(),
        syn_protection: state.syn.get().map(|syn| syn.status()).transpose()?,
    }))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, description = "alive", body = String)))]
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: every interface has the filter and the config rules are in the maps.
#[utoipa::path(get, path = "/readyz", security(()),
    responses((status = 200, description = "ready", body = String), (status = 503, body = Problem)))]
pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the XDP filter is not attached yet or the config rules are not applied",
        )
        .into_response()
    }
}
