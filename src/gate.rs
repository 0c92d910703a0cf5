//! The handshake decision (SPEC §4.2), sans-IO: given an upgrade request,
//! the configuration and `now`, either the verified claims of the agent or
//! the exact HTTP rejection. The upgrade path calls [`authorize`] on the
//! parsed request head; nothing here touches a socket or a clock.
//!
//! Checks, in order: throttled address (429), connection cap (503), token
//! source (Bearer header, `tessera_access` cookie, then `?access_token=`
//! only when allowed; none → 401 `missing_token`), browser origin (403),
//! the token itself (401 with the SPEC §3 reason), revoked session (401
//! `token_revoked`), clearance (403), then the second factor: with
//! `--mfa-min-clearance N`, a token with clearance ≥ N needs `otp` in its
//! `amr` (403 `mfa_required`, SPEC §11).

use crate::http::{self, Response};
use crate::jwt::{self, Reject, VerifiedClaims, VerifyOptions};
use crate::keys::KeySet;
use std::borrow::Cow;

/// Header access for whichever request type the caller has.
pub trait UpgradeRequest {
    /// The first header with this lower-case name, if it is text.
    fn header(&self, name: &str) -> Option<&str>;
    /// A cookie from any `Cookie` header.
    fn cookie(&self, name: &str) -> Option<&str>;
    /// The raw query string.
    fn query(&self) -> Option<&str>;
}

impl UpgradeRequest for http::Request {
    fn header(&self, name: &str) -> Option<&str> {
        http::Request::header(self, name)
    }
    fn cookie(&self, name: &str) -> Option<&str> {
        http::Request::cookie(self, name)
    }
    fn query(&self) -> Option<&str> {
        http::Request::query(self)
    }
}

impl UpgradeRequest for async_tungstenite::tungstenite::handshake::server::Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers().get(name).and_then(|v| v.to_str().ok())
    }
    fn cookie(&self, name: &str) -> Option<&str> {
        self.headers()
            .get_all("cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| http::cookie_value(v, name))
    }
    fn query(&self) -> Option<&str> {
        self.uri().query()
    }
}

/// The handshake settings from `serve` flags.
#[derive(Debug, Clone, Default)]
pub struct GateConfig {
    pub verify: VerifyOptions,
    pub min_clearance: u32,
    /// `--allowed-origin`; empty means "the request's own Host".
    pub allowed_origins: Vec<String>,
    pub allow_query_token: bool,
    /// Whether the server speaks TLS (for the Host-derived origin).
    pub tls: bool,
    /// `--mfa-min-clearance`: tokens at or above it need `otp` in `amr`.
    pub mfa_min_clearance: Option<u32>,
}

impl GateConfig {
    /// Whether a user or token of this clearance must have used a second
    /// factor (SPEC §11).
    pub fn needs_mfa(&self, clearance: u32) -> bool {
        self.mfa_min_clearance.is_some_and(|n| clearance >= n)
    }
}

/// Where the token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Bearer,
    Cookie,
    Query,
}

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    MissingToken,
    Token(Reject),
    InsufficientClearance,
    OriginNotAllowed,
    /// `--mfa-min-clearance`: the token's `amr` lacks `otp`.
    MfaRequired,
    /// Throttled; seconds until the block ends.
    Throttled(u64),
    ServerFull,
    /// At `--max-sockets-per-sub` for the token's `sub`.
    TooManySocketsForSub,
    /// At `--max-sockets-per-address` for the client address.
    TooManySocketsForAddress,
}

impl Rejection {
    /// The `error` code of the JSON body (and the log `reason`).
    pub fn code(self) -> &'static str {
        match self {
            Rejection::MissingToken => "missing_token",
            Rejection::Token(r) => r.as_str(),
            Rejection::InsufficientClearance => "insufficient_clearance",
            Rejection::OriginNotAllowed => "origin_not_allowed",
            Rejection::MfaRequired => "mfa_required",
            Rejection::Throttled(_) => "too_many_attempts",
            Rejection::ServerFull => "server_full",
            Rejection::TooManySocketsForSub | Rejection::TooManySocketsForAddress => "too_many_sockets",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Rejection::MissingToken | Rejection::Token(_) => 401,
            Rejection::InsufficientClearance | Rejection::OriginNotAllowed | Rejection::MfaRequired => 403,
            Rejection::Throttled(_) => 429,
            Rejection::ServerFull | Rejection::TooManySocketsForSub | Rejection::TooManySocketsForAddress => 503,
        }
    }

    /// Whether this counts toward the address's failure limit (SPEC §7:
    /// upgrades answered 401).
    pub fn is_auth_failure(self) -> bool {
        self.status() == 401
    }

    /// The exact response SPEC §4.2 gives.
    pub fn response(self) -> Response {
        let message = match self {
            Rejection::MissingToken => "a token is required (Authorization: Bearer, or the tessera_access cookie)",
            Rejection::Token(r) => r.message(),
            Rejection::InsufficientClearance => "your clearance is too low for this server",
            Rejection::OriginNotAllowed => "this page's origin may not open a socket here",
            Rejection::MfaRequired => "your clearance needs a login with a one-time code (amr lacks otp)",
            Rejection::Throttled(_) => "too many failed attempts from your address; wait and retry",
            Rejection::ServerFull => "the server is at its connection limit",
            Rejection::TooManySocketsForSub => "this agent has as many sockets open as the server allows one agent",
            Rejection::TooManySocketsForAddress => {
                "your address has as many sockets open as the server allows one address"
            }
        };
        let r = Response::error(self.status(), self.code(), message);
        match self {
            // RFC 6750 §3.1: no error attribute when no token was sent.
            Rejection::MissingToken => r.header("WWW-Authenticate", "Bearer realm=\"tessera\""),
            Rejection::Token(_) => r.header("WWW-Authenticate", "Bearer realm=\"tessera\", error=\"invalid_token\""),
            Rejection::Throttled(secs) => r.header("Retry-After", secs.max(1).to_string()),
            _ => r,
        }
    }
}

/// The token of a request and where it came from (SPEC §4.2 order);
/// borrowed from the head unless it had to be decoded (query).
pub fn find_token(req: &impl UpgradeRequest, allow_query: bool) -> Option<(Cow<'_, str>, TokenSource)> {
    if let Some(t) = req.header("authorization").and_then(http::bearer_token) {
        return Some((Cow::Borrowed(t), TokenSource::Bearer));
    }
    if let Some(t) = req.cookie("tessera_access").filter(|t| !t.is_empty()) {
        return Some((Cow::Borrowed(t), TokenSource::Cookie));
    }
    if allow_query {
        let t = req.query().and_then(|q| http::query_value(q, "access_token"));
        if let Some(t) = t.filter(|t| !t.is_empty()) {
            return Some((Cow::Owned(t), TokenSource::Query));
        }
    }
    None
}

/// Origin rules: with a list, any `Origin` not on it is refused, and a
/// cookie needs one on it; without a list, a cookie needs the `Origin` of
/// the request's own `Host`.
pub fn origin_allowed(req: &impl UpgradeRequest, source: TokenSource, cfg: &GateConfig) -> bool {
    let origin = req.header("origin");
    if !cfg.allowed_origins.is_empty() {
        return match origin {
            Some(o) => cfg.allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o)),
            None => source != TokenSource::Cookie,
        };
    }
    if source != TokenSource::Cookie {
        return true;
    }
    match (origin, req.header("host")) {
        (Some(o), Some(h)) => o.eq_ignore_ascii_case(&http::origin_of_host(h, cfg.tls)),
        _ => false,
    }
}

/// The live facts a decision needs beyond the request.
pub struct Context<'a> {
    pub now: u64,
    /// Seconds left of a block on the peer address.
    pub throttled: Option<u64>,
    /// At `--max-connections`.
    pub full: bool,
    /// Whether a session id is revoked.
    pub is_revoked: &'a dyn Fn(&str) -> bool,
}

/// Decides an upgrade request.
pub fn authorize(
    req: &impl UpgradeRequest,
    cfg: &GateConfig,
    keys: &KeySet,
    ctx: &Context<'_>,
) -> Result<VerifiedClaims, Rejection> {
    if let Some(secs) = ctx.throttled {
        return Err(Rejection::Throttled(secs));
    }
    if ctx.full {
        return Err(Rejection::ServerFull);
    }
    let (token, source) = find_token(req, cfg.allow_query_token).ok_or(Rejection::MissingToken)?;
    if !origin_allowed(req, source, cfg) {
        return Err(Rejection::OriginNotAllowed);
    }
    let claims = jwt::verify(&token, keys, &cfg.verify, ctx.now).map_err(Rejection::Token)?;
    if claims.sid.as_deref().is_some_and(|s| (ctx.is_revoked)(s)) {
        return Err(Rejection::Token(Reject::TokenRevoked));
    }
    if claims.clearance < cfg.min_clearance {
        return Err(Rejection::InsufficientClearance);
    }
    if cfg.needs_mfa(claims.clearance) && !claims.has_amr("otp") {
        return Err(Rejection::MfaRequired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Head, parse_head};
    use crate::jwt::Claims;

    const NOW: u64 = 1_000_000;

    fn keys() -> KeySet {
        KeySet::single(b"0123456789abcdef0123456789abcdef").unwrap()
    }
    fn token(clearance: u32, sid: Option<&str>) -> String {
        let c = Claims {
            sub: "a".into(),
            exp: (NOW + 100) as f64,
            clearance,
            sid: sid.map(String::from),
            ..Claims::default()
        };
        jwt::sign(&c, &keys(), None).unwrap()
    }
    fn req(extra: &str) -> http::Request {
        let raw = format!("GET /ws HTTP/1.1\r\nHost: hub.local:8080\r\n{extra}\r\n");
        match parse_head(raw.as_bytes()) {
            Ok(Head::Complete(r)) => r,
            other => panic!("{other:?}"),
        }
    }
    fn decide(extra: &str, cfg: &GateConfig) -> Result<VerifiedClaims, Rejection> {
        let ctx = Context {
            now: NOW,
            throttled: None,
            full: false,
            is_revoked: &|s| s == "dead",
        };
        authorize(&req(extra), cfg, &keys(), &ctx)
    }

    #[test]
    fn spec4_2_bearer_first_then_cookie_then_query_only_when_allowed() {
        let cfg = GateConfig::default();
        let t = token(0, None);
        assert!(decide(&format!("Authorization: Bearer {t}\r\n"), &cfg).is_ok());
        assert_eq!(
            decide(
                &format!("Authorization: Bearer junk\r\nCookie: tessera_access={t}\r\n"),
                &cfg
            )
            .unwrap_err(),
            Rejection::Token(Reject::MalformedToken)
        );
        assert_eq!(decide("X: 1\r\n", &cfg).unwrap_err(), Rejection::MissingToken);
        assert!(req("").query().is_none());
        let with_q = |allow| {
            let raw = format!("GET /ws?access_token={t} HTTP/1.1\r\nHost: h\r\n\r\n");
            let Ok(Head::Complete(r)) = parse_head(raw.as_bytes()) else {
                panic!()
            };
            let cfg = GateConfig {
                allow_query_token: allow,
                ..GateConfig::default()
            };
            let ctx = Context {
                now: NOW,
                throttled: None,
                full: false,
                is_revoked: &|_| false,
            };
            authorize(&r, &cfg, &keys(), &ctx).map(|_| ())
        };
        assert_eq!(with_q(false), Err(Rejection::MissingToken));
        assert_eq!(with_q(true), Ok(()));
    }

    #[test]
    fn spec4_2_cookie_needs_same_origin_or_listed_origin() {
        let t = token(0, None);
        let cfg = GateConfig::default();
        let cookie = format!("Cookie: tessera_access={t}\r\n");
        assert_eq!(decide(&cookie, &cfg).unwrap_err(), Rejection::OriginNotAllowed);
        assert!(decide(&format!("{cookie}Origin: http://hub.local:8080\r\n"), &cfg).is_ok());
        assert_eq!(
            decide(&format!("{cookie}Origin: http://evil.example\r\n"), &cfg).unwrap_err(),
            Rejection::OriginNotAllowed
        );
        let listed = GateConfig {
            allowed_origins: vec!["https://console.example".into()],
            ..GateConfig::default()
        };
        assert!(decide(&format!("{cookie}Origin: https://console.example\r\n"), &listed).is_ok());
        assert_eq!(
            decide(&format!("{cookie}Origin: http://hub.local:8080\r\n"), &listed).unwrap_err(),
            Rejection::OriginNotAllowed
        );
        // With a list, a bearer request from an unlisted origin is refused too.
        let bearer = format!("Authorization: Bearer {t}\r\n");
        assert_eq!(
            decide(&format!("{bearer}Origin: http://evil.example\r\n"), &listed).unwrap_err(),
            Rejection::OriginNotAllowed
        );
        assert!(decide(&bearer, &listed).is_ok());
    }

    #[test]
    fn spec4_2_clearance_revocation_throttle_and_full() {
        let cfg = GateConfig {
            min_clearance: 2,
            ..GateConfig::default()
        };
        let auth = |t: &str| format!("Authorization: Bearer {t}\r\n");
        assert_eq!(
            decide(&auth(&token(1, None)), &cfg).unwrap_err(),
            Rejection::InsufficientClearance
        );
        assert!(decide(&auth(&token(2, None)), &cfg).is_ok());
        assert_eq!(
            decide(&auth(&token(2, Some("dead"))), &cfg).unwrap_err(),
            Rejection::Token(Reject::TokenRevoked)
        );
        let r = req(&auth(&token(2, None)));
        let ctx = Context {
            now: NOW,
            throttled: Some(30),
            full: true,
            is_revoked: &|_| false,
        };
        assert_eq!(
            authorize(&r, &cfg, &keys(), &ctx).unwrap_err(),
            Rejection::Throttled(30)
        );
        let ctx = Context { throttled: None, ..ctx };
        assert_eq!(authorize(&r, &cfg, &keys(), &ctx).unwrap_err(), Rejection::ServerFull);
    }

    #[test]
    fn spec11_mfa_min_clearance_needs_otp_in_amr() {
        let cfg = GateConfig {
            mfa_min_clearance: Some(3),
            ..GateConfig::default()
        };
        let mint = |clearance: u32, amr: Option<&[&str]>| {
            let c = Claims {
                sub: "a".into(),
                exp: (NOW + 100) as f64,
                clearance,
                amr: amr.map(|a| a.iter().map(|m| m.to_string()).collect()),
                ..Claims::default()
            };
            format!("Authorization: Bearer {}\r\n", jwt::sign(&c, &keys(), None).unwrap())
        };
        assert!(decide(&mint(2, None), &cfg).is_ok(), "below N: no second factor needed");
        assert!(decide(&mint(2, Some(&["pwd"])), &cfg).is_ok());
        for amr in [None, Some(&["pwd"][..]), Some(&[][..]), Some(&["OTP", "pwd"][..])] {
            assert_eq!(
                decide(&mint(3, amr), &cfg).unwrap_err(),
                Rejection::MfaRequired,
                "{amr:?}"
            );
        }
        assert!(decide(&mint(3, Some(&["pwd", "otp"])), &cfg).is_ok());
        assert!(decide(&mint(u32::MAX, Some(&["otp"])), &cfg).is_ok());
        assert!(decide(&mint(9, None), &GateConfig::default()).is_ok(), "off by default");
        let r = String::from_utf8(Rejection::MfaRequired.response().to_bytes(false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 403 ") && r.contains(r#""error":"mfa_required""#));
        assert!(
            !Rejection::MfaRequired.is_auth_failure(),
            "a 403 is not a failed authentication"
        );
    }

    #[test]
    fn rfc6750_3_www_authenticate_headers() {
        let missing = String::from_utf8(Rejection::MissingToken.response().to_bytes(false)).unwrap();
        assert!(missing.contains("WWW-Authenticate: Bearer realm=\"tessera\"\r\n"));
        let bad = String::from_utf8(Rejection::Token(Reject::TokenExpired).response().to_bytes(false)).unwrap();
        assert!(bad.starts_with("HTTP/1.1 401 "));
        assert!(bad.contains("WWW-Authenticate: Bearer realm=\"tessera\", error=\"invalid_token\"\r\n"));
        assert!(bad.contains(r#""error":"token_expired""#));
        let t = String::from_utf8(Rejection::Throttled(42).response().to_bytes(false)).unwrap();
        assert!(t.starts_with("HTTP/1.1 429 ") && t.contains("Retry-After: 42\r\n"));
    }
}
