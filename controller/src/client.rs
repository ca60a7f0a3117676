//! The HTTP client behind the CLI's client subcommands.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde_json::Value;

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

    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .send(Method::GET, path, None)
            .await?
            .unwrap_or(Value::Null))
    }

    /// Sends a request; returns the JSON body (None for 204). Non-2xx answers become errors
    /// carrying the problem+json detail.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Option<Value>> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
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
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("detail").and_then(Value::as_str).map(String::from))
                .unwrap_or(text);
            let hint = match status.as_u16() {
                401 => " (pass --token or set XDPWALL_TOKEN)",
                403 => " (this needs a write token)",
                _ => "",
            };
            bail!("the daemon answered {status}: {detail}{hint}");
        }
        if text.is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("the daemon's answer to {path} is not JSON"))
    }
}
