//! The CLI's typed HTTP client: one method per API operation, sending and deserialising the
//! API's own request and answer types ([`crate::api::types`]), so client and daemon cannot
//! disagree on a field without the compiler noticing.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde::{Serialize, de::DeserializeOwned};

use crate::api::{
    Problem,
    types::{
        BatchBody, BatchResult, DropList, EventsQuery, FeedList, FlowList, ListIndex, ListQuery,
        ListReplaceResult, ListView, LookupQuery, LookupResult, RuleBody, RuleFilter, RuleList,
        RuleView, Stats, Status, SyncReport,
    },
};

/// Talks to a running daemon's API.
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// The token to send: the explicit one, else the contents of `token_file` if readable (the
/// daemon's generated `<state_dir>/admin.token` by default).
pub fn resolve_token(explicit: Option<String>, token_file: &Path) -> Option<String> {
    explicit.or_else(|| {
        std::fs::read_to_string(token_file)
            .ok()
            .map(|s| s.trim().to_string())
    })
}

/// No query string, no body.
const NONE: Option<&()> = None;

impl ApiClient {
    /// A client of the API at `base`. `ca_cert` (PEM) is trusted for an `https://` base whose
    /// certificate no public authority signed (the daemon's `[api] tls_cert`).
    pub fn new(base: &str, token: Option<String>, ca_cert: Option<&Path>) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the CA certificate {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    /// `POST /v1/rules`: the rule, created or already present.
    pub async fn add_rule(&self, rule: &RuleBody) -> anyhow::Result<RuleView> {
        self.call(Method::POST, "/v1/rules", NONE, Some(rule)).await
    }

    /// `POST /v1/rules/batch`: all or nothing.
    pub async fn add_rules(&self, batch: &BatchBody) -> anyhow::Result<BatchResult> {
        self.call(Method::POST, "/v1/rules/batch", NONE, Some(batch))
            .await
    }

    /// `GET /v1/rules`, filtered.
    pub async fn rules(&self, filter: &RuleFilter) -> anyhow::Result<RuleList> {
        self.call(Method::GET, "/v1/rules", Some(filter), NONE)
            .await
    }

    /// `DELETE /v1/rules/{id}`.
    pub async fn delete_rule(&self, id: u64) -> anyhow::Result<()> {
        self.send(Method::DELETE, &format!("/v1/rules/{id}"), NONE, NONE)
            .await
            .map(drop)
    }

    /// `GET /v1/lookup`: which rule, if any, decides `ip`.
    pub async fn lookup(&self, ip: &str) -> anyhow::Result<LookupResult> {
        let query = LookupQuery { ip: ip.to_string() };
        self.call(Method::GET, "/v1/lookup", Some(&query), NONE)
            .await
    }

    /// `GET /v1/feeds`.
    pub async fn feeds(&self) -> anyhow::Result<FeedList> {
        self.call(Method::GET, "/v1/feeds", NONE, NONE).await
    }

    /// `POST /v1/feeds/{name}/sync`.
    pub async fn sync_feed(&self, name: &str) -> anyhow::Result<SyncReport> {
        let path = format!("/v1/feeds/{}/sync", path_segment(name));
        self.call(Method::POST, &path, NONE, NONE).await
    }

    /// `PUT /v1/lists/{name}` with a `text/plain` body (one IP or CIDR a line).
    pub async fn replace_list(
        &self,
        name: &str,
        options: &ListQuery,
        text: String,
    ) -> anyhow::Result<ListReplaceResult> {
        let path = format!("/v1/lists/{}", path_segment(name));
        let text = self
            .send_body(Method::PUT, &path, Some(options), Some(text))
            .await?;
        parse_answer(&path, &text)
    }

    /// `GET /v1/lists`.
    pub async fn lists(&self) -> anyhow::Result<ListIndex> {
        self.call(Method::GET, "/v1/lists", NONE, NONE).await
    }

    /// `GET /v1/lists/{name}`.
    pub async fn list(&self, name: &str) -> anyhow::Result<ListView> {
        let path = format!("/v1/lists/{}", path_segment(name));
        self.call(Method::GET, &path, NONE, NONE).await
    }

    /// `DELETE /v1/lists/{name}`.
    pub async fn delete_list(&self, name: &str) -> anyhow::Result<()> {
        let path = format!("/v1/lists/{}", path_segment(name));
        self.send(Method::DELETE, &path, NONE, NONE).await.map(drop)
    }

    /// `GET /v1/stats`.
    pub async fn stats(&self) -> anyhow::Result<Stats> {
        self.call(Method::GET, "/v1/stats", NONE, NONE).await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> anyhow::Result<Status> {
        self.call(Method::GET, "/v1/status", NONE, NONE).await
    }

    /// `GET /v1/flows`: at most `limit`, most recently active first.
    pub async fn flows(&self, limit: usize) -> anyhow::Result<FlowList> {
        let query = EventsQuery { limit: Some(limit) };
        self.call(Method::GET, "/v1/flows", Some(&query), NONE)
            .await
    }

    /// `GET /v1/drops`: at most `limit`, newest first.
    pub async fn drops(&self, limit: usize) -> anyhow::Result<DropList> {
        let query = EventsQuery { limit: Some(limit) };
        self.call(Method::GET, "/v1/drops", Some(&query), NONE)
            .await
    }

    /// [`Self::send`] for an operation that answers a body of type `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: Option<&impl Serialize>,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let text = self.send(method, path, query, body).await?;
        parse_answer(path, &text)
    }

    /// Sends a request; returns the answer's text (empty for 204). Non-2xx answers become
    /// errors carrying the problem+json detail.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: Option<&impl Serialize>,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<String> {
        let body = body
            .map(serde_json::to_string)
            .transpose()
            .context("encoding the request")?;
        self.send_raw(method, path, query, body.map(|b| ("application/json", b)))
            .await
    }

    /// [`Self::send`] with a `text/plain` body.
    async fn send_body(
        &self,
        method: Method,
        path: &str,
        query: Option<&impl Serialize>,
        text: Option<String>,
    ) -> anyhow::Result<String> {
        self.send_raw(method, path, query, text.map(|t| ("text/plain", t)))
            .await
    }

    async fn send_raw(
        &self,
        method: Method,
        path: &str,
        query: Option<&impl Serialize>,
        body: Option<(&str, String)>,
    ) -> anyhow::Result<String> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(query) = query {
            request = request.query(query);
        }
        if let Some((content_type, body)) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body);
        }
        let response = request.send().await.map_err(|e| {
            // The innermost cause says what went wrong (refused, certificate, timeout).
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            anyhow::anyhow!(
                "cannot reach the xdpwall daemon at {}: {} (is `xdpwall run` running? set --api \
                 or XDPWALL_API; for https with a private certificate, --ca-cert)",
                self.base,
                cause
            )
        })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .context("reading the daemon's answer")?;
        if !status.is_success() {
            let detail = serde_json::from_str::<Problem>(&text).map_or(text, |p| p.detail);
            let hint = match status.as_u16() {
                401 => " (pass --token or set XDPWALL_TOKEN)",
                403 => " (this needs a write token)",
                _ => "",
            };
            bail!("the daemon answered {status}: {detail}{hint}");
        }
        Ok(text)
    }
}

fn parse_answer<T: DeserializeOwned>(path: &str, text: &str) -> anyhow::Result<T> {
    serde_json::from_str(text).with_context(|| {
        format!("the daemon's answer to {path} is not what this client expects (a different xdpwall version?)")
    })
}

/// `s` percent-encoded for one path segment (a feed name).
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
