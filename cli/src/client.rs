//! The HTTP client side of the CLI: where the server is, who we are, and JSON calls that
//! turn API errors into readable messages.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7000";

/// What `paastech login` saves, readable by its user only.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedLogin {
    pub server: String,
    pub email: String,
    pub token: String,
}

/// A login whose password was right, but whose account needs a two-factor code too.
#[derive(Debug)]
pub struct TwoFactorRequired;

impl std::fmt::Display for TwoFactorRequired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("this account has two-factor login: a code is needed")
    }
}

impl std::error::Error for TwoFactorRequired {}

pub fn login_path() -> Result<PathBuf> {
    let dir = dirs::config_dir().context("no configuration directory for this user (is HOME set?)")?;
    Ok(dir.join("paastech").join("login.json"))
}

pub fn load_login() -> Result<Option<SavedLogin>> {
    let path = login_path()?;
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn save_login(login: &SavedLogin) -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let path = login_path()?;
    let dir = path.parent().expect("login path has a parent");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(".login.json.tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    // The mode of an existing file is not changed by `mode()`.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(serde_json::to_string_pretty(login)?.as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub fn forget_login() -> Result<bool> {
    let path = login_path()?;
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err).with_context(|| format!("removing {}", path.display())),
    }
}

pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// `--server`/`PAASTECH_SERVER`, else the saved login's server, else the local default;
    /// the token from `PAASTECH_TOKEN`, else the saved login for that server.
    pub fn new(server: Option<String>, token: Option<String>) -> Result<Client> {
        let saved = load_login()?;
        let base =
            server.or_else(|| saved.as_ref().map(|s| s.server.clone())).unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        let base = base.trim_end_matches('/').to_owned();
        let token = token.or_else(|| saved.filter(|s| s.server.trim_end_matches('/') == base).map(|s| s.token));
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Ok(Client { base, token, agent })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The token requests carry, if any (the interactive `run` sends it itself).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    fn authorize<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    fn finish<T: DeserializeOwned>(&self, result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<T> {
        let mut response = result.map_err(|err| anyhow!("cannot reach the PaaSTech server at {}: {err}", self.base))?;
        let status = response.status();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        if status.is_success() {
            let text = if text.is_empty() { "null" } else { &text };
            return serde_json::from_str(text).with_context(|| format!("unexpected answer from the server ({status})"));
        }
        let error = serde_json::from_str::<Value>(&text).ok();
        if error.as_ref().and_then(|v| v["error"]["code"].as_str()) == Some("two_factor_required") {
            return Err(anyhow::Error::new(TwoFactorRequired));
        }
        let message = error
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("the server answered {status}"));
        if status == 401 && self.token.is_none() {
            bail!("{message} (run `paastech login` first, or set PAASTECH_TOKEN)");
        }
        bail!("{message}")
    }

    pub fn put<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.finish(self.authorize(self.agent.put(self.url(path))).send_json(body))
    }

    /// A streamed GET (logs): the body as a reader, or the API's error.
    pub fn get_stream(&self, path: &str) -> Result<impl std::io::Read + use<>> {
        let response = self.authorize(Self::streaming_agent().get(self.url(path))).call();
        self.stream(response)
    }

    /// A POST whose answer streams (a one-off command's output).
    pub fn post_stream<B: Serialize>(&self, path: &str, body: &B) -> Result<impl std::io::Read + use<B>> {
        let response = self.authorize(Self::streaming_agent().post(self.url(path))).send_json(body);
        self.stream(response)
    }

    /// A POST whose body streams from `body` (a restore from stdin); its answer is JSON.
    pub fn post_reader(&self, path: &str, mut body: impl std::io::Read) -> Result<Value> {
        let request = self
            .authorize(Self::streaming_agent().post(self.url(path)))
            .header("Content-Type", "application/octet-stream");
        self.finish(request.send(ureq::SendBody::from_reader(&mut body)))
    }

    /// An agent without timeouts: a followed log or a command's output may take hours.
    fn streaming_agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(None)
            .timeout_recv_body(None)
            .build()
            .into()
    }

    fn stream(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<impl std::io::Read + use<>> {
        let response = response.map_err(|err| anyhow!("cannot reach the PaaSTech server at {}: {err}", self.base))?;
        if response.status().is_success() {
            return Ok(response.into_body().into_reader());
        }
        match self.finish::<Value>(Ok(response)) {
            Err(err) => Err(err),
            Ok(_) => bail!("unexpected answer from the server"),
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.finish(self.authorize(self.agent.get(self.url(path))).call())
    }

    pub fn delete(&self, path: &str) -> Result<()> {
        self.finish::<Value>(self.authorize(self.agent.delete(self.url(path))).call()).map(drop)
    }

    pub fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.finish(self.authorize(self.agent.post(self.url(path))).send_json(body))
    }

    pub fn patch<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.finish(self.authorize(self.agent.patch(self.url(path))).send_json(body))
    }
}

/// Prints rows under headers, columns padded to their widest cell.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
