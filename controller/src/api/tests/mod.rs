//! The API driven in process: the router from [`super::app`] through `tower::ServiceExt::oneshot`,
//! on an engine over in-memory kernel maps. This file holds the harness and the token checks;
//! the other files the tests of one part each.

mod errors;
mod lists;
mod observe;
mod openapi;
mod rules;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use axum::{
    body::Body,
    extract::connect_info::MockConnectInfo,
    http::{StatusCode, header},
};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::{AppState, app};
use crate::{
    config::{ApiToken, TokenScope},
    datapath::fake::FakeMaps,
    engine::{Engine, config_rules},
    rules::{Action, normalize_cidr},
    store::Store,
};

const WRITE: &str = "write-token-0123456789";
const READ: &str = "read-token-0123456789";
const CLIENT: &str = "192.0.2.50";

struct Harness {
    state: Arc<AppState>,
}

fn harness_with(maps: FakeMaps, tweak: impl FnOnce(&mut AppState)) -> Harness {
    harness_on(maps, Store::in_memory().unwrap(), tweak)
}

/// [`harness_with`] on `store` (a file, for what only a second connection can do).
fn harness_on(maps: FakeMaps, store: Store, tweak: impl FnOnce(&mut AppState)) -> Harness {
    let (mut engine, _) = Engine::open(Box::new(maps), store, Vec::new(), Vec::new()).unwrap();
    let management = vec![normalize_cidr("198.51.100.10/32").unwrap()];
    let config = vec![(
        normalize_cidr("203.0.113.0/24").unwrap(),
        crate::engine::StaticRule {
            cidr: "203.0.113.0/24".into(),
            action: Action::Block,
            reason: "config".into(),
            list: "config".into(),
            proto: None,
            sport: None,
            dport: None,
            mode: None,
            rate: None,
            burst: None,
            per: None,
        },
    )];
    engine
        .sync_config(management.clone(), config_rules(&management, &config), 1000)
        .unwrap();
    let mut state = AppState::new(vec![
        ApiToken {
            name: "ops".into(),
            scope: TokenScope::Write,
            secret: WRITE.into(),
        },
        ApiToken {
            name: "grafana".into(),
            scope: TokenScope::Read,
            secret: READ.into(),
        },
    ]);
    tweak(&mut state);
    *state.engine.get_mut() = Some(engine);
    state.ready.store(true, Ordering::Release);
    Harness {
        state: Arc::new(state),
    }
}

fn harness() -> Harness {
    harness_with(FakeMaps::default(), |_| {})
}

impl Harness {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, String, Value) {
        self.call_typed(method, path, token, body.map(|b| ("application/json", b)))
            .await
    }

    /// [`Harness::call`] with a body of another content type.
    async fn call_typed(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> (StatusCode, String, Value) {
        let mut request = axum::http::Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some((content_type, b)) => request
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from(b)),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let client: SocketAddr = format!("{CLIENT}:40000").parse().unwrap();
        let response = app(self.state.clone())
            .layer(MockConnectInfo(client))
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            assert_eq!(content_type, "application/problem+json", "{status} {json}");
            assert_eq!(json["status"], status.as_u16(), "{json}");
        }
        (status, content_type, json)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (s, _, v) = self
            .call("POST", path, Some(WRITE), Some(body.to_string()))
            .await;
        (s, v)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (s, _, v) = self.call("GET", path, Some(READ), None).await;
        (s, v)
    }

    async fn block_entries(&self) -> usize {
        let guard = self.state.engine.lock().await;
        let engine = guard.as_ref().unwrap();
        engine.applied().block_v4.len() + engine.applied().block_v6.len()
    }
}

#[tokio::test]
async fn probes_need_no_token() {
    let h = harness();
    assert_eq!(
        h.call("GET", "/healthz", None, None).await.0,
        StatusCode::OK
    );
    assert_eq!(h.call("GET", "/readyz", None, None).await.0, StatusCode::OK);
    h.state.ready.store(false, Ordering::Release);
    let (status, _, body) = h.call("GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["detail"].as_str().unwrap().contains("not attached"));
}

#[tokio::test]
async fn tokens_are_required_and_scoped() {
    let h = harness();
    let body = json!({"cidr": "192.0.2.128/25"}).to_string();
    assert_eq!(
        h.call("GET", "/v1/rules", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _, problem) = h
        .call("GET", "/v1/rules", Some("not-a-valid-token-xx"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        !problem.to_string().contains("not-a-valid-token-xx"),
        "tokens are never echoed"
    );
    assert_eq!(
        h.call("POST", "/v1/rules", None, Some(body.clone()))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.call("POST", "/v1/rules", Some(READ), Some(body.clone()))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        h.call("DELETE", "/v1/rules/1", Some(READ), None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        h.call("GET", "/v1/rules", Some(READ), None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        h.call("POST", "/v1/rules", Some(WRITE), Some(body)).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        h.call("GET", "/metrics", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
}
