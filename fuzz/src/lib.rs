//! Fixtures shared by tessera's fuzz targets: the fixed keys, clock and
//! verification options, and a base64url encoder and JSON string writer.
//!
//! The encoder and writer are written here, independently of the crate under
//! test, so that `jwt_structured` can forge a JWS byte by byte without
//! trusting `tessera::jwt::sign`. The seed corpora in `corpus/` were made with
//! these same keys and `NOW` (see `corpus/README.md`).

use std::sync::LazyLock;
use tessera::jwt::VerifyOptions;
use tessera::keys::KeySet;

/// The instant every target verifies at (2023-11-14T22:13:20Z). Seed tokens
/// carry `iat = NOW` and `exp = NOW + 3600`, so they verify.
pub const NOW: u64 = 1_700_000_000;

/// The key of the single-key set (a key file of one line, no id).
pub const SINGLE_SECRET: &str = "tessera-fuzz-single-key-0123456789abcdef";
/// `k2` signs in the kid key set; `k1` is the older key that still verifies.
pub const K2_SECRET: &str = "tessera-fuzz-key-k2-0123456789abcdef0123";
/// The second key of the kid key set.
pub const K1_SECRET: &str = "tessera-fuzz-key-k1-0123456789abcdef0123";
/// A key that no key set holds: tokens signed with it must be refused.
pub const FOREIGN_SECRET: &str = "tessera-fuzz-foreign-key-0123456789abcdef";

/// `iss` the strict options require.
pub const ISSUER: &str = "https://hub.example";
/// `aud` the strict options require.
pub const AUDIENCE: &str = "tessera";
/// Leeway of the strict options (the server's default).
pub const LEEWAY: u64 = 30;

/// One key without id, as `TESSERA_SECRET` or a one-line key file gives it.
pub static SINGLE: LazyLock<KeySet> = LazyLock::new(|| KeySet::parse(SINGLE_SECRET).expect("fixture key file parses"));

/// `k2` (first, signs) and `k1`, as a rotated key file gives them.
pub static KIDS: LazyLock<KeySet> = LazyLock::new(|| {
    KeySet::parse(&format!("# rotated\nk2:{K2_SECRET}\nk1:{K1_SECRET}\n")).expect("fixture key file parses")
});

/// Leeway 0, no issuer or audience required.
pub static LAX: LazyLock<VerifyOptions> = LazyLock::new(VerifyOptions::default);

/// Leeway [`LEEWAY`], `iss` [`ISSUER`] and `aud` [`AUDIENCE`] required.
pub static STRICT: LazyLock<VerifyOptions> = LazyLock::new(|| VerifyOptions {
    leeway: LEEWAY,
    issuer: Some(ISSUER.to_string()),
    audience: Some(AUDIENCE.to_string()),
});

/// HMAC-SHA256 of `data` under `secret` (through a one-key set, so the fuzz
/// crate needs no HMAC dependency of its own).
pub fn mac(secret: &str, data: &[u8]) -> [u8; 32] {
    KeySet::raw(secret.as_bytes())
        .expect("fixture keys are long enough")
        .first()
        .mac(data)
}

/// Appends `bytes` as base64url without padding (RFC 4648 §5, RFC 7515 §2).
pub fn b64url(bytes: &[u8], out: &mut String) {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
}

/// Appends `s` as a JSON string literal (RFC 8259 §7). With `escape_first`,
/// the first character is written as a `\uXXXX` escape (surrogate pair when
/// needed): the same string to any JSON parser, different bytes.
pub fn json_str(s: &str, escape_first: bool, out: &mut String) {
    out.push('"');
    for (i, c) in s.chars().enumerate() {
        match c {
            _ if i == 0 && escape_first => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_10_test_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut out = String::new();
            b64url(raw.as_bytes(), &mut out);
            assert_eq!(out, enc);
        }
        let mut out = String::new();
        b64url(&[0xfb, 0xff], &mut out);
        assert_eq!(out, "-_8");
    }
}
