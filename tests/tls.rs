//! https and wss (cargo feature `tls`), with a self-signed certificate made
//! in the test.
#![cfg(feature = "tls")]

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn certs(name: &str) -> (Scratch, PathBuf, PathBuf) {
    let d = scratch_dir("tls", name);
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (d, cert, key)
}

fn start_tls(cert: &Path, key: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&refs)
}

/// A request over TLS with Python's ssl module: a client that is not ours.
fn python_tls(port: u16, ca: &Path, request: &str) -> String {
    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        version = s.version()
        s.sendall(sys.stdin.buffer.read())
        out = b""
        while True:
            try:
                b = s.recv(65536)
            except (ssl.SSLError, ConnectionError) as e:
                out += ("\n[" + type(e).__name__ + "]").encode()
                break
            if not b:
                break
            out += b
        sys.stdout.write(version + "\n" + out.decode("utf-8", "replace"))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script, &port.to_string(), ca.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(request.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn wss(addr: std::net::SocketAddr, ca: &Path, token: &str) -> Result<Value, String> {
    use async_tungstenite::tungstenite::client::IntoClientRequest;
    use futures_util::StreamExt;
    let connector = tessera::tls::connector(Some(ca)).unwrap();
    let tcp = smol::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = connector
        .connect(tessera::tls::server_name("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut req = format!("wss://localhost:{}/ws", addr.port())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = async_tungstenite::client_async(req, tls)
        .await
        .map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(m)) => Ok(serde_json::from_str(m.to_text().unwrap()).unwrap()),
        other => Err(format!("{other:?}")),
    }
}

#[test]
fn tls_https_and_wss_with_a_real_certificate() {
    let (_d, cert, key) = certs("basic");
    let s = start_tls(&cert, &key, &[]);
    // A non-Rust client: Python's ssl.
    let r = python_tls(
        s.addr.port(),
        &cert,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("TLSv1.3\nHTTP/1.1 200 OK"), "{r}");
    let bad = python_tls(
        s.addr.port(),
        &cert,
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer nope\r\n\r\n",
    );
    assert!(
        bad.contains("HTTP/1.1 401 Unauthorized") && bad.contains("malformed_token"),
        "{bad}"
    );
    // wss with a valid token: welcome.
    smol::block_on(async {
        let w = wss(s.addr, &cert, &token("tls-agent", 0, 600, |_| {})).await.unwrap();
        assert_eq!(
            (w["type"].as_str(), w["sub"].as_str()),
            (Some("welcome"), Some("tls-agent"))
        );
        let e = wss(s.addr, &cert, "x.y.z").await.unwrap_err();
        assert!(e.contains("401"), "{e}");
    });
}

#[test]
fn tls_plain_client_on_tls_port_is_closed_not_hung() {
    let (_d, cert, key) = certs("plain");
    let s = start_tls(&cert, &key, &["--handshake-timeout", "3"]);
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let r = c.read_to_end(&mut out);
    assert!(r.is_ok() || !out.is_empty(), "no answer and no close: {r:?}");
    assert!(
        out.is_empty() || out[0] == 0x15,
        "expected a TLS alert or a close, got {out:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // A client that sends nothing is dropped at the handshake timeout.
    let mut idle = std::net::TcpStream::connect(s.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(idle.read(&mut buf).unwrap_or(0), 0);
}

#[test]
fn tls_login_cookies_always_secure_and_insecure_flag_refused() {
    let (d, cert, key) = certs("cookies");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--insecure-cookies",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ])
        .env("TESSERA_SECRET", KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-cookies"));
    // A key that does not fit: exit 2 naming the flags.
    let (_d2, _cert2, key2) = certs("other");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key2.to_str().unwrap(),
        ])
        .env("TESSERA_SECRET", KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));

    let uf = write_users(&d, [user("hq", 5, true, "pw")]);
    let s = start_tls(&cert, &key, &["--users", uf.to_str().unwrap()]);
    let body = r#"{"username":"hq","password":"pw"}"#;
    let r = python_tls(
        s.addr.port(),
        &cert,
        &format!(
            "POST /auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(r.contains("HTTP/1.1 200 OK"), "{r}");
    assert_eq!(r.matches("; Secure;").count(), 2, "{r}");
}

#[test]
fn tls_agent_over_wss_with_ca_file() {
    let (d, cert, key) = certs("agent");
    let uf = write_users(&d, [user("a7", 1, false, "pw")]);
    let s = start_tls(&cert, &key, &["--users", uf.to_str().unwrap()]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "agent",
            "--url",
            &format!("wss://localhost:{}/ws", s.addr.port()),
            "--username",
            "a7",
            "--subscribe",
            "ops",
        ])
        .args(["--ca-file", cert.to_str().unwrap()])
        .env("TESSERA_PASSWORD", "pw")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (first["type"].as_str(), first["sub"].as_str()),
        (Some("welcome"), Some("a7"))
    );
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(second["type"], "subscribed");
    let _ = child.kill();
    let _ = child.wait();
    // Without the CA the certificate is not trusted: the agent gives up on login.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "agent",
            "--url",
            &format!("wss://localhost:{}/ws", s.addr.port()),
            "--username",
            "a7",
        ])
        .env("TESSERA_PASSWORD", "pw")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tls_sighup_reloads_the_certificate_and_keeps_the_old_one_when_broken() {
    let (d, cert, key) = certs("reload");
    let s = start_tls(&cert, &key, &[]);
    let get = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let old = d.join("old.pem");
    std::fs::copy(&cert, &old).unwrap();
    std::fs::write(&cert, "not a certificate").unwrap();
    s.signal("HUP");
    s.wait_log(&["reload_failed", "tls"]);
    // Still serving with the old pair.
    assert!(python_tls(s.addr.port(), &old, get).contains("HTTP/1.1 200 OK"));
    // A new pair: new clients see the new certificate.
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    s.signal("HUP");
    s.wait_log(&["certificate reloaded"]);
    let r = python_tls(s.addr.port(), &cert, get);
    assert!(r.contains("HTTP/1.1 200 OK"), "{r}");
    assert!(
        !python_tls(s.addr.port(), &old, get).contains("200 OK"),
        "old certificate still served"
    );
}
