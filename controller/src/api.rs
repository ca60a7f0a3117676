//! The HTTP API: probes, stats and status (more under /v1 as the controller grows).
//!
//! `app(state)` builds the router so tests can drive it in process; `serve` binds it.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::engine::Engine;

/// What handlers share.
pub struct AppState {
    /// Set once every interface has the filter and the config rules are in the maps.
    pub ready: AtomicBool,
    /// `None` until the loader has attached; then the single owner of the maps.
    pub engine: Mutex<Option<Engine>>,
    pub version: &'static str,
}

impl AppState {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            ready: AtomicBool::new(false),
            engine: Mutex::new(None),
            version: env!("CARGO_PKG_VERSION"),
        })
    }
}

/// One error type for every handler, answered as `application/problem+json`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub title: &'static str,
    pub detail: String,
}

impl ApiError {
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            title: "Service Unavailable",
            detail: detail.into(),
        }
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            title: "Internal Server Error",
            detail: detail.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/stats", get(stats))
        .route("/v1/status", get(status))
        .with_state(state)
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the API address, with a message that says what to do when it is taken.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr}: {e} (another xdpwall running? set [api] listen or --api)"
        )
    })
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        ApiError::unavailable(
            "the XDP filter is not attached yet or the config rules are not applied",
        )
        .into_response()
    }
}

#[derive(Serialize)]
pub struct InterfaceStats {
    pub iface: String,
    pub ifindex: u32,
    pub mode: crate::loader::AttachedMode,
    pub packets: std::collections::BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
pub struct RuleStats {
    pub rule: u32,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Serialize)]
pub struct Stats {
    pub interfaces: Vec<InterfaceStats>,
    pub rules: Vec<RuleStats>,
}

async fn stats(State(state): State<Arc<AppState>>) -> Result<Json<Stats>, ApiError> {
    let guard = state.engine.lock().await;
    let engine = guard
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("the XDP filter is not loaded yet"))?;
    let interfaces = engine
        .verdict_counts()
        .map_err(|e| ApiError::internal(e.to_string()))?
        .into_iter()
        .map(|(a, packets)| InterfaceStats {
            iface: a.iface,
            ifindex: a.ifindex,
            mode: a.mode,
            packets,
        })
        .collect();
    let rules = engine
        .rule_counters()
        .map_err(|e| ApiError::internal(e.to_string()))?
        .into_iter()
        .map(|(rule, c)| RuleStats {
            rule,
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect();
    Ok(Json(Stats { interfaces, rules }))
}

#[derive(Serialize)]
pub struct Status {
    pub version: &'static str,
    pub ready: bool,
    pub monitor: bool,
    pub interfaces: Vec<crate::loader::Attachment>,
    pub rules: usize,
    pub map_entries: usize,
}

async fn status(State(state): State<Arc<AppState>>) -> Result<Json<Status>, ApiError> {
    let guard = state.engine.lock().await;
    let engine = guard
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("the XDP filter is not loaded yet"))?;
    let config = engine
        .datapath_config()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(Status {
        version: state.version,
        ready: state.ready.load(Ordering::Acquire),
        monitor: config.monitor != 0,
        interfaces: engine.attachments().to_vec(),
        rules: engine.rules().count(),
        map_entries: engine.applied().len(),
    }))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt as _;

    use super::*;

    async fn get(state: Arc<AppState>, path: &str) -> (StatusCode, String, String) {
        let response = app(state)
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn healthz_is_always_ok() {
        let (status, _, body) = get(AppState::new(), "/healthz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "ok\n");
    }

    #[tokio::test]
    async fn readyz_follows_the_ready_flag() {
        let state = AppState::new();
        let (status, content_type, body) = get(state.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(content_type, "application/problem+json");
        assert!(body.contains("not attached"), "{body}");
        state.ready.store(true, Ordering::Release);
        assert_eq!(get(state, "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn stats_before_load_is_503_problem() {
        let (status, content_type, body) = get(AppState::new(), "/v1/stats").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(content_type, "application/problem+json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], 503);
    }
}
