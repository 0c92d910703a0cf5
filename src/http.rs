//! HTTP/1.1 request heads, cookies, query strings and responses, sans-IO.
//!
//! [`parse_head`] turns the bytes read so far into a [`Request`] (or says it
//! needs more, or why it is refused); [`Response`] renders a complete
//! response, head and body, into one buffer so it goes out in one write.
//! Limits are SPEC §4's: head ≤ 8 KiB (431), body ≤ 16 KiB (413).
//!
//! ```
//! use tessera::http::{parse_head, Head};
//! let raw = b"GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\nCookie: k=v; tessera_access=t\r\n\r\n";
//! let Head::Complete(req) = parse_head(raw).unwrap() else { panic!() };
//! assert_eq!((req.method(), req.path(), req.query()), ("GET", "/healthz", Some("x=1")));
//! assert_eq!(req.cookie("tessera_access"), Some("t"));
//! ```

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;

/// Largest request head accepted.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Most header lines accepted (more is answered 431 too).
pub const MAX_HEADERS: usize = 64;

/// A parsed request head. Header names are lower-cased.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, the path, `?` and the query string if the target had
    /// one, then every header name (lower-cased) and value (trimmed), back
    /// to back: two allocations per head (this and `header_ends`) instead
    /// of two per header and one per part of the request line (issue 16).
    text: String,
    /// Where the method, the path and the `?query` end in `text`.
    method_end: u16,
    path_end: u16,
    query_end: u16,
    /// HTTP/1.0 or HTTP/1.1 (minor version).
    pub minor_version: u8,
    /// Per header: where its name ends and its value ends in `text`.
    header_ends: Vec<(u16, u16)>,
    /// Bytes the head took, including the blank line.
    pub head_len: usize,
}

/// Header names only: values hold tokens and cookies.
impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("path", &self.path())
            .field("query", &self.query().map(|_| "…"))
            .field("minor_version", &self.minor_version)
            .field("headers", &self.headers().map(|(n, _)| n).collect::<Vec<_>>())
            .field("head_len", &self.head_len)
            .finish()
    }
}

/// What [`parse_head`] made of the bytes so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// Read more (the head is not finished and still under the limit).
    Partial,
    Complete(Request),
}

/// Why a request is refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`]: 431.
    TooLarge,
    /// Not HTTP/1.x: 400.
    Malformed,
}

impl HeadError {
    /// The error response for this refusal.
    pub fn response(self) -> Response {
        match self {
            HeadError::TooLarge => Response::error(431, "head_too_large", "request head over 8 KiB"),
            HeadError::Malformed => Response::error(400, "bad_request", "malformed HTTP request"),
        }
    }
}

/// Parses a request head from the start of `buf`.
pub fn parse_head(buf: &[u8]) -> Result<Head, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let limited = &buf[..buf.len().min(MAX_HEAD_BYTES)];
    match req.parse(limited) {
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_HEAD_BYTES {
                Err(HeadError::TooLarge)
            } else {
                Ok(Head::Partial)
            }
        }
        Ok(httparse::Status::Complete(head_len)) => {
            let (method, target, minor) = match (req.method, req.path, req.version) {
                (Some(m), Some(p), Some(v)) => (m, p, v),
                _ => return Err(HeadError::Malformed),
            };
            // The query keeps its `?`: an empty query is still a query.
            let (path, query) = target.find('?').map_or((target, ""), |i| target.split_at(i));
            // The head is at most MAX_HEAD_BYTES (< u16::MAX), so every
            // offset into its text fits.
            let offset = |n: usize| u16::try_from(n).map_err(|_| HeadError::TooLarge);
            let mut text = Vec::with_capacity(head_len);
            text.extend_from_slice(method.as_bytes());
            let method_end = offset(text.len())?;
            text.extend_from_slice(path.as_bytes());
            let path_end = offset(text.len())?;
            text.extend_from_slice(query.as_bytes());
            let query_end = offset(text.len())?;
            let mut header_ends = Vec::with_capacity(req.headers.len());
            for h in req.headers.iter() {
                // httparse admits only token characters (ASCII) in a name.
                let name_start = text.len();
                text.extend_from_slice(h.name.as_bytes());
                if let Some(name) = text.get_mut(name_start..) {
                    name.make_ascii_lowercase();
                }
                let name_end = offset(text.len())?;
                // Optional whitespace is SP and HTAB (RFC 9110 §5.6.3).
                text.extend_from_slice(h.value.trim_ascii());
                header_ends.push((name_end, offset(text.len())?));
            }
            // One UTF-8 check for all values (issue 16: one per value was
            // 1 % of a handshake). The request line is `str` already and
            // names are non-empty ASCII, so the whole is valid exactly
            // when every value is.
            let text = String::from_utf8(text).map_err(|_| HeadError::Malformed)?;
            Ok(Head::Complete(Request {
                text,
                method_end,
                path_end,
                query_end,
                minor_version: minor,
                header_ends,
                head_len,
            }))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Malformed),
    }
}

/// The body length a request announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No `Content-Length` (and no `Transfer-Encoding`).
    None,
    Length(usize),
    /// `Transfer-Encoding` present: refused (SPEC §4, 411 for POST).
    Chunked,
    /// Unparsable or conflicting `Content-Length`: 400.
    Invalid,
}

impl Request {
    /// `text[from..to]` (empty if the offsets were not this head's).
    fn part(&self, from: u16, to: u16) -> &str {
        self.text.get(usize::from(from)..usize::from(to)).unwrap_or_default()
    }

    /// The method, as sent (methods are case-sensitive).
    pub fn method(&self) -> &str {
        self.part(0, self.method_end)
    }

    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.part(self.method_end, self.path_end)
    }

    /// The raw query string after `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.part(self.path_end, self.query_end).strip_prefix('?')
    }

    /// Per header: where its name starts, where the name ends (the value
    /// starts) and where the value ends in `text`.
    fn spans(&self) -> impl Iterator<Item = (u16, u16, u16)> + '_ {
        let mut start = self.query_end;
        self.header_ends.iter().map(move |&(n, v)| {
            let name_start = std::mem::replace(&mut start, v);
            (name_start, n, v)
        })
    }

    /// Every header as (lower-case name, trimmed value), in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.spans().map(|(s, n, v)| (self.part(s, n), self.part(n, v)))
    }

    /// The first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        // Bytes, not `headers()`: an upgrade looks up about ten names, and
        // only the one found needs its value sliced as `str`.
        let text = self.text.as_bytes();
        self.spans()
            .find(|&(s, n, _)| text.get(usize::from(s)..usize::from(n)) == Some(name.as_bytes()))
            .map(|(_, n, v)| self.part(n, v))
    }

    /// A cookie from the `Cookie` headers.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers()
            .filter(|(n, _)| *n == "cookie")
            .find_map(|(_, v)| cookie_value(v, name))
    }

    /// A query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query().and_then(|q| query_value(q, name))
    }

    /// The announced body length.
    pub fn body_length(&self) -> BodyLength {
        if self.header("transfer-encoding").is_some() {
            return BodyLength::Chunked;
        }
        let mut found = None;
        for (_, v) in self.headers().filter(|(n, _)| *n == "content-length") {
            match v.parse::<usize>() {
                Ok(n) if v.bytes().all(|b| b.is_ascii_digit()) && found.is_none_or(|f| f == n) => found = Some(n),
                _ => return BodyLength::Invalid,
            }
        }
        found.map_or(BodyLength::None, BodyLength::Length)
    }

    /// Whether the connection stays open after the response (HTTP/1.1
    /// default yes, HTTP/1.0 default no; `Connection` overrides).
    pub fn keep_alive(&self) -> bool {
        let conn = self.header("connection").unwrap_or("");
        if self.minor_version == 0 {
            has_token(conn, "keep-alive")
        } else {
            !has_token(conn, "close")
        }
    }

    /// Whether this is a WebSocket upgrade request (RFC 6455 §4.2.1).
    pub fn is_websocket_upgrade(&self) -> bool {
        let has = |h: &str, t: &str| self.header(h).is_some_and(|v| has_token(v, t));
        has("upgrade", "websocket") && has("connection", "upgrade")
    }

    /// The bearer token of an `Authorization: Bearer …` header (RFC 6750 §2.1).
    pub fn bearer(&self) -> Option<&str> {
        bearer_token(self.header("authorization")?)
    }
}

/// Whether the comma-separated list `list` (RFC 9110 §5.6.1) holds the
/// token `t`, compared case-insensitively.
pub fn has_token(list: &str, t: &str) -> bool {
    list.as_bytes()
        .split(|&b| b == b',')
        .any(|c| c.trim_ascii().eq_ignore_ascii_case(t.as_bytes()))
}

/// `Bearer <token>` → token (scheme case-insensitive).
pub fn bearer_token(value: &str) -> Option<&str> {
    let space = value.bytes().position(|b| b == b' ')?;
    let scheme = value.get(..space)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let t = value.get(space + 1..)?.trim_ascii();
    (!t.is_empty()).then_some(t)
}

/// Finds `name` in a `Cookie` header value (RFC 6265 §4.2.1: `a=b; c=d`).
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| {
            let v = v.trim();
            v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v)
        })
    })
}

/// Finds `name` in a query string and percent-decodes its value (`+` is a space).
pub fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k).as_deref() == Some(name))
            .then(|| percent_decode(v))
            .flatten()
    })
}

/// Percent-decoding; `None` for broken escapes or non-UTF-8 results.
pub fn percent_decode(s: &str) -> Option<String> {
    if !s.contains(['%', '+']) {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The origin (`scheme://host[:port]`) a request's own `Host` implies.
pub fn origin_of_host(host: &str, tls: bool) -> String {
    format!("{}://{}", if tls { "https" } else { "http" }, host.to_ascii_lowercase())
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(Cow<'static, str>, String)>,
    pub body: Vec<u8>,
    pub content_type: &'static str,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, body: &impl serde::Serialize) -> Response {
        let body = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
        Response {
            status,
            headers: Vec::new(),
            body,
            content_type: "application/json",
        }
    }

    /// SPEC §4: every error is `{"error":"<code>","message":"<text>"}`.
    pub fn error(status: u16, code: &str, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": code, "message": message }))
    }

    /// A body of another type.
    pub fn with_body(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body,
            content_type,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Head and body in one buffer.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut head = String::with_capacity(160);
        let _ = write!(head, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        if self.status != 204 {
            let _ = write!(
                head,
                "Content-Type: {}\r\nContent-Length: {}\r\n",
                self.content_type,
                self.body.len()
            );
        }
        head.push_str("Cache-Control: no-store\r\n");
        for (n, v) in &self.headers {
            let _ = write!(head, "{n}: {v}\r\n");
        }
        head.push_str(if keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        let mut out = head.into_bytes();
        if self.status != 204 {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// Reason phrases for the statuses tessera sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Whether `key` is base64 (RFC 4648 §4, padded, canonical) for 16 bytes,
/// as RFC 6455 §4.2.1 item 5 asks of `Sec-WebSocket-Key`: 21 characters of
/// the alphabet, a 22nd that carries 2 bits and 4 zero bits (`A`, `Q`, `g`
/// or `w`), then `==`. Checked by its shape rather than decoded: no base64
/// code of its own in the handshake (the accept key's encoder is there
/// already; issue 16). The unit test compares it with the base64 crate.
pub fn is_websocket_key(key: &str) -> bool {
    let b = key.as_bytes();
    let alphabet = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    b.len() == 24
        && b.get(..21).is_some_and(|head| head.iter().all(alphabet))
        && matches!(b.get(21..), Some([b'A' | b'Q' | b'g' | b'w', b'=', b'=']))
}

/// Why a `GET /ws` that asks to upgrade cannot be a WebSocket handshake
/// (RFC 6455 §4.2.1), as the answer to send: 400, or 426 with the version
/// tessera speaks. `None`: the handshake may proceed.
pub fn upgrade_problem(req: &Request) -> Option<Response> {
    // §4.2.1 item 1: a GET (a HEAD routed to /ws is not an upgrade).
    if req.method() != "GET" {
        return Some(Response::error(
            400,
            "bad_request",
            "a WebSocket upgrade is a GET request",
        ));
    }
    if req.minor_version == 0 {
        return Some(Response::error(400, "bad_request", "WebSocket needs HTTP/1.1"));
    }
    if !req.header("sec-websocket-key").is_some_and(is_websocket_key) {
        return Some(Response::error(
            400,
            "bad_request",
            "missing or invalid Sec-WebSocket-Key",
        ));
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Some(
            Response::error(426, "upgrade_required", "this server speaks WebSocket version 13")
                .header("Sec-WebSocket-Version", "13"),
        );
    }
    None
}

/// What to do about an `Expect` header (RFC 9110 §10.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No `Expect`.
    Nothing,
    /// `100-continue`: send `100 Continue` before reading the body.
    Continue,
    /// Anything else: 417.
    Unsupported,
}

impl Request {
    /// The request's `Expect` header, judged.
    pub fn expect(&self) -> Expect {
        match self.header("expect") {
            None => Expect::Nothing,
            Some(v) if v.eq_ignore_ascii_case("100-continue") => Expect::Continue,
            Some(_) => Expect::Unsupported,
        }
    }
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// An address block, `ADDR/BITS` or a single address (`--trusted-proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1/128`, `192.168.1.5`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?}: expected ADDRESS/BITS, e.g. 10.0.0.0/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0-{max}"))?,
        };
        Ok(Cidr { addr, bits })
    }

    /// Whether `ip` is inside the block (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.bits)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Parses one `for=` value of `Forwarded` (RFC 7239 §6) or one
/// `X-Forwarded-For` element: `1.2.3.4`, `1.2.3.4:80`, `"[::1]:80"`.
fn forwarded_ip(v: &str) -> Option<IpAddr> {
    let v = v.trim().trim_matches('"');
    if let Ok(ip) = v.parse() {
        return Some(ip);
    }
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split_once(']').and_then(|(a, _)| a.parse().ok());
    }
    v.rsplit_once(':')
        .and_then(|(a, _)| a.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4))
}

/// The client's address: `peer`, unless `peer` is a trusted proxy; then the
/// nearest address in `Forwarded` (or, without it, `X-Forwarded-For`) that
/// is not itself a trusted proxy. Unparsable headers leave `peer`.
pub fn client_address(req: &Request, peer: IpAddr, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut chain: Vec<Option<IpAddr>> = Vec::new();
    let forwarded: Vec<&str> = req
        .headers()
        .filter(|(n, _)| *n == "forwarded")
        .map(|(_, v)| v)
        .collect();
    if !forwarded.is_empty() {
        for element in forwarded.iter().flat_map(|v| v.split(',')) {
            for pair in element.split(';') {
                if let Some((k, v)) = pair.split_once('=')
                    && k.trim().eq_ignore_ascii_case("for")
                {
                    chain.push(forwarded_ip(v));
                }
            }
        }
    } else {
        for v in req.headers().filter(|(n, _)| *n == "x-forwarded-for") {
            chain.extend(v.1.split(',').map(forwarded_ip));
        }
    }
    let mut client = peer;
    for hop in chain.iter().rev() {
        match hop {
            Some(ip) if is_trusted(*ip) => client = *ip,
            Some(ip) => return *ip,
            // An obfuscated or broken hop: stop at the last known address.
            None => return client,
        }
    }
    client
}

/// Where a request goes (SPEC §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Console,
    Health,
    Metrics,
    Publish,
    WebSocket,
    Login,
    Refresh,
    Logout,
    /// `GET /admin/connections` (SPEC §13).
    AdminConnections,
    /// `GET /admin/events`.
    AdminEvents,
    /// `POST /admin/revoke`.
    AdminRevoke,
    /// Known path, other method: 405 with this `Allow`.
    WrongMethod(&'static str),
    NotFound,
}

/// Maps method and path to a [`Route`].
pub fn route(method: &str, path: &str) -> Route {
    let (want, r) = match path {
        "/" => ("GET", Route::Console),
        "/healthz" => ("GET", Route::Health),
        "/metrics" => ("GET", Route::Metrics),
        "/ws" => ("GET", Route::WebSocket),
        "/publish" => ("POST", Route::Publish),
        "/auth/login" => ("POST", Route::Login),
        "/auth/refresh" => ("POST", Route::Refresh),
        "/auth/logout" => ("POST", Route::Logout),
        "/admin/connections" => ("GET", Route::AdminConnections),
        "/admin/events" => ("GET", Route::AdminEvents),
        "/admin/revoke" => ("POST", Route::AdminRevoke),
        _ => return Route::NotFound,
    };
    if method == want || (want == "GET" && method == "HEAD") {
        r
    } else {
        Route::WrongMethod(want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_websocket_key_is_what_the_base64_crate_decodes_to_16_bytes() {
        use base64::Engine as _;
        let theirs = |k: &str| {
            let mut raw = [0u8; 18];
            base64::engine::general_purpose::STANDARD
                .decode_slice(k, &mut raw)
                .is_ok_and(|n| n == 16)
        };
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut keys: Vec<String> = vec![
            "dGhlIHNhbXBsZSBub25jZQ==".into(),
            "".into(),
            "dGhlIHNhbXBsZSBub25jZQ=".into(),
            "dGhlIHNhbXBsZSBub25jZQ===".into(),
            "dGhlIHNhbXBsZSBub25jZ===".into(),
            "dGhlIHNhbXBsZSBub25jZQ-_".into(),
            "dGhlIHNhbXBsZSBub25jZ-==".into(),
            "dGhl IHNhbXBsZSBub25jZQ=".into(),
            "dGhlIHNhbXBsZSBub25jZQ\u{e9}".into(),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            "AAAAAAAAAAAAAAAAAAAAAAAA".into(),
            "AAAAAAAAAAAAAAAAAAAAAAA=".into(),
        ];
        // Every character in every position of a valid key (and `=` and a
        // few outside the alphabet), one position at a time.
        let base = "x3JJHMbDL1EzLkh9GBhXDw==";
        for i in 0..24 {
            for c in alphabet.chars().chain("=-_. \u{0}".chars()) {
                let mut k: Vec<char> = base.chars().collect();
                k[i] = c;
                keys.push(k.into_iter().collect());
            }
        }
        for k in &keys {
            assert_eq!(is_websocket_key(k), theirs(k), "{k:?}");
        }
        assert!(keys.iter().filter(|k| is_websocket_key(k)).count() > 20 * 64);
    }

    fn req(raw: &str) -> Request {
        match parse_head(raw.as_bytes()) {
            Ok(Head::Complete(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn headers_in_order_and_debug_shows_no_values() {
        let r = req(
            "GET /ws?access_token=t HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer s3cret\r\nX-Empty:\r\nCookie: a=1\r\nCOOKIE:  b=2 \r\n\r\n",
        );
        let all: Vec<(&str, &str)> = r.headers().collect();
        assert_eq!(
            all,
            [
                ("host", "h"),
                ("authorization", "Bearer s3cret"),
                ("x-empty", ""),
                ("cookie", "a=1"),
                ("cookie", "b=2")
            ]
        );
        assert_eq!(r.cookie("b"), Some("2"));
        let d = format!("{r:?}");
        assert!(
            !d.contains("s3cret") && !d.contains("access_token") && d.contains("authorization"),
            "{d}"
        );
    }

    #[test]
    fn rfc9112_head_parsed_with_lowercase_names() {
        let raw = "POST /publish?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let r = req(raw);
        assert_eq!((r.method(), r.path(), r.query()), ("POST", "/publish", Some("a=1")));
        assert_eq!(r.header("content-length"), Some("5"));
        assert_eq!(r.body_length(), BodyLength::Length(5));
        assert_eq!(r.head_len, raw.len() - 5);
        let r = req("GET /ws? HTTP/1.1\r\nA: 1\r\n\r\n");
        assert_eq!(
            (r.method(), r.path(), r.query(), r.header("a")),
            ("GET", "/ws", Some(""), Some("1"))
        );
        let r = req("OPTIONS * HTTP/1.0\r\n\r\n");
        assert_eq!(
            (r.method(), r.path(), r.query(), r.headers().count()),
            ("OPTIONS", "*", None, 0)
        );
    }

    #[test]
    fn header_values_are_utf8_trimmed_of_ows_only() {
        // A value that is not UTF-8 makes the head malformed, wherever it is.
        for raw in [
            &b"GET / HTTP/1.1\r\nX-A: \xff\r\nHost: x\r\n\r\n"[..],
            &b"GET / HTTP/1.1\r\nHost: x\r\nX-A: ok \xc3\r\n\r\n"[..],
        ] {
            assert_eq!(parse_head(raw), Err(HeadError::Malformed));
        }
        let r = req("GET / HTTP/1.1\r\nX-A: \t caf\u{e9} \t\r\nX-B: \u{a0}x\u{a0}\r\nHost:\r\n\r\n");
        let all: Vec<_> = r.headers().collect();
        // SP and HTAB are trimmed (RFC 9110 §5.6.3); other white space is content.
        assert_eq!(all, [("x-a", "caf\u{e9}"), ("x-b", "\u{a0}x\u{a0}"), ("host", "")]);
        assert!(has_token(" a ,\tUpgrade\t, b", "upgrade"));
        assert!(!has_token("upgrades, x-upgrade", "upgrade"));
        assert!(!has_token("", "upgrade"));
    }

    #[test]
    fn spec4_partial_then_431_over_8kib() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(Head::Partial));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(parse_head(big.as_bytes()), Err(HeadError::TooLarge));
        let many: String = (0..70).map(|i| format!("H{i}: v\r\n")).collect();
        assert_eq!(
            parse_head(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Err(HeadError::TooLarge)
        );
        assert_eq!(parse_head(b"\x00\x01garbage\r\n\r\n"), Err(HeadError::Malformed));
    }

    #[test]
    fn spec4_body_length_rules() {
        let r = req("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(r.body_length(), BodyLength::Chunked);
        let r = req("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(r.body_length(), BodyLength::Invalid);
        let r = req("POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n");
        assert_eq!(r.body_length(), BodyLength::Invalid);
        assert_eq!(req("GET / HTTP/1.1\r\n\r\n").body_length(), BodyLength::None);
    }

    #[test]
    fn rfc6265_cookie_lookup() {
        assert_eq!(
            cookie_value("a=1; tessera_access=tok; b=2", "tessera_access"),
            Some("tok")
        );
        assert_eq!(cookie_value("xtessera_access=1", "tessera_access"), None);
        assert_eq!(cookie_value("k=\"v\"", "k"), Some("v"));
        let r = req("GET / HTTP/1.1\r\nCookie: a=1\r\nCookie: k=2\r\n\r\n");
        assert_eq!(r.cookie("k"), Some("2"));
    }

    #[test]
    fn query_percent_decoding() {
        assert_eq!(
            query_value("a=1&access_token=x%2Ey+z", "access_token").as_deref(),
            Some("x.y z")
        );
        assert_eq!(query_value("access_token=%zz", "access_token"), None);
        assert_eq!(query_value("flag", "flag").as_deref(), Some(""));
        assert_eq!(percent_decode("%"), None);
    }

    #[test]
    fn rfc6750_bearer() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }

    #[test]
    fn keep_alive_and_upgrade() {
        assert!(req("GET / HTTP/1.1\r\n\r\n").keep_alive());
        assert!(!req("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive());
        assert!(!req("GET / HTTP/1.0\r\n\r\n").keep_alive());
        let up = req("GET /ws HTTP/1.1\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\r\n");
        assert!(up.is_websocket_upgrade());
    }

    #[test]
    fn spec4_routes_and_405() {
        assert_eq!(route("GET", "/ws"), Route::WebSocket);
        assert_eq!(route("POST", "/ws"), Route::WrongMethod("GET"));
        assert_eq!(route("GET", "/auth/login"), Route::WrongMethod("POST"));
        assert_eq!(route("GET", "/nope"), Route::NotFound);
        assert_eq!(route("GET", "/admin/events"), Route::AdminEvents);
        assert_eq!(route("GET", "/admin/revoke"), Route::WrongMethod("POST"));
        assert_eq!(route("POST", "/admin/connections"), Route::WrongMethod("GET"));
        assert_eq!(route("HEAD", "/healthz"), Route::Health);
    }

    #[test]
    fn rfc6455_4_2_1_malformed_upgrades_are_answered() {
        let good = "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        assert_eq!(
            upgrade_problem(&req(&format!("{good}Sec-WebSocket-Version: 13\r\n\r\n"))),
            None
        );
        assert_eq!(upgrade_problem(&req(&format!("{good}\r\n"))).unwrap().status, 426);
        assert_eq!(
            upgrade_problem(&req(&format!("{good}Sec-WebSocket-Version: 8\r\n\r\n")))
                .unwrap()
                .status,
            426
        );
        let v10 = good.replace("HTTP/1.1", "HTTP/1.0");
        assert_eq!(
            upgrade_problem(&req(&format!("{v10}Sec-WebSocket-Version: 13\r\n\r\n")))
                .unwrap()
                .status,
            400
        );
        let nokey =
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert_eq!(upgrade_problem(&req(nokey)).unwrap().status, 400);
        let head = good.replace("GET", "HEAD");
        assert_eq!(
            upgrade_problem(&req(&format!("{head}Sec-WebSocket-Version: 13\r\n\r\n")))
                .unwrap()
                .status,
            400
        );
    }

    #[test]
    fn rfc9110_expect() {
        assert_eq!(req("POST / HTTP/1.1\r\n\r\n").expect(), Expect::Nothing);
        assert_eq!(
            req("POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n").expect(),
            Expect::Continue
        );
        assert_eq!(
            req("POST / HTTP/1.1\r\nExpect: x\r\n\r\n").expect(),
            Expect::Unsupported
        );
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.200.1.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(
            Cidr::parse("2001:db8::/32")
                .unwrap()
                .contains("2001:db8:5::1".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn rfc7239_client_address_only_through_trusted_proxies() {
        let trusted = [Cidr::parse("127.0.0.1").unwrap(), Cidr::parse("10.0.0.0/8").unwrap()];
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let r = req("GET / HTTP/1.1\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.7, 10.1.1.1\r\n\r\n");
        assert_eq!(
            client_address(&r, proxy, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            client_address(&r, stranger, &trusted),
            stranger,
            "untrusted peers cannot claim"
        );
        let r = req(
            "GET / HTTP/1.1\r\nForwarded: for=1.1.1.1, for=\"[2001:db8::5]:443\";proto=https\r\nX-Forwarded-For: 9.9.9.9\r\n\r\n",
        );
        assert_eq!(
            client_address(&r, proxy, &trusted),
            "2001:db8::5".parse::<IpAddr>().unwrap()
        );
        let r = req("GET / HTTP/1.1\r\nForwarded: for=unknown\r\n\r\n");
        assert_eq!(client_address(&r, proxy, &trusted), proxy);
        let r = req("GET / HTTP/1.1\r\nX-Forwarded-For: 192.0.2.1:5555\r\n\r\n");
        assert_eq!(
            client_address(&r, proxy, &trusted),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_address(&req("GET / HTTP/1.1\r\n\r\n"), proxy, &trusted), proxy);
    }

    #[test]
    fn spec4_error_body_and_length() {
        let r = Response::error(404, "not_found", "no such path").to_bytes(true);
        let s = String::from_utf8(r).unwrap();
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"));
        let body = r#"{"error":"not_found","message":"no such path"}"#;
        assert!(s.ends_with(body), "{s}");
        assert!(s.contains(&format!("Content-Length: {}\r\n", body.len())));
    }
}
