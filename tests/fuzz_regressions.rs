//! Inputs the fuzzers found (fuzz/regressions/), kept as ordinary tests so
//! a fix can never silently regress.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use tessera::jwt::{self, Claims, Reject, VerifyOptions};
use tessera::keys::KeySet;

fn keys() -> KeySet {
    KeySet::single(b"fuzz-regression-key-0123456789abcdef").unwrap()
}

fn forge(claims_json: &str) -> String {
    let input = format!("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{}", B64.encode(claims_json));
    let tag = keys().first().mac(input.as_bytes());
    format!("{input}.{}", B64.encode(tag))
}

/// jwt_structured `float-claim-not-round-tripped`: a fractional `exp` must
/// come back exactly as signed (serde_json's `float_roundtrip`).
#[test]
fn fuzz_fractional_dates_round_trip_exactly() {
    for exp in [1_700_000_000.014_042_1, 1_700_000_000.5, 1_800_000_000.123_456_7] {
        let c = Claims {
            sub: "agent-7".into(),
            exp,
            nbf: Some(exp - 10.25),
            ..Claims::default()
        };
        let t = jwt::sign(&c, &keys(), None).unwrap();
        let v = jwt::verify(&t, &keys(), &VerifyOptions::default(), (exp - 5.0) as u64).unwrap();
        assert_eq!(v.exp.to_bits(), exp.to_bits(), "{exp}");
        assert_eq!(*v, c);
    }
}

/// jwt_structured `claims-1e361-not-an-object`: claims that are not a JSON
/// object are `malformed_token` even when a number in them is out of range.
#[test]
fn fuzz_non_object_claims_are_malformed_not_invalid() {
    for claims in [
        "1e400",
        r#"{"sub":"agent-7","exp":1e400"#,
        r#"{"sub":"agent-7","exp":1e400} x"#,
    ] {
        let r = jwt::verify(&forge(claims), &keys(), &VerifyOptions::default(), 0);
        assert_eq!(r.unwrap_err(), Reject::MalformedToken, "{claims}");
    }
    // Inside a well-formed object the same number is a bad claim value.
    let r = jwt::verify(
        &forge(r#"{"sub":"agent-7","exp":1e400}"#),
        &keys(),
        &VerifyOptions::default(),
        0,
    );
    assert_eq!(r.unwrap_err(), Reject::InvalidClaims);
}

/// jwt_structured `short-tag-first-dot-44-from-end`: a signature that is
/// valid base64url but not 32 bytes is `bad_signature`, wherever the dots are.
#[test]
fn fuzz_short_signature_is_bad_signature_wherever_the_dots_are() {
    let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.5b3MaOvFouS7p-Yj2gFLDd0qvgwwaqJGoakptHw";
    assert_eq!(
        jwt::verify(t, &keys(), &VerifyOptions::default(), 0).unwrap_err(),
        Reject::BadSignature
    );
}
