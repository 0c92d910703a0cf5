//! Black-box tests of the upgrade path as issue 16 left it: the server
//! decides on the head it parsed itself, answers `101` and the `welcome` in
//! one write, keeps frames the client sent right behind the head, refuses
//! what RFC 6455 §4.2.1 does not allow, and still logs every connection
//! (log lines are buffered until the event loop goes idle).

mod common;

use common::{Server, raw, status, token, upgrade};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends `request`, returns every byte answered until the server closes.
fn raw_bytes(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// RFC 6455 §1.3's example key and its accept value.
const ACCEPT: &str = "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";

/// A masked client close frame with code 1000 (RFC 6455 §5.5.1).
const CLOSE_1000: [u8; 8] = [0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2];

#[test]
fn rfc6455_4_2_2_101_welcome_and_a_frame_sent_behind_the_head() {
    let s = Server::start(&[]);
    let t = token("early-bird", 1, 300, |_| {});
    // The head and a close frame in one write: the frame must not be lost.
    let mut req = upgrade("/ws", &format!("Authorization: Bearer {t}\r\n"));
    req.extend_from_slice(&CLOSE_1000);
    let bytes = raw_bytes(s.addr, &req);
    let out = String::from_utf8_lossy(&bytes);
    assert!(out.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{out:?}");
    assert!(out.contains(ACCEPT), "{out:?}");
    let head_end = out.find("\r\n\r\n").map_or(0, |i| i + 4);
    let frames = bytes.get(head_end..).unwrap_or_default();
    // First frame: the welcome (text, unmasked); last: the close echo.
    assert_eq!(frames.first(), Some(&0x81), "{out:?}");
    assert!(
        out.contains("\"type\":\"welcome\"") && out.contains("early-bird"),
        "{out:?}"
    );
    assert!(frames.ends_with(&[0x88, 0x02, 0x03, 0xe8]), "close echoed: {out:?}");
    // Both lines reach the log although they are written once per loop turn.
    s.wait_log(&["ws_accept", "early-bird"]);
    s.wait_log(&["ws_close", "early-bird", "1000"]);
}

#[test]
fn rfc6455_4_2_1_only_get_upgrades_and_refusals_are_whole_responses() {
    let s = Server::start(&[]);
    let t = token("agent", 1, 300, |_| {});
    let head =
        String::from_utf8_lossy(&upgrade("/ws", &format!("Authorization: Bearer {t}\r\n"))).replace("GET ", "HEAD ");
    let out = raw(s.addr, head.as_bytes());
    assert_eq!(status(&out), 400, "{out:?}");
    // A refused upgrade: status, JSON body of the announced length, closed.
    let out = raw(s.addr, &upgrade("/ws", "Authorization: Bearer not.a.token\r\n"));
    assert_eq!(status(&out), 401, "{out:?}");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or_default();
    let len: usize = common::header(&out, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    assert_eq!(body.len(), len, "{head}");
    assert!(
        head.contains("Connection: close") && body.contains("\"error\""),
        "{out:?}"
    );
    s.wait_log(&["ws_reject"]);
}
