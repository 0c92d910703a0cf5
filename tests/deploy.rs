//! Black-box tests of running tessera on a device: the systemd unit in
//! `deploy/` parses and keeps its exposure score, the server speaks the
//! `sd_notify` protocol (READY=1 once listening, WATCHDOG=1 from the event
//! loop, STOPPING=1 on SIGTERM), the key is read from a systemd credential
//! directory, and the console's CSP matches what is served.
//!
//! Tests that need `systemd-analyze` print one `SKIPPED: …` line and pass
//! only when that tool cannot run at all.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const UNIT: &str = include_str!("../deploy/tessera.service");

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    smol::block_on(f)
}

/// `systemd-analyze ARGS`, or `None` (with a SKIPPED line) when the tool is
/// missing or cannot run here.
fn systemd_analyze(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => {
            println!("SKIPPED: systemd-analyze cannot run here (Debian package `systemd`)");
            return None;
        }
    }
    Some(Command::new("systemd-analyze").args(args).output().unwrap())
}

/// The unit with ExecStart pointing at this build, so `verify` can check it.
fn unit_copy(dir: &Path) -> PathBuf {
    let path = dir.join("tessera.service");
    let unit = UNIT.replace("/usr/local/bin/tessera", env!("CARGO_BIN_EXE_tessera"));
    std::fs::write(&path, unit).unwrap();
    path
}

#[test]
fn systemd_unit_verifies_without_a_single_warning() {
    let dir = scratch_dir("deploy", "verify");
    let unit = unit_copy(&dir);
    let Some(out) = systemd_analyze(&["verify", unit.to_str().unwrap()]) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // verify exits 0 on unknown keys and bad values; it only warns.
    let about_unit: Vec<&str> = stderr.lines().filter(|l| l.contains("tessera.service")).collect();
    assert!(about_unit.is_empty(), "systemd-analyze verify:\n{stderr}");
}

#[test]
fn systemd_unit_exposure_is_at_most_2_0() {
    let dir = scratch_dir("deploy", "security");
    let unit = unit_copy(&dir);
    let Some(out) = systemd_analyze(&["security", "--offline=yes", unit.to_str().unwrap()]) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no score in\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable score line {line:?}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{stdout}");
}

#[test]
fn systemd_unit_has_the_hardening_the_readme_promises() {
    let lines: Vec<&str> = UNIT.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    for want in [
        "Type=notify",
        "WatchdogSec=10s",
        "DynamicUser=yes",
        "StateDirectory=tessera",
        "LoadCredential=signing-key:/etc/tessera/signing-key",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "SystemCallFilter=@system-service",
    ] {
        assert!(lines.contains(&want), "unit lacks {want}");
    }
    for prefix in ["RestrictAddressFamilies=", "MemoryMax=", "LimitNOFILE="] {
        assert!(lines.iter().any(|l| l.starts_with(prefix)), "unit lacks {prefix}");
    }
    let exec = lines.iter().find(|l| l.starts_with("ExecStart=")).expect("ExecStart");
    assert!(exec.contains("--secret-file %d/signing-key"), "{exec}");
    assert!(exec.contains("--state /var/lib/tessera/"), "{exec}");
}

/// Datagrams received on `sock` until `until` (or `n` of them).
fn datagrams(sock: &UnixDatagram, n: usize, within: Duration) -> Vec<String> {
    let until = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < n {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.recv(&mut buf) {
            Ok(len) => got.push(String::from_utf8_lossy(&buf[..len]).into_owned()),
            Err(_) => break,
        }
    }
    got
}

#[test]
fn sd_notify_ready_when_listening_watchdog_from_the_loop_stopping_on_sigterm() {
    let dir = scratch_dir("deploy", "notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    // WatchdogSec=0.4s: a ping every 200 ms.
    let mut s = Server::start_with_env(
        &[],
        &[
            ("TESSERA_SECRET", KEY),
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let first = datagrams(&sock, 1, Duration::from_secs(10));
    assert_eq!(first, ["READY=1"], "{}", s.logs());
    // The server answers while it pings.
    let r = http(s.addr, "GET", "/healthz", &[], "");
    assert_eq!(status(&r), 200, "{r}");
    let pings = datagrams(&sock, 3, Duration::from_secs(10));
    assert_eq!(pings, ["WATCHDOG=1"; 3], "{}", s.logs());
    s.signal("TERM");
    let mut rest = datagrams(&sock, 10, Duration::from_secs(3));
    rest.retain(|m| m != "WATCHDOG=1");
    assert_eq!(rest, ["STOPPING=1"], "{}", s.logs());
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0));
}

#[cfg(target_os = "linux")]
#[test]
fn sd_notify_abstract_socket_and_no_watchdog_for_another_pid() {
    let name = format!("tessera-notify-test-{}", std::process::id());
    use std::os::linux::net::SocketAddrExt as _;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    // WATCHDOG_PID names another process (as after a fork): no pings.
    let s = Server::start_with_env(
        &[],
        &[
            ("TESSERA_SECRET", KEY),
            ("NOTIFY_SOCKET", &format!("@{name}")),
            ("WATCHDOG_USEC", "100000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    assert_eq!(
        datagrams(&sock, 1, Duration::from_secs(10)),
        ["READY=1"],
        "{}",
        s.logs()
    );
    let more = datagrams(&sock, 1, Duration::from_millis(800));
    assert!(more.is_empty(), "pings for another pid: {more:?}");
}

#[test]
fn sd_notify_bad_socket_is_logged_and_the_server_still_serves() {
    let s = Server::start_with_env(
        &[],
        &[("TESSERA_SECRET", KEY), ("NOTIFY_SOCKET", "relative/notify.sock")],
    );
    s.wait_log(&["notify_failed", "NOTIFY_SOCKET"]);
    assert_eq!(status(&http(s.addr, "GET", "/healthz", &[], "")), 200);
    // A path nobody listens on: the send fails, the server goes on.
    let s = Server::start_with_env(
        &[],
        &[
            ("TESSERA_SECRET", KEY),
            ("NOTIFY_SOCKET", "/nonexistent/tessera/notify"),
        ],
    );
    s.wait_log(&["notify_failed"]);
    assert_eq!(status(&http(s.addr, "GET", "/healthz", &[], "")), 200);
}

#[test]
fn key_from_a_systemd_credential_directory() {
    use std::os::unix::fs::PermissionsExt as _;
    // What LoadCredential= makes: a private directory, a 0400 file.
    let dir = scratch_dir("deploy", "credentials");
    let key = dir.join("signing-key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500)).unwrap();
    let secret_file = format!("{}/signing-key", dir.display());
    let s = Server::start_with_env(
        &["--secret-file", &secret_file],
        &[("CREDENTIALS_DIRECTORY", dir.to_str().unwrap())],
    );
    block_on(async {
        let (_ws, welcome) = ws_bearer(s.addr, &token("cred", 1, 60, |_| {})).await;
        assert_eq!(welcome["sub"], "cred", "{welcome}");
    });
    // A token signed with another key is refused: the credential is the key.
    let c = tessera::jwt::Claims {
        sub: "x".into(),
        exp: (now() + 60) as f64,
        ..Default::default()
    };
    let other = tessera::keys::KeySet::single(b"another-key-another-key-another-key").unwrap();
    let bad = tessera::jwt::sign(&c, &other, None).unwrap();
    let r = raw(s.addr, &upgrade("/ws", &format!("Authorization: Bearer {bad}\r\n")));
    assert_eq!(status(&r), 401, "{r}");
    drop(s);
    // A missing credential (LoadCredential= forgotten) stops start-up with exit 2.
    let out = tessera_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--secret-file"])
        .arg(dir.join("missing"))
        .env_remove("TESSERA_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--secret-file"));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn served_console_csp_hashes_match_the_served_inline_script_and_style() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let s = Server::start(&[]);
    let r = http(s.addr, "GET", "/", &[], "");
    assert_eq!(status(&r), 200);
    let csp = header(&r, "content-security-policy").expect("CSP").to_string();
    let page = &r[r.find("\r\n\r\n").expect("head end") + 4..];
    let inline = |open: &str, close: &str| {
        let start = page.find(open).expect("open tag") + open.len();
        let len = page[start..].find(close).expect("close tag");
        page[start..start + len].to_string()
    };
    let hash = |s: &str| base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(s.as_bytes()));
    let script = inline("<script>", "</script>");
    let style = inline("<style>", "</style>");
    assert!(script.len() > 100 && style.len() > 100);
    assert!(
        csp.contains(&format!("script-src 'sha256-{}';", hash(&script))),
        "{csp}"
    );
    assert!(csp.contains(&format!("style-src 'sha256-{}';", hash(&style))), "{csp}");
    // One changed byte no longer matches.
    assert!(!csp.contains(&hash(&format!("{script} "))));
}
