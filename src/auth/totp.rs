//! Time-based one-time passwords (RFC 6238) for the second factor at login
//! (SPEC §11), as pure functions of (secret, time step, code).
//!
//! HOTP (RFC 4226) with HMAC-SHA-1, 6 digits, 30-second steps: what
//! authenticator apps use. Secrets travel as RFC 4648 base32 without padding
//! and are at least 16 bytes. [`check`] accepts the codes of the steps
//! before, at and after `now`, compares all three in constant time, and
//! never accepts a step at or before the last one used: the caller keeps
//! that step (the sessions state) and passes it in. No clock and no
//! randomness here. A [`TotpSecret`] never shows itself in `Debug` output.
//!
//! ```
//! use tessera::auth::totp::{self, TotpSecret};
//! let secret = TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap();
//! // RFC 6238 Appendix B, T = 59: 94287082 (8 digits); the app shows the last 6.
//! assert_eq!(secret.code_at(totp::step_of(59)), "287082");
//! assert_eq!(totp::check(&secret, "287082", 59, None), Some(1));
//! assert_eq!(totp::check(&secret, "287082", 59, Some(1)), None, "one use per step");
//! assert!(!format!("{secret:?}").contains("GEZ"));
//! ```

use data_encoding::BASE32_NOPAD;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use std::fmt;

/// Digits in a code.
pub const DIGITS: usize = 6;
/// Seconds in a time step (RFC 6238 §4.1 X).
pub const STEP_SECS: u64 = 30;
/// Shortest secret accepted, in bytes (SPEC §11; RFC 4226 §4 R6 asks for 16).
pub const MIN_SECRET_BYTES: usize = 16;
/// Longest secret accepted, in bytes (bounds a users-file line).
pub const MAX_SECRET_BYTES: usize = 64;
/// Bytes of a secret made by `useradd --totp` (RFC 4226 §4 recommends 20).
pub const NEW_SECRET_BYTES: usize = 20;

/// A TOTP shared secret. `Debug` prints no part of it.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret(Vec<u8>);

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TotpSecret(<{} bytes, redacted>)", self.0.len())
    }
}

impl TotpSecret {
    /// A secret from raw bytes (16-64 of them).
    pub fn from_bytes(bytes: &[u8]) -> Result<TotpSecret, &'static str> {
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&bytes.len()) {
            return Err("TOTP secret must be 16-64 bytes");
        }
        Ok(TotpSecret(bytes.to_vec()))
    }

    /// Parses RFC 4648 base32 without padding, upper case, canonical
    /// trailing bits (so that a file rewrite gives the same text back).
    /// The error never quotes the input.
    pub fn from_base32(text: &str) -> Result<TotpSecret, &'static str> {
        let bytes = BASE32_NOPAD
            .decode(text.as_bytes())
            .map_err(|_| "TOTP secret must be RFC 4648 base32 (A-Z 2-7, no padding)")?;
        TotpSecret::from_bytes(&bytes)
    }

    /// The secret in RFC 4648 base32 without padding.
    pub fn to_base32(&self) -> String {
        BASE32_NOPAD.encode(&self.0)
    }

    /// The 6-digit code of time step `step`.
    pub fn code_at(&self, step: u64) -> String {
        hotp(&self.0, step, DIGITS)
    }

    /// The `otpauth://` URI authenticator apps read (Key Uri Format):
    /// `otpauth://totp/tessera:NAME?secret=…&issuer=tessera`, NAME
    /// percent-encoded.
    pub fn otpauth_uri(&self, name: &str) -> String {
        format!(
            "otpauth://totp/tessera:{}?secret={}&issuer=tessera",
            percent_encode(name),
            self.to_base32()
        )
    }
}

/// The time step of Unix time `now` (RFC 6238 §4.2, T0 = 0).
pub fn step_of(now: u64) -> u64 {
    now / STEP_SECS
}

/// HOTP (RFC 4226 §5.3): HMAC-SHA-1 of the big-endian counter, dynamic
/// truncation, `digits` decimal digits (zero-padded).
fn hotp(key: &[u8], counter: u64, digits: usize) -> String {
    let mac = match <Hmac<Sha1> as KeyInit>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(&counter.to_be_bytes());
            m.finalize().into_bytes()
        }
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => return String::new(),
    };
    let offset = usize::from(mac.last().copied().unwrap_or(0) & 0x0f);
    let word = mac
        .get(offset..offset + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_be_bytes)
        & 0x7fff_ffff;
    let modulus = 10u64.pow(digits as u32);
    format!("{:0width$}", u64::from(word) % modulus, width = digits)
}

/// Whether `code` has the shape of a code: exactly 6 ASCII digits
/// (full-width or other Unicode digits are not digits here).
pub fn well_formed(code: &str) -> bool {
    code.len() == DIGITS && code.bytes().all(|b| b.is_ascii_digit())
}

/// Constant-time equality of two byte strings of the same length.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `code` at Unix time `now` against the steps before, at and after
/// `now` (RFC 6238 §5.2: one step of network delay or clock drift either
/// way). Steps at or before `last_used` are refused (one use per step, and
/// never an older one). Returns the step the code belongs to, which the
/// caller must record as the new `last_used` before answering. Every
/// candidate is computed and compared, whatever matches, in constant time.
pub fn check(secret: &TotpSecret, code: &str, now: u64, last_used: Option<u64>) -> Option<u64> {
    if !well_formed(code) {
        return None;
    }
    let now_step = step_of(now);
    let mut found = None;
    for step in [now_step.checked_sub(1), Some(now_step), now_step.checked_add(1)]
        .into_iter()
        .flatten()
    {
        let hit = ct_eq(secret.code_at(step).as_bytes(), code.as_bytes());
        let fresh = last_used.is_none_or(|l| step > l);
        if hit && fresh && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B: the SHA-1 rows (seed "12345678901234567890",
    /// 8 digits).
    #[test]
    fn rfc6238_appendix_b_sha1_vectors() {
        let seed = b"12345678901234567890";
        for (t, want) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(hotp(seed, step_of(t), 8), want, "T = {t}");
            // The 6-digit code is the same number modulo 10^6.
            let secret = TotpSecret::from_bytes(seed).unwrap();
            assert_eq!(secret.code_at(step_of(t)), want[2..], "T = {t}");
        }
    }

    /// RFC 4226 Appendix D: HOTP values for counters 0-9.
    #[test]
    fn rfc4226_appendix_d_hotp_vectors() {
        let want = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489",
        ];
        for (c, w) in want.iter().enumerate() {
            assert_eq!(hotp(b"12345678901234567890", c as u64, 6), *w, "counter {c}");
        }
    }

    /// RFC 4648 §10: the base32 test vectors (without their padding).
    #[test]
    fn rfc4648_10_base32_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(BASE32_NOPAD.encode(plain.as_bytes()), enc);
            assert_eq!(BASE32_NOPAD.decode(enc.as_bytes()).unwrap(), plain.as_bytes());
        }
        // The RFC 6238 seed as authenticator apps are given it.
        let s = TotpSecret::from_bytes(b"12345678901234567890").unwrap();
        assert_eq!(s.to_base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(TotpSecret::from_base32(&s.to_base32()).unwrap(), s);
    }

    #[test]
    fn spec11_secret_text_is_strict() {
        let good = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        assert!(TotpSecret::from_base32(good).is_ok());
        for bad in [
            "gezdgnbvgy3tqojqgezdgnbvgy3tqojq", // lower case
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ====",
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJ1", // 1 is not base32
            "GEZDGNBVGY3TQOJQGEZDGNBV",         // 15 bytes: too short
        ] {
            assert!(TotpSecret::from_base32(bad).is_err(), "{bad}");
        }
        // Non-canonical trailing bits: 'MZXW6YR' decodes like 'MZXW6YQ'.
        assert!(BASE32_NOPAD.decode(b"MZXW6YR").is_err());
        let long = BASE32_NOPAD.encode(&[7u8; MAX_SECRET_BYTES + 1]);
        assert!(TotpSecret::from_base32(&long).is_err());
        let e = TotpSecret::from_base32("SECRETSECRETSECRET1").unwrap_err();
        assert!(!e.contains("SECRET"));
    }

    #[test]
    fn rfc6238_5_2_neighbour_steps_and_replay() {
        let s = TotpSecret::from_bytes(&[42; 20]).unwrap();
        let now = 1_700_000_000;
        let n = step_of(now);
        for (step, ok) in [(n - 2, false), (n - 1, true), (n, true), (n + 1, true), (n + 2, false)] {
            assert_eq!(check(&s, &s.code_at(step), now, None).is_some(), ok, "step {step}");
        }
        assert_eq!(check(&s, &s.code_at(n), now, None), Some(n));
        // Used step n: n and n-1 are refused, n+1 still works once.
        assert_eq!(check(&s, &s.code_at(n), now, Some(n)), None);
        assert_eq!(check(&s, &s.code_at(n - 1), now, Some(n)), None);
        assert_eq!(check(&s, &s.code_at(n + 1), now, Some(n)), Some(n + 1));
        assert_eq!(check(&s, &s.code_at(n + 1), now, Some(n + 1)), None);
        // Time 0 has no step before it.
        assert_eq!(check(&s, &s.code_at(0), 0, None), Some(0));
    }

    #[test]
    fn spec11_malformed_codes() {
        let s = TotpSecret::from_bytes(&[1; 20]).unwrap();
        let now = 1_000_000;
        let good = s.code_at(step_of(now));
        assert!(check(&s, &good, now, None).is_some());
        let full_width: String = good
            .chars()
            .map(|c| char::from_u32(c as u32 - '0' as u32 + 0xFF10).unwrap())
            .collect();
        for bad in [
            "",
            &good[..5],
            &format!("{good}0"),
            &format!(" {good}"),
            &format!("{good}\n"),
            "12345a",
            "-12345",
            "+12345",
            &full_width,
        ] {
            assert!(!well_formed(bad), "{bad:?}");
            assert_eq!(check(&s, bad, now, None), None, "{bad:?}");
        }
    }

    #[test]
    fn spec11_otpauth_uri() {
        let s = TotpSecret::from_bytes(b"12345678901234567890").unwrap();
        assert_eq!(
            s.otpauth_uri("agent-7"),
            "otpauth://totp/tessera:agent-7?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=tessera"
        );
        assert!(s.otpauth_uri("a b&c?d/é").contains("tessera:a%20b%26c%3Fd%2F%C3%A9?"));
    }

    #[test]
    fn debug_redacts_the_secret() {
        let s = TotpSecret::from_bytes(b"12345678901234567890").unwrap();
        let d = format!("{s:?}");
        assert!(!d.contains("GEZ") && !d.contains("1234") && !d.contains("49"), "{d}");
    }
}
