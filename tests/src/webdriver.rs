//! A thin W3C WebDriver client over `ureq` (already a test dependency), driving Debian's
//! headless Chromium through its `chromedriver`. A dozen endpoints are all the UI journeys
//! need; a WebDriver crate would bring a second HTTP stack and an async runtime into the
//! test build for no gain.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// The key under which WebDriver names an element.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(env)
        && !path.is_empty()
    {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|dir| names.iter().map(move |n| dir.join(n))).find(|p| p.is_file())
}

/// A headless Chromium session, with its own chromedriver and profile; both end on drop.
pub struct Browser {
    driver: Child,
    session: String,
    agent: ureq::Agent,
    profile: tempfile::TempDir,
    /// How long `find` waits for an element to appear.
    pub patience: Duration,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium under it. Fails with a
    /// clear message when either is missing.
    pub fn start() -> Browser {
        let chromium = find_program("PAASTECH_CHROMIUM", &["chromium", "chromium-browser"]).unwrap_or_else(|| {
            panic!(
                "chromium is not installed: run scripts/setup/50-chromium.sh (apt-get install chromium chromium-driver)"
            )
        });
        let chromedriver = find_program("PAASTECH_CHROMEDRIVER", &["chromedriver"]).unwrap_or_else(|| {
            panic!("chromedriver is not installed: run scripts/setup/50-chromium.sh (apt-get install chromium-driver)")
        });
        let port = crate::free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {}: {err}", chromedriver.display()));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let profile = tempfile::tempdir().expect("browser profile dir");
        let mut browser = Browser { driver, session: String::new(), agent, profile, patience: Duration::from_secs(15) };
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = browser.call("GET", &format!("{base}/status"), None).ok().and_then(|v| v["ready"].as_bool());
            if ready == Some(true) {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile_dir = browser.profile.path().display().to_string();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                    "--window-size=1280,900", format!("--user-data-dir={profile_dir}"),
                ],
            },
        }}});
        let answer = browser
            .call("POST", &format!("{base}/session"), Some(&capabilities))
            .unwrap_or_else(|err| panic!("starting a Chromium session: {err}"));
        let id = answer["sessionId"].as_str().unwrap_or_else(|| panic!("no session id in {answer}"));
        browser.session = format!("{base}/session/{id}");
        browser
    }

    /// One WebDriver command; a WebDriver error becomes `Err` with its message.
    fn call(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Value, String> {
        let request = ureq::http::Request::builder().method(method).uri(url);
        let result = match body {
            Some(body) => self.agent.run(
                request
                    .header("Content-Type", "application/json")
                    .body(serde_json::to_vec(body).expect("json"))
                    .expect("request"),
            ),
            None => self.agent.run(request.body(()).expect("request")),
        };
        let mut response = result.map_err(|err| format!("{method} {url}: {err}"))?;
        let text = response.body_mut().read_to_string().map_err(|err| format!("{method} {url}: {err}"))?;
        let value: Value = serde_json::from_str(&text).map_err(|err| format!("{method} {url}: {err}: {text}"))?;
        if let Some(error) = value["value"]["error"].as_str() {
            return Err(format!("{method} {url}: {error}: {}", value["value"]["message"]));
        }
        Ok(value["value"].clone())
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.call(method, &format!("{}{path}", self.session), body.as_ref())
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url}))).unwrap_or_else(|err| panic!("{err}"));
    }

    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }

    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }

    pub fn set_size(&self, width: u32, height: u32) {
        self.cmd("POST", "/window/rect", Some(json!({"width": width, "height": height})))
            .unwrap_or_else(|err| panic!("{err}"));
    }

    pub fn execute(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
            .unwrap_or_else(|err| panic!("{err}"))
    }

    /// The first element matching `css`, if there is one now.
    pub fn try_find(&self, css: &str) -> Option<Element<'_>> {
        let value = self.cmd("POST", "/element", Some(json!({"using": "css selector", "value": css}))).ok()?;
        value[ELEMENT_KEY].as_str().map(|id| Element { browser: self, id: id.to_owned() })
    }

    /// The first element matching `css`, waiting for it up to `patience`.
    pub fn find(&self, css: &str) -> Element<'_> {
        let deadline = Instant::now() + self.patience;
        loop {
            if let Some(element) = self.try_find(css) {
                return element;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css:?} on {} after {:?}; page:\n{}",
                self.url(),
                self.patience,
                self.body_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The page's visible text.
    pub fn body_text(&self) -> String {
        self.try_find("body").map(|b| b.text()).unwrap_or_default()
    }

    /// Waits until the text of `css` contains `needle`; returns the text it saw last.
    pub fn wait_text(&self, css: &str, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.try_find(css).map(|e| e.text()).unwrap_or_default();
            if text.contains(needle) {
                return Ok(text);
            }
            if Instant::now() >= deadline {
                return Err(text);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fills the field `css` with `text`, replacing what it held.
    pub fn fill(&self, css: &str, text: &str) {
        let field = self.find(css);
        field.clear();
        field.send_keys(text);
    }

    /// Saves a PNG of the viewport.
    pub fn screenshot(&self, path: &Path) {
        let data = self.cmd("GET", "/screenshot", None).unwrap_or_else(|err| panic!("{err}"));
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .expect("screenshot is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("writing a screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &self.session.clone(), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Element<'_> {
    fn path(&self, tail: &str) -> String {
        format!("/element/{}{tail}", self.id)
    }

    pub fn click(&self) {
        self.browser.cmd("POST", &self.path("/click"), Some(json!({}))).unwrap_or_else(|err| panic!("{err}"));
    }

    pub fn clear(&self) {
        self.browser.cmd("POST", &self.path("/clear"), Some(json!({}))).unwrap_or_else(|err| panic!("{err}"));
    }

    pub fn send_keys(&self, text: &str) {
        self.browser
            .cmd("POST", &self.path("/value"), Some(json!({"text": text})))
            .unwrap_or_else(|err| panic!("{err}"));
    }

    pub fn text(&self) -> String {
        self.browser
            .cmd("GET", &self.path("/text"), None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    pub fn attr(&self, name: &str) -> Option<String> {
        self.browser.cmd("GET", &self.path(&format!("/attribute/{name}")), None).ok()?.as_str().map(str::to_owned)
    }
}
