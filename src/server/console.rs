//! `GET /`: the built-in console page (SPEC §8), embedded at build time.
//!
//! build.rs puts `assets/console.css` and `assets/console.js` inline in
//! `assets/console.html`, minifies the page, gzips it, and computes the
//! Content-Security-Policy, which admits exactly that inline style and
//! script by their SHA-256 (no 'unsafe-inline', no other source). The page
//! talks to its own origin only: `/auth/*` with the HTTP-only cookies and
//! the `/ws` socket.
//!
//! The gzip copy goes out when the request accepts gzip (RFC 9110 §12.5.3)
//! and it is the smaller of the two.

use crate::http::{Request, Response};

/// The minified page.
const PAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/console.html"));
/// The same page, gzipped.
const PAGE_GZIP: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/console.html.gz"));
/// The policy that admits the page's own inline style and script only.
const CSP: &str = env!("TESSERA_CONSOLE_CSP");

/// The console page, with a strict Content-Security-Policy.
pub fn page(req: &Request) -> Response {
    let gzip = PAGE_GZIP.len() < PAGE.len() && accepts_gzip(req.header("accept-encoding"));
    let body = if gzip { PAGE_GZIP } else { PAGE };
    let r = Response::with_body(200, "text/html; charset=utf-8", body.to_vec())
        .header("Content-Security-Policy", CSP)
        .header("X-Content-Type-Options", "nosniff")
        .header("Referrer-Policy", "no-referrer")
        .header("Vary", "Accept-Encoding");
    if gzip { r.header("Content-Encoding", "gzip") } else { r }
}

/// Whether an `Accept-Encoding` value admits gzip: `gzip` (or `x-gzip`) or
/// else `*` listed with a weight above 0. Absent means identity only.
fn accepts_gzip(header: Option<&str>) -> bool {
    let (mut gzip, mut any) = (None, None);
    for item in header.unwrap_or("").split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let weight = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, v)| v.trim().parse::<f32>().unwrap_or(0.0));
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(weight);
        } else if coding == "*" {
            any = Some(weight);
        }
    }
    gzip.or(any).is_some_and(|q| q > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Head, parse_head};
    use base64::Engine as _;
    use sha2::Digest as _;

    fn get(accept_encoding: Option<&str>) -> Response {
        let ae = accept_encoding.map_or(String::new(), |v| format!("Accept-Encoding: {v}\r\n"));
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{ae}\r\n");
        let Ok(Head::Complete(req)) = parse_head(raw.as_bytes()) else {
            panic!("test request")
        };
        page(&req)
    }

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The text between `open` and the next `close` in the page.
    fn inline<'a>(page: &'a str, open: &str, close: &str) -> &'a str {
        let start = page.find(open).expect("open tag") + open.len();
        let len = page[start..].find(close).expect("close tag");
        &page[start..start + len]
    }

    #[test]
    fn rfc9110_12_5_3_accept_encoding() {
        assert!(accepts_gzip(Some("gzip, deflate, br")));
        assert!(accepts_gzip(Some("br;q=1.0, GZIP;q=0.5")));
        assert!(accepts_gzip(Some("*")));
        assert!(accepts_gzip(Some("x-gzip")));
        assert!(!accepts_gzip(None));
        assert!(!accepts_gzip(Some("")));
        assert!(!accepts_gzip(Some("identity")));
        assert!(!accepts_gzip(Some("br, deflate")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("gzip;q=0.000, *")));
        assert!(!accepts_gzip(Some("*;q=0")));
        assert!(!accepts_gzip(Some("gzip;q=nonsense")));
    }

    #[test]
    fn gzip_only_when_accepted_and_smaller() {
        assert!(
            PAGE_GZIP.len() < PAGE.len(),
            "gzip {} vs {} bytes",
            PAGE_GZIP.len(),
            PAGE.len()
        );
        assert_eq!(PAGE_GZIP[..3], [0x1f, 0x8b, 8], "RFC 1952 §2.3.1 gzip header, deflate");
        let plain = get(None);
        assert_eq!(plain.body, PAGE);
        assert_eq!(header(&plain, "content-encoding"), None);
        let zipped = get(Some("gzip, deflate"));
        assert_eq!(zipped.body, PAGE_GZIP);
        assert_eq!(header(&zipped, "content-encoding"), Some("gzip"));
        for r in [&plain, &zipped] {
            assert_eq!(header(r, "vary"), Some("Accept-Encoding"));
            assert_eq!(r.content_type, "text/html; charset=utf-8");
        }
    }

    #[test]
    fn rfc1952_served_gzip_decodes_to_the_served_page() {
        use std::io::Read as _;
        let zipped = get(Some("gzip"));
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&zipped.body[..])
            .read_to_end(&mut out)
            .expect("a valid gzip member (CRC-32 and length checked)");
        assert_eq!(out, get(None).body);
        assert_eq!(out, PAGE);
    }

    #[test]
    fn spec8_strict_csp_admits_exactly_the_inline_script_and_style() {
        let r = get(None);
        assert_eq!(header(&r, "x-content-type-options"), Some("nosniff"));
        let csp = header(&r, "content-security-policy").expect("CSP");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        let page = std::str::from_utf8(PAGE).expect("UTF-8 page");
        assert!(page.starts_with("<!doctype html>"));
        assert_eq!(page.matches("<script").count(), 1, "one inline script, no src");
        assert_eq!(page.matches("<style").count(), 1, "one inline style");
        assert!(!page.contains("<link") && !page.contains("http://") && !page.contains("https://"));
        let hash = |s: &str| base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(s.as_bytes()));
        let script = inline(page, "<script>", "</script>");
        let style = inline(page, "<style>", "</style>");
        assert!(csp.contains(&format!("script-src 'sha256-{}';", hash(script))), "{csp}");
        assert!(csp.contains(&format!("style-src 'sha256-{}';", hash(style))), "{csp}");
    }
}
