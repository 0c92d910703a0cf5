//! SPEC §3 rules, one test per reason code, plus RFC 7515 A.1.

use super::*;
use crate::keys::KeySet;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

const K: &str = "0123456789abcdef0123456789abcdef";
const NOW: u64 = 1_700_000_000;

fn keys() -> KeySet {
    KeySet::single(K.as_bytes()).unwrap()
}

fn opts() -> VerifyOptions {
    VerifyOptions {
        leeway: 30,
        ..VerifyOptions::default()
    }
}

/// Signs arbitrary header and claims JSON text with `keys`' first key.
fn forge(header: &str, claims: &str, keys: &KeySet) -> String {
    let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let tag = keys.first().mac(input.as_bytes());
    format!("{input}.{}", B64.encode(tag))
}

fn std_claims(extra: &str) -> String {
    format!(r#"{{"sub":"a7","exp":{}{extra}}}"#, NOW + 600)
}

fn check(token: &str) -> Result<VerifiedClaims, Reject> {
    verify(token, &keys(), &opts(), NOW)
}

fn code(token: &str) -> &'static str {
    match check(token) {
        Ok(_) => "ok",
        Err(e) => e.as_str(),
    }
}

const HS: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[test]
fn rfc7515_a1_hs256_example() {
    let k = B64
        .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
        .unwrap();
    let ks = KeySet::raw(&k).unwrap();
    let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let (input, sig) = token.rsplit_once('.').unwrap();
    assert_eq!(B64.encode(ks.first().mac(input.as_bytes())), sig);
    // The example has no `sub`, which tessera requires: the signature passes
    // and the claims are refused, proving the order of checks.
    assert_eq!(
        verify(token, &ks, &VerifyOptions::default(), 1_300_819_000),
        Err(Reject::InvalidClaims)
    );
    // Any other key fails on the signature.
    assert_eq!(
        verify(token, &keys(), &VerifyOptions::default(), 1_300_819_000),
        Err(Reject::BadSignature)
    );
}

#[test]
fn round_trip_with_every_claim() {
    let c = Claims {
        sub: "agent-7".into(),
        exp: (NOW + 60) as f64,
        nbf: Some(NOW as f64),
        iat: Some(NOW as f64),
        iss: Some("hq".into()),
        aud: vec!["hub".into(), "other".into()],
        clearance: 4_294_967_295,
        channels: Some(vec!["ops".into(), "team.*".into()]),
        publish: true,
        sid: Some("s1".into()),
        jti: Some("j1".into()),
        amr: Some(vec!["pwd".into(), "otp".into()]),
    };
    let t = sign(&c, &keys(), None).unwrap();
    assert!(t.starts_with("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."));
    let o = VerifyOptions {
        leeway: 0,
        issuer: Some("hq".into()),
        audience: Some("hub".into()),
    };
    assert_eq!(*verify(&t, &keys(), &o, NOW).unwrap(), c);
}

#[test]
fn rfc7519_4_1_4_exp_float_is_accepted() {
    let t = forge(HS, &format!(r#"{{"sub":"a","exp":{}.5}}"#, NOW), &keys());
    let v = verify(&t, &keys(), &VerifyOptions::default(), NOW).unwrap();
    assert_eq!(v.exp, NOW as f64 + 0.5);
    assert_eq!(v.expires_at_with_leeway(0), NOW + 1);
}

// --- malformed_token ---------------------------------------------------------

#[test]
fn spec3_malformed_not_three_segments() {
    let t = forge(HS, &std_claims(""), &keys());
    assert_eq!(code(""), "malformed_token");
    assert_eq!(code("a.b"), "malformed_token");
    assert_eq!(code(&format!("{t}.x")), "malformed_token");
    assert_eq!(code(&format!("{t}.")), "malformed_token");
    assert_eq!(code(&t), "ok");
}

#[test]
fn spec3_malformed_padding_plus_slash_whitespace() {
    let t = forge(HS, &std_claims(r#","jti":"??>>""#), &keys());
    assert_eq!(code(&t), "ok");
    let (h, rest) = t.split_once('.').unwrap();
    assert_eq!(code(&format!("{h}=.{rest}")), "malformed_token");
    assert_eq!(code(&format!(" {t}")), "malformed_token");
    assert_eq!(code(&format!("{t}\n")), "malformed_token");
    assert_eq!(code(&t.replace('-', "+").replace('_', "/")), "malformed_token");
    let (c, s) = rest.split_once('.').unwrap();
    assert_eq!(code(&format!("{h}.{c} .{s}")), "malformed_token");
}

#[test]
fn spec3_malformed_non_canonical_trailing_bits() {
    let t = forge(HS, &std_claims(""), &keys());
    let (input, sig) = t.rsplit_once('.').unwrap();
    // 32 bytes → 43 chars: the last char carries 4 bits of data and 2 zero bits.
    let last = sig.chars().last().unwrap();
    let idx = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        .find(last)
        .unwrap();
    let alt = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        .chars()
        .nth(idx | 1)
        .unwrap();
    let bad = format!("{input}.{}{alt}", &sig[..sig.len() - 1]);
    assert_eq!(code(&bad), "malformed_token");
}

#[test]
fn spec3_malformed_over_8kib() {
    let t = forge(HS, &std_claims(&format!(r#","x":"{}""#, "y".repeat(6200))), &keys());
    assert!(t.len() > MAX_TOKEN_BYTES);
    assert_eq!(code(&t), "malformed_token");
    let huge = "a".repeat(1 << 20);
    assert_eq!(code(&huge), "malformed_token");
    let fits = forge(HS, &std_claims(&format!(r#","x":"{}""#, "y".repeat(5000))), &keys());
    assert!(fits.len() <= MAX_TOKEN_BYTES);
    assert_eq!(code(&fits), "ok");
}

#[test]
fn spec3_malformed_header_or_claims_not_object() {
    assert_eq!(code(&forge("[1]", &std_claims(""), &keys())), "malformed_token");
    assert_eq!(code(&forge("nope", &std_claims(""), &keys())), "malformed_token");
    assert_eq!(code(&forge(HS, "[1,2]", &keys())), "malformed_token");
    assert_eq!(code(&forge(HS, "\"sub\"", &keys())), "malformed_token");
    assert_eq!(
        code(&forge(HS, &format!("{} trailing", std_claims("")), &keys())),
        "malformed_token"
    );
}

#[test]
fn spec3_malformed_duplicate_known_members() {
    assert_eq!(
        code(&forge(HS, &std_claims(r#","sub":"b""#), &keys())),
        "malformed_token"
    );
    let dup_alg = r#"{"alg":"HS256","alg":"HS256"}"#;
    assert_eq!(code(&forge(dup_alg, &std_claims(""), &keys())), "malformed_token");
    // Unknown members may repeat.
    assert_eq!(code(&forge(HS, &std_claims(r#","x":1,"x":2"#), &keys())), "ok");
}

#[test]
fn spec3_malformed_typ_rule() {
    for ok in [
        "JWT",
        "jwt",
        "at+jwt",
        "AT+JWT",
        "application/jwt",
        "Application/at+JWT",
    ] {
        let h = format!(r#"{{"alg":"HS256","typ":"{ok}"}}"#);
        assert_eq!(code(&forge(&h, &std_claims(""), &keys())), "ok", "{ok}");
    }
    assert_eq!(code(&forge(r#"{"alg":"HS256"}"#, &std_claims(""), &keys())), "ok");
    for bad in [r#""JOSE""#, r#""application/""#, "1", "null"] {
        let h = format!(r#"{{"alg":"HS256","typ":{bad}}}"#);
        assert_eq!(code(&forge(&h, &std_claims(""), &keys())), "malformed_token", "{bad}");
    }
}

// --- unsupported_alg ---------------------------------------------------------

#[test]
fn spec3_rfc8725_3_1_alg_must_be_exactly_hs256() {
    for alg in ["none", "hs256", "HS512", "RS256", "HS256 ", ""] {
        let h = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
        assert_eq!(code(&forge(&h, &std_claims(""), &keys())), "unsupported_alg", "{alg}");
    }
    // The classic `none` attack with an empty signature.
    let none = format!("{}.{}.", B64.encode(r#"{"alg":"none"}"#), B64.encode(std_claims("")));
    assert_eq!(code(&none), "unsupported_alg");
}

#[test]
fn spec3_rfc7515_4_1_11_crit_refused() {
    let h = r#"{"alg":"HS256","crit":["exp"],"exp":1}"#;
    assert_eq!(code(&forge(h, &std_claims(""), &keys())), "unsupported_alg");
}

// --- unknown_kid -------------------------------------------------------------

#[test]
fn spec2_unknown_kid() {
    let ks = KeySet::parse(&format!("a:{K}\nb:{K}zz")).unwrap();
    let c = Claims {
        sub: "x".into(),
        exp: (NOW + 60) as f64,
        ..Claims::default()
    };
    let tb = sign(&c, &ks, Some("b")).unwrap();
    assert!(verify(&tb, &ks, &opts(), NOW).is_ok());
    let h = r#"{"alg":"HS256","typ":"JWT","kid":"zzz"}"#;
    assert_eq!(
        verify(&forge(h, &std_claims(""), &ks), &ks, &opts(), NOW),
        Err(Reject::UnknownKid)
    );
    // A kid against a file without ids.
    let h = r#"{"alg":"HS256","kid":"a"}"#;
    assert_eq!(code(&forge(h, &std_claims(""), &keys())), "unknown_kid");
    // No kid: first key only. `tb` re-signed without kid by key b fails.
    let no_kid = forge(
        HS,
        &std_claims(""),
        &KeySet::single(format!("{K}zz").as_bytes()).unwrap(),
    );
    assert_eq!(verify(&no_kid, &ks, &opts(), NOW), Err(Reject::BadSignature));
    assert_eq!(sign(&c, &ks, Some("nope")), Err(UnknownSigningKey("nope".into())));
}

// --- bad_signature -----------------------------------------------------------

#[test]
fn spec3_bad_signature_wrong_key_and_length() {
    let other = KeySet::single(b"ffffffffffffffffffffffffffffffff").unwrap();
    assert_eq!(code(&forge(HS, &std_claims(""), &other)), "bad_signature");
    let t = forge(HS, &std_claims(""), &keys());
    let (input, sig) = t.rsplit_once('.').unwrap();
    let raw = B64.decode(sig).unwrap();
    assert_eq!(code(&format!("{input}.{}", B64.encode(&raw[..31]))), "bad_signature");
    let mut long = raw.clone();
    long.push(0);
    assert_eq!(code(&format!("{input}.{}", B64.encode(&long))), "bad_signature");
    assert_eq!(code(&format!("{input}.")), "bad_signature");
}

#[test]
fn spec3_signature_checked_before_claims() {
    // Garbage claims with a wrong signature: bad_signature, not malformed.
    let other = KeySet::single(b"ffffffffffffffffffffffffffffffff").unwrap();
    assert_eq!(code(&forge(HS, "not json", &other)), "bad_signature");
    assert_eq!(code(&forge(HS, r#"{"sub":1,"exp":1}"#, &other)), "bad_signature");
}

// --- invalid_claims ----------------------------------------------------------

#[test]
fn spec3_invalid_claims_types_and_ranges() {
    let e = NOW + 600;
    for claims in [
        format!(r#"{{"exp":{e}}}"#),
        r#"{"sub":"a"}"#.to_string(),
        format!(r#"{{"sub":"","exp":{e}}}"#),
        format!(r#"{{"sub":"{}","exp":{e}}}"#, "s".repeat(129)),
        format!(r#"{{"sub":7,"exp":{e}}}"#),
        r#"{"sub":"a","exp":"9999999999"}"#.to_string(),
        r#"{"sub":"a","exp":-1}"#.to_string(),
        r#"{"sub":"a","exp":9007199254740993}"#.to_string(),
        r#"{"sub":"a","exp":1e300}"#.to_string(),
        r#"{"sub":"a","exp":1e400}"#.to_string(),
        r#"{"sub":"a","exp":null}"#.to_string(),
        std_claims(r#","nbf":"0""#),
        std_claims(r#","iat":true"#),
        std_claims(r#","iss":5"#),
        std_claims(r#","aud":[1]"#),
        std_claims(r#","aud":{}"#),
        std_claims(r#","clearance":-1"#),
        std_claims(r#","clearance":4294967296"#),
        std_claims(r#","clearance":1.5"#),
        std_claims(r#","clearance":"3""#),
        std_claims(r#","channels":"ops""#),
        std_claims(r#","channels":["ops",3]"#),
        std_claims(r#","publish":"true""#),
        std_claims(r#","sid":1"#),
        std_claims(r#","jti":[]"#),
    ] {
        assert_eq!(code(&forge(HS, &claims, &keys())), "invalid_claims", "{claims}");
    }
    assert_eq!(
        code(&forge(
            HS,
            &format!(r#"{{"sub":"{}","exp":{e}}}"#, "s".repeat(128)),
            &keys()
        )),
        "ok"
    );
    assert_eq!(
        code(&forge(HS, &std_claims(r#","clearance":4294967295"#), &keys())),
        "ok"
    );
}

// --- token_expired / token_not_yet_valid ---------------------------------------

#[test]
fn spec3_exp_valid_while_now_before_exp_plus_leeway() {
    let t = forge(HS, &format!(r#"{{"sub":"a","exp":{NOW}}}"#), &keys());
    assert!(verify(&t, &keys(), &opts(), NOW + 29).is_ok());
    assert_eq!(verify(&t, &keys(), &opts(), NOW + 30), Err(Reject::TokenExpired));
    let zero = VerifyOptions::default();
    assert_eq!(verify(&t, &keys(), &zero, NOW), Err(Reject::TokenExpired));
    assert!(verify(&t, &keys(), &zero, NOW - 1).is_ok());
}

#[test]
fn spec3_nbf_and_iat_with_leeway() {
    let nbf = forge(HS, &std_claims(&format!(r#","nbf":{}"#, NOW + 30)), &keys());
    assert!(verify(&nbf, &keys(), &opts(), NOW).is_ok());
    assert_eq!(verify(&nbf, &keys(), &opts(), NOW - 1), Err(Reject::TokenNotYetValid));
    let iat = forge(HS, &std_claims(&format!(r#","iat":{}"#, NOW + 31)), &keys());
    assert_eq!(code(&iat), "token_not_yet_valid");
    let iat_ok = forge(HS, &std_claims(&format!(r#","iat":{}"#, NOW + 30)), &keys());
    assert_eq!(code(&iat_ok), "ok");
}

// --- wrong_issuer / wrong_audience -----------------------------------------------

#[test]
fn spec3_rfc7519_4_1_1_issuer_checked_when_configured() {
    let o = VerifyOptions {
        issuer: Some("hq".into()),
        ..opts()
    };
    let k = keys();
    assert!(verify(&forge(HS, &std_claims(r#","iss":"hq""#), &k), &k, &o, NOW).is_ok());
    assert_eq!(
        verify(&forge(HS, &std_claims(r#","iss":"HQ""#), &k), &k, &o, NOW),
        Err(Reject::WrongIssuer)
    );
    assert_eq!(
        verify(&forge(HS, &std_claims(""), &k), &k, &o, NOW),
        Err(Reject::WrongIssuer)
    );
    // Not configured: any issuer passes.
    assert_eq!(code(&forge(HS, &std_claims(r#","iss":"x""#), &k)), "ok");
}

#[test]
fn spec3_rfc7519_4_1_3_audience_string_or_array() {
    let o = VerifyOptions {
        audience: Some("hub".into()),
        ..opts()
    };
    let k = keys();
    let v = |extra: &str| verify(&forge(HS, &std_claims(extra), &k), &k, &o, NOW).map(|_| ());
    assert_eq!(v(r#","aud":"hub""#), Ok(()));
    assert_eq!(v(r#","aud":["x","hub"]"#), Ok(()));
    assert_eq!(v(r#","aud":["x"]"#), Err(Reject::WrongAudience));
    assert_eq!(v(r#","aud":[]"#), Err(Reject::WrongAudience));
    assert_eq!(v(""), Err(Reject::WrongAudience));
}

#[test]
fn reason_codes_are_the_spec_list() {
    let codes: Vec<_> = Reject::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        codes,
        [
            "malformed_token",
            "unsupported_alg",
            "unknown_kid",
            "bad_signature",
            "invalid_claims",
            "token_expired",
            "token_not_yet_valid",
            "wrong_issuer",
            "wrong_audience",
            "token_revoked"
        ]
    );
}

/// Tiny deterministic generator, so the property tests need no extra crate.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn property_sign_verify_round_trip() {
    let mut r = XorShift(0x9e3779b97f4a7c15);
    for _ in 0..500 {
        let sub: String = (0..1 + r.next() % 128)
            .map(|_| (b'!' + (r.next() % 90) as u8) as char)
            .collect();
        let c = Claims {
            sub,
            exp: (NOW + 1 + r.next() % 100_000) as f64,
            clearance: r.next() as u32,
            publish: r.next() % 2 == 0,
            channels: (r.next() % 2 == 0).then(|| vec![format!("c{}", r.next() % 10)]),
            ..Claims::default()
        };
        let t = sign(&c, &keys(), None).unwrap();
        assert_eq!(*verify(&t, &keys(), &VerifyOptions::default(), NOW).unwrap(), c);
    }
}

#[test]
fn property_any_single_byte_change_is_rejected() {
    let c = Claims {
        sub: "agent".into(),
        exp: (NOW + 60) as f64,
        clearance: 3,
        ..Claims::default()
    };
    let t = sign(&c, &keys(), None).unwrap();
    let mut r = XorShift(42);
    let mut b = t.clone().into_bytes();
    for i in 0..b.len() {
        let orig = b[i];
        for _ in 0..8 {
            let mut v = (r.next() % 256) as u8;
            if v == orig {
                v ^= 1;
            }
            b[i] = v;
            if let Ok(s) = std::str::from_utf8(&b) {
                assert!(check(s).is_err(), "byte {i} -> {v} accepted");
            }
        }
        b[i] = orig;
    }
}

/// SPEC §3's claim rules written a second time, over serde_json's reading
/// of the text: the reference `parse_claims` is checked against.
fn reference_claims(json: &[u8]) -> Option<Result<Claims, Reject>> {
    use serde_json::Value;
    /// The members in order, repeats kept (serde_json's map drops them).
    struct Members(Vec<(String, Value)>);
    impl<'de> serde::Deserialize<'de> for Members {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Members;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Members, A::Error> {
                    let mut v = Vec::new();
                    while let Some(e) = m.next_entry()? {
                        v.push(e);
                    }
                    Ok(Members(v))
                }
            }
            d.deserialize_map(V)
        }
    }
    let members = match serde_json::from_slice::<Members>(json) {
        Ok(m) => m.0,
        // Numbers beyond f64 are refused by serde_json, left to the type
        // checks by tessera: not comparable.
        Err(e) if e.to_string().starts_with("number out of range") => return None,
        Err(_) => return Some(Err(Reject::MalformedToken)),
    };
    let known = [
        "sub",
        "exp",
        "nbf",
        "iat",
        "iss",
        "aud",
        "clearance",
        "channels",
        "publish",
        "sid",
        "jti",
        "amr",
    ];
    let mut by_name = std::collections::HashMap::new();
    for (k, v) in members {
        if known.contains(&k.as_str()) && by_name.insert(k, v).is_some() {
            return Some(Err(Reject::MalformedToken));
        }
    }
    let bad = Some(Err(Reject::InvalidClaims));
    let date = |v: Option<&Value>| -> Result<Option<f64>, ()> {
        let Some(v) = v else { return Ok(None) };
        let d = match (v.as_u64(), v.as_f64()) {
            (Some(u), _) if u > 1 << 53 => return Err(()),
            (Some(u), _) => u as f64,
            (None, Some(f)) => f,
            _ => return Err(()),
        };
        if d.is_finite() && (0.0..=MAX_NUMERIC_DATE).contains(&d) {
            Ok(Some(d))
        } else {
            Err(())
        }
    };
    let string = |v: Option<&Value>| -> Result<Option<String>, ()> {
        match v {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(()),
        }
    };
    let strings =
        |v: &Value| -> Option<Vec<String>> { v.as_array()?.iter().map(|s| s.as_str().map(String::from)).collect() };
    let c = (|| -> Result<Claims, ()> {
        let sub = string(by_name.get("sub"))?
            .filter(|s| (1..=128).contains(&s.len()))
            .ok_or(())?;
        let aud = match by_name.get("aud") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(v) => strings(v).ok_or(())?,
        };
        let clearance = match by_name.get("clearance") {
            None => 0,
            Some(v) => v.as_u64().and_then(|u| u32::try_from(u).ok()).ok_or(())?,
        };
        let channels = match by_name.get("channels") {
            None => None,
            Some(v) => Some(strings(v).ok_or(())?),
        };
        let publish = match by_name.get("publish") {
            None => false,
            Some(v) => v.as_bool().ok_or(())?,
        };
        let amr = match by_name.get("amr") {
            None => None,
            Some(v) => Some(strings(v).ok_or(())?),
        };
        Ok(Claims {
            sub,
            exp: date(by_name.get("exp"))?.ok_or(())?,
            nbf: date(by_name.get("nbf"))?,
            iat: date(by_name.get("iat"))?,
            iss: string(by_name.get("iss"))?,
            aud,
            clearance,
            channels,
            publish,
            sid: string(by_name.get("sid"))?,
            jti: string(by_name.get("jti"))?,
            amr,
        })
    })();
    match c {
        Ok(c) => Some(Ok(c)),
        Err(()) => bad,
    }
}

/// The hand-written claims reader agrees with the reference on texts near
/// valid claims: same claims, or the same reason code.
#[test]
fn property_claims_parse_agrees_with_serde_json_reference() {
    let seeds = [
        r#"{"sub":"agent-7","exp":1700000600,"nbf":1699999000.5,"iat":1700000000,"iss":"hq","aud":["hub","x"],"clearance":3,"channels":["ops","team.*"],"publish":true,"sid":"s\u00e9","jti":"j","x":{"y":[1,null]}}"#,
        r#"{"sub":"a","exp":1700000600,"amr":["pwd","otp"]}"#,
        r#" { "sub" : "a" , "exp" : 17e8 , "aud" : "hub" , "publish" : false , "clearance" : 0 } "#,
    ];
    let noise = br#"{}[]",:0123456789.eE+-\ tfnul"subexpiatclearancepublish"#;
    let mut r = XorShift(0x5851f42d4c957f2d);
    let (mut ok, mut compared) = (0, 0);
    for i in 0..30_000 {
        let mut t = seeds[i % seeds.len()].as_bytes().to_vec();
        for _ in 0..1 + r.next() % 3 {
            let at = (r.next() % (t.len() as u64 + 1)) as usize;
            let b = noise[(r.next() % noise.len() as u64) as usize];
            match r.next() % 3 {
                0 if at < t.len() => t[at] = b,
                1 if at < t.len() => drop(t.remove(at)),
                _ => t.insert(at, b),
            }
        }
        let Some(want) = reference_claims(&t) else { continue };
        let mut c = Claims::default();
        let got = parse_claims(&t, &mut c).map(|()| c);
        assert_eq!(got, want, "{}", String::from_utf8_lossy(&t));
        compared += 1;
        ok += usize::from(want.is_ok());
    }
    // The mutations must leave enough of each outcome to compare.
    assert!(ok > 2_000 && compared - ok > 10_000, "{ok} of {compared}");
}

/// Signed tokens whose header is mutated JSON: whatever the header says,
/// verification answers with a reason code or claims, never a panic, and
/// accepts only headers that name HS256.
#[test]
fn property_mutated_headers_never_panic() {
    let seeds = [
        r#"{"alg":"HS256","typ":"JWT","kid":"a"}"#,
        r#"{"typ":"application/at+jwt","alg":"HS256","x":[{"y":null}]}"#,
    ];
    let noise = br#"{}[]",:0123456789.eE+-\ tfnul"algtypkidcritHS256JWT"#;
    let ks = KeySet::parse(&format!("a:{K}\n")).unwrap();
    let mut r = XorShift(0x2545f4914f6cdd1d);
    let mut accepted = 0;
    for i in 0..20_000 {
        let mut h = seeds[i % seeds.len()].as_bytes().to_vec();
        for _ in 0..1 + r.next() % 3 {
            let at = (r.next() % (h.len() as u64 + 1)) as usize;
            let b = noise[(r.next() % noise.len() as u64) as usize];
            match r.next() % 3 {
                0 if at < h.len() => h[at] = b,
                1 if at < h.len() => drop(h.remove(at)),
                _ => h.insert(at, b),
            }
        }
        let input = format!("{}.{}", B64.encode(&h), B64.encode(std_claims("")));
        let token = format!("{input}.{}", B64.encode(ks.first().mac(input.as_bytes())));
        if verify(&token, &ks, &opts(), NOW).is_ok() {
            let v: serde_json::Value = serde_json::from_slice(&h).unwrap();
            assert_eq!(v["alg"], "HS256", "{}", String::from_utf8_lossy(&h));
            accepted += 1;
        }
    }
    assert!(accepted > 1_000, "{accepted}");
}

/// RFC 8176 §2 / SPEC §11: `amr` is an array of strings; anything else is
/// `invalid_claims`, and `tessera verify` shows it as signed.
#[test]
fn rfc8176_2_amr_claim() {
    let ok = forge(HS, r#"{"sub":"a","exp":2000000000,"amr":["pwd","otp"]}"#, &keys());
    let c = verify(&ok, &keys(), &VerifyOptions::default(), NOW).unwrap();
    assert!(c.has_amr("otp") && c.has_amr("pwd") && !c.has_amr("mfa"));
    assert!(serde_json::to_string(&c).unwrap().contains(r#""amr":["pwd","otp"]"#));
    let none = forge(HS, r#"{"sub":"a","exp":2000000000}"#, &keys());
    assert!(
        !verify(&none, &keys(), &VerifyOptions::default(), NOW)
            .unwrap()
            .has_amr("otp")
    );
    for bad in [r#""otp""#, "[1]", r#"["otp",null]"#, "{}"] {
        let t = forge(HS, &format!(r#"{{"sub":"a","exp":2000000000,"amr":{bad}}}"#), &keys());
        assert_eq!(
            verify(&t, &keys(), &VerifyOptions::default(), NOW).unwrap_err(),
            Reject::InvalidClaims,
            "{bad}"
        );
    }
    let twice = forge(HS, r#"{"sub":"a","exp":2000000000,"amr":[],"amr":[]}"#, &keys());
    assert_eq!(
        verify(&twice, &keys(), &VerifyOptions::default(), NOW).unwrap_err(),
        Reject::MalformedToken
    );
}
