//! Fetching a feed: conditional GET over HTTP(S) or a `file://` read, with timeouts, a size cap
//! and retries with backoff and jitter for transient failures.

use std::time::Duration;

use reqwest::{StatusCode, header};

/// User-Agent sent to feed providers, so they can tell who fetches and how often.
pub const USER_AGENT: &str = concat!("xdpwall/", env!("CARGO_PKG_VERSION"), " (blocklist sync)");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub url: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub max_bytes: usize,
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// 304: the copy we have is current.
    NotModified,
    Body {
        text: String,
        etag: Option<String>,
        last_modified: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unsupported URL {0:?}: use https://, http:// or file://")]
    Scheme(String),
    #[error("reading {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: StatusCode },
    #[error("{url}: the body is larger than max_bytes = {max} (truncated feeds are never applied)")]
    TooLarge { url: String, max: usize },
    #[error("{url}: the body is not UTF-8 text")]
    NotText { url: String },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
}

impl FetchError {
    /// Worth retrying: network trouble and server-side errors, not 4xx or bad content.
    fn transient(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// An HTTP client for feeds: rustls, connect and total timeouts, our User-Agent.
pub fn client(
    connect_timeout: Duration,
    total_timeout: Duration,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(connect_timeout)
        .timeout(total_timeout)
        .build()
}

/// Fetches `request.url`, retrying transient failures with exponential backoff and jitter.
pub async fn fetch(
    client: &reqwest::Client,
    request: &FetchRequest,
) -> Result<FetchOutcome, FetchError> {
    if let Some(path) = request.url.strip_prefix("file://") {
        return read_file(path, request.max_bytes);
    }
    if !(request.url.starts_with("https://") || request.url.starts_with("http://")) {
        return Err(FetchError::Scheme(request.url.clone()));
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        match fetch_once(client, request).await {
            Err(err) if err.transient() && attempt < request.attempts.max(1) => {
                let base = Duration::from_millis(500) * 2u32.pow(attempt - 1);
                let jitter = Duration::from_millis(rand::random::<u64>() % 250);
                tracing::warn!(url = %request.url, attempt, error = %err, "feed fetch failed; retrying");
                tokio::time::sleep(base + jitter).await;
            }
            other => return other,
        }
    }
}

async fn fetch_once(
    client: &reqwest::Client,
    request: &FetchRequest,
) -> Result<FetchOutcome, FetchError> {
    let url = request.url.clone();
    let transport = |e: reqwest::Error| FetchError::Transport {
        url: url.clone(),
        message: e.without_url().to_string(),
    };
    let mut builder = client.get(&request.url);
    if let Some(etag) = &request.etag {
        builder = builder.header(header::IF_NONE_MATCH, etag);
    }
    if let Some(lm) = &request.last_modified {
        builder = builder.header(header::IF_MODIFIED_SINCE, lm);
    }
    let mut response = builder.send().await.map_err(transport)?;
    let status = response.status();
    if status == StatusCode::NOT_MODIFIED {
        return Ok(FetchOutcome::NotModified);
    }
    if !status.is_success() {
        return Err(FetchError::Status { url, status });
    }
    let header_value = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let etag = header_value(header::ETAG);
    let last_modified = header_value(header::LAST_MODIFIED);
    if response
        .content_length()
        .is_some_and(|len| len > request.max_bytes as u64)
    {
        return Err(FetchError::TooLarge {
            url,
            max: request.max_bytes,
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > request.max_bytes {
            return Err(FetchError::TooLarge {
                url,
                max: request.max_bytes,
            });
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).map_err(|_| FetchError::NotText { url })?;
    Ok(FetchOutcome::Body {
        text,
        etag,
        last_modified,
    })
}

fn read_file(path: &str, max_bytes: usize) -> Result<FetchOutcome, FetchError> {
    let io = |source| FetchError::File {
        path: path.to_string(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > max_bytes as u64 {
        return Err(FetchError::TooLarge {
            url: format!("file://{path}"),
            max: max_bytes,
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let text = String::from_utf8(bytes).map_err(|_| FetchError::NotText {
        url: format!("file://{path}"),
    })?;
    Ok(FetchOutcome::Body {
        text,
        etag: None,
        last_modified: None,
    })
}
