//! The HTTP API: rules CRUD, lookup, stats, status, probes, Prometheus metrics and the OpenAPI
//! document generated from these handlers.
//!
//! `app(state)` builds the router so tests can drive it in process; `serve` binds it. Handlers
//! never touch BPF maps: they ask the engine, the one owner. Every error is
//! `application/problem+json`. A client error's detail says what to fix; a failure of the
//! daemon (store, kernel maps, engine) answers with a category and a request id only, and the
//! cause goes to the daemon's log under that id ([`log_server_errors`]).
#![expect(
    unused_qualifications,
    reason = "utoipa's path macro expands to qualified paths"
)]

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Extension, Json, Router,
    extract::{
        ConnectInfo, DefaultBodyLimit, FromRequest, MatchedPath, Path, Query, Request, State,
        connect_info::MockConnectInfo,
        rejection::{JsonRejection, PathRejection},
    },
    http::{HeaderMap, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{MethodFilter, MethodRouter},
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use tokio::sync::Mutex;
use tracing::error;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::{
    config::{ApiToken, TokenScope},
    datapath::DatapathError,
    engine::{Engine, EngineError, RuleRequest},
    events::{DropList, DropView, Events, FlowList, FlowView},
    feeds::{FeedError, FeedManager, SyncReport},
    metrics,
    rules::{Action, Rule, RuleSource, Verdict, canonical_ip},
    store::{AuditEntry, StoreError},
};

/// What handlers share.
pub struct AppState {
    /// Set once every interface has the filter and the config rules are in the maps.
    pub ready: AtomicBool,
    /// `None` until the loader has attached; then the single owner of rules and maps.
    pub engine: Mutex<Option<Engine>>,
    pub tokens: Vec<ApiToken>,
    pub metrics_auth: bool,
    pub max_body_bytes: usize,
    pub max_batch: usize,
    pub feeds: Arc<FeedManager>,
    /// Flagged egress flows and sampled drops (ring-buffer readers fill it).
    pub events: Arc<Events>,
    /// The CrowdSec bouncer, when `[crowdsec]` is configured.
    pub crowdsec: Option<Arc<crate::crowdsec::CrowdsecBouncer>>,
    /// The running kernel's features and the fallbacks in use (probed at start).
    pub kernel: Option<crate::kernel::KernelReport>,
    pub version: &'static str,
}

impl AppState {
    pub fn new(tokens: Vec<ApiToken>) -> Self {
        Self {
            ready: AtomicBool::new(false),
            engine: Mutex::new(None),
            tokens,
            metrics_auth: true,
            max_body_bytes: 64 << 20,
            max_batch: 1_000_000,
            feeds: Arc::new(FeedManager::empty()),
            events: Arc::new(Events::new(Default::default())),
            crowdsec: None,
            kernel: None,
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// A problem+json body (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
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
    cause: Option<ServerErrorCause>,
}

/// What went wrong on the server side, under the id the client's answer names. Travels from
/// [`ApiError::into_response`] to [`log_server_errors`] in the response's extensions.
#[derive(Clone, Debug)]
struct ServerErrorCause {
    request_id: String,
    cause: String,
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
async fn log_server_errors(request: Request, next: Next) -> Response {
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
            EngineError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, err.to_string()),
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

/// `Json<T>` whose rejections (bad JSON, unknown fields, too large) are problem+json too.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let detail = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "request body is larger than [api] max_body_bytes: split it into smaller batches"
            .to_string()
    } else {
        format!("invalid JSON body: {}", rejection.body_text())
    };
    ApiError::new(status, detail)
}

/// The authenticated caller, for audit rows and the lock-out guard.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub addr: Option<IpAddr>,
}

/// Bearer-token check. GET/HEAD need `read`, everything else `write`. Secrets are compared in
/// constant time and never logged or echoed.
async fn authenticate(
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

#[derive(OpenApi)]
#[openapi(
    info(title = "xdpwall", description = "eBPF network-defense firewall API"),
    paths(
        create_rule, list_rules, get_rule, delete_rule, batch_rules, lookup, stats, status,
        audit, list_feeds, sync_feed, flows, drops, metrics_endpoint, healthz, readyz, openapi
    ),
    components(schemas(RuleView, RuleBody, BatchBody, RuleList, BatchResult, LookupResult, Problem, Stats, Status,
        FeedView, FeedList, SyncReport, FlowView, FlowList, DropView, DropList, AuditList,
        crate::store::AuditEntry,
        crate::crowdsec::CrowdsecStatus, crate::kernel::KernelReport, crate::kernel::FeatureState)),
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

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// No token (probes, the OpenAPI document).
    Public,
    /// A bearer token: read scope for GET, write scope for the rest ([`authenticate`]).
    Token,
}

/// One route: a method on a path, and its handler.
struct Route {
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "the handler routes by it; the OpenAPI test reads it"
        )
    )]
    method: Method,
    path: &'static str,
    access: Access,
    handler: MethodRouter<Arc<AppState>>,
}

fn route<H, T>(method: Method, path: &'static str, access: Access, handler: H) -> Route
where
    H: axum::handler::Handler<T, Arc<AppState>>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a method axum routes");
    Route {
        method,
        path,
        access,
        handler: axum::routing::on(filter, handler),
    }
}

/// Every route of the API. [`app`] builds the router from this list and nothing else, so the
/// test `every_route_is_in_the_openapi_document` holds the OpenAPI document ([`ApiDoc`])
/// against what the router serves: a route added here must be documented there.
fn routes() -> Vec<Route> {
    use Access::{Public, Token};
    vec![
        route(Method::GET, "/v1/rules", Token, list_rules),
        route(Method::POST, "/v1/rules", Token, create_rule),
        route(Method::POST, "/v1/rules/batch", Token, batch_rules),
        route(Method::GET, "/v1/rules/{id}", Token, get_rule),
        route(Method::DELETE, "/v1/rules/{id}", Token, delete_rule),
        route(Method::GET, "/v1/lookup", Token, lookup),
        route(Method::GET, "/v1/stats", Token, stats),
        route(Method::GET, "/v1/status", Token, status),
        route(Method::GET, "/v1/audit", Token, audit),
        route(Method::GET, "/v1/feeds", Token, list_feeds),
        route(Method::POST, "/v1/feeds/{name}/sync", Token, sync_feed),
        route(Method::GET, "/v1/flows", Token, flows),
        route(Method::GET, "/v1/drops", Token, drops),
        // Public when `[api] metrics_auth = false` ([`authenticate`] decides).
        route(Method::GET, "/metrics", Token, metrics_endpoint),
        route(Method::GET, "/healthz", Public, healthz),
        route(Method::GET, "/readyz", Public, readyz),
        route(Method::GET, "/v1/openapi.json", Public, openapi),
    ]
}

pub fn app(state: Arc<AppState>) -> Router {
    let (mut public, mut protected) = (Router::new(), Router::new());
    for Route {
        path,
        access,
        handler,
        ..
    } in routes()
    {
        // Two methods on one path merge into one method router.
        match access {
            Access::Public => public = public.route(path, handler),
            Access::Token => protected = protected.route(path, handler),
        }
    }
    let protected =
        protected.route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(protected)
        .merge(public)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint: see /v1/openapi.json",
            )
        })
        .layer(middleware::from_fn(log_server_errors))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .with_state(state)
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// [`serve`] over TLS: `listener` completes the handshake first.
pub async fn serve_tls(
    listener: crate::tls::TlsListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    // `tap_io` makes the listener's address type (SocketAddr) usable as connect info.
    axum::serve(
        listener.tap_io(|_| {}),
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
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

/// Locks the engine or answers 503 while the filter is still loading.
async fn engine(state: &AppState) -> Result<tokio::sync::MappedMutexGuard<'_, Engine>, ApiError> {
    let guard = state.engine.lock().await;
    tokio::sync::MutexGuard::try_map(guard, Option::as_mut).map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the XDP filter is not loaded yet; retry shortly",
        )
    })
}

fn rfc3339(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A rule as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct RuleView {
    pub id: u32,
    /// Normalised CIDR (host bits cleared, IPv4-mapped IPv6 as IPv4).
    pub cidr: String,
    pub action: Action,
    pub list: String,
    pub reason: String,
    pub source: RuleSource,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, or null for rules that never expire.
    pub expires_at: Option<String>,
}

impl From<&Rule> for RuleView {
    fn from(rule: &Rule) -> Self {
        Self {
            id: rule.id,
            cidr: rule.cidr.to_string(),
            action: rule.action,
            list: rule.list.clone(),
            reason: rule.reason.clone(),
            source: rule.source,
            created_at: rfc3339(rule.created_at),
            expires_at: rule.expires_at.map(rfc3339),
        }
    }
}

/// A rule to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    /// Address or CIDR, IPv4 or IPv6.
    #[schema(example = "198.51.100.0/24")]
    pub cidr: String,
    /// Default `block`.
    pub action: Option<Action>,
    /// Default `api`.
    pub list: Option<String>,
    /// Lifetime such as "90s", "15m", "4h", "7d"; default: forever.
    pub ttl: Option<String>,
    pub reason: Option<String>,
    /// Allow blocks the lock-out guard refuses (very broad prefixes, the caller's address).
    #[serde(default)]
    pub force: bool,
}

impl From<RuleBody> for RuleRequest {
    fn from(b: RuleBody) -> Self {
        Self {
            cidr: b.cidr,
            action: b.action,
            list: b.list,
            ttl: b.ttl,
            reason: b.reason,
            force: b.force,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    pub rules: Vec<RuleBody>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RuleList {
    pub rules: Vec<RuleView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    /// The stored rules, in request order (existing ones for repeats).
    pub rules: Vec<RuleView>,
    /// How many of them are new.
    pub created: usize,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RuleFilter {
    /// Only rules of this list.
    pub list: Option<String>,
    /// Only rules with this action.
    pub action: Option<Action>,
    /// Only rules whose CIDR contains this address.
    pub ip: Option<String>,
}

fn parse_ip(text: &str) -> Result<IpAddr, ApiError> {
    text.trim()
        .parse::<IpAddr>()
        .map(canonical_ip)
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{text:?} is not an IPv4 or IPv6 address"),
            )
        })
}

fn query<T: serde::de::DeserializeOwned>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(v)| v).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid query: {}", e.body_text()),
        )
    })
}

/// Add a rule (enforced in the kernel before the answer). Repeating an existing
/// cidr+action+list returns the existing rule with 200.
#[utoipa::path(post, path = "/v1/rules", request_body = RuleBody,
    responses(
        (status = 201, description = "created and enforced", body = RuleView),
        (status = 200, description = "already present", body = RuleView),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 409, description = "refused by the lock-out guard", body = Problem),
        (status = 413, body = Problem), (status = 507, description = "map full", body = Problem)))]
async fn create_rule(
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
    Ok((status, Json(RuleView::from(&added.rule))))
}

/// Add many rules, all or nothing: one bad entry fails the request (naming its index) and
/// changes nothing.
#[utoipa::path(post, path = "/v1/rules/batch", request_body = BatchBody,
    responses((status = 200, body = BatchResult), (status = 400, body = Problem), (status = 409, body = Problem),
        (status = 413, body = Problem), (status = 507, body = Problem)))]
async fn batch_rules(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Result<ApiJson<BatchBody>, ApiError>,
) -> Result<Json<BatchResult>, ApiError> {
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
    Ok(Json(BatchResult {
        created: added.iter().filter(|a| a.created).count(),
        rules: added.iter().map(|a| RuleView::from(&a.rule)).collect(),
    }))
}

/// List rules, optionally filtered.
#[utoipa::path(get, path = "/v1/rules", params(RuleFilter),
    responses((status = 200, body = RuleList), (status = 400, body = Problem), (status = 401, body = Problem)))]
async fn list_rules(
    State(state): State<Arc<AppState>>,
    filter: Result<Query<RuleFilter>, axum::extract::rejection::QueryRejection>,
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
async fn get_rule(
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

/// The `{id}` or `{name}` of a path; axum's own rejection (e.g. a segment that percent-decodes to
/// invalid UTF-8) would answer text/plain, every other error is problem+json.
fn path_segment(segment: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    segment.map(|Path(s)| s).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid path: {} (a path segment must be UTF-8 once percent-decoded)",
                e.body_text()
            ),
        )
    })
}

fn parse_id(id: &str) -> Result<u32, ApiError> {
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a rule id (a positive integer)"),
        )
    })
}

/// Delete a rule (removed from the kernel before the answer). Config rules are refused.
#[utoipa::path(delete, path = "/v1/rules/{id}", params(("id" = u32, Path, description = "rule id")),
    responses((status = 204, description = "deleted"), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn delete_rule(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&path_segment(id)?)?;
    let mut engine = engine(&state).await?;
    engine.delete(id, &caller.name, crate::store::unix_now())?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LookupQuery {
    /// IPv4 or IPv6 address.
    pub ip: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LookupResult {
    pub ip: String,
    pub verdict: Verdict,
    pub rule: Option<RuleView>,
}

/// Which rule, if any, decides a source address (allow wins over block).
#[utoipa::path(get, path = "/v1/lookup", params(LookupQuery),
    responses((status = 200, body = LookupResult), (status = 400, body = Problem)))]
async fn lookup(
    State(state): State<Arc<AppState>>,
    q: Result<Query<LookupQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<LookupResult>, ApiError> {
    let ip = parse_ip(&query(q)?.ip)?;
    let engine = engine(&state).await?;
    let (verdict, rule) = engine.lookup(ip);
    Ok(Json(LookupResult {
        ip: ip.to_string(),
        verdict,
        rule: rule.as_ref().map(RuleView::from),
    }))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct InterfaceStats {
    pub iface: String,
    pub ifindex: u32,
    pub mode: String,
    /// Packets by verdict: pass, allowed, dropped, would_drop, malformed, non_ip.
    pub packets: std::collections::BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RuleStats {
    pub rule: u32,
    pub list: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Stats {
    pub interfaces: Vec<InterfaceStats>,
    pub rules: Vec<RuleStats>,
}

/// Packet counters by interface and verdict, and per block rule.
#[utoipa::path(get, path = "/v1/stats", responses((status = 200, body = Stats)))]
async fn stats(State(state): State<Arc<AppState>>) -> Result<Json<Stats>, ApiError> {
    let engine = engine(&state).await?;
    let interfaces = engine
        .verdict_counts()?
        .into_iter()
        .map(|(a, packets)| InterfaceStats {
            iface: a.iface,
            ifindex: a.ifindex,
            mode: serde_json::to_value(a.mode)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
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

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Status {
    pub version: String,
    pub ready: bool,
    pub monitor: bool,
    #[schema(value_type = Vec<Object>)]
    pub interfaces: Vec<serde_json::Value>,
    /// Interfaces the TC egress flagger is attached to: {"iface","reused","attach"} (`attach`:
    /// "tcx" or "netlink").
    #[schema(value_type = Vec<Object>)]
    pub egress: Vec<serde_json::Value>,
    pub rules: usize,
    pub map_entries: usize,
    pub management: Vec<String>,
    /// IPv4 lookup engine in use: "lpm" or "dir24".
    pub ipv4_lookup: String,
    /// IPv6 lookup engine in use: "lpm" or "hash".
    pub ipv6_lookup: String,
    /// The CrowdSec bouncer's state; absent without `[crowdsec]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crowdsec: Option<crate::crowdsec::CrowdsecStatus>,
    /// The running kernel (`uname -r`) and, per kernel feature xdpwall uses, whether it is
    /// there and which fallback is in use without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<crate::kernel::KernelReport>,
}

/// Daemon status: version, readiness, interfaces and attach modes, rule counts.
#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = Status)))]
async fn status(State(state): State<Arc<AppState>>) -> Result<Json<Status>, ApiError> {
    let engine = engine(&state).await?;
    let config = engine.datapath_config()?;
    Ok(Json(Status {
        version: state.version.to_string(),
        ready: state.ready.load(Ordering::Acquire),
        monitor: config.monitor != 0,
        interfaces: engine
            .attachments()
            .iter()
            .map(|a| serde_json::to_value(a).expect("serializable"))
            .collect(),
        egress: state
            .events
            .egress_attachments()
            .iter()
            .map(|a| serde_json::to_value(a).expect("serializable"))
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
    }))
}

/// A configured feed and its state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedView {
    pub name: String,
    pub url: String,
    pub format: String,
    pub action: Action,
    /// Seconds between fetches.
    pub interval: u64,
    /// The provider's minimum seconds between fetches.
    pub min_interval: u64,
    /// Entries enforced (last good copy, aggregated).
    pub entries: usize,
    pub last_attempt: Option<String>,
    pub last_success: Option<String>,
    pub etag: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedList {
    pub feeds: Vec<FeedView>,
}

/// Configured feeds with entries, last attempt and success, ETag and last error.
#[utoipa::path(get, path = "/v1/feeds", responses((status = 200, body = FeedList)))]
async fn list_feeds(State(state): State<Arc<AppState>>) -> Result<Json<FeedList>, ApiError> {
    let engine = engine(&state).await?;
    let mut feeds = Vec::new();
    for feed in state.feeds.feeds() {
        let s = engine.store().feed_state(&feed.name)?;
        feeds.push(FeedView {
            name: feed.name.clone(),
            url: feed.url.clone(),
            format: feed.format.to_string(),
            action: feed.action,
            interval: feed.interval.as_secs(),
            min_interval: feed.min_interval.as_secs(),
            entries: engine.feed(&feed.name).map_or(0, |f| f.entries.len()),
            last_attempt: s.last_attempt.map(rfc3339),
            last_success: s.last_success.map(rfc3339),
            etag: s.etag,
            last_error: s.last_error,
        });
    }
    Ok(Json(FeedList { feeds }))
}

/// Fetch and apply one feed now (for cron). Refused or failed fetches keep the last good copy
/// enforced and answer 422 or 502 with the reason; a feed the maps cannot hold, 507.
#[utoipa::path(post, path = "/v1/feeds/{name}/sync", params(("name" = String, Path, description = "feed name")),
    responses((status = 200, body = SyncReport), (status = 404, body = Problem), (status = 422, body = Problem),
        (status = 502, body = Problem), (status = 507, description = "map full", body = Problem)))]
async fn sync_feed(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<SyncReport>, ApiError> {
    let name = path_segment(name)?;
    let report = state
        .feeds
        .sync(&state.engine, &name, crate::store::unix_now())
        .await?;
    Ok(Json(report))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Most entries to return (default 100, at most 10000).
    limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
}

/// The audit log: who added, deleted or expired which rule, when and why, newest first.
#[utoipa::path(get, path = "/v1/audit", params(AuditQuery),
    responses((status = 200, body = AuditList)))]
async fn audit(
    State(state): State<Arc<AppState>>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditList>, ApiError> {
    let limit = query(q)?.limit.unwrap_or(100).min(10_000);
    let engine = engine(&state).await?;
    let entries = engine.audit_log(limit)?;
    Ok(Json(AuditList { entries }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Most entries to return (default 1000).
    limit: Option<usize>,
}

/// Flagged egress flows, most recently active first: 5-tuple, reason (watch, port, scan),
/// rule, action, packets, bytes, first and last seen (counters from the kernel's flow table).
#[utoipa::path(get, path = "/v1/flows", params(EventsQuery),
    responses((status = 200, body = FlowList)))]
async fn flows(
    State(state): State<Arc<AppState>>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<FlowList>, ApiError> {
    let limit = query(q)?.limit.unwrap_or(1000);
    // Feed names for watch flows of feeds (`rule = "feed:NAME"`).
    let feed_names: std::collections::BTreeMap<u32, String> = {
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
async fn drops(
    State(state): State<Arc<AppState>>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DropList>, ApiError> {
    let limit = query(q)?.limit.unwrap_or(1000);
    Ok(Json(state.events.drops(limit)?))
}

/// Prometheus metrics (text format), read from the BPF counters at scrape time.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", body = String)))]
async fn metrics_endpoint(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let snapshot = {
        let engine = engine(&state).await?;
        let mut snapshot = metrics::Snapshot::gather(&engine, &state.feeds)?;
        snapshot.add_events(&engine, &state.events)?;
        if let Some(crowdsec) = &state.crowdsec {
            snapshot.add_crowdsec(&engine, crowdsec);
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

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, description = "alive", body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: every interface has the filter and the config rules are in the maps.
#[utoipa::path(get, path = "/readyz", security(()),
    responses((status = 200, description = "ready", body = String), (status = 503, body = Problem)))]
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
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

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", security(()),
    responses((status = 200, description = "the OpenAPI 3.1 document", body = Object)))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use serde_json::{Value, json};
    use tower::ServiceExt as _;

    use super::*;
    use crate::{
        datapath::fake::FakeMaps, engine::config_rules, rules::normalize_cidr, store::Store,
    };

    const WRITE: &str = "write-token-0123456789";
    const READ: &str = "read-token-0123456789";
    const CLIENT: &str = "192.0.2.50";

    struct Harness {
        state: Arc<AppState>,
    }

    fn harness_with(maps: FakeMaps, tweak: impl FnOnce(&mut AppState)) -> Harness {
        let (mut engine, _) = Engine::open(
            Box::new(maps),
            Store::in_memory().unwrap(),
            Vec::new(),
            Vec::new(),
        )
        .unwrap();
        let management = vec![normalize_cidr("198.51.100.10/32").unwrap()];
        let config = vec![(
            normalize_cidr("203.0.113.0/24").unwrap(),
            crate::engine::StaticRule {
                cidr: "203.0.113.0/24".into(),
                action: Action::Block,
                reason: "config".into(),
                list: "config".into(),
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
            let mut request = axum::http::Request::builder().method(method).uri(path);
            if let Some(token) = token {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let request = match body {
                Some(b) => request
                    .header(header::CONTENT_TYPE, "application/json")
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

    #[tokio::test]
    async fn create_normalises_is_idempotent_and_enforces() {
        let h = harness();
        let before = h.block_entries().await;
        let (status, rule) = h
            .post(
                "/v1/rules",
                json!({"cidr": "192.0.2.77/26", "reason": "scanner"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{rule}");
        assert_eq!(rule["cidr"], "192.0.2.64/26");
        assert_eq!(rule["action"], "block");
        assert_eq!(rule["list"], "api");
        assert_eq!(rule["source"], "api");
        assert_eq!(rule["expires_at"], Value::Null);
        assert_eq!(
            h.block_entries().await,
            before + 1,
            "in the kernel maps before the answer"
        );
        let (status, again) = h.post("/v1/rules", json!({"cidr": "192.0.2.64/26"})).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(again["id"], rule["id"]);
        let (status, mapped) = h
            .post(
                "/v1/rules",
                json!({"cidr": "::ffff:192.0.2.200/120", "action": "allow"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(mapped["cidr"], "192.0.2.0/24", "IPv4-mapped IPv6 is IPv4");
    }

    #[tokio::test]
    async fn bad_requests_are_problems_that_say_what_to_fix() {
        let h = harness();
        let (status, p) = h.post("/v1/rules", json!({"cidr": "192.0.2.0/33"})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(p["detail"].as_str().unwrap().contains("/33"), "{p}");
        let (status, p) = h
            .post("/v1/rules", json!({"cidr": "192.0.2.1", "colour": "red"}))
            .await;
        assert!(status.is_client_error());
        assert!(p["detail"].as_str().unwrap().contains("colour"), "{p}");
        let (status, _, _) = h
            .call("POST", "/v1/rules", Some(WRITE), Some("{not json".into()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, p) = h
            .post("/v1/rules", json!({"cidr": "192.0.2.1", "ttl": "soon"}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(p["detail"].as_str().unwrap().contains("90s"), "{p}");
        let (status, _) = h
            .post(
                "/v1/rules",
                json!({"cidr": "192.0.2.1", "list": "bad list!"}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(h.get("/v1/rules/abc").await.0, StatusCode::BAD_REQUEST);
        assert_eq!(h.get("/v1/rules/999").await.0, StatusCode::NOT_FOUND);
        assert_eq!(h.get("/v1/lookup?ip=nope").await.0, StatusCode::BAD_REQUEST);
        assert_eq!(
            h.get("/v1/rules?action=explode").await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(h.get("/v1/nothing-here").await.0, StatusCode::NOT_FOUND);
    }

    /// Found by the api_json fuzz target: a path segment that percent-decodes to invalid UTF-8
    /// was refused by axum's own rejection, as text/plain. `call` checks for problem+json.
    #[tokio::test]
    async fn undecodable_path_segments_are_problems_too() {
        let h = harness();
        for (method, path) in [
            ("GET", "/v1/rules/%da"),
            ("DELETE", "/v1/rules/=i&%da"),
            ("POST", "/v1/feeds/%ff/sync"),
        ] {
            let (status, _, p) = h.call(method, path, Some(WRITE), None).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}");
            assert!(p["detail"].as_str().unwrap().contains("UTF-8"), "{p}");
        }
    }

    #[tokio::test]
    async fn oversized_bodies_get_413() {
        let h = harness_with(FakeMaps::default(), |s| s.max_body_bytes = 256);
        let big = json!({"cidr": "192.0.2.1", "reason": "x".repeat(1000)}).to_string();
        let (status, _, p) = h.call("POST", "/v1/rules", Some(WRITE), Some(big)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{p}");
        let h = harness_with(FakeMaps::default(), |s| s.max_batch = 2);
        let (status, _) = h
            .post("/v1/rules/batch", json!({"rules": [{"cidr": "192.0.2.1"}, {"cidr": "192.0.2.2"}, {"cidr": "192.0.2.3"}]}))
            .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn lockout_guard_refuses_unless_forced() {
        let h = harness();
        for (cidr, why) in [
            ("0.0.0.0/0", "shorter than /8"),
            ("10.0.0.0/7", "shorter than /8"),
            ("2001::/15", "shorter than /16"),
            ("198.51.100.0/24", "management"),
            ("192.0.2.0/24", CLIENT),
        ] {
            let (status, p) = h.post("/v1/rules", json!({"cidr": cidr})).await;
            assert_eq!(status, StatusCode::CONFLICT, "{cidr}: {p}");
            assert!(p["detail"].as_str().unwrap().contains(why), "{cidr}: {p}");
        }
        let (status, _) = h
            .post("/v1/rules", json!({"cidr": "192.0.2.0/24", "force": true}))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        // Allow rules are never refused by the guard.
        let (status, _) = h
            .post("/v1/rules", json!({"cidr": "0.0.0.0/0", "action": "allow"}))
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }

    #[tokio::test]
    async fn list_get_filter_and_delete() {
        let h = harness();
        let (_, a) = h
            .post(
                "/v1/rules",
                json!({"cidr": "192.0.2.128/25", "list": "scanners"}),
            )
            .await;
        let (_, b) = h
            .post(
                "/v1/rules",
                json!({"cidr": "2001:db8::/32", "action": "allow"}),
            )
            .await;
        let (status, all) = h.get("/v1/rules").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            all["rules"].as_array().unwrap().len(),
            4,
            "management + config + 2: {all}"
        );
        let (_, scanners) = h.get("/v1/rules?list=scanners").await;
        assert_eq!(scanners["rules"].as_array().unwrap().len(), 1);
        let (_, allows) = h.get("/v1/rules?action=allow").await;
        assert_eq!(allows["rules"].as_array().unwrap().len(), 2, "{allows}");
        let (_, containing) = h.get("/v1/rules?ip=192.0.2.200").await;
        assert_eq!(containing["rules"][0]["id"], a["id"]);
        let (status, one) = h.get(&format!("/v1/rules/{}", b["id"])).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(one, b);
        let before = h.block_entries().await;
        let (status, _, _) = h
            .call(
                "DELETE",
                &format!("/v1/rules/{}", a["id"]),
                Some(WRITE),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(
            h.block_entries().await,
            before - 1,
            "removed from the kernel maps"
        );
        let (status, _, _) = h
            .call(
                "DELETE",
                &format!("/v1/rules/{}", a["id"]),
                Some(WRITE),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // The config rule (id 2) cannot be deleted over the API.
        let (status, _, p) = h.call("DELETE", "/v1/rules/2", Some(WRITE), None).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(p["detail"].as_str().unwrap().contains("config file"), "{p}");
    }

    #[tokio::test]
    async fn batch_is_all_or_nothing() {
        let h = harness();
        let (_, before) = h.get("/v1/rules").await;
        let entries_before = h.block_entries().await;
        let (status, p) = h
            .post(
                "/v1/rules/batch",
                json!({"rules": [{"cidr": "192.0.2.1"}, {"cidr": "bogus"}, {"cidr": "192.0.2.3"}]}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(p["detail"].as_str().unwrap().contains("rules[1]"), "{p}");
        assert_eq!(h.get("/v1/rules").await.1, before, "nothing stored");
        assert_eq!(h.block_entries().await, entries_before, "nothing applied");
        let (status, ok) = h
            .post(
                "/v1/rules/batch",
                json!({"rules": [{"cidr": "192.0.2.1"}, {"cidr": "192.0.2.1"}, {"cidr": "2001:db8::1", "ttl": "1h"}]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{ok}");
        assert_eq!(ok["created"], 2, "duplicates collapse: {ok}");
        assert_eq!(ok["rules"][0]["id"], ok["rules"][1]["id"]);
        assert!(ok["rules"][2]["expires_at"].is_string());
    }

    #[tokio::test]
    async fn full_map_is_507_and_nothing_half_applied() {
        // The harness already holds one config block (203.0.113.0/24); capacity 3 fits 2 more.
        let maps = FakeMaps {
            block_capacity: Some(3),
            ..FakeMaps::default()
        };
        let h = harness_with(maps, |_| {});
        let (_, before) = h.get("/v1/rules").await;
        let (status, p) = h
            .post(
                "/v1/rules/batch",
                json!({"rules": [{"cidr": "192.0.2.1"}, {"cidr": "192.0.2.2"}, {"cidr": "192.0.2.3"}]}),
            )
            .await;
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{p}");
        assert!(p["detail"].as_str().unwrap().contains("full"), "{p}");
        assert_eq!(h.get("/v1/rules").await.1, before, "store unchanged");
        assert_eq!(h.block_entries().await, 1, "kernel unchanged");
        let (status, _) = h
            .post(
                "/v1/rules/batch",
                json!({"rules": [{"cidr": "192.0.2.1"}, {"cidr": "192.0.2.2"}]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn lookup_reports_the_deciding_rule() {
        let h = harness();
        h.post("/v1/rules", json!({"cidr": "192.0.2.128/25"})).await;
        let (_, allow) = h
            .post(
                "/v1/rules",
                json!({"cidr": "192.0.2.200/32", "action": "allow"}),
            )
            .await;
        let (_, v) = h.get("/v1/lookup?ip=192.0.2.130").await;
        assert_eq!(v["verdict"], "block");
        assert_eq!(v["rule"]["cidr"], "192.0.2.128/25");
        let (_, v) = h.get("/v1/lookup?ip=192.0.2.200").await;
        assert_eq!(v["verdict"], "allow");
        assert_eq!(v["rule"]["id"], allow["id"]);
        let (_, v) = h.get("/v1/lookup?ip=::ffff:192.0.2.130").await;
        assert_eq!(v["verdict"], "block", "mapped address handled as IPv4");
        let (_, v) = h.get("/v1/lookup?ip=2001:db8::1").await;
        assert_eq!(v["verdict"], "pass");
        assert_eq!(v["rule"], Value::Null);
    }

    #[tokio::test]
    async fn ttl_expiry_removes_from_store_and_maps() {
        let h = harness();
        let (_, rule) = h
            .post("/v1/rules", json!({"cidr": "192.0.2.128/25", "ttl": "3s"}))
            .await;
        assert!(rule["expires_at"].is_string());
        let entries = h.block_entries().await;
        {
            let mut guard = h.state.engine.lock().await;
            let engine = guard.as_mut().unwrap();
            assert!(
                engine.expire(crate::store::unix_now()).unwrap().is_empty(),
                "not yet"
            );
            let expired = engine.expire(crate::store::unix_now() + 4).unwrap();
            assert_eq!(expired.len(), 1);
            let log = engine.audit_log(1).unwrap();
            assert_eq!(log[0].what, "expire");
            assert_eq!(log[0].who, "ttl");
        }
        assert_eq!(h.block_entries().await, entries - 1);
        assert_eq!(
            h.get(&format!("/v1/rules/{}", rule["id"])).await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn audit_names_the_token() {
        let h = harness();
        h.post(
            "/v1/rules",
            json!({"cidr": "192.0.2.128/25", "reason": "seen scanning"}),
        )
        .await;
        let (_, audit) = h.get("/v1/audit?limit=1").await;
        let entry = &audit["entries"][0];
        assert_eq!(entry["who"], "ops");
        assert_eq!(entry["what"], "add");
        assert_eq!(entry["why"], "seen scanning");
    }

    #[tokio::test]
    async fn stats_status_metrics_and_openapi() {
        let h = harness();
        let (status, stats) = h.get("/v1/stats").await;
        assert_eq!(status, StatusCode::OK);
        assert!(stats["interfaces"].is_array());
        let (_, st) = h.get("/v1/status").await;
        assert_eq!(st["ready"], true);
        assert_eq!(st["rules"], 2);
        assert_eq!(st["management"][0], "198.51.100.10/32");
        let (status, content_type, text) = h.call("GET", "/metrics", Some(READ), None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("text/plain"));
        let text = text.as_str().unwrap().to_string();
        assert!(text.contains("xdpwall_build_info{version="), "{text}");
        assert!(
            text.contains("xdpwall_list_entries{list=\"config\"} 1"),
            "{text}"
        );
        let open = harness_with(FakeMaps::default(), |s| s.metrics_auth = false);
        assert_eq!(
            open.call("GET", "/metrics", None, None).await.0,
            StatusCode::OK
        );
        let (status, _, doc) = h.call("GET", "/v1/openapi.json", None, None).await;
        assert_eq!(status, StatusCode::OK);
        for path in [
            "/v1/rules",
            "/v1/rules/{id}",
            "/v1/rules/batch",
            "/v1/lookup",
            "/metrics",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} documented");
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }

    #[tokio::test]
    async fn flows_and_drops_are_read_scoped_and_documented() {
        use xdpwall_shared::egress::{FlowEvent, FlowKey, action, reason};
        let h = harness();
        assert_eq!(
            h.call("GET", "/v1/flows", None, None).await.0,
            StatusCode::UNAUTHORIZED
        );
        let (status, _, empty) = h.call("GET", "/v1/flows", Some(READ), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(empty["flows"], json!([]));
        assert_eq!(empty["events_received"], 0);
        let mut key = FlowKey {
            sport: 40000,
            dport: 23,
            proto: 6,
            family: 4,
            ..FlowKey::default()
        };
        key.src[10..].copy_from_slice(&[0xff, 0xff, 192, 0, 2, 1]);
        key.dst[10..].copy_from_slice(&[0xff, 0xff, 198, 51, 100, 7]);
        h.state.events.on_flow(FlowEvent {
            key,
            rule: 23,
            reason: reason::PORT as u16,
            action: action::BLOCK as u16,
            ts_ns: 1,
            bytes: 60,
            ifindex: 2,
        });
        let (_, _, list) = h.call("GET", "/v1/flows?limit=5", Some(READ), None).await;
        let flow = &list["flows"][0];
        assert_eq!(flow["src"], "192.0.2.1");
        assert_eq!(flow["dst"], "198.51.100.7");
        assert_eq!(flow["proto"], "tcp");
        assert_eq!(flow["reason"], "port");
        assert_eq!(flow["rule"], "port:23");
        assert_eq!(flow["action"], "block");
        assert_eq!(flow["packets"], 1);
        assert_eq!(
            h.call("GET", "/v1/flows?limit=many", Some(READ), None)
                .await
                .0,
            StatusCode::BAD_REQUEST
        );
        let (status, _, drops) = h.call("GET", "/v1/drops", Some(READ), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(drops["drops"], json!([]));
        assert_eq!(drops["sample_rate"], 100);
        let (_, _, doc) = h.call("GET", "/v1/openapi.json", None, None).await;
        for path in ["/v1/flows", "/v1/drops"] {
            assert!(doc["paths"][path]["get"].is_object(), "{path} documented");
        }
        assert!(doc["components"]["schemas"]["FlowView"].is_object());
        assert!(doc["components"]["schemas"]["CrowdsecStatus"].is_object());
    }

    /// Captures what the API logs while the guard lives (current thread only).
    fn capture_log() -> (
        Arc<std::sync::Mutex<Vec<u8>>>,
        tracing::subscriber::DefaultGuard,
    ) {
        #[derive(Clone)]
        struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Sink(log.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        (log, tracing::subscriber::set_default(subscriber))
    }

    /// A refused map syscall answers 500 with a request id only; the cause (map name, errno)
    /// is logged once, at error level, with the route and the same id.
    #[tokio::test]
    async fn a_kernel_map_failure_is_a_500_without_internal_text() {
        let maps = FakeMaps {
            broken_counters: true,
            ..FakeMaps::default()
        };
        let h = harness_with(maps, |_| {});
        let (log, _guard) = capture_log();
        let (status, p) = h.get("/v1/stats").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{p}");
        let detail = p["detail"].as_str().unwrap();
        for internal in ["XW_", "os error", "not permitted", "batch"] {
            assert!(!detail.contains(internal), "{internal:?} in {p}");
        }
        let id = detail
            .split("(request id ")
            .nth(1)
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("no request id in {p}"));
        let log = String::from_utf8(log.lock().unwrap().clone()).unwrap();
        let line = log
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("request id {id} not logged:\n{log}"));
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains("route=/v1/stats"), "{line}");
        assert!(
            line.contains("XW_RULE_STATS") && line.contains("os error 1"),
            "{line}"
        );
        assert_eq!(log.matches(id).count(), 1, "logged once:\n{log}");
    }

    /// One mapping per source error: client errors keep their text, a full map stays a specific
    /// 507, and store, file system and kernel failures answer a category and a request id while
    /// the cause (SQLite message, path, errno) stays for the log.
    #[test]
    fn each_source_error_maps_to_its_status_and_keeps_internal_text_for_the_log() {
        let locked = || {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                Some("database is locked".into()),
            ))
        };
        let io = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        let cases: Vec<(ApiError, StatusCode, &str, &[&str])> = vec![
            (
                EngineError::Invalid("ttl \"soon\" is not a duration".into()).into(),
                StatusCode::BAD_REQUEST,
                "soon",
                &[],
            ),
            (
                EngineError::NotFound(7).into(),
                StatusCode::NOT_FOUND,
                "rule 7",
                &[],
            ),
            (
                EngineError::Datapath(DatapathError::Full {
                    map: "XW_BLOCK_V4",
                    capacity: 3,
                    pending: 2,
                })
                .into(),
                StatusCode::INSUFFICIENT_STORAGE,
                "is full",
                &[],
            ),
            (
                EngineError::Store(locked()).into(),
                StatusCode::SERVICE_UNAVAILABLE,
                "last applied rules stay in force",
                &["locked", "sqlite", "SQLite"],
            ),
            (
                StoreError::Open {
                    path: "/var/lib/xdpwall/rules.sqlite".into(),
                    source: rusqlite::Error::InvalidQuery,
                }
                .into(),
                StatusCode::SERVICE_UNAVAILABLE,
                "rule store",
                &["/var/lib", "sqlite"],
            ),
            (
                DatapathError::Mmap {
                    map: "XW_V4_TBL24",
                    source: io(),
                }
                .into(),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
                &["XW_", "os error", "space"],
            ),
            (
                FeedError::LastGood {
                    feed: "spamhaus".into(),
                    path: "/var/lib/xdpwall/feeds/spamhaus.list".into(),
                    source: io(),
                }
                .into(),
                StatusCode::SERVICE_UNAVAILABLE,
                "feed spamhaus",
                &["/var/lib", "os error"],
            ),
            (
                FeedError::Store {
                    feed: "spamhaus".into(),
                    source: locked(),
                }
                .into(),
                StatusCode::SERVICE_UNAVAILABLE,
                "rule store",
                &["locked"],
            ),
            (
                FeedError::Apply {
                    feed: "spamhaus".into(),
                    source: EngineError::Datapath(DatapathError::Mmap {
                        map: "XW_V4_TBL24",
                        source: io(),
                    }),
                }
                .into(),
                StatusCode::INTERNAL_SERVER_ERROR,
                "last good copy stays enforced",
                &["XW_", "os error"],
            ),
        ];
        let full_feed: ApiError = FeedError::Apply {
            feed: "spamhaus".into(),
            source: EngineError::Datapath(DatapathError::Full {
                map: "XW_BLOCK_V4",
                capacity: 3,
                pending: 2,
            }),
        }
        .into();
        assert_eq!(full_feed.status, StatusCode::INSUFFICIENT_STORAGE);
        assert!(full_feed.detail.contains("is full"), "{full_feed:?}");
        for (err, status, says, hides) in cases {
            assert_eq!(err.status, status, "{err:?}");
            assert!(err.detail.contains(says), "{says:?} in {err:?}");
            for internal in hides {
                assert!(!err.detail.contains(internal), "{internal:?} in {err:?}");
            }
            match &err.cause {
                Some(cause) => {
                    assert!(err.detail.contains(&cause.request_id), "{err:?}");
                    let logged = cause.cause.to_lowercase();
                    assert!(
                        hides.iter().any(|h| logged.contains(&h.to_lowercase())),
                        "the log gets what the answer leaves out: {err:?}"
                    );
                }
                // The one 5xx whose own text is the answer.
                None => assert!(
                    !status.is_server_error() || status == StatusCode::INSUFFICIENT_STORAGE,
                    "{err:?}"
                ),
            }
        }
    }

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
}
