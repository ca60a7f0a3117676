//! Every error is problem+json: rejections of bodies and paths, and the mapping of each source
//! error to a status, with the daemon's own failures logged rather than answered.

use super::*;
use crate::{
    api::ApiError, datapath::DatapathError, engine::EngineError, feeds::FeedError,
    store::StoreError,
};

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
        .post(
            "/v1/rules/batch",
            json!({"rules": [{"cidr": "192.0.2.1"}, {"cidr": "192.0.2.2"}, {"cidr": "192.0.2.3"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

/// A plain `application/json` body is parsed without serde_path_to_error first: what is
/// accepted and how a refusal reads stay axum's, for every content type.
#[tokio::test]
async fn json_bodies_are_judged_alike_on_the_fast_path_and_axums() {
    let h = harness();
    let post = |content_type: &'static str, body: String| {
        h.call_typed("POST", "/v1/rules", Some(WRITE), Some((content_type, body)))
    };
    let content_types = [
        "application/json",
        "Application/JSON; charset=utf-8",
        "application/json;charset=utf-8",
        "application/cloudevents+json",
    ];
    for (i, content_type) in content_types.into_iter().enumerate() {
        let body = format!(r#"{{"cidr": "192.0.2.{i}"}}"#);
        let (status, _, rule) = post(content_type, body).await;
        assert_eq!(status, StatusCode::CREATED, "{content_type}: {rule}");
        // The data error names the field (axum's serde_path_to_error message).
        let body = r#"{"cidr": "192.0.2.9", "ttl": 5}"#.to_string();
        let (status, _, p) = post(content_type, body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{content_type}: {p}"
        );
        assert!(p["detail"].as_str().unwrap().contains("ttl"), "{p}");
        let (status, _, p) = post(content_type, r#"{"cidr": "#.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{content_type}: {p}");
    }
    for content_type in ["text/json", "text/plain"] {
        let (status, _, _) = post(content_type, r#"{"cidr": "192.0.2.5"}"#.to_string()).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type}");
    }
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
