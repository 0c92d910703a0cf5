//! `http_head`: arbitrary bytes as the start of a connection, through the
//! request-head parser and every decision the server takes on a head:
//! routing, body length, keep-alive, upgrade detection, cookie and query
//! lookups, token source and origin rules. Nothing may panic, and a
//! complete head never claims more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::gate::{self, GateConfig, TokenSource};
use tessera::http::{self, Head};

fuzz_target!(|data: &[u8]| {
    let req = match http::parse_head(data) {
        Ok(Head::Complete(r)) => r,
        Ok(Head::Partial) => {
            assert!(
                data.len() < http::MAX_HEAD_BYTES,
                "a partial head past the limit must be refused"
            );
            return;
        }
        Err(e) => {
            let _ = e.response().to_bytes(false);
            return;
        }
    };
    assert!(req.head_len <= data.len() && req.head_len <= http::MAX_HEAD_BYTES);
    assert!(req.headers().all(|(n, _)| !n.bytes().any(|b| b.is_ascii_uppercase())));
    // The request line is kept as sent: method, path and query come back
    // as they were in the head.
    let line = match req.query() {
        Some(q) => format!("{} {}?{} ", req.method(), req.path(), q),
        None => format!("{} {} ", req.method(), req.path()),
    };
    assert!(data[..req.head_len].windows(line.len()).any(|w| w == line.as_bytes()));
    let _ = http::route(req.method(), req.path());
    let _ = (
        req.body_length(),
        req.keep_alive(),
        req.is_websocket_upgrade(),
        req.bearer(),
    );
    let _ = (
        req.cookie("tessera_access"),
        req.cookie("tessera_refresh"),
        req.query_param("access_token"),
    );
    for allow_query in [false, true] {
        if let Some((token, source)) = gate::find_token(&req, allow_query) {
            assert!(!token.is_empty());
            assert!(allow_query || source != TokenSource::Query);
            for cfg in [
                GateConfig::default(),
                GateConfig {
                    allowed_origins: vec!["https://console.example".into()],
                    ..GateConfig::default()
                },
            ] {
                let _ = gate::origin_allowed(&req, source, &cfg);
            }
        }
    }
});
