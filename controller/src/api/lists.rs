//! The named-list handlers: replace a whole list (`PUT`, text/plain or JSON), show, delete.
//!
//! A replace is parsed and sifted before the engine is locked, so other calls do not wait
//! behind the parsing of a million lines; the engine then applies it as one diff.

use std::sync::Arc;

use axum::{
    Extension, Json,
    body::Body,
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
    http::{HeaderMap, StatusCode, header::CONTENT_TYPE},
};
use http_body_util::BodyExt as _;

use super::{
    ApiError, AppState, Caller, Problem, engine,
    extract::{path_segment, query},
    types::{ListBody, ListIndex, ListQuery, ListReplaceResult, ListSummary, ListView, rfc3339},
};
use crate::{
    engine::{ListReplace, parse_ttl},
    feeds::{
        parse::{Parsed, parse_plain_runs},
        sanity::is_special,
    },
    rules::{Action, SortedNets, SortedRun, normalize_cidr, validate_list},
};

/// Replace a named list with exactly these entries, as one diff, all or nothing: a `text/plain`
/// body (one IP or CIDR a line, `#` and `;` comments) or `{"entries": [...]}`. Special-purpose
/// ranges are left out of block and watch lists unless `allow_special=true`; a block entry the
/// lock-out guard refuses (too broad, a management address, the caller's address) refuses the
/// whole request with 409, and bad lines with 400 naming them. Bodies up to
/// `[api] max_list_bytes`.
#[utoipa::path(put, path = "/v1/lists/{name}",
    params(("name" = String, Path, description = "list name"), ListQuery),
    request_body(content(
        (String = "text/plain", example = "198.51.100.7\n203.0.113.0/24  # scanners\n"),
        (ListBody = "application/json"))),
    responses(
        (status = 200, description = "enforced and stored", body = ListReplaceResult),
        (status = 400, description = "bad lines (named) or options; nothing applied", body = Problem),
        (status = 409, description = "an entry refused by the lock-out guard; nothing applied", body = Problem),
        (status = 413, description = "body over [api] max_list_bytes", body = Problem),
        (status = 415, description = "neither text/plain nor application/json", body = Problem),
        (status = 507, description = "map full", body = Problem)))]
pub(super) async fn replace_list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
    options: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ListReplaceResult>, ApiError> {
    let name = path_segment(name)?;
    validate_list(&name).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))?;
    let options = query(options)?;
    let action = options.action.unwrap_or(Action::Block);
    if action == Action::Limit {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a list's action is block, allow or watch",
        ));
    }
    let now = crate::store::unix_now();
    let expires_at = match &options.ttl {
        Some(ttl) => Some(now + parse_ttl(ttl)?.as_secs() as i64),
        None => None,
    };
    let format = body_format(&headers)?;
    let started = std::time::Instant::now();
    let body = read_body(body, &headers, state.max_list_bytes).await?;
    tracing::debug!(list = name, took = ?started.elapsed(), "list body read");
    // Like a feed: special ranges stay out of block and watch lists unless asked for.
    let keep_special = action == Action::Allow || options.allow_special == Some(true);
    // Parsing and sorting a million lines takes a while: off the async workers, before the
    // engine lock.
    let (entries, excluded_special) =
        tokio::task::spawn_blocking(move || sift_list(format, &body, keep_special))
            .await
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the parser failed"))??;
    tracing::debug!(list = name, took = ?started.elapsed(), "list body read and parsed");
    let want = ListReplace {
        name: name.clone(),
        action,
        expires_at,
        entries,
    };
    // A task of its own: the replace runs in steps, and a client that goes away must not stop
    // it half-way. One list write at a time.
    let task_state = state.clone();
    let who = caller.name.clone();
    let replaced = tokio::spawn(async move {
        let _one_at_a_time = task_state.list_writes.lock().await;
        crate::engine::replace_list(&task_state.engine, want, &who, caller.addr, now).await
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the list replace failed"))??;
    Ok(Json(ListReplaceResult {
        list: name,
        entries: replaced.entries,
        inserted: replaced.inserted,
        removed: replaced.removed,
        excluded_special,
        bad_lines: 0,
    }))
}

/// Named lists: name, action, entries, last update.
#[utoipa::path(get, path = "/v1/lists", responses((status = 200, body = ListIndex)))]
pub(super) async fn list_lists(
    State(state): State<Arc<AppState>>,
) -> Result<Json<ListIndex>, ApiError> {
    let engine = engine(&state).await?;
    let lists = engine
        .store()
        .list_rows()?
        .iter()
        .map(ListSummary::from)
        .collect();
    Ok(Json(ListIndex { lists }))
}

/// One named list with its entries.
#[utoipa::path(get, path = "/v1/lists/{name}", params(("name" = String, Path, description = "list name")),
    responses((status = 200, body = ListView), (status = 404, body = Problem)))]
pub(super) async fn get_list(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<ListView>, ApiError> {
    let name = path_segment(name)?;
    let engine = engine(&state).await?;
    let row = engine
        .store()
        .list_row(&name)?
        .ok_or_else(|| not_found(&name))?;
    let cidrs: Vec<String> = engine
        .list(&name)
        .map(|l| l.entries.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    let ipv4 = cidrs.iter().filter(|c| !c.contains(':')).count();
    Ok(Json(ListView {
        created: rfc3339(row.created_at),
        summary: ListSummary::from(&row),
        ipv6: cidrs.len() - ipv4,
        ipv4,
        cidrs,
    }))
}

/// Delete a named list (its entries leave the kernel before the answer).
#[utoipa::path(delete, path = "/v1/lists/{name}", params(("name" = String, Path, description = "list name")),
    responses((status = 204, description = "deleted"), (status = 404, body = Problem)))]
pub(super) async fn delete_list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let name = path_segment(name)?;
    let task_state = state.clone();
    tokio::spawn(async move {
        let _one_at_a_time = task_state.list_writes.lock().await;
        let now = crate::store::unix_now();
        crate::engine::delete_list(&task_state.engine, &name, &caller.name, now).await
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the list delete failed"))??;
    Ok(StatusCode::NO_CONTENT)
}

fn not_found(name: &str) -> ApiError {
    ApiError::from(crate::engine::EngineError::ListNotFound(name.to_string()))
}

/// The whole body, at most `limit` bytes. Each frame is copied into one buffer as it
/// arrives (sized from `Content-Length`, within the limit), while it is still in the cache,
/// instead of all of them at the end: a million-line list is ~16 MB, and that last copy (with
/// the page faults of its buffer) came after the last byte, on the answer's path.
async fn read_body(mut body: Body, headers: &HeaderMap, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the list is larger than [api] max_list_bytes ({limit} bytes)"),
        )
    };
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut out = Vec::with_capacity(announced.unwrap_or(0));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the list body could not be read: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(too_large());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// How a list body is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyFormat {
    Plain,
    Json,
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(BodyFormat::Plain);
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        "text/plain" | "" => Ok(BodyFormat::Plain),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "a list is sent as text/plain (one IP or CIDR a line) or application/json \
                 ({{\"entries\": [...]}}), not {other}"
            ),
        )),
    }
}

/// The entries of a list body as a set, and how many special-purpose ranges were left out
/// (kept only if `keep_special`); bad lines refuse the whole body, named.
fn sift_list(
    format: BodyFormat,
    body: &[u8],
    keep_special: bool,
) -> Result<(SortedNets, usize), ApiError> {
    // Leaves out the special ranges (counted), then sorts: for a plain body on each half's
    // parsing thread, so a shuffled million sorts on two CPUs and the halves merge in one pass.
    let sift = |mut entries: Vec<ipnet::IpNet>| {
        let before = entries.len();
        entries.retain(|e| keep_special || !is_special(e));
        let excluded = before - entries.len();
        (SortedRun::new(entries), excluded)
    };
    let (parsed, runs) = match format {
        BodyFormat::Plain => parse_plain_runs(plain_text(body)?, sift),
        BodyFormat::Json => {
            let mut parsed = parse_json_list(body)?;
            let entries = std::mem::take(&mut parsed.entries);
            (parsed, vec![sift(entries)])
        }
    };
    if parsed.bad_lines > 0 {
        return Err(bad_lines(format, &parsed));
    }
    let excluded_special = runs.iter().map(|(_, excluded)| excluded).sum();
    let runs = runs.into_iter().map(|(run, _)| run).collect();
    Ok((SortedNets::from_runs(runs), excluded_special))
}

/// A plain list body as text.
fn plain_text(body: &[u8]) -> Result<&str, ApiError> {
    std::str::from_utf8(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the list is not UTF-8 text (byte {})", e.valid_up_to()),
        )
    })
}

/// The entries of a JSON list body; "line" n is `entries[n - 1]`.
fn parse_json_list(body: &[u8]) -> Result<Parsed, ApiError> {
    let body: ListBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?;
    let mut out = Parsed::default();
    for (i, entry) in body.entries.iter().enumerate() {
        out.data_lines += 1;
        match normalize_cidr(entry) {
            Ok(net) => out.entries.push(net),
            Err(_) => out.bad(i + 1, entry),
        }
    }
    Ok(out)
}

fn bad_lines(format: BodyFormat, parsed: &Parsed) -> ApiError {
    let named: Vec<String> = parsed
        .bad_samples
        .iter()
        .map(|b| match format {
            BodyFormat::Plain => format!("line {}: {:?}", b.line, b.text),
            BodyFormat::Json => format!("entries[{}]: {:?}", b.line - 1, b.text),
        })
        .collect();
    let more = parsed.bad_lines.saturating_sub(named.len());
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!(
            "{} unparsable entries (not an IP or CIDR), nothing applied: {}{tail}",
            parsed.bad_lines,
            named.join(", ")
        ),
    )
}
