//! A cookie-keeping HTTP client for the web UI's pages and forms, without a browser.

use std::time::Duration;

/// The password every journey's users have (see `Api::user`).
pub const PASSWORD: &str = "correct horse battery";

/// A cookie-keeping HTTP client that does not follow redirects.
pub struct Web {
    base: String,
    agent: ureq::Agent,
    pub cookies: std::collections::BTreeMap<String, String>,
}

pub struct Page {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Page {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn set_cookies(&self) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie")).map(|(_, v)| v.as_str()).collect()
    }

    /// The value of the first hidden `csrf` field.
    pub fn csrf(&self) -> String {
        let start =
            self.body.find("name=\"csrf\" value=\"").unwrap_or_else(|| panic!("no csrf field in:\n{}", self.body));
        let rest = &self.body[start + 19..];
        rest[..rest.find('"').expect("end of value")].to_owned()
    }
}

impl Web {
    pub fn new(base: &str) -> Web {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Web { base: base.to_owned(), agent, cookies: Default::default() }
    }

    pub fn send(&mut self, method: &str, path: &str, form: Option<&[(&str, &str)]>, extra: &[(&str, &str)]) -> Page {
        let cookie = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let mut request = ureq::http::Request::builder().method(method).uri(format!("{}{path}", self.base));
        if !cookie.is_empty() {
            request = request.header("Cookie", cookie);
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let result = match form {
            Some(fields) => {
                let body = fields.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect::<Vec<_>>().join("&");
                self.agent.run(
                    request.header("Content-Type", "application/x-www-form-urlencoded").body(body).expect("request"),
                )
            }
            None => self.agent.run(request.body(()).expect("request")),
        };
        let mut response = result.unwrap_or_else(|err| panic!("{method} {path}: {err}"));
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        let page = Page { status: response.status().as_u16(), headers, body };
        for set in page.set_cookies() {
            let pair = set.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        page
    }

    pub fn get(&mut self, path: &str) -> Page {
        self.send("GET", path, None, &[])
    }

    pub fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        self.send("POST", path, Some(form), &[])
    }

    /// Logs in through the form (its double-submit token included).
    pub fn log_in(&mut self, email: &str) {
        let page = self.get("/login");
        let csrf = page.csrf();
        let answer = self.post("/login", &[("csrf", &csrf), ("email", email), ("password", PASSWORD)]);
        assert_eq!(answer.status, 303, "{}", answer.body);
        assert!(self.cookies.contains_key("paastech_session"));
    }

    /// Signs up through the form (its double-submit token included).
    pub fn sign_up(&mut self, email: &str) {
        let page = self.get("/signup");
        let csrf = page.csrf();
        let answer = self.post("/signup", &[("csrf", &csrf), ("email", email), ("password", PASSWORD)]);
        assert_eq!(answer.status, 303, "{}", answer.body);
        assert!(self.cookies.contains_key("paastech_session"));
    }
}

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
