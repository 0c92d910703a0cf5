//! `jwt_verify`: arbitrary bytes as a token, through `tessera::jwt::verify`,
//! the function the WebSocket handshake and `tessera verify` call.
//!
//! Input: one selector byte, then the token (non-UTF-8 bytes become U+FFFD,
//! as they would reading a header into a `str`). Selector bit 0 picks the key
//! set (single key / `k2`+`k1` with ids), bit 1 the options (lax / strict
//! with leeway, issuer and audience); seeds use the ASCII digits `0`–`3`.
//!
//! Verify must never panic, must stay fast up to and past the 8 KiB cap
//! (libFuzzer's `-timeout`, see `options/jwt_verify.flags`), and anything it
//! accepts must obey SPEC §3: a canonical compact JWS whose signature is
//! the HMAC of its first two segments under a configured key, with claims
//! in range and valid at `NOW`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::jwt::{self, MAX_NUMERIC_DATE, MAX_TOKEN_BYTES};
use tessera_fuzz::{
    AUDIENCE, ISSUER, K1_SECRET, K2_SECRET, KIDS, LAX, NOW, SINGLE, SINGLE_SECRET, STRICT, b64url, mac,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, token)) = data.split_first() else {
        return;
    };
    let token = String::from_utf8_lossy(token);
    let (keys, secrets): (_, &[&str]) = if selector & 1 == 0 {
        (&*SINGLE, &[SINGLE_SECRET])
    } else {
        (&*KIDS, &[K2_SECRET, K1_SECRET])
    };
    let opts = if selector & 2 == 0 { &*LAX } else { &*STRICT };

    let Ok(claims) = jwt::verify(&token, keys, opts, NOW) else {
        return;
    };

    // SPEC §3: shape and size.
    assert!(token.len() <= MAX_TOKEN_BYTES, "accepted a token over 8 KiB");
    let segments: Vec<&str> = token.split('.').collect();
    assert_eq!(segments.len(), 3, "accepted a token without three segments");
    let b64_alphabet = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    assert!(
        segments.iter().all(|s| b64_alphabet(s)),
        "accepted a non-base64url token"
    );
    // The signature segment is exactly the canonical base64url of the HMAC
    // of the signing input under one of the configured keys.
    let signing_input = &token[..segments[0].len() + 1 + segments[1].len()];
    let signed_by_a_key = secrets.iter().any(|secret| {
        let mut sig = String::new();
        b64url(&mac(secret, signing_input.as_bytes()), &mut sig);
        sig == segments[2]
    });
    assert!(signed_by_a_key, "accepted a signature no configured key made");

    // SPEC §3: claim types, ranges and times.
    assert!(
        (1..=128).contains(&claims.sub.len()),
        "sub of {} bytes",
        claims.sub.len()
    );
    let leeway = opts.leeway as f64;
    let now = NOW as f64;
    for date in [Some(claims.exp), claims.nbf, claims.iat].into_iter().flatten() {
        assert!(
            date.is_finite() && (0.0..=MAX_NUMERIC_DATE).contains(&date),
            "NumericDate {date}"
        );
    }
    assert!(now < claims.exp + leeway, "accepted an expired token");
    if let Some(nbf) = claims.nbf {
        assert!(now >= nbf - leeway, "accepted a token before nbf");
    }
    if let Some(iat) = claims.iat {
        assert!(iat <= now + leeway, "accepted a token issued in the future");
    }
    if opts.issuer.is_some() {
        assert_eq!(claims.iss.as_deref(), Some(ISSUER), "accepted a wrong issuer");
    }
    if opts.audience.is_some() {
        assert!(claims.aud.iter().any(|a| a == AUDIENCE), "accepted a wrong audience");
    }
});
