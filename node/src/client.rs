//! A small blocking client for a node's HTTP API, used by the CLI verbs.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Longest wait for any API call. Appends return once durable, well within this.
const TIMEOUT: Duration = Duration::from_secs(30);

pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(api: &str) -> anyhow::Result<Self> {
        let base = if api.starts_with("http://") || api.starts_with("https://") {
            api.trim_end_matches('/').to_owned()
        } else {
            format!("http://{api}")
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
            .build()
            .into();
        Ok(Self { base, agent })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let response = self.agent.get(format!("{}{path}", self.base)).call();
        self.read(path, response)
    }

    /// A GET whose answer is text (DOT, Mermaid), not JSON.
    pub fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let response = self.agent.get(format!("{}{path}", self.base)).call();
        self.read_text(path, response)
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let response = self.agent.delete(format!("{}{path}", self.base)).call();
        self.read(path, response)
    }

    pub fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let response = self
            .agent
            .post(format!("{}{path}", self.base))
            .send_json(body);
        self.read(path, response)
    }

    pub fn post_text<T: DeserializeOwned>(&self, path: &str, body: String) -> anyhow::Result<T> {
        let response = self
            .agent
            .post(format!("{}{path}", self.base))
            .content_type("text/plain; charset=utf-8")
            .send(body);
        self.read(path, response)
    }

    fn read<T: DeserializeOwned>(
        &self,
        path: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<T> {
        let text = self.read_text(path, response)?;
        serde_json::from_str(&text).with_context(|| format!("unexpected answer to {path}"))
    }

    /// The body of a successful answer, or the node's one-line reason as the error.
    fn read_text(
        &self,
        path: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<String> {
        let mut response = response.map_err(|e| match e {
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                anyhow::anyhow!(
                    "no node API at {} (is `meshnode run` up? see --api)",
                    self.base
                )
            }
            other => anyhow::anyhow!("cannot reach the node API at {}: {other}", self.base),
        })?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer to {path}"))?;
        if !status.is_success() {
            let reason = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(text);
            anyhow::bail!("{reason}");
        }
        Ok(text)
    }
}

/// Percent-encodes a query parameter value.
pub fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
