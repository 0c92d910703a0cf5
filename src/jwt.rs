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
use json::{Number, Reader};
use serde::Serialize;
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
    /// How the login was authenticated (RFC 8176 §2), e.g. `["pwd","otp"]`
    /// (SPEC §11); an array of strings when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amr: Option<Vec<String>>,
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
    /// Whether `amr` names the method `m` (RFC 8176 §2), e.g. `"otp"`.
    pub fn has_amr(&self, m: &str) -> bool {
        self.amr.as_ref().is_some_and(|a| a.iter().any(|x| x == m))
    }

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
    let (h64, c64, s64) = split_segments(token)?;
    let signing_input = token.get(..h64.len() + 1 + c64.len()).ok_or(Reject::MalformedToken)?;

    // Decode every segment strictly before looking at any of them: this
    // rejects padding, `+`, `/`, whitespace, stray dots and non-canonical
    // trailing bits. Claims of usual size decode onto the stack.
    let mut small = [0u8; CLAIMS_ON_STACK];
    let mut large = Vec::new();
    let claims_json = decode_segment(c64, &mut small, &mut large)?;
    let mut sig = [0u8; 32];
    let sig_is_32_bytes = match base64url::decode_into(s64, &mut sig) {
        Ok(()) => true,
        Err(_) if base64url::is_valid(s64) => false,
        Err(_) => return Err(Reject::MalformedToken),
    };
    let kid = if h64 == CANONICAL_HEADER_B64 {
        None
    } else {
        let mut small = [0u8; 256];
        let mut large = Vec::new();
        parse_header(decode_segment(h64, &mut small, &mut large)?)?
    };

    // SPEC §2: a token without `kid` is checked against the first key only.
    let key = match &kid {
        Some(k) => keys.by_kid(k).ok_or(Reject::UnknownKid)?,
        None => keys.first(),
    };
    if !sig_is_32_bytes || !key.verify(signing_input, &sig) {
        return Err(Reject::BadSignature);
    }

    // Only now is anything in the claims trusted enough to parse. (Filled
    // in place: a `Claims` is 200 bytes, not worth copying around.)
    let mut claims = VerifiedClaims(Claims::default());
    parse_claims(claims_json, &mut claims.0)?;
    check_claims(&claims, opts, now)?;
    Ok(claims)
}

/// Claims segments up to this many decoded bytes (about 430 characters)
/// are decoded into a stack buffer; longer ones into a heap buffer.
const CLAIMS_ON_STACK: usize = 320;

/// The header, claims and signature segments of a token, still encoded.
type Segments<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// Splits `header.claims.signature` at the first and the last dot. A dot
/// anywhere else lands inside the claims segment, where base64url decoding
/// refuses it.
fn split_segments(token: &[u8]) -> Result<Segments<'_>, Reject> {
    // The canonical header is almost always there: skip the search.
    let first = match token.get(CANONICAL_HEADER_B64.len()) {
        Some(b'.') if token.starts_with(CANONICAL_HEADER_B64) => CANONICAL_HEADER_B64.len(),
        _ => token.iter().position(|&b| b == b'.').ok_or(Reject::MalformedToken)?,
    };
    // So is a 43-character signature (32 bytes).
    let last = match token.len().checked_sub(44) {
        Some(i) if i > first && token.get(i) == Some(&b'.') => i,
        _ => token.iter().rposition(|&b| b == b'.').ok_or(Reject::MalformedToken)?,
    };
    match (token.get(..first), token.get(first + 1..last), token.get(last + 1..)) {
        (Some(h), Some(c), Some(s)) if first < last => Ok((h, c, s)),
        _ => Err(Reject::MalformedToken),
    }
}

/// Decodes one segment into `small` when it fits, else into `large`.
fn decode_segment<'a>(src: &[u8], small: &'a mut [u8], large: &'a mut Vec<u8>) -> Result<&'a [u8], Reject> {
    let n = base64url::decoded_len(src.len()).ok_or(Reject::MalformedToken)?;
    let out = match small.get_mut(..n) {
        Some(s) => s,
        None => {
            large.resize(n, 0);
            large.as_mut_slice()
        }
    };
    base64url::decode_into(src, out).map_err(|_| Reject::MalformedToken)?;
    Ok(out)
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

/// The JOSE header members [`parse_header`] reads (RFC 7515 §4.1).
#[derive(Clone, Copy)]
enum HeaderMember {
    Alg,
    Typ,
    Kid,
    Crit,
}

impl HeaderMember {
    fn named(name: &str) -> Option<HeaderMember> {
        Some(match name {
            "alg" => HeaderMember::Alg,
            "typ" => HeaderMember::Typ,
            "kid" => HeaderMember::Kid,
            "crit" => HeaderMember::Crit,
            _ => return None,
        })
    }
}

/// Parses a non-canonical header (RFC 7515 §4.1). Returns the `kid`, if any.
fn parse_header(json: &[u8]) -> Result<Option<String>, Reject> {
    let mut r = Reader::new(json)?;
    // Each: absent, or present with `Some(text)` when it is a string.
    let (mut alg, mut typ, mut kid) = (None, None, None);
    let mut crit = false;
    while let Some(member) = r.next_member(HeaderMember::named)? {
        let slot = match member {
            Some(HeaderMember::Alg) => &mut alg,
            Some(HeaderMember::Typ) => &mut typ,
            Some(HeaderMember::Kid) => &mut kid,
            Some(HeaderMember::Crit) if crit => return Err(Reject::MalformedToken),
            Some(HeaderMember::Crit) => {
                crit = true;
                r.skip_value()?;
                continue;
            }
            None => {
                r.skip_value()?;
                continue;
            }
        };
        if slot.is_some() {
            return Err(Reject::MalformedToken);
        }
        let mut text = String::new();
        *slot = Some(r.string_into(&mut text)?.then_some(text));
    }
    r.finish()?;
    match alg {
        Some(Some(a)) if a == "HS256" => {}
        Some(Some(_)) => return Err(Reject::UnsupportedAlg),
        _ => return Err(Reject::MalformedToken),
    }
    if crit {
        return Err(Reject::UnsupportedAlg);
    }
    match typ {
        None => {}
        Some(Some(t)) if typ_ok(&t) => {}
        Some(_) => return Err(Reject::MalformedToken),
    }
    match kid {
        None => Ok(None),
        Some(Some(k)) => Ok(Some(k)),
        Some(None) => Err(Reject::MalformedToken),
    }
}

/// `JWT` or `at+jwt`, optionally `application/`-prefixed, any case.
fn typ_ok(t: &str) -> bool {
    let t = match (t.get(..12), t.get(12..)) {
        (Some(p), Some(rest)) if p.eq_ignore_ascii_case("application/") => rest,
        _ => t,
    };
    t.eq_ignore_ascii_case("JWT") || t.eq_ignore_ascii_case("at+jwt")
}

impl From<json::Malformed> for Reject {
    fn from(_: json::Malformed) -> Reject {
        Reject::MalformedToken
    }
}

/// The claims [`parse_claims`] reads (RFC 7519 §4.1 and SPEC §3).
#[derive(Clone, Copy)]
enum Claim {
    Sub,
    Exp,
    Nbf,
    Iat,
    Iss,
    Aud,
    Clearance,
    Channels,
    Publish,
    Sid,
    Jti,
    Amr,
}

impl Claim {
    fn named(name: &str) -> Option<Claim> {
        Some(match name {
            "sub" => Claim::Sub,
            "exp" => Claim::Exp,
            "nbf" => Claim::Nbf,
            "iat" => Claim::Iat,
            "iss" => Claim::Iss,
            "aud" => Claim::Aud,
            "clearance" => Claim::Clearance,
            "channels" => Claim::Channels,
            "publish" => Claim::Publish,
            "sid" => Claim::Sid,
            "jti" => Claim::Jti,
            "amr" => Claim::Amr,
            _ => return None,
        })
    }
}

/// Parses the claims JSON (RFC 7519 §4.1) into `c`, which starts as
/// `Claims::default()`. The whole text must be one well-formed object
/// without a repeated known member (else `malformed_token`) before a wrong
/// type, a value out of range or a missing `sub`/`exp` is reported
/// (`invalid_claims`).
fn parse_claims(json: &[u8], c: &mut Claims) -> Result<(), Reject> {
    let mut r = Reader::new(json)?;
    // One bit per claim seen, to refuse repeats.
    let mut seen = 0u16;
    let mut types_ok = true;
    while let Some(member) = r.next_member(Claim::named)? {
        let Some(claim) = member else {
            r.skip_value()?;
            continue;
        };
        let bit = 1 << claim as u16;
        if seen & bit != 0 {
            return Err(Reject::MalformedToken);
        }
        seen |= bit;
        types_ok &= match claim {
            Claim::Sub => r.string_into(&mut c.sub)? && (1..=128).contains(&c.sub.len()),
            Claim::Exp => put(&mut c.exp, r.number()?.and_then(date)),
            Claim::Nbf => put(&mut c.nbf, r.number()?.and_then(date).map(Some)),
            Claim::Iat => put(&mut c.iat, r.number()?.and_then(date).map(Some)),
            Claim::Iss => r.string_into(c.iss.insert(String::new()))?,
            Claim::Aud => r.strings_into(&mut c.aud, true)?,
            Claim::Clearance => {
                let v = match r.number()? {
                    Some(Number::UInt(u)) => u32::try_from(u).ok(),
                    _ => None,
                };
                put(&mut c.clearance, v)
            }
            Claim::Channels => r.strings_into(c.channels.insert(Vec::new()), false)?,
            Claim::Publish => put(&mut c.publish, r.bool()?),
            Claim::Sid => r.string_into(c.sid.insert(String::new()))?,
            Claim::Jti => r.string_into(c.jti.insert(String::new()))?,
            Claim::Amr => r.strings_into(c.amr.insert(Vec::new()), false)?,
        };
    }
    r.finish()?;
    // `sub` and `exp` are required.
    let required = 1 << Claim::Sub as u16 | 1 << Claim::Exp as u16;
    if !types_ok || seen & required != required {
        return Err(Reject::InvalidClaims);
    }
    Ok(())
}

/// Stores `v` when the value had the right type; says whether it had.
fn put<T>(slot: &mut T, v: Option<T>) -> bool {
    match v {
        Some(v) => {
            *slot = v;
            true
        }
        None => false,
    }
}

/// A NumericDate (RFC 7519 §2): a non-negative finite number up to 2^53.
fn date(n: Number) -> Option<f64> {
    let d = match n {
        Number::UInt(u) if u <= 1 << 53 => u as f64,
        Number::UInt(_) => return None,
        Number::Float(f) => f,
    };
    (d.is_finite() && (0.0..=MAX_NUMERIC_DATE).contains(&d)).then_some(d)
}

mod base64url;
mod json;

#[cfg(test)]
mod tests;
