//! Custom domains: the host names a project answers on besides `NAME.<domain>`, and the
//! rules a name must follow to become one. Pure logic, no I/O.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::domain::Timestamp;
use crate::error::{Error, Result};

/// The longest input looked at; longer ones are refused before any conversion work.
const MAX_INPUT_BYTES: usize = 1024;

/// A custom domain in its canonical form: ASCII, lowercase, without a trailing dot; RFC 1123
/// labels, at least two, the last starting with a letter, 253 bytes at most. An
/// internationalized name is taken only in its ASCII (`xn--`) form; given in Unicode, it is
/// refused with a message that names that form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Hostname(String);

impl Hostname {
    pub const RULE: &'static str = "a domain is a host name such as www.example.com: at least two labels of letters, digits and hyphens (1 to 63 characters each, not starting or ending with a hyphen), 253 characters at most";

    /// Parses `input` as a host name, without the platform's reservations: see
    /// [`DomainRules::parse`] for what a project may claim.
    pub fn parse(input: &str) -> Result<Self> {
        let invalid = |why: &str| Error::Invalid(format!("invalid domain {input:?}: {why}"));
        if input.is_empty() {
            return Err(Error::Invalid("a domain is required".into()));
        }
        if input.len() > MAX_INPUT_BYTES {
            return Err(invalid("253 characters at most"));
        }
        if input.contains('*') {
            return Err(invalid("wildcard domains are not allowed: add each host name on its own"));
        }
        let unbracketed = input.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(input);
        if unbracketed.parse::<Ipv6Addr>().is_ok() {
            return Err(invalid("an IP address is not a domain: point a DNS name at the server instead"));
        }
        if input.contains("://") || input.contains('/') || input.contains(':') {
            return Err(invalid("give the host name alone, without scheme, port or path"));
        }
        // UTS 46 with the STD3 rules: lowercases, refuses characters no host name has and
        // `xn--` labels that do not decode, and gives a Unicode name's ASCII form.
        let ascii = idna::domain_to_ascii_cow(input.as_bytes(), idna::AsciiDenyList::STD3)
            .map_err(|_| invalid("not a valid host name: letters, digits, hyphens and dots only"))?;
        let name = ascii.strip_suffix('.').unwrap_or(&ascii);
        if looks_like_ipv4(name) {
            return Err(invalid("an IP address is not a domain: point a DNS name at the server instead"));
        }
        if name.is_empty() || name.len() > 253 {
            return Err(invalid(Self::RULE));
        }
        let labels: Vec<&str> = name.split('.').collect();
        if labels.len() < 2 {
            return Err(invalid("a domain has at least two labels, such as example.com"));
        }
        for label in &labels {
            let bytes = label.as_bytes();
            let ok = (1..=63).contains(&bytes.len())
                && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-';
            if !ok {
                return Err(invalid(Self::RULE));
            }
        }
        if labels.last().is_some_and(|tld| !tld.as_bytes()[0].is_ascii_lowercase()) {
            return Err(invalid("the last label (the top-level domain) starts with a letter"));
        }
        // One spelling per name, the one DNS and certificates use: what is stored is what
        // was typed, but lowercase. The API document's pattern can then say exactly what
        // is taken, which it could not for every Unicode spelling UTS 46 maps.
        if !input.is_ascii() {
            return Err(invalid(&format!("internationalized names are taken in their ASCII form: use {name}")));
        }
        Ok(Hostname(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is `parent` or a name under it.
    fn is_within(&self, parent: &str) -> bool {
        let parent = parent.trim_end_matches('.');
        !parent.is_empty()
            && (self.0.eq_ignore_ascii_case(parent)
                || self.0.len() > parent.len()
                    && self.0.as_bytes()[self.0.len() - parent.len() - 1] == b'.'
                    && self.0[self.0.len() - parent.len()..].eq_ignore_ascii_case(parent))
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a name would be read as an IPv4 address by a browser or resolver: dotted
/// decimal, or any name whose last label is a number (`127.1`, `0x7f.1`, `2130706433`),
/// the WHATWG URL rule. No top-level domain is numeric, so no real host name is refused.
fn looks_like_ipv4(name: &str) -> bool {
    if name.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let last = name.rsplit('.').next().unwrap_or(name);
    let hex = last.strip_prefix("0x").or_else(|| last.strip_prefix("0X"));
    match hex {
        Some(digits) => digits.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// What names the platform keeps for itself: its app domain (every name under it is a
/// project's `NAME.<domain>`) and the API's public host, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRules {
    pub app_domain: String,
    pub api_host: Option<String>,
}

impl DomainRules {
    pub fn new(app_domain: impl Into<String>) -> Self {
        DomainRules { app_domain: app_domain.into(), api_host: None }
    }

    /// `input` as a custom domain a project may claim: a valid host name, not the app
    /// domain or a name under it, not the API's host.
    pub fn parse(&self, input: &str) -> Result<Hostname> {
        let name = Hostname::parse(input)?;
        if name.is_within(&self.app_domain) {
            return Err(Error::Invalid(format!(
                "invalid domain {name}: names under {} are the platform's (projects are served there by name)",
                self.app_domain.trim_end_matches('.')
            )));
        }
        if self.api_host.as_deref().is_some_and(|host| name.as_str().eq_ignore_ascii_case(host.trim_end_matches('.'))) {
            return Err(Error::Invalid(format!("invalid domain {name}: it is the platform's API host")));
        }
        Ok(name)
    }
}

/// A custom domain of a project. Certificate state (status, last error, expiry) will live
/// beside it once certificates are ordered per domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub id: i64,
    pub project_id: i64,
    pub name: Hostname,
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Ok(canonical)` or `Err(words the message must contain)`.
    fn check(rules: &DomainRules, cases: &[(&str, std::result::Result<&str, &str>)]) {
        for (input, want) in cases {
            let got = rules.parse(input);
            match (want, &got) {
                (Ok(want), Ok(name)) => assert_eq!(name.as_str(), *want, "{input:?}"),
                (Err(words), Err(Error::Invalid(message))) => {
                    assert!(message.contains(words), "{input:?}: {message:?} should say {words:?}")
                }
                _ => panic!("{input:?}: expected {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn custom_domains() {
        let mut rules = DomainRules::new("apps.example.net");
        rules.api_host = Some("paastech.example.net".into());
        let long_label = "a".repeat(63);
        let too_long_label = format!("{}.com", "a".repeat(64));
        let at_limit = format!("{0}.{0}.{0}.{1}.com", "a".repeat(63), "a".repeat(57));
        let over_limit = format!("{0}.{0}.{0}.{1}.com", "a".repeat(63), "a".repeat(58));
        let long_ok = format!("{long_label}.com");
        check(
            &rules,
            &[
                ("www.example.com", Ok("www.example.com")),
                ("WWW.Example.COM", Ok("www.example.com")),
                ("www.example.com.", Ok("www.example.com")),
                ("example.com", Ok("example.com")),
                ("a-b.c1.example.co.uk", Ok("a-b.c1.example.co.uk")),
                ("123.example.com", Ok("123.example.com")),
                ("bücher.example", Err("ASCII form: use xn--bcher-kva.example")),
                ("xn--bcher-kva.example", Ok("xn--bcher-kva.example")),
                ("ÉCOLE.example", Err("use xn--cole-9oa.example")),
                ("bücher。example", Err("use xn--bcher-kva.example")),
                ("例え.テスト", Err("use xn--r8jz45g.xn--zckzah")),
                ("bücher.local_host", Err("letters, digits, hyphens and dots only")),
                ("example.1com", Err("top-level domain")),
                ("example.c0m", Ok("example.c0m")),
                (long_ok.as_str(), Ok(long_ok.as_str())),
                (at_limit.as_str(), Ok(at_limit.as_str())),
                ("", Err("required")),
                ("localhost", Err("at least two labels")),
                ("com.", Err("at least two labels")),
                (too_long_label.as_str(), Err("63 characters")),
                (over_limit.as_str(), Err("253 characters")),
                ("-www.example.com", Err("not starting or ending with a hyphen")),
                ("www-.example.com", Err("not starting or ending with a hyphen")),
                ("www..example.com", Err("letters, digits and hyphens")),
                (".example.com", Err("letters, digits and hyphens")),
                ("my_app.example.com", Err("not a valid host name")),
                ("a b.example.com", Err("not a valid host name")),
                ("ª.example.com", Err("use a.example.com")),
                ("xn--zz.example", Err("xn--")),
                ("*.example.com", Err("wildcard")),
                ("www.*.example.com", Err("wildcard")),
                ("127.0.0.1", Err("IP address")),
                ("127.1", Err("IP address")),
                ("0x7f.0.0.1", Err("IP address")),
                ("2130706433", Err("IP address")),
                ("10.0.0.1.", Err("IP address")),
                ("１２７.０.０.１", Err("IP address")),
                ("::1", Err("IP address")),
                ("[::1]", Err("IP address")),
                ("2001:db8::1", Err("IP address")),
                ("::ffff:127.0.0.1", Err("IP address")),
                ("www.example.com:8080", Err("without scheme, port or path")),
                ("http://www.example.com", Err("without scheme, port or path")),
                ("www.example.com/x", Err("without scheme, port or path")),
                ("apps.example.net", Err("are the platform's")),
                ("blog.apps.example.net", Err("are the platform's")),
                ("BLOG.Apps.Example.Net.", Err("are the platform's")),
                ("xapps.example.net", Ok("xapps.example.net")),
                ("paastech.example.net", Err("API host")),
                ("www.paastech.example.net", Ok("www.paastech.example.net")),
            ],
        );
    }

    #[test]
    fn the_default_app_domain_keeps_names_under_localhost() {
        check(&DomainRules::new("localhost"), &[("blog.localhost", Err("localhost are the platform's"))]);
    }

    #[test]
    fn a_huge_input_is_refused_without_conversion() {
        let huge = "a.".repeat(100_000);
        assert!(matches!(Hostname::parse(&huge), Err(Error::Invalid(_))));
    }
}
