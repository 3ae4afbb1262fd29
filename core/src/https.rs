//! A project's HTTPS policy: whether plain HTTP is redirected to HTTPS, and whether HTTPS
//! answers carry HSTS. Plain data and its rules; the ingress applies it.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest HSTS max-age a project may ask for: two years, what browsers' preload lists
/// ask for, and far beyond what a mistake should be allowed to pin.
pub const MAX_HSTS_MAX_AGE: u32 = 63_072_000;

/// How a project is served over HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpsPolicy {
    /// Plain HTTP to the project's names answers `301` to the same URL over HTTPS, for the
    /// names the ingress holds a certificate for.
    pub redirect: bool,
    /// HTTPS answers carry `Strict-Transport-Security: max-age=N`; `None`: no HSTS.
    pub hsts_max_age: Option<u32>,
}

impl Default for HttpsPolicy {
    /// Redirect on (it only applies once a certificate is held), no HSTS: HSTS pins clients
    /// to HTTPS for its whole max-age, so it is the owner's decision.
    fn default() -> Self {
        HttpsPolicy { redirect: true, hsts_max_age: None }
    }
}

/// A change to a project's policy: fields left `None` stay as they are; `hsts_max_age:
/// Some(None)` turns HSTS off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpsChange {
    pub redirect: Option<bool>,
    pub hsts_max_age: Option<Option<u32>>,
}

impl HttpsPolicy {
    /// A max-age as a user gave it, checked against `0..=MAX_HSTS_MAX_AGE`.
    pub fn parse_hsts_max_age(seconds: i64) -> Result<u32> {
        u32::try_from(seconds).ok().filter(|s| *s <= MAX_HSTS_MAX_AGE).ok_or_else(|| {
            Error::Invalid(format!("hsts_max_age must be 0 to {MAX_HSTS_MAX_AGE} seconds (two years), not {seconds}"))
        })
    }

    /// This policy with `change` applied; `Invalid` when a max-age is out of range.
    pub fn apply(self, change: HttpsChange) -> Result<HttpsPolicy> {
        if let Some(Some(age)) = change.hsts_max_age {
            Self::parse_hsts_max_age(i64::from(age))?;
        }
        Ok(HttpsPolicy {
            redirect: change.redirect.unwrap_or(self.redirect),
            hsts_max_age: change.hsts_max_age.unwrap_or(self.hsts_max_age),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_checked_against_its_range() {
        for (input, ok) in
            [(0, true), (300, true), (63_072_000, true), (63_072_001, false), (-1, false), (i64::MAX, false)]
        {
            assert_eq!(HttpsPolicy::parse_hsts_max_age(input).is_ok(), ok, "{input}");
        }
    }

    #[test]
    fn a_change_keeps_what_it_does_not_name() {
        let policy = HttpsPolicy::default();
        let hsts = policy.apply(HttpsChange { redirect: None, hsts_max_age: Some(Some(300)) }).expect("valid");
        assert_eq!(hsts, HttpsPolicy { redirect: true, hsts_max_age: Some(300) });
        let off = hsts.apply(HttpsChange { redirect: Some(false), hsts_max_age: None }).expect("valid");
        assert_eq!(off, HttpsPolicy { redirect: false, hsts_max_age: Some(300) });
        let cleared = off.apply(HttpsChange { redirect: None, hsts_max_age: Some(None) }).expect("valid");
        assert_eq!(cleared, HttpsPolicy { redirect: false, hsts_max_age: None });
        assert!(off.apply(HttpsChange { redirect: None, hsts_max_age: Some(Some(u32::MAX)) }).is_err());
    }
}
