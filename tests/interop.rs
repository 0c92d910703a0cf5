//! Interop (SPEC §3): tokens made by independent implementations verify in
//! tessera with the same key, and tessera's tokens verify in them.
//!
//! The Rust `jsonwebtoken` crate runs in both directions here. PyJWT's
//! tokens are fixtures made once by `tests/fixtures/make_pyjwt.py`
//! (`tests/fixtures/pyjwt.json`, keys included), so these tests need no
//! Python.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tessera::jwt::{self, Claims, Reject, VerifyOptions};
use tessera::keys::KeySet;

/// A key is its text's bytes (SPEC §2), for both libraries.
const KEY: &str = "interop-key-0123456789abcdefghijklmnopqrstuvwxyz";
const K1: &str = "interop-k1-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const K2: &str = "interop-k2-abcdefghijklmnopqrstuvwxyz0123456789";
/// 2100-01-01: `jsonwebtoken` checks `exp` against the real clock.
const EXP: u64 = 4_102_444_800;
/// tessera checks as of this time.
const NOW: u64 = 1_800_000_000;

/// The claims as the peer library (de)serializes them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Peer {
    sub: String,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    clearance: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    publish: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
}

fn full_peer() -> Peer {
    Peer {
        sub: "agent-7".into(),
        exp: EXP,
        nbf: Some(NOW - 60),
        iat: Some(NOW - 60),
        iss: Some("hq".into()),
        aud: Some(vec!["hub".into(), "other".into()]),
        clearance: Some(4_294_967_295),
        channels: Some(vec!["ops".into(), "team.*".into()]),
        publish: Some(true),
        sid: Some("c2Vzc2lvbg".into()),
        jti: Some("j-1".into()),
    }
}

/// What tessera should read from `p`.
fn as_claims(p: &Peer) -> Claims {
    Claims {
        sub: p.sub.clone(),
        exp: p.exp as f64,
        nbf: p.nbf.map(|d| d as f64),
        iat: p.iat.map(|d| d as f64),
        iss: p.iss.clone(),
        aud: p.aud.clone().unwrap_or_default(),
        clearance: p.clearance.unwrap_or(0),
        channels: p.channels.clone(),
        publish: p.publish.unwrap_or(false),
        sid: p.sid.clone(),
        jti: p.jti.clone(),
        amr: None,
    }
}

fn hub_opts() -> VerifyOptions {
    VerifyOptions {
        leeway: 30,
        issuer: Some("hq".into()),
        audience: Some("hub".into()),
    }
}

fn peer_validation() -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = 30;
    v.set_issuer(&["hq"]);
    v.set_audience(&["hub"]);
    v
}

// --- jsonwebtoken → tessera ------------------------------------------------------

#[test]
fn jsonwebtoken_tokens_verify_in_tessera() {
    let keys = KeySet::single(KEY.as_bytes()).unwrap();
    let p = full_peer();
    // jsonwebtoken writes {"typ":"JWT","alg":"HS256"}: not the canonical
    // header bytes, so tessera parses it.
    let t = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &p,
        &EncodingKey::from_secret(KEY.as_bytes()),
    )
    .unwrap();
    let got = jwt::verify(&t, &keys, &hub_opts(), NOW).unwrap();
    assert_eq!(*got, as_claims(&p));

    // Only what tessera requires.
    let minimal = Peer {
        sub: "a".into(),
        exp: EXP,
        ..Peer::default()
    };
    let t = jsonwebtoken::encode(&Header::default(), &minimal, &EncodingKey::from_secret(KEY.as_bytes())).unwrap();
    assert_eq!(
        *jwt::verify(&t, &keys, &VerifyOptions::default(), NOW).unwrap(),
        as_claims(&minimal)
    );
}

#[test]
fn jsonwebtoken_kid_picks_the_key() {
    let keys = KeySet::parse(&format!("k1:{K1}\nk2:{K2}\n")).unwrap();
    let p = full_peer();
    let header = |kid: &str| Header {
        kid: Some(kid.into()),
        ..Header::new(Algorithm::HS256)
    };
    let t = jsonwebtoken::encode(&header("k2"), &p, &EncodingKey::from_secret(K2.as_bytes())).unwrap();
    assert_eq!(*jwt::verify(&t, &keys, &hub_opts(), NOW).unwrap(), as_claims(&p));
    // Signed by k1 but naming k2: the signature does not match k2.
    let t = jsonwebtoken::encode(&header("k2"), &p, &EncodingKey::from_secret(K1.as_bytes())).unwrap();
    assert_eq!(jwt::verify(&t, &keys, &hub_opts(), NOW), Err(Reject::BadSignature));
    let t = jsonwebtoken::encode(&header("k3"), &p, &EncodingKey::from_secret(K1.as_bytes())).unwrap();
    assert_eq!(jwt::verify(&t, &keys, &hub_opts(), NOW), Err(Reject::UnknownKid));
}

#[test]
fn jsonwebtoken_float_exp_rfc7519_2_numeric_date() {
    #[derive(Serialize)]
    struct FloatExp {
        sub: &'static str,
        exp: f64,
    }
    let keys = KeySet::single(KEY.as_bytes()).unwrap();
    let exp = NOW as f64 + 0.25;
    let t = jsonwebtoken::encode(
        &Header::default(),
        &FloatExp { sub: "a", exp },
        &EncodingKey::from_secret(KEY.as_bytes()),
    )
    .unwrap();
    let got = jwt::verify(&t, &keys, &VerifyOptions::default(), NOW).unwrap();
    assert_eq!(got.exp, exp);
    assert_eq!(
        jwt::verify(&t, &keys, &VerifyOptions::default(), NOW + 1),
        Err(Reject::TokenExpired)
    );
}

#[test]
fn jsonwebtoken_refusals_match_spec_codes() {
    let keys = KeySet::single(KEY.as_bytes()).unwrap();
    let p = full_peer();
    let other = jsonwebtoken::encode(&Header::default(), &p, &EncodingKey::from_secret(K1.as_bytes())).unwrap();
    assert_eq!(jwt::verify(&other, &keys, &hub_opts(), NOW), Err(Reject::BadSignature));
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &p,
        &EncodingKey::from_secret(KEY.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        jwt::verify(&hs512, &keys, &hub_opts(), NOW),
        Err(Reject::UnsupportedAlg)
    );
    let ok = jsonwebtoken::encode(&Header::default(), &p, &EncodingKey::from_secret(KEY.as_bytes())).unwrap();
    assert_eq!(
        jwt::verify(&ok, &keys, &hub_opts(), EXP + 30),
        Err(Reject::TokenExpired)
    );
    let elsewhere = VerifyOptions {
        audience: Some("elsewhere".into()),
        ..hub_opts()
    };
    assert_eq!(jwt::verify(&ok, &keys, &elsewhere, NOW), Err(Reject::WrongAudience));
}

// --- tessera → jsonwebtoken ------------------------------------------------------

#[test]
fn tessera_tokens_verify_in_jsonwebtoken() {
    let keys = KeySet::single(KEY.as_bytes()).unwrap();
    let p = full_peer();
    let t = jwt::sign(&as_claims(&p), &keys, None).unwrap();
    let got = jsonwebtoken::decode::<Peer>(&t, &DecodingKey::from_secret(KEY.as_bytes()), &peer_validation()).unwrap();
    assert_eq!(got.claims, p);
    assert_eq!(got.header.alg, Algorithm::HS256);
    assert_eq!(got.header.typ.as_deref(), Some("JWT"));
    assert_eq!(got.header.kid, None);

    // One audience is written as a string (RFC 7519 §4.1.3); the peer reads
    // it either way.
    let one_aud = Claims {
        aud: vec!["hub".into()],
        ..as_claims(&p)
    };
    let t = jwt::sign(&one_aud, &keys, None).unwrap();
    let got =
        jsonwebtoken::decode::<serde_json::Value>(&t, &DecodingKey::from_secret(KEY.as_bytes()), &peer_validation())
            .unwrap();
    assert_eq!(got.claims["aud"], "hub");

    // The wrong key fails there too.
    let err =
        jsonwebtoken::decode::<Peer>(&t, &DecodingKey::from_secret(K1.as_bytes()), &peer_validation()).unwrap_err();
    assert_eq!(*err.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature);
}

#[test]
fn tessera_kid_tokens_verify_in_jsonwebtoken() {
    let keys = KeySet::parse(&format!("k1:{K1}\nk2:{K2}\n")).unwrap();
    let p = full_peer();
    for (kid, key) in [("k1", K1), ("k2", K2)] {
        let t = jwt::sign(&as_claims(&p), &keys, Some(kid)).unwrap();
        let got =
            jsonwebtoken::decode::<Peer>(&t, &DecodingKey::from_secret(key.as_bytes()), &peer_validation()).unwrap();
        assert_eq!(got.header.kid.as_deref(), Some(kid));
        assert_eq!(got.claims, p);
    }
    // Without --kid the first key signs, and names itself.
    let t = jwt::sign(&as_claims(&p), &keys, None).unwrap();
    assert_eq!(jsonwebtoken::decode_header(&t).unwrap().kid.as_deref(), Some("k1"));
}

// --- PyJWT fixtures → tessera ------------------------------------------------------

#[derive(Deserialize)]
struct Fixtures {
    generator: String,
    key: String,
    kid_keys: String,
    tokens: Vec<Fixture>,
}

#[derive(Deserialize)]
struct Fixture {
    name: String,
    keys: String,
    token: String,
    issuer: Option<String>,
    audience: Option<String>,
    /// The claims tessera must read, as tessera prints them...
    claims: Option<serde_json::Value>,
    /// ... or the SPEC §3 reason it must give.
    reason: Option<String>,
}

#[test]
fn pyjwt_fixtures_verify_in_tessera() {
    let f: Fixtures = serde_json::from_str(include_str!("fixtures/pyjwt.json")).unwrap();
    assert!(f.generator.starts_with("PyJWT"), "{}", f.generator);
    let single = KeySet::single(f.key.as_bytes()).unwrap();
    let kid = KeySet::parse(&f.kid_keys).unwrap();
    let (mut accepted, mut refused) = (0, 0);
    for t in &f.tokens {
        let keys = match t.keys.as_str() {
            "single" => &single,
            "kid" => &kid,
            other => panic!("{}: unknown key set {other}", t.name),
        };
        let opts = VerifyOptions {
            leeway: 30,
            issuer: t.issuer.clone(),
            audience: t.audience.clone(),
        };
        let got = jwt::verify(&t.token, keys, &opts, NOW);
        match (&t.claims, &t.reason, got) {
            (Some(want), None, Ok(claims)) => {
                assert_eq!(&serde_json::to_value(&claims).unwrap(), want, "{}", t.name);
                accepted += 1;
            }
            (None, Some(want), Err(reason)) => {
                assert_eq!(reason.as_str(), want, "{}", t.name);
                refused += 1;
            }
            (_, _, got) => panic!("{}: got {got:?}", t.name),
        }
    }
    // A kid token and a float exp are among the accepted ones.
    assert!(accepted >= 5 && refused >= 4, "{accepted} accepted, {refused} refused");
    assert!(f.tokens.iter().any(|t| t.keys == "kid" && t.claims.is_some()));
    assert!(
        f.tokens
            .iter()
            .any(|t| t.claims.as_ref().is_some_and(|c| c["exp"].is_f64()))
    );
}
