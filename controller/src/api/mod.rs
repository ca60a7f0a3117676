//! The HTTP API: rules CRUD, lookup, stats, status, probes, Prometheus metrics and the OpenAPI
//! document generated from these handlers.
//!
//! `app(state)` builds the router so tests can drive it in process; `serve` binds it. Handlers
//! never touch BPF maps: they ask the engine, the one owner. Every error is
//! `application/problem+json`. A client error's detail says what to fix; a failure of the
//! daemon (store, kernel maps, engine) answers with a category and a request id only, and the
//! cause goes to the daemon's log under that id (`error::log_server_errors`).
//!
//! - this file: [`AppState`], the route table (`routes`) and the router built from it
//! - [`error`]: [`ApiError`], one `From` per source error, the problem+json answer
//! - `extract.rs`: body, query and path extractors whose rejections are problem+json
//! - `auth.rs`: the bearer-token check and the [`Caller`] it leaves for handlers
//! - [`types`]: the request and answer bodies, shared with the CLI's typed client
//! - `rules.rs`, `lists.rs`, `feeds.rs`, `status.rs`, `observe.rs`: the handlers, by what they
//!   serve
//! - [`openapi`]: the OpenAPI document ([`ApiDoc`]) generated from the handlers

mod auth;
pub mod error;
mod extract;
mod feeds;
mod lists;
mod observe;
pub mod openapi;
mod rules;
mod status;
pub mod types;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{Method, StatusCode},
    middleware,
    routing::{MethodFilter, MethodRouter},
};
use tokio::sync::Mutex;

pub use self::{
    auth::Caller,
    error::{ApiError, Problem},
    extract::ApiJson,
    openapi::ApiDoc,
};
use crate::{config::ApiToken, engine::Engine, events::Events, feeds::FeedManager};

/// What handlers share.
pub struct AppState {
    /// Set once every interface has the filter and the config rules are in the maps.
    pub ready: AtomicBool,
    /// `None` until the loader has attached; then the single owner of rules and maps.
    pub engine: Mutex<Option<Engine>>,
    /// Held for a whole list replace or delete: they run in steps (`engine::bulk`), one list
    /// write at a time.
    pub list_writes: Mutex<()>,
    pub tokens: Vec<ApiToken>,
    pub metrics_auth: bool,
    pub max_body_bytes: usize,
    /// Largest `PUT /v1/lists/{name}` body (lists are big; every other route has
    /// `max_body_bytes`).
    pub max_list_bytes: usize,
    pub max_batch: usize,
    pub feeds: Arc<FeedManager>,
    /// Flagged egress flows and sampled drops (ring-buffer readers fill it).
    pub events: Arc<Events>,
    /// The CrowdSec bouncer, when `[crowdsec]` is configured.
    pub crowdsec: Option<Arc<crate::crowdsec::CrowdsecBouncer>>,
    /// The running kernel's features and the fallbacks in use (probed at start).
    pub kernel: Option<crate::kernel::KernelReport>,
    /// The SYN-cookie stage, once the loader has loaded it.
    pub syn: std::sync::OnceLock<crate::syn::SynStage>,
    pub version: &'static str,
}

impl AppState {
    pub fn new(tokens: Vec<ApiToken>) -> Self {
        Self {
            ready: AtomicBool::new(false),
            engine: Mutex::new(None),
            list_writes: Mutex::new(()),
            tokens,
            metrics_auth: true,
            max_body_bytes: 64 << 20,
            max_list_bytes: 128 << 20,
            max_batch: 1_000_000,
            feeds: Arc::new(FeedManager::empty()),
            events: Arc::new(Events::new(Default::default())),
            crowdsec: None,
            kernel: None,
            syn: std::sync::OnceLock::new(),
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// No token (probes, the OpenAPI document).
    Public,
    /// A bearer token: read scope for GET, write scope for the rest ([`auth::authenticate`]).
    Token,
}

/// One route: a method on a path, and its handler.
pub(crate) struct Route {
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "the handler routes by it; the OpenAPI test reads it"
        )
    )]
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    pub(crate) access: Access,
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
pub(crate) fn routes() -> Vec<Route> {
    use Access::{Public, Token};
    vec![
        route(Method::GET, "/v1/rules", Token, rules::list_rules),
        route(Method::POST, "/v1/rules", Token, rules::create_rule),
        route(Method::POST, "/v1/rules/batch", Token, rules::batch_rules),
        route(Method::GET, "/v1/rules/{id}", Token, rules::get_rule),
        route(Method::DELETE, "/v1/rules/{id}", Token, rules::delete_rule),
        route(Method::GET, "/v1/lookup", Token, rules::lookup),
        route(Method::GET, "/v1/lists", Token, lists::list_lists),
        route(Method::GET, "/v1/lists/{name}", Token, lists::get_list),
        route(Method::PUT, "/v1/lists/{name}", Token, lists::replace_list),
        route(
            Method::DELETE,
            "/v1/lists/{name}",
            Token,
            lists::delete_list,
        ),
        route(Method::GET, "/v1/stats", Token, status::stats),
        route(Method::GET, "/v1/status", Token, status::status),
        route(Method::GET, "/v1/audit", Token, observe::audit),
        route(Method::GET, "/v1/feeds", Token, feeds::list_feeds),
        route(
            Method::POST,
            "/v1/feeds/{name}/sync",
            Token,
            feeds::sync_feed,
        ),
        route(Method::GET, "/v1/flows", Token, observe::flows),
        route(Method::GET, "/v1/drops", Token, observe::drops),
        // Public when `[api] metrics_auth = false` ([`auth::authenticate`] decides).
        route(Method::GET, "/metrics", Token, observe::metrics_endpoint),
        route(Method::GET, "/healthz", Public, status::healthz),
        route(Method::GET, "/readyz", Public, status::readyz),
        route(Method::GET, "/v1/openapi.json", Public, openapi::openapi),
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
    let protected = protected.route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::authenticate,
    ));
    Router::new()
        .merge(protected)
        .merge(public)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint: see /v1/openapi.json",
            )
        })
        .layer(middleware::from_fn(error::log_server_errors))
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
pub(crate) async fn engine(
    state: &AppState,
) -> Result<tokio::sync::MappedMutexGuard<'_, Engine>, ApiError> {
    let guard = state.engine.lock().await;
    tokio::sync::MutexGuard::try_map(guard, Option::as_mut).map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the XDP filter is not loaded yet; retry shortly",
        )
    })
}

#[cfg(test)]
mod tests;
