//! The API client behind `chaserfs workspaces|snapshots|sessions|mount`: plain HTTP calls to
//! a running daemon, human tables by default and the API's JSON with `--json`. This module
//! holds the HTTP client and the output helpers; each command group is its own module.

pub(crate) mod sessions;
pub(crate) mod snapshots;
pub(crate) mod workspaces;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

#[derive(Args, Clone)]
pub struct ClientOpts {
    /// Base URL of the daemon's API.
    #[arg(
        long,
        env = "CHASER_API_URL",
        default_value = "http://127.0.0.1:7878",
        global = true
    )]
    pub(crate) api_url: String,
    /// API key (Bearer).
    #[arg(long, env = "CHASER_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

pub(crate) struct Client {
    pub(crate) opts: ClientOpts,
    agent: ureq::Agent,
}

/// Percent-encodes a path segment (names may hold spaces, '?', '#', ...).
pub(crate) fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Client {
    pub(crate) fn new(opts: ClientOpts) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Client { opts, agent }
    }

    /// Calls the API; a non-2xx answer becomes an error carrying its code and message.
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.opts.api_url.trim_end_matches('/'));
        let auth = self.auth();
        let a = &self.agent;
        let resp = match (method, body) {
            ("GET", _) => a.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => a.delete(&url).header("Authorization", &auth).call(),
            ("POST", b) => a
                .post(&url)
                .header("Authorization", &auth)
                .send_json(b.unwrap_or(json!({}))),
            ("PUT", b) => a
                .put(&url)
                .header("Authorization", &auth)
                .send_json(b.unwrap_or(json!({}))),
            (m, _) => bail!("unsupported method {m}"),
        };
        Self::answer(resp.with_context(|| format!("calling {url}"))?)
    }

    /// Every item of a paged listing (`path` has a query already), following `next_cursor`.
    fn all_pages(&self, path: &str, field: &str) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = match &cursor {
                Some(c) => self.call("GET", &format!("{path}&cursor={c}"), None)?,
                None => self.call("GET", path, None)?,
            };
            all.extend(page[field].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return Ok(all),
            }
        }
    }

    /// Sends the file at `from` as the body, streamed.
    fn upload(&self, path: &str, media: &str, from: &std::path::Path) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.opts.api_url.trim_end_matches('/'));
        let mut file =
            std::fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
        let resp = self
            .agent
            .post(&url)
            .header("Authorization", &self.auth())
            .header("Content-Type", media)
            .send(ureq::SendBody::from_reader(&mut file))
            .with_context(|| format!("calling {url}"))?;
        Self::answer(resp)
    }

    /// Copies a 2xx answer's body into `to`, streamed; returns the bytes copied.
    fn download(&self, path: &str, to: &mut dyn std::io::Write) -> anyhow::Result<u64> {
        let url = format!("{}{path}", self.opts.api_url.trim_end_matches('/'));
        let mut resp = self
            .agent
            .get(&url)
            .header("Authorization", &self.auth())
            .call()
            .with_context(|| format!("calling {url}"))?;
        if !resp.status().is_success() {
            return Self::answer(resp).map(|_| 0);
        }
        let mut body = resp.body_mut().with_config().limit(u64::MAX).reader();
        std::io::copy(&mut body, to).context("reading the archive (cut off?)")
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.opts.api_key.as_deref().unwrap_or(""))
    }

    /// The answer's JSON; a non-2xx answer becomes an error carrying its code and message.
    fn answer(mut resp: ureq::http::Response<ureq::Body>) -> anyhow::Result<Value> {
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string()?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !(200..300).contains(&status) {
            let code = value["error"]["code"].as_str().unwrap_or("http_error");
            let msg = value["error"]["message"].as_str().unwrap_or("");
            bail!("{status} {code}: {msg}");
        }
        Ok(value)
    }

    fn print(&self, value: &Value, human: impl FnOnce(&Value)) {
        if self.opts.json {
            println!("{}", serde_json::to_string_pretty(value).expect("json"));
        } else {
            human(value);
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints rows under headers, columns padded to their widest cell.
pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}
