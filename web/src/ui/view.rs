//! What the templates see: one struct per page, plus the small pieces every page shares
//! (the layout, status badges, relative times, field errors). Templates escape every
//! value; nothing here is marked safe.

use std::collections::BTreeMap;

use askama::Template;
use paastech_core::{Deployment, DeploymentStatus, Timestamp};

use super::session::Session;

/// The frame of every page.
pub struct Layout {
    pub title: String,
    /// The signed-in user's email, when there is one.
    pub user: Option<String>,
    pub is_admin: bool,
    /// The CSRF token every form of the page carries.
    pub csrf: String,
    /// A one-line confirmation to show at the top ("Saved: v5 is live").
    pub notice: Option<String>,
    /// Which main navigation entry is current.
    pub nav: &'static str,
    /// The live-update stream the page's script listens to, if any.
    pub stream: Option<String>,
    /// Offer "log in" and "sign up" in the header (pages without a session); error pages,
    /// which do not know who is looking, offer only the way back.
    pub auth_links: bool,
}

impl Layout {
    pub fn anonymous(title: &str) -> Layout {
        Layout {
            title: title.to_owned(),
            user: None,
            is_admin: false,
            csrf: String::new(),
            notice: None,
            nav: "",
            stream: None,
            auth_links: false,
        }
    }

    pub fn new(session: &Session, title: impl Into<String>, nav: &'static str) -> Layout {
        Layout {
            title: title.into(),
            user: Some(session.user.email.clone()),
            is_admin: session.user.is_admin,
            csrf: session.csrf.clone(),
            notice: None,
            nav,
            stream: None,
            auth_links: false,
        }
    }

    pub fn with_notice(mut self, notice: Option<String>) -> Layout {
        self.notice = notice;
        self
    }
}

/// Messages for the fields of a form, shown next to each field.
#[derive(Default, Debug)]
pub struct FieldErrors(BTreeMap<&'static str, String>);

impl FieldErrors {
    pub fn one(field: &'static str, message: String) -> FieldErrors {
        let mut errors = FieldErrors::default();
        errors.add(field, message);
        errors
    }

    pub fn add(&mut self, field: &'static str, message: String) {
        self.0.entry(field).or_insert(message);
    }

    pub fn get(&self, field: &str) -> Option<&str> {
        self.0.get(field).map(String::as_str)
    }

    pub fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A status shown by colour (the CSS class) and by text.
pub struct Badge {
    pub class: &'static str,
    pub text: String,
}

impl Badge {
    pub fn of(status: DeploymentStatus) -> Badge {
        use DeploymentStatus::*;
        let class = match status {
            Live => "ok",
            Failed => "bad",
            Superseded => "old",
            Queued | Building | Built | Starting | Healthy => "busy",
        };
        Badge { class, text: status.as_str().to_owned() }
    }

    /// A project's status from its newest deployment and its live one.
    pub fn project(latest: Option<&Deployment>, live: Option<&Deployment>) -> Badge {
        match (latest, live) {
            (None, _) => Badge { class: "none", text: "not deployed".into() },
            (Some(latest), Some(live)) if latest.id == live.id => Badge { class: "ok", text: "live".into() },
            (Some(latest), _) if !latest.status.is_terminal() && latest.status != DeploymentStatus::Live => {
                Badge { class: "busy", text: "deploying".into() }
            }
            (Some(_), Some(_)) => Badge { class: "warn", text: "live, last deploy failed".into() },
            (Some(_), None) => Badge { class: "bad", text: "failed".into() },
        }
    }
}

/// A moment, shown relative to now with the exact time on hover.
pub struct When {
    pub iso: String,
    pub ago: String,
}

impl When {
    pub fn of(at: Timestamp, now: Timestamp) -> When {
        When { iso: at.to_rfc3339(), ago: ago(at, now) }
    }
}

/// "just now", "5 minutes ago", "3 days ago", then the date.
pub fn ago(at: Timestamp, now: Timestamp) -> String {
    let secs = (now.0 - at.0).max(0) / 1000;
    let plural = |n: i64, unit: &str| if n == 1 { format!("1 {unit} ago") } else { format!("{n} {unit}s ago") };
    match secs {
        0..45 => "just now".into(),
        45..2700 => plural(((secs + 30) / 60).max(1), "minute"),
        2700..79_200 => plural(((secs + 1800) / 3600).max(1), "hour"),
        79_200..2_160_000 => plural(((secs + 43_200) / 86_400).max(1), "day"),
        _ => at.to_rfc3339().get(..10).unwrap_or_default().to_owned(),
    }
}

pub fn short_commit(commit: &Option<String>) -> String {
    commit.as_deref().map(|c| c[..c.len().min(8)].to_owned()).unwrap_or_default()
}

// ----- Pages ----------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub l: Layout,
    pub message: String,
}

#[derive(Template)]
#[template(path = "password.html")]
pub struct PasswordPage {
    pub l: Layout,
    /// `forgot`, `sent`, `reset`, `verified`, `bad-link` or `off` (no mail on this server).
    pub mode: &'static str,
    /// The reset link's token, carried by the form.
    pub token: String,
    pub errors: FieldErrors,
}

#[derive(Template)]
#[template(path = "auth.html")]
pub struct AuthPage {
    pub l: Layout,
    pub signup: bool,
    pub email: String,
    pub errors: FieldErrors,
}

pub struct ProjectRow {
    pub name: String,
    pub url: String,
    pub badge: Badge,
    pub owner: String,
    /// The viewer's role on the project.
    pub role: &'static str,
    /// "v3 · push" of the newest deployment.
    pub last: Option<String>,
    pub when: Option<When>,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
pub struct Dashboard {
    pub l: Layout,
    pub projects: Vec<ProjectRow>,
    pub has_keys: bool,
    /// The address still has to be verified (a server with mail).
    pub unverified: bool,
}

#[derive(Template)]
#[template(path = "new_project.html")]
pub struct NewProject {
    pub l: Layout,
    pub name: String,
    pub errors: FieldErrors,
}

/// What every tab of a project page shows at its top.
pub struct ProjectHead {
    pub name: String,
    pub url: String,
    pub git_url: String,
    pub badge: Badge,
    pub live_version: Option<i64>,
    pub tab: &'static str,
    /// The viewer's role allows a developer's tabs (Env, Add-ons, Webhooks).
    pub developer: bool,
}

pub struct InstanceRow {
    pub name: String,
    pub version: i64,
    pub state: String,
    pub state_class: &'static str,
    pub restarts: u32,
    /// CPU share and memory as shown, `—` when unknown.
    pub cpu: String,
    pub memory: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
pub struct Overview {
    pub l: Layout,
    pub p: ProjectHead,
    pub instances: Vec<InstanceRow>,
    /// The last hour's memory and CPU, once there are two readings.
    pub chart: Option<super::chart::UsageChart>,
    pub latest: Option<DeploymentRow>,
    pub has_keys: bool,
    /// The whole project is stopped (`paastech stop`).
    pub stopped: bool,
    /// The process types stopped one by one.
    pub stopped_types: Vec<String>,
    /// Its sleep (`paastech sleep`): on or off, asleep or awake, the last wake's failure.
    pub sleep: paastech_core::SleepState,
    /// Why the last stop, start or restart did not work.
    pub error: Option<String>,
}

pub struct DeploymentRow {
    pub version: i64,
    pub badge: Badge,
    pub commit: String,
    pub cause: String,
    pub failure: Option<String>,
    pub when: When,
    pub has_build: bool,
    /// Whether a rollback to it makes sense: it was live once and is not now.
    pub can_roll_back: bool,
}

impl DeploymentRow {
    pub fn of(d: &Deployment, now: Timestamp) -> DeploymentRow {
        DeploymentRow {
            version: d.version,
            badge: Badge::of(d.status),
            commit: short_commit(&d.commit),
            cause: d.cause.clone(),
            failure: d.failure.clone(),
            when: When::of(d.created_at, now),
            has_build: d.build_id.is_some(),
            can_roll_back: d.status == DeploymentStatus::Superseded && d.build_id.is_some(),
        }
    }
}

#[derive(Template)]
#[template(path = "deployments.html")]
pub struct Deployments {
    pub l: Layout,
    pub p: ProjectHead,
    pub rows: Vec<DeploymentRow>,
    pub error: Option<String>,
    pub more: bool,
}

#[derive(Template)]
#[template(path = "build_log.html")]
pub struct BuildLog {
    pub l: Layout,
    pub p: ProjectHead,
    pub row: DeploymentRow,
    pub build_status: String,
    pub log: String,
    pub truncated: bool,
}

#[derive(Template)]
#[template(path = "env.html")]
pub struct EnvPage {
    pub l: Layout,
    pub p: ProjectHead,
    pub vars: Vec<(String, String)>,
    pub key: String,
    pub value: String,
    pub errors: FieldErrors,
}

pub struct DomainRow {
    pub domain: String,
    pub url: String,
    pub when: When,
    /// Its HTTPS certificate, when the server obtains them by ACME.
    pub certificate: Option<CertificateCell>,
}

/// A certificate's state in a table cell: a short word, and the details (expiry, the
/// last error, the next attempt) beside it.
pub struct CertificateCell {
    pub state: &'static str,
    /// `ok`, `busy` or `bad`: the badge's look (the stylesheet's classes).
    pub tone: &'static str,
    pub detail: String,
}

impl CertificateCell {
    pub fn of(status: paastech_core::CertificateStatus) -> CertificateCell {
        use paastech_core::CertificateState;
        let tone = match status.state {
            CertificateState::Valid | CertificateState::Operator => "ok",
            CertificateState::Pending => "busy",
            CertificateState::Failed | CertificateState::Expired => "bad",
        };
        let mut detail = Vec::new();
        if let Some(expires) = status.expires_at {
            detail.push(format!("expires {}", expires.to_rfc3339()));
        }
        if let Some(error) = status.last_error {
            detail.push(format!("last attempt failed: {error}"));
        }
        if let Some(next) = status.next_attempt_at
            && status.state != CertificateState::Valid
        {
            detail.push(format!("next attempt {}", next.to_rfc3339()));
        }
        CertificateCell { state: status.state.as_str(), tone, detail: detail.join("; ") }
    }
}

#[derive(Template)]
#[template(path = "domains.html")]
pub struct DomainsPage {
    pub l: Layout,
    pub p: ProjectHead,
    pub domains: Vec<DomainRow>,
    /// The project's own name and its certificate, when the server obtains them by ACME.
    pub own: Option<(String, CertificateCell)>,
    /// The add form's value, shown again with its error.
    pub domain: String,
    pub errors: FieldErrors,
    /// The HTTPS form: redirect on, and the HSTS max-age as typed (empty: off).
    pub https_redirect: bool,
    pub hsts_max_age: String,
}

pub struct AddonRow {
    pub name: String,
    pub kind: String,
    pub when: When,
    /// Why destroying it was just refused.
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "addons.html")]
pub struct AddonsPage {
    pub l: Layout,
    pub p: ProjectHead,
    pub addons: Vec<AddonRow>,
    /// The kinds the server offers.
    pub kinds: Vec<String>,
    /// The create form's values, shown again with its error.
    pub kind: String,
    pub name: String,
    pub errors: FieldErrors,
}

pub struct ScaleRow {
    pub process: String,
    pub count: u32,
}

#[derive(Template)]
#[template(path = "scale.html")]
pub struct ScalePage {
    pub l: Layout,
    pub p: ProjectHead,
    pub rows: Vec<ScaleRow>,
    pub max: u32,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "logs.html")]
pub struct LogsPage {
    pub l: Layout,
    pub p: ProjectHead,
    pub lines: Vec<String>,
}

#[derive(Template)]
#[template(path = "settings.html")]
pub struct SettingsPage {
    pub l: Layout,
    pub p: ProjectHead,
    pub errors: FieldErrors,
    pub previews_enabled: bool,
    pub previews: Vec<PreviewRow>,
    pub sleep: paastech_core::SleepState,
    /// The largest idle time the form accepts, in minutes.
    pub max_sleep_minutes: u32,
    /// (project, branch) when this project is a preview app.
    pub preview_of: Option<(String, String)>,
}

pub struct PreviewRow {
    pub name: String,
    pub branch: String,
    pub url: String,
    pub live_version: Option<i64>,
    pub when: When,
}

pub struct KeyRow {
    pub id: i64,
    pub name: String,
    pub fingerprint: String,
    pub when: When,
}

pub struct PendingTotp {
    pub secret: String,
    /// Made by the `qrcode` crate from the otpauth URL: an `<svg>` of rects only.
    pub qr_svg: String,
}

#[derive(Template)]
#[template(path = "security.html")]
pub struct SecurityPage {
    pub l: Layout,
    pub enabled: bool,
    pub recovery_left: i64,
    pub pending: Option<PendingTotp>,
    /// Shown once, right after two-factor login was turned on.
    pub recovery_codes: Option<Vec<String>>,
    pub errors: FieldErrors,
}

#[derive(Template)]
#[template(path = "login_code.html")]
pub struct LoginCodePage {
    pub l: Layout,
    pub errors: FieldErrors,
}

#[derive(Template)]
#[template(path = "keys.html")]
pub struct KeysPage {
    pub l: Layout,
    pub keys: Vec<KeyRow>,
    pub name: String,
    pub public_key: String,
    pub errors: FieldErrors,
}

pub struct TokenRow {
    pub id: i64,
    pub name: String,
    pub created: When,
    pub last_used: Option<When>,
    pub expires: Option<When>,
    pub is_session: bool,
    pub is_current: bool,
}

#[derive(Template)]
#[template(path = "tokens.html")]
pub struct TokensPage {
    pub l: Layout,
    pub tokens: Vec<TokenRow>,
    /// A token just created: shown this once.
    pub created: Option<String>,
    pub name: String,
    pub errors: FieldErrors,
}

pub struct UserRow {
    pub email: String,
    pub is_admin: bool,
    pub disabled: bool,
    pub projects: usize,
    pub when: When,
}

#[derive(Template)]
#[template(path = "admin.html")]
pub struct AdminPage {
    pub l: Layout,
    pub users: Vec<UserRow>,
    pub projects: Vec<ProjectRow>,
    pub runtime: String,
    pub builder: String,
    pub hooks: Vec<String>,
}

/// A machine of the runtime on the admin's nodes page.
pub struct NodeRow {
    pub id: String,
    pub hostname: String,
    pub address: String,
    pub role: &'static str,
    pub state: &'static str,
    /// `ok`, `warn` or `bad`: the badge's look.
    pub state_class: &'static str,
    pub availability: &'static str,
    pub instances: Vec<NodeInstanceRow>,
}

pub struct NodeInstanceRow {
    pub project: String,
    pub name: String,
    pub version: i64,
    pub state: String,
    pub state_class: &'static str,
    pub address: String,
}

#[derive(Template)]
#[template(path = "nodes.html")]
pub struct NodesPage {
    pub l: Layout,
    pub runtime: String,
    pub nodes: Vec<NodeRow>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        let now = Timestamp(10_000_000_000);
        let cases = [
            (0, "just now"),
            (44, "just now"),
            (60, "1 minute ago"),
            (150, "3 minutes ago"),
            (3600, "1 hour ago"),
            (7200, "2 hours ago"),
            (86_400, "1 day ago"),
            (3 * 86_400, "3 days ago"),
            (-30, "just now"),
        ];
        for (secs, want) in cases {
            assert_eq!(ago(Timestamp(now.0 - secs * 1000), now), want, "{secs} s");
        }
        assert_eq!(ago(Timestamp(0), now), "1970-01-01");
    }

    #[test]
    fn project_badges_say_what_serves() {
        let d = |id, status| Deployment {
            id,
            project_id: 1,
            version: id,
            status,
            build_id: Some(id),
            commit: None,
            config: Default::default(),
            scale: Default::default(),
            cause: "push".into(),
            failure: None,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        };
        use DeploymentStatus::*;
        assert_eq!(Badge::project(None, None).text, "not deployed");
        assert_eq!(Badge::project(Some(&d(2, Live)), Some(&d(2, Live))).class, "ok");
        assert_eq!(Badge::project(Some(&d(3, Building)), Some(&d(2, Live))).text, "deploying");
        assert_eq!(Badge::project(Some(&d(3, Failed)), Some(&d(2, Live))).class, "warn");
        assert_eq!(Badge::project(Some(&d(1, Failed)), None).text, "failed");
    }
}
