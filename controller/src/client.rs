//! The HTTP client behind the CLI's client subcommands (`stats`, `status`, ...).

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// Talks to a running daemon's API.
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the xdpwall daemon at {}: {} (is `xdpwall run` running? set --api or XDPWALL_API)",
                self.base,
                e.without_url()
            )
        })?;
        let status = response.status();
        let body = response
            .text()
            .await
            .context("reading the daemon's answer")?;
        if !status.is_success() {
            let detail = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("detail").and_then(Value::as_str).map(String::from))
                .unwrap_or(body);
            bail!("the daemon answered {status}: {detail}");
        }
        serde_json::from_str(&body)
            .with_context(|| format!("the daemon's answer to {path} is not JSON"))
    }
}
