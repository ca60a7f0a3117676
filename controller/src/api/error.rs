//! The API's one error type: [`ApiError`] answers `application/problem+json` ([`Problem`]),
//! one `From` per source error (engine, kernel maps, store, feeds). A client error's detail says
//! what to fix; a failure of the daemon answers a category and a request id, and
//! `log_server_errors` logs the cause under that id.

use axum::{
    extract::{MatchedPath, Request},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use tracing::error;
use utoipa::ToSchema;

use crate::{datapath::DatapathError, engine::EngineError, feeds::FeedError, store::StoreError};

/// A problem+json body (RFC 9457).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

/// One error type for every handler.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
    /// A failure of the daemon rather than of the request: logged, never sent.
    pub(crate) cause: Option<ServerErrorCause>,
}

/// What went wrong on the server side, under the id the client's answer names. Travels from
/// [`ApiError::into_response`] to [`log_server_errors`] in the response's extensions.
#[derive(Clone, Debug)]
pub(crate) struct ServerErrorCause {
    pub(crate) request_id: String,
    pub(crate) cause: String,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            cause: None,
        }
    }

    /// A failure of the daemon: the client gets `summary` and a request id, the log gets
    /// `cause` under the same id. Error text from SQLite, the kernel or the file system names
    /// paths, maps and errno values that are no business of an API client.
    pub fn server(
        status: StatusCode,
        summary: impl std::fmt::Display,
        cause: impl ToString,
    ) -> Self {
        let request_id = format!("{:08x}", rand::random::<u32>());
        Self {
            status,
            detail: format!("{summary}; the daemon's log has the cause (request id {request_id})"),
            cause: Some(ServerErrorCause {
                request_id,
                cause: cause.to_string(),
            }),
        }
    }

    /// A 500: something failed that no request can fix.
    pub fn internal(cause: impl ToString) -> Self {
        Self::server(StatusCode::INTERNAL_SERVER_ERROR, "internal error", cause)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            kind: "about:blank".into(),
            title: self.status.canonical_reason().unwrap_or("Error").into(),
            status: self.status.as_u16(),
            detail: self.detail,
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/problem+json".parse().expect("static"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        }
        let mut response = (
            self.status,
            headers,
            serde_json::to_string(&body).expect("serializable"),
        )
            .into_response();
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(cause);
        }
        response
    }
}

/// Logs the cause of every server-side failure once, at error level, with the route and the
/// request id its answer names.
pub(super) async fn log_server_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_string(),
        |p| p.as_str().to_string(),
    );
    let mut response = next.run(request).await;
    if let Some(ServerErrorCause { request_id, cause }) = response.extensions_mut().remove() {
        error!(
            %method,
            %route,
            status = response.status().as_u16(),
            %request_id,
            error = %cause,
            "API request failed"
        );
    }
    response
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::Datapath(err) => err.into(),
            EngineError::Store(err) => err.into(),
            EngineError::Invalid(_) => Self::new(StatusCode::BAD_REQUEST, err.to_string()),
            EngineError::LockOut(_) | EngineError::Conflict(_) => {
                Self::new(StatusCode::CONFLICT, err.to_string())
            }
            EngineError::NotFound(_) | EngineError::ListNotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, err.to_string())
            }
            EngineError::NotReady => Self::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
        }
    }
}

impl From<DatapathError> for ApiError {
    fn from(err: DatapathError) -> Self {
        match err {
            // The one server-side failure a client can act on (send fewer rules, or have the
            // capacity raised): its own text is the answer.
            DatapathError::Full { .. } => {
                Self::new(StatusCode::INSUFFICIENT_STORAGE, err.to_string())
            }
            err => Self::internal(err),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        Self::server(
            StatusCode::SERVICE_UNAVAILABLE,
            "the rule store cannot be read or written; the last applied rules stay in force",
            err,
        )
    }
}

impl From<FeedError> for ApiError {
    fn from(err: FeedError) -> Self {
        match err {
            FeedError::Unknown(_) => Self::new(StatusCode::NOT_FOUND, err.to_string()),
            FeedError::Refused { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, err.to_string())
            }
            // The upstream's answer or the transport error, for the URL the operator configured
            // (also shown as `last_error` by GET /v1/feeds).
            FeedError::Fetch { .. } => Self::new(StatusCode::BAD_GATEWAY, err.to_string()),
            FeedError::NotReady => Self::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
            FeedError::Store { ref feed, .. } => Self::server(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("feed {feed}: the rule store cannot be read or written"),
                err,
            ),
            FeedError::LastGood { ref feed, .. } => Self::server(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("feed {feed}: writing the last good copy failed"),
                err,
            ),
            // A full map is a 507 as for rules: the text says which map and what to do.
            FeedError::Apply {
                source: EngineError::Datapath(DatapathError::Full { .. }),
                ..
            } => Self::new(StatusCode::INSUFFICIENT_STORAGE, err.to_string()),
            FeedError::Apply { ref feed, .. } => Self::server(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "feed {feed}: applying to the kernel failed; the last good copy stays enforced"
                ),
                err,
            ),
        }
    }
}
