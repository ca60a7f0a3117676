//! The REST API in process (`api::app` through `tower::ServiceExt::oneshot`) with arbitrary
//! request bodies, against a real rules engine over an in-memory store and in-memory kernel
//! maps (`datapath::fake`). Never a 5xx; every error is problem+json with its status; every
//! rule created can be read back as it was answered and deleted.
//!
//! The first byte picks the operation: 0 add one rule, 1 add a batch, 2 delete by id (the rest
//! as the id), 3 list with the rest as the query string.
#![no_main]

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock, atomic::Ordering},
};

use axum::{
    body::Body,
    extract::connect_info::MockConnectInfo,
    http::{Request, StatusCode, header},
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::ServiceExt as _;
use xdpwall::{
    api::{
        AppState, app,
        types::{BatchResult, RuleView},
    },
    config::{ApiToken, StaticRule, TokenScope},
    datapath::fake::FakeMaps,
    engine::{Engine, config_rules},
    rules::{Action, normalize_cidr},
    store::Store,
};

const WRITE: &str = "write-token-0123456789";
const CLIENT: &str = "192.0.2.50:40000";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// A fresh daemon state per input (so every run is reproducible): one management address and
/// one config rule, as the API unit tests have.
fn state() -> Arc<AppState> {
    let (mut engine, _) = Engine::open(
        Box::new(FakeMaps::default()),
        Store::in_memory().expect("in-memory store"),
        Vec::new(),
        Vec::new(),
    )
    .expect("engine");
    let management = vec![normalize_cidr("198.51.100.10/32").unwrap()];
    let config = vec![(
        normalize_cidr("203.0.113.0/24").unwrap(),
        StaticRule {
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
        .expect("config rules");
    let state = AppState::new(vec![ApiToken {
        name: "ops".into(),
        scope: TokenScope::Write,
        secret: WRITE.into(),
    }]);
    *state.engine.try_lock().expect("unshared") = Some(engine);
    state.ready.store(true, Ordering::Release);
    Arc::new(state)
}

/// Sends one request; checks the answer is not a server error and that errors are problem+json.
async fn call(
    state: &Arc<AppState>,
    method: &str,
    uri: &str,
    body: Option<Vec<u8>>,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {WRITE}"));
    let request = match body {
        Some(b) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b)),
        None => request.body(Body::empty()),
    };
    let Ok(request) = request else {
        // Not a valid URI (the list query): nothing to send.
        return (StatusCode::BAD_REQUEST, Value::Null);
    };
    let client: SocketAddr = CLIENT.parse().unwrap();
    let response = app(state.clone())
        .layer(MockConnectInfo(client))
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 26)
        .await
        .expect("response body");
    let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert!(
        !status.is_server_error(),
        "{method} {uri}: {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    if !status.is_success() {
        assert_eq!(
            content_type, "application/problem+json",
            "{method} {uri}: {status}"
        );
        assert_eq!(json["status"], status.as_u16(), "{method} {uri}: {json}");
    }
    (status, json)
}

/// A rule the API answered with: canonical CIDR, readable as answered, deletable unless it
/// came from the config.
async fn check_rule(state: &Arc<AppState>, rule: &RuleView) {
    let net = normalize_cidr(&rule.cidr).expect("answered CIDR parses");
    assert_eq!(net.to_string(), rule.cidr, "answered CIDR is not canonical");
    let (status, json) = call(state, "GET", &format!("/v1/rules/{}", rule.id), None).await;
    assert_eq!(status, StatusCode::OK);
    let read: RuleView = serde_json::from_value(json).expect("a rule");
    assert_eq!(&read, rule);
}

async fn exercise(op: u8, rest: &[u8]) {
    let state = state();
    match op % 4 {
        0 => {
            let (status, json) = call(&state, "POST", "/v1/rules", Some(rest.to_vec())).await;
            if status.is_success() {
                let rule: RuleView = serde_json::from_value(json).expect("a rule");
                check_rule(&state, &rule).await;
                if status == StatusCode::CREATED {
                    let uri = format!("/v1/rules/{}", rule.id);
                    let (deleted, _) = call(&state, "DELETE", &uri, None).await;
                    assert_eq!(deleted, StatusCode::NO_CONTENT);
                    let (gone, _) = call(&state, "GET", &uri, None).await;
                    assert_eq!(gone, StatusCode::NOT_FOUND);
                }
            }
        }
        1 => {
            // With the rules echoed, so each stored rule can be checked.
            let uri = "/v1/rules/batch?echo=true";
            let (status, json) = call(&state, "POST", uri, Some(rest.to_vec())).await;
            if status.is_success() {
                let result: BatchResult = serde_json::from_value(json).expect("a batch result");
                let rules = result.rules.expect("rules echoed with echo=true");
                assert_eq!(result.created + result.existing, rules.len());
                for rule in &rules {
                    check_rule(&state, rule).await;
                }
            }
        }
        2 => {
            let id = String::from_utf8_lossy(rest);
            let uri = format!(
                "/v1/rules/{}",
                id.replace(|c: char| !c.is_ascii_graphic(), "")
            );
            call(&state, "DELETE", &uri, None).await;
        }
        _ => {
            let query: String = String::from_utf8_lossy(rest)
                .chars()
                .filter(|c| c.is_ascii_graphic() && *c != '#')
                .collect();
            call(&state, "GET", &format!("/v1/rules?{query}"), None).await;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&op, rest)) = data.split_first() else {
        return;
    };
    runtime().block_on(exercise(op, rest));
});
