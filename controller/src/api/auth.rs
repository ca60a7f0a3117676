//! The bearer-token check in front of every route that needs a token, and the [`Caller`] it
//! leaves in the request for audit rows and the lock-out guard.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    extract::{ConnectInfo, Request, State, connect_info::MockConnectInfo},
    http::{Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use subtle::ConstantTimeEq as _;

use super::{ApiError, AppState};
use crate::config::{ApiToken, TokenScope};

/// The authenticated caller, for audit rows and the lock-out guard.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub addr: Option<IpAddr>,
}

/// Bearer-token check. GET/HEAD need `read`, everything else `write`. Secrets are compared in
/// constant time and never logged or echoed.
pub(super) async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/metrics" && !state.metrics_auth {
        return next.run(request).await;
    }
    let needed = if matches!(*request.method(), Method::GET | Method::HEAD) {
        TokenScope::Read
    } else {
        TokenScope::Write
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token: send `Authorization: Bearer <token>`",
        )
        .into_response();
    };
    let mut matched: Option<&ApiToken> = None;
    for token in &state.tokens {
        // Every token is compared (no early exit), each in constant time.
        if bool::from(token.secret.as_bytes().ct_eq(presented.as_bytes())) {
            matched = Some(token);
        }
    }
    let Some(token) = matched else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "invalid bearer token").into_response();
    };
    if needed == TokenScope::Write && token.scope != TokenScope::Write {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "token {:?} has read scope; this request needs a write token",
                token.name
            ),
        )
        .into_response();
    }
    // The real server inserts ConnectInfo; in-process router tests insert MockConnectInfo.
    let addr = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .or_else(|| {
            request
                .extensions()
                .get::<MockConnectInfo<SocketAddr>>()
                .map(|m| m.0.ip())
        });
    request.extensions_mut().insert(Caller {
        name: token.name.clone(),
        addr,
    });
    next.run(request).await
}
