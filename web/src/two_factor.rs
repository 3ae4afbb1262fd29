//! Two-factor login with TOTP (RFC 6238: HMAC-SHA-1, 6 digits, 30 s steps, one step of
//! skew either way) and one-time recovery codes.
//!
//! The secret is 20 random bytes, sealed at rest by the store. A code is accepted once:
//! the store keeps the last step a code was accepted for and refuses that step and
//! earlier ones. Recovery codes are random (about 50 bits each), so a SHA-256 of them is stored,
//! as for API tokens; each one is deleted when used.

use paastech_core::{Error, User};
use rand::RngCore;
use totp_rs::{Algorithm, Builder, Totp};

use crate::AppState;
use crate::auth::token_hash;

/// The name authenticator apps show beside the account.
pub const ISSUER: &str = "PaaSTech";
const DIGITS: u8 = 6;
const STEP_SECS: u64 = 30;
const SKEW_STEPS: u16 = 1;
pub const RECOVERY_CODES: usize = 10;

/// A new shared secret: 20 random bytes (160 bits, as RFC 4226 recommends).
pub fn new_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 20];
    rand::rng().fill_bytes(&mut secret);
    secret
}

/// The TOTP of `secret` for the account `email` (which names it in authenticator apps).
pub fn totp(secret: &[u8], email: &str) -> Result<Totp, Error> {
    // The otpauth label forbids ':' in the account name.
    let account = email.replace(':', "_");
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(DIGITS)
        .with_skew(SKEW_STEPS)
        .with_step_duration(STEP_SECS)
        .with_secret(secret.to_vec())
        .with_issuer(Some(ISSUER))
        .with_account_name(account)
        .build()
        .map_err(|e| Error::internal_msg(format!("cannot make the TOTP of {email}: {e}")))
}

/// The secret as authenticator apps take it typed in: base32 without padding.
pub fn secret_text(totp: &Totp) -> String {
    totp.secret().to_base32()
}

/// The `otpauth://totp/...` URL the QR code holds.
pub fn otpauth_url(totp: &Totp) -> Result<String, Error> {
    totp.to_url().map_err(|e| Error::internal_msg(format!("cannot make the otpauth URL: {e}")))
}

/// The QR code of `url` as an SVG element to put inline in a page (no script, no style).
pub fn qr_svg(url: &str) -> Result<String, Error> {
    let code = qrcode::QrCode::new(url.as_bytes())
        .map_err(|e| Error::internal_msg(format!("cannot make the QR code: {e}")))?;
    let svg = code.render::<qrcode::render::svg::Color<'_>>().min_dimensions(200, 200).build();
    // Drop the XML declaration: the SVG goes inside an HTML page.
    Ok(svg.find("<svg").map_or(svg.clone(), |start| svg[start..].to_owned()))
}

/// The longest code the API takes (a 6-digit code or a recovery code, typed loosely).
pub const MAX_CODE_LEN: usize = 64;

/// Refuses a code longer than any code, as the documented schema does.
pub fn check_code_length(code: &str) -> Result<(), Error> {
    if code.len() > MAX_CODE_LEN {
        return Err(Error::Invalid(format!("code too long: at most {MAX_CODE_LEN} bytes")));
    }
    Ok(())
}

/// Keeps the digits of a code as people type it ("123 456"); `None` when it is not one.
fn six_digits(code: &str) -> Option<String> {
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    (digits.len() == usize::from(DIGITS) && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// The step `code` is right for at `now_secs` (within the skew), if it is later than
/// `last_step` (a step already used is a replay).
pub fn matching_step(totp: &Totp, code: &str, now_secs: u64, last_step: Option<i64>) -> Option<i64> {
    let digits = six_digits(code)?;
    let step = i64::try_from(totp.check(&digits, now_secs)?).ok()?;
    match last_step {
        Some(last) if step <= last => None,
        _ => Some(step),
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Ten new recovery codes, `xxxxx-xxxxx` of lowercase letters and digits.
pub fn new_recovery_codes() -> Vec<String> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..RECOVERY_CODES)
        .map(|_| {
            let chars: String =
                (0..10).map(|_| char::from(ALPHABET[(rng.next_u32() as usize) % ALPHABET.len()])).collect();
            format!("{}-{}", &chars[..5], &chars[5..])
        })
        .collect()
}

/// What a recovery code is stored as: the SHA-256 of it as typed, without case, spaces
/// or dashes.
pub fn recovery_hash(code: &str) -> String {
    let normal: String = code.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect();
    token_hash(&format!("paastech recovery code:{normal}"))
}

/// Whether the user has two-factor login enabled (a pending enrolment does not count).
pub async fn enabled(state: &AppState, user: &User) -> Result<bool, Error> {
    Ok(state.store.totp(user.id).await?.is_some_and(|t| t.enabled))
}

/// Checks a second factor of `user`: a current code (used up by this check) or one of
/// their recovery codes (deleted by it). False when it is wrong, or when the user has no
/// enabled enrolment.
pub async fn check(state: &AppState, user: &User, code: &str) -> Result<bool, Error> {
    let Some(enrolment) = state.store.totp(user.id).await? else {
        return Ok(false);
    };
    if !enrolment.enabled {
        return Ok(false);
    }
    if six_digits(code).is_some() {
        let totp = totp(&enrolment.secret, &user.email)?;
        return match matching_step(&totp, code, now_secs(), enrolment.last_step) {
            // The store decides again, in one statement: of two logins racing with one
            // code, one wins.
            Some(step) => state.store.use_totp_step(user.id, step).await,
            None => Ok(false),
        };
    }
    if code.trim().is_empty() || code.len() > MAX_CODE_LEN {
        return Ok(false);
    }
    state.store.use_recovery_code(user.id, &recovery_hash(code)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(t: &Totp, secs: u64) -> String {
        t.generate(secs).to_string()
    }

    fn fixed() -> Totp {
        // RFC 6238's SHA-1 test secret.
        totp(b"12345678901234567890", "ada@example.com").expect("totp")
    }

    #[test]
    fn rfc_6238_vectors_pass() {
        let t = fixed();
        // RFC 6238 appendix B, last 6 of the 8 digits.
        assert_eq!(code(&t, 59), "287082");
        assert_eq!(code(&t, 1_111_111_109), "081804");
        assert_eq!(matching_step(&t, "287082", 59, None), Some(1));
    }

    #[test]
    fn one_step_of_skew_either_way_and_no_more() {
        let t = fixed();
        let now = 1_111_111_109; // step 37037036
        let step = (now / 30) as i64;
        for (offset, expected) in
            [(-60i64, None), (-30, Some(step - 1)), (0, Some(step)), (30, Some(step + 1)), (60, None)]
        {
            let c = code(&t, (now as i64 + offset) as u64);
            assert_eq!(matching_step(&t, &c, now, None), expected, "code of {offset:+} s");
        }
    }

    #[test]
    fn a_used_step_or_an_earlier_one_is_refused() {
        let t = fixed();
        let now = 1_111_111_109;
        let step = (now / 30) as i64;
        let c = code(&t, now);
        assert_eq!(matching_step(&t, &c, now, Some(step - 1)), Some(step));
        assert_eq!(matching_step(&t, &c, now, Some(step)), None, "replay in its step");
        // The previous step's code, still within the skew, after the current one was used.
        assert_eq!(matching_step(&t, &code(&t, now - 30), now, Some(step)), None);
    }

    #[test]
    fn codes_are_read_as_typed_and_junk_is_refused() {
        let t = fixed();
        let now = 59;
        assert_eq!(matching_step(&t, " 287 082 ", now, None), Some(1));
        for junk in ["", "28708", "2870822", "28708a", "２８７０８２"] {
            assert_eq!(matching_step(&t, junk, now, None), None, "{junk:?}");
        }
    }

    #[test]
    fn recovery_codes_are_random_and_hashed_as_typed() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        assert!(codes.iter().all(|c| c.len() == 11 && c.as_bytes()[5] == b'-'));
        let mut unique = codes.clone();
        unique.dedup();
        assert_eq!(unique.len(), codes.len());
        assert_eq!(recovery_hash("abcde-fghij"), recovery_hash(" ABCDEFGHIJ "));
        assert_ne!(recovery_hash("abcde-fghij"), recovery_hash("abcde-fghik"));
    }

    #[test]
    fn the_qr_code_is_inline_svg_and_the_url_names_the_account() {
        let t = fixed();
        let url = otpauth_url(&t).expect("url");
        assert!(url.starts_with("otpauth://totp/PaaSTech:ada%40example.com?"), "{url}");
        assert!(url.contains(&format!("secret={}", secret_text(&t))), "{url}");
        let svg = qr_svg(&url).expect("svg");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{}", &svg[..40]);
        assert!(!svg.contains("<script") && !svg.contains("style="));
    }
}
