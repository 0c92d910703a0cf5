//! HS256 JSON Web Tokens (RFC 7515 compact JWS, RFC 7519 claims), sans-IO.
//!
//! [`sign`] makes a token; [`verify`] checks one exactly as SPEC §3 says and
//! returns either [`VerifiedClaims`] (which nothing else can build) or a
//! [`Reject`] whose variants are the SPEC reason codes. Neither reads a clock:
//! the caller passes `now` (Unix seconds). The signature is checked before any
//! claim is looked at; the claims JSON is not even parsed until then.
//!
//! ```
//! use tessera::jwt::{self, Claims, VerifyOptions};
//! use tessera::keys::KeySet;
//! let keys = KeySet::single(b"0123456789abcdef0123456789abcdef").unwrap();
//! let claims = Claims { sub: "agent-7".into(), exp: 2000.0, ..Claims::default() };
//! let token = jwt::sign(&claims, &keys, None).unwrap();
//! let ok = jwt::verify(&token, &keys, &VerifyOptions::default(), 1000).unwrap();
//! assert_eq!(ok.sub, "agent-7");
//! assert_eq!(jwt::verify(&token, &keys, &VerifyOptions::default(), 5000).unwrap_err().as_str(), "token_expired");
//! ```

use crate::keys::KeySet;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest token accepted, in bytes, checked before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Largest NumericDate accepted (2^53: beyond it f64 loses whole seconds).
pub const MAX_NUMERIC_DATE: f64 = 9_007_199_254_740_992.0;

/// `{"alg":"HS256","typ":"JWT"}` in base64url: the header of almost every
/// token, recognised without decoding or parsing.
const CANONICAL_HEADER_B64: &[u8] = b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Why a token was refused. The variants are exactly SPEC §3's reason codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    MalformedToken,
    UnsupportedAlg,
    UnknownKid,
    BadSignature,
    InvalidClaims,
    TokenExpired,
    TokenNotYetValid,
    WrongIssuer,
    WrongAudience,
    TokenRevoked,
}

impl Reject {
    /// Every variant, for tables and metrics.
    pub const ALL: [Reject; 10] = [
        Reject::MalformedToken,
        Reject::UnsupportedAlg,
        Reject::UnknownKid,
        Reject::BadSignature,
        Reject::InvalidClaims,
        Reject::TokenExpired,
        Reject::TokenNotYetValid,
        Reject::WrongIssuer,
        Reject::WrongAudience,
        Reject::TokenRevoked,
    ];

    /// The SPEC reason code, e.g. `"token_expired"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::MalformedToken => "malformed_token",
            Reject::UnsupportedAlg => "unsupported_alg",
            Reject::UnknownKid => "unknown_kid",
            Reject::BadSignature => "bad_signature",
            Reject::InvalidClaims => "invalid_claims",
            Reject::TokenExpired => "token_expired",
            Reject::TokenNotYetValid => "token_not_yet_valid",
            Reject::WrongIssuer => "wrong_issuer",
            Reject::WrongAudience => "wrong_audience",
            Reject::TokenRevoked => "token_revoked",
        }
    }

    /// A sentence for people (HTTP `message` fields).
    pub fn message(self) -> &'static str {
        match self {
            Reject::MalformedToken => "the token is not a well-formed compact JWS",
            Reject::UnsupportedAlg => "only HS256 tokens are accepted",
            Reject::UnknownKid => "the token names a key this server does not have",
            Reject::BadSignature => "the token signature does not match",
            Reject::InvalidClaims => "the token claims have wrong types or values",
            Reject::TokenExpired => "the token has expired",
            Reject::TokenNotYetValid => "the token is not valid yet",
            Reject::WrongIssuer => "the token was issued by someone else",
            Reject::WrongAudience => "the token is meant for another audience",
            Reject::TokenRevoked => "the session of this token was revoked",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for Reject {}

/// What [`verify`] checks beyond the signature.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Clock-skew allowance in seconds for `exp`, `nbf` and `iat`.
    pub leeway: u64,
    /// When set, `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, `aud` must be it or contain it.
    pub audience: Option<String>,
}

/// The claims tessera reads and writes (SPEC §3). Unknown claims are ignored
/// on verification.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Claims {
    pub sub: String,
    #[serde(serialize_with = "ser_date")]
    pub exp: f64,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_date")]
    pub nbf: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_date")]
    pub iat: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Empty when the token has no `aud`; one entry is written as a string.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "ser_aud")]
    pub aud: Vec<String>,
    #[serde(skip_serializing_if = "is_zero")]
    pub clearance: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "is_false")]
    pub publish: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}
fn ser_date<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && *v >= 0.0 && *v <= MAX_NUMERIC_DATE {
        s.serialize_u64(*v as u64)
    } else {
        s.serialize_f64(*v)
    }
}
fn ser_opt_date<S: serde::Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => ser_date(d, s),
        None => s.serialize_none(),
    }
}
fn ser_aud<S: serde::Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    match v {
        [one] => s.serialize_str(one),
        many => many.serialize(s),
    }
}

impl Claims {
    /// `exp` as whole Unix seconds (rounded down), for messages.
    pub fn exp_secs(&self) -> u64 {
        self.exp as u64
    }

    /// The first instant (Unix seconds) at which the token no longer verifies:
    /// the smallest integer `t` with `t >= exp + leeway`.
    pub fn expires_at_with_leeway(&self, leeway: u64) -> u64 {
        (self.exp + leeway as f64).ceil() as u64
    }
}

/// Claims of a token whose signature and claims passed [`verify`]. Only
/// `verify` can build one, so holding one proves the check happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct VerifiedClaims(Claims);

impl std::ops::Deref for VerifiedClaims {
    type Target = Claims;
    fn deref(&self) -> &Claims {
        &self.0
    }
}

impl VerifiedClaims {
    /// Gives up the proof and keeps the claims.
    pub fn into_inner(self) -> Claims {
        self.0
    }
}

/// Signing failed: the named key id is not in the key set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownSigningKey(pub String);

impl fmt::Display for UnknownSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no key with id {:?} in the key file", self.0)
    }
}

impl std::error::Error for UnknownSigningKey {}

/// Signs `claims` with the key named `kid` (default: the first key). The
/// header is `{"alg":"HS256","typ":"JWT"}`, plus `kid` when the key has one.
pub fn sign(claims: &Claims, keys: &KeySet, kid: Option<&str>) -> Result<String, UnknownSigningKey> {
    let key = match kid {
        Some(k) => keys.by_kid(k).ok_or_else(|| UnknownSigningKey(k.to_string()))?,
        None => keys.first(),
    };
    let mut out = String::with_capacity(256);
    match key.kid() {
        None => out.push_str(std::str::from_utf8(CANONICAL_HEADER_B64).unwrap_or_default()),
        Some(kid) => {
            #[derive(Serialize)]
            struct Header<'a> {
                alg: &'a str,
                typ: &'a str,
                kid: &'a str,
            }
            let h = serde_json::to_vec(&Header {
                alg: "HS256",
                typ: "JWT",
                kid,
            })
            .unwrap_or_default();
            URL_SAFE_NO_PAD.encode_string(h, &mut out);
        }
    }
    out.push('.');
    let body = serde_json::to_vec(claims).unwrap_or_default();
    URL_SAFE_NO_PAD.encode_string(body, &mut out);
    let tag = key.mac(out.as_bytes());
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(tag, &mut out);
    Ok(out)
}

/// Verifies `token` as of `now` (Unix seconds), following SPEC §3 in order:
/// size, shape and base64url; header (`alg`, `crit`, `typ`, `kid`); the
/// signature (constant-time); then the claims. Revocation (`sid`) is the
/// caller's: it holds the session list.
pub fn verify(token: &str, keys: &KeySet, opts: &VerifyOptions, now: u64) -> Result<VerifiedClaims, Reject> {
    let token = token.as_bytes();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Reject::MalformedToken);
    }
    let mut parts = token.splitn(3, |&b| b == b'.');
    let (h64, c64, s64) = match (parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(c), Some(s)) => (h, c, s),
        _ => return Err(Reject::MalformedToken),
    };
    if s64.contains(&b'.') {
        return Err(Reject::MalformedToken);
    }
    let signing_input = &token[..h64.len() + 1 + c64.len()];

    // Decode every segment strictly before looking at any of them: this
    // rejects padding, `+`, `/`, whitespace and non-canonical trailing bits.
    let claims_json = URL_SAFE_NO_PAD.decode(c64).map_err(|_| Reject::MalformedToken)?;
    let sig = URL_SAFE_NO_PAD.decode(s64).map_err(|_| Reject::MalformedToken)?;
    let kid = if h64 == CANONICAL_HEADER_B64 {
        None
    } else {
        let header = URL_SAFE_NO_PAD.decode(h64).map_err(|_| Reject::MalformedToken)?;
        parse_header(&header)?
    };

    // SPEC §2: a token without `kid` is checked against the first key only.
    let key = match &kid {
        Some(k) => keys.by_kid(k).ok_or(Reject::UnknownKid)?,
        None => keys.first(),
    };
    if sig.len() != 32 || !key.verify(signing_input, &sig) {
        return Err(Reject::BadSignature);
    }

    // Only now is anything in the claims trusted enough to parse.
    let raw: RawClaims = match serde_json::from_slice(&claims_json) {
        Ok(r) => r,
        // A number too large for f64 inside a well-formed object is a bad
        // claim value; anything else that fails to parse is malformed.
        Err(e) if e.to_string().starts_with("number out of range") && is_json_object(&claims_json) => {
            return Err(Reject::InvalidClaims);
        }
        Err(_) => return Err(Reject::MalformedToken),
    };
    let claims = raw.into_claims()?;
    check_claims(&claims, opts, now)?;
    Ok(VerifiedClaims(claims))
}

/// Whether `json` is one JSON object (numbers are checked for syntax only).
fn is_json_object(json: &[u8]) -> bool {
    serde_json::from_slice::<&serde_json::value::RawValue>(json).is_ok_and(|r| r.get().starts_with('{'))
}

/// Time, issuer and audience rules (SPEC §3), after types are known good.
fn check_claims(c: &Claims, opts: &VerifyOptions, now: u64) -> Result<(), Reject> {
    let now = now as f64;
    let leeway = opts.leeway as f64;
    if now >= c.exp + leeway {
        return Err(Reject::TokenExpired);
    }
    if let Some(nbf) = c.nbf
        && now < nbf - leeway
    {
        return Err(Reject::TokenNotYetValid);
    }
    if let Some(iat) = c.iat
        && iat > now + leeway
    {
        return Err(Reject::TokenNotYetValid);
    }
    if let Some(want) = &opts.issuer
        && c.iss.as_deref() != Some(want.as_str())
    {
        return Err(Reject::WrongIssuer);
    }
    if let Some(want) = &opts.audience
        && !c.aud.iter().any(|a| a == want)
    {
        return Err(Reject::WrongAudience);
    }
    Ok(())
}

/// Parses a non-canonical header. Returns the `kid`, if any.
fn parse_header(json: &[u8]) -> Result<Option<String>, Reject> {
    let h: RawHeader = serde_json::from_slice(json).map_err(|_| Reject::MalformedToken)?;
    match h.alg {
        Some(Loose::Str(a)) if a == "HS256" => {}
        Some(Loose::Str(_)) => return Err(Reject::UnsupportedAlg),
        _ => return Err(Reject::MalformedToken),
    }
    if h.crit {
        return Err(Reject::UnsupportedAlg);
    }
    match h.typ {
        None => {}
        Some(Loose::Str(t)) if typ_ok(&t) => {}
        Some(_) => return Err(Reject::MalformedToken),
    }
    match h.kid {
        None => Ok(None),
        Some(Loose::Str(k)) => Ok(Some(k)),
        Some(_) => Err(Reject::MalformedToken),
    }
}

/// `JWT` or `at+jwt`, optionally `application/`-prefixed, any case.
fn typ_ok(t: &str) -> bool {
    let t = match t.get(..12) {
        Some(p) if p.eq_ignore_ascii_case("application/") => &t[12..],
        _ => t,
    };
    t.eq_ignore_ascii_case("JWT") || t.eq_ignore_ascii_case("at+jwt")
}

/// A JSON value seen only as far as type checks need. Parsing into this
/// never fails on a wrong type, so wrong types become `invalid_claims`
/// while broken JSON stays `malformed_token`.
#[derive(Debug)]
enum Loose {
    Str(String),
    Num(f64),
    /// An integer that fits u64 (clearance must be one).
    UInt(u64),
    Bool(bool),
    Strs(Vec<String>),
    Other,
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Loose;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Loose, E> {
                Ok(Loose::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Loose, E> {
                Ok(Loose::Str(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Loose, E> {
                Ok(Loose::UInt(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Loose, E> {
                Ok(Loose::Num(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Loose, E> {
                Ok(Loose::Num(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Loose, E> {
                Ok(Loose::Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Loose, E> {
                Ok(Loose::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Loose, A::Error> {
                let mut out = Vec::new();
                let mut all_strings = true;
                while let Some(item) = seq.next_element::<Loose>()? {
                    match item {
                        Loose::Str(s) if all_strings => out.push(s),
                        _ => all_strings = false,
                    }
                }
                Ok(if all_strings { Loose::Strs(out) } else { Loose::Other })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Loose, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// Stores a member once; a second occurrence is a parse error
/// (duplicate known members are `malformed_token`).
fn once<'de, A: MapAccess<'de>>(slot: &mut Option<Loose>, map: &mut A) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::custom("duplicate member"));
    }
    *slot = Some(map.next_value::<Loose>()?);
    Ok(())
}

/// Object keys, borrowed when the JSON has no escapes in them.
struct Key<'a>(std::borrow::Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Default)]
struct RawHeader {
    alg: Option<Loose>,
    typ: Option<Loose>,
    kid: Option<Loose>,
    crit: bool,
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JOSE header object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
                let mut h = RawHeader::default();
                let mut crit = None;
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    match &*k {
                        "alg" => once(&mut h.alg, &mut map)?,
                        "typ" => once(&mut h.typ, &mut map)?,
                        "kid" => once(&mut h.kid, &mut map)?,
                        "crit" => once(&mut crit, &mut map)?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                h.crit = crit.is_some();
                Ok(h)
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Default)]
struct RawClaims {
    sub: Option<Loose>,
    exp: Option<Loose>,
    nbf: Option<Loose>,
    iat: Option<Loose>,
    iss: Option<Loose>,
    aud: Option<Loose>,
    clearance: Option<Loose>,
    channels: Option<Loose>,
    publish: Option<Loose>,
    sid: Option<Loose>,
    jti: Option<Loose>,
}

impl<'de> Deserialize<'de> for RawClaims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawClaims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JWT claims object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawClaims, A::Error> {
                let mut c = RawClaims::default();
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    let slot = match &*k {
                        "sub" => &mut c.sub,
                        "exp" => &mut c.exp,
                        "nbf" => &mut c.nbf,
                        "iat" => &mut c.iat,
                        "iss" => &mut c.iss,
                        "aud" => &mut c.aud,
                        "clearance" => &mut c.clearance,
                        "channels" => &mut c.channels,
                        "publish" => &mut c.publish,
                        "sid" => &mut c.sid,
                        "jti" => &mut c.jti,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    once(slot, &mut map)?;
                }
                Ok(c)
            }
        }
        d.deserialize_map(V)
    }
}

fn date(v: Option<Loose>) -> Result<Option<f64>, Reject> {
    let d = match v {
        None => return Ok(None),
        Some(Loose::UInt(u)) if u <= 1 << 53 => u as f64,
        Some(Loose::Num(n)) => n,
        Some(_) => return Err(Reject::InvalidClaims),
    };
    if !d.is_finite() || !(0.0..=MAX_NUMERIC_DATE).contains(&d) {
        return Err(Reject::InvalidClaims);
    }
    Ok(Some(d))
}

fn opt_string(v: Option<Loose>) -> Result<Option<String>, Reject> {
    match v {
        None => Ok(None),
        Some(Loose::Str(s)) => Ok(Some(s)),
        Some(_) => Err(Reject::InvalidClaims),
    }
}

impl RawClaims {
    fn into_claims(self) -> Result<Claims, Reject> {
        let sub = match self.sub {
            Some(Loose::Str(s)) if !s.is_empty() && s.len() <= 128 => s,
            _ => return Err(Reject::InvalidClaims),
        };
        let exp = date(self.exp)?.ok_or(Reject::InvalidClaims)?;
        let aud = match self.aud {
            None => Vec::new(),
            Some(Loose::Str(s)) => vec![s],
            Some(Loose::Strs(v)) => v,
            Some(_) => return Err(Reject::InvalidClaims),
        };
        let clearance = match self.clearance {
            None => 0,
            Some(Loose::UInt(u)) => u32::try_from(u).map_err(|_| Reject::InvalidClaims)?,
            Some(_) => return Err(Reject::InvalidClaims),
        };
        let channels = match self.channels {
            None => None,
            Some(Loose::Strs(v)) => Some(v),
            Some(_) => return Err(Reject::InvalidClaims),
        };
        let publish = match self.publish {
            None => false,
            Some(Loose::Bool(b)) => b,
            Some(_) => return Err(Reject::InvalidClaims),
        };
        Ok(Claims {
            sub,
            exp,
            nbf: date(self.nbf)?,
            iat: date(self.iat)?,
            iss: opt_string(self.iss)?,
            aud,
            clearance,
            channels,
            publish,
            sid: opt_string(self.sid)?,
            jti: opt_string(self.jti)?,
        })
    }
}

#[cfg(test)]
mod tests;
