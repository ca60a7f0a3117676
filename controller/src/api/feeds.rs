//! The feed handlers: list the configured feeds with their state, sync one now.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
};

use super::{
    ApiError, AppState, Problem, engine,
    extract::path_segment,
    types::{FeedList, FeedView, SyncReport, rfc3339},
};

/// Configured feeds with entries, last attempt and success, ETag and last error.
#[utoipa::path(get, path = "/v1/feeds", responses((status = 200, body = FeedList)))]
pub(super) async fn list_feeds(
    State(state): State<Arc<AppState>>,
) -> Result<Json<FeedList>, ApiError> {
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
pub(super) async fn sync_feed(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<SyncReport>, ApiError> {
    let name = path_segment(name)?;
    // A task of its own: the apply runs in steps, and a client that goes away must not stop
    // it half-way.
    let report = tokio::spawn(async move {
        state
            .feeds
            .sync(&state.engine, &name, crate::store::unix_now())
            .await
    })
    .await
    .map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "the feed sync failed",
        )
    })??;
    Ok(Json(report))
}
