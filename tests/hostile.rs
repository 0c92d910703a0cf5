//! Black-box tests of tessera under hostile clients (issue #14): budgets for
//! connections that have not upgraded, write and keep-alive deadlines, the
//! file-descriptor limit, the login throttle and queue, trusted proxies,
//! the origin rule on cookie refresh/logout, the state file's temp name,
//! and the smaller items (malformed upgrades, `Expect`, log hygiene,
//! `--metrics-listen`).
//!
//! Many attackers are simulated by binding client sockets to other
//! 127.0.0.0/8 source addresses. `TESSERA_BIN` runs the tests against
//! another build (to see them fail on the code before a fix), as for every
//! suite that starts its servers through `tests/common`.

mod common;

use common::{Server, body, header, scratch_dir, status, token, user, write_users, ws_bearer};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera::auth::users::{PasswordHash, User};

/// A TCP connection from source address `src` (any 127.0.0.0/8 address
/// works on Linux loopback).
fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    bind(&fd, &SocketAddrV4::new(src, 0)).unwrap();
    connect(&fd, &dst).unwrap();
    TcpStream::from(fd)
}

/// Sends `request` from `src` and reads the whole answer (5 s at most).
fn raw_from(src: Ipv4Addr, dst: SocketAddr, request: &[u8]) -> String {
    let mut s = connect_from(src, dst);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn post(path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

fn login_req(user: &str, pw: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(extra);
    post("/auth/login", &h, &json!({"username":user,"password":pw}).to_string())
}

/// A users file with these `(name, password, iterations)`, in this order.
fn users(dir: &Path, list: &[(&str, &str, u32)]) -> PathBuf {
    let list = list.iter().map(|(name, pw, iterations)| User {
        hash: PasswordHash::new(pw.as_bytes(), *iterations, [3; 16]),
        ..user(name, 1, false, pw)
    });
    write_users(dir, list)
}

/// Whether the server closed `s` within `within` (EOF or reset; a read
/// timeout means still open).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// How many of `conns` the server closed (each checked for `within`).
fn count_closed(conns: &mut [TcpStream], within: Duration) -> usize {
    conns
        .iter_mut()
        .map(|c| closed_within(c, within))
        .filter(|&closed| closed)
        .count()
}

fn v4(a: u8, b: u8, c: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, a, b, c)
}

// ---- Finding 1: connections that never authenticate --------------------

#[test]
fn f1_idle_connections_under_a_low_file_limit_do_not_lock_out_upgrades() {
    let s = Server::launch().ulimit("-n 64").start(&["--handshake-timeout", "30"]);
    // 120 silent connections from 30 addresses: more than the process has
    // descriptors for.
    let mut idle = Vec::new();
    for i in 0..120u8 {
        idle.push(connect_from(v4(0, 2, 2 + i % 30), s.addr));
    }
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let ok = smol::block_on(async {
        let t = token("agent", 1, 60, |_| {});
        smol::future::or(
            async {
                ws_bearer(s.addr, &t).await;
                true
            },
            async {
                smol::Timer::after(Duration::from_secs(8)).await;
                false
            },
        )
        .await
    });
    assert!(
        ok,
        "a valid upgrade must not wait for idle connections to time out\n{}",
        s.logs()
    );
    let mut h = connect_from(v4(0, 0, 1), s.addr);
    h.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    h.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = h.read_to_string(&mut out);
    assert_eq!(status(&out), 200, "/healthz under the flood: {out:?}");
    // accept_failed is rate-limited (at most one a second) and counts.
    let secs = started.elapsed().as_secs() + 2;
    let logged = s.logs().lines().filter(|l| l.contains("\"accept_failed\"")).count() as u64;
    assert!(logged <= secs, "{logged} accept_failed lines in {secs} s");
    if logged > 0 {
        assert!(
            s.find_log(&["\"accept_failed\"", "\"count\""], Duration::ZERO)
                .is_some()
        );
    }
    drop(idle);
}

#[test]
fn f1_the_soft_open_files_limit_is_raised_to_the_hard_one() {
    let s = Server::launch().ulimit("-S -n 100").start(&[]);
    let line = s
        .find_log(&["\"open_files_limit\""], Duration::from_secs(2))
        .unwrap_or_else(|| panic!("no open_files_limit line\n{}", s.logs()));
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["soft_before"], "100", "{line}");
    assert_eq!(v["soft"], v["hard"], "{line}");
}

#[test]
fn f1_the_per_address_cap_sheds_that_address_s_oldest_idle_connection() {
    let s = Server::start(&["--handshake-timeout", "30", "--max-pending-per-address", "4"]);
    let mut conns: Vec<TcpStream> = (0..4).map(|_| connect_from(v4(0, 3, 1), s.addr)).collect();
    let mut other = connect_from(v4(0, 3, 2), s.addr);
    std::thread::sleep(Duration::from_millis(300));
    let _fifth = connect_from(v4(0, 3, 1), s.addr);
    assert!(
        closed_within(&mut conns[0], Duration::from_secs(5)),
        "the oldest idle connection of the address is shed"
    );
    assert!(!closed_within(&mut conns[1], Duration::from_millis(300)));
    assert!(
        !closed_within(&mut other, Duration::from_millis(300)),
        "other addresses keep theirs"
    );
}

#[test]
fn f1_the_global_cap_sheds_the_oldest_idle_connection_not_the_new_one() {
    let s = Server::start(&["--handshake-timeout", "30", "--max-pending", "8"]);
    let mut conns: Vec<TcpStream> = (0..8).map(|i| connect_from(v4(0, 4, 1 + i), s.addr)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let r = raw_from(
        v4(0, 4, 100),
        s.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    assert!(
        closed_within(&mut conns[0], Duration::from_secs(5)),
        "the oldest idle one went"
    );
    assert!(!closed_within(&mut conns[7], Duration::from_millis(300)));
    let m = raw_from(
        v4(0, 0, 1),
        s.addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(m.contains("tessera_pending_shed_total "), "{m}");
}

#[test]
fn f1_a_client_that_pipelines_and_never_reads_is_cut_off_by_the_write_deadline() {
    let s = Server::start(&["--write-timeout", "2"]);
    let mut c = connect_from(v4(0, 5, 1), s.addr);
    let n = 3000;
    let req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(n);
    let mut w = c.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = w.write_all(req.as_bytes());
    });
    assert!(
        s.find_log(&["\"http_write_timeout\""], Duration::from_secs(15))
            .is_some(),
        "a write that cannot finish is abandoned\n{}",
        s.logs()
    );
    // Now read what was sent: the connection ends well before n responses.
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let answered = String::from_utf8_lossy(&out).matches("HTTP/1.1 200").count();
    assert!(answered < n, "{answered} of {n} answered");
}

#[test]
fn f1_keep_alive_idleness_is_bounded() {
    let s = Server::start(&["--handshake-timeout", "30", "--keepalive-timeout", "1"]);
    let mut c = connect_from(v4(0, 6, 1), s.addr);
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut b = [0u8; 1024];
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = c.read(&mut b).unwrap();
    assert_eq!(status(&String::from_utf8_lossy(&b[..n])), 200);
    assert!(
        closed_within(&mut c, Duration::from_secs(6)),
        "idle keep-alive is closed"
    );
}

/// Reads one HTTP response head (and whatever came with it) from `c`.
fn read_answer(c: &mut TcpStream, within: Duration) -> String {
    c.set_read_timeout(Some(within)).unwrap();
    let mut out = Vec::new();
    let mut b = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&b[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn f1_a_request_on_its_way_outlasts_silent_connections_at_the_cap() {
    // A client sends the first line of a valid upgrade, then the rest a
    // moment later; meanwhile silent connections keep arriving at the
    // global cap. The silent ones (older or newer) are shed first.
    let s = Server::start(&["--handshake-timeout", "30", "--max-pending", "8"]);
    let mut silent: Vec<TcpStream> = (0..4).map(|i| connect_from(v4(0, 7, 1 + i), s.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = token("agent", 1, 60, |_| {});
    let req = common::upgrade("/ws", &format!("Authorization: Bearer {t}\r\n"));
    let (first, rest) = req.split_at(18);
    let mut c = connect_from(v4(0, 7, 100), s.addr);
    c.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // 24 more silent connections: 20 sheds at a cap of 8.
    for i in 0..24u8 {
        silent.push(connect_from(v4(0, 7, 10 + i), s.addr));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    c.write_all(rest).unwrap();
    let answer = read_answer(&mut c, Duration::from_secs(5));
    assert_eq!(status(&answer), 101, "{answer:?}\n{}", s.logs());
    let shed = count_closed(&mut silent, Duration::from_millis(50));
    assert!(shed >= 20, "{shed} silent connections shed");
}

#[test]
fn f1_clients_that_do_not_read_their_responses_can_be_shed_at_the_cap() {
    // Four clients pipeline requests and never read: their connections
    // are busy writing, for up to --write-timeout. At a cap of 4 a new
    // client still gets in: one of them is shed instead.
    let s = Server::start(&["--write-timeout", "60", "--max-pending", "4"]);
    let req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3000);
    let mut readers = Vec::new();
    for i in 0..4u8 {
        let c = connect_from(v4(0, 8, 1 + i), s.addr);
        let mut w = c.try_clone().unwrap();
        let req = req.clone();
        std::thread::spawn(move || {
            let _ = w.write_all(req.as_bytes());
        });
        readers.push(c);
    }
    // Once their responses fill the socket buffers (well within 10 s; the
    // build before this rule refused every try for 60 s) a new client gets
    // in.
    let mut r = String::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        r = raw_from(
            v4(0, 8, 100),
            s.addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        if status(&r) == 200 {
            break;
        }
    }
    assert_eq!(status(&r), 200, "{r:?}\n{}", s.logs());
    let shed = count_closed(&mut readers, Duration::from_millis(200));
    assert!(shed >= 1, "a stalled reader was shed");
}

#[test]
fn f1_an_address_whose_connections_are_shed_goes_before_a_waiting_client() {
    // One address keeps the table full of silent connections and reopens
    // them as they are shed; a client from another address connects and
    // is slow to send its request (as when its first packet is lost to a
    // full listen queue). Before the repeat-offender rule the client was
    // the longest waiting after 8 more connections and was shed.
    let s = Server::start(&["--handshake-timeout", "30", "--max-pending", "8"]);
    let attacker = v4(0, 9, 1);
    let mut silent: Vec<TcpStream> = (0..10).map(|_| connect_from(attacker, s.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut c = connect_from(v4(0, 9, 100), s.addr);
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..24 {
        silent.push(connect_from(attacker, s.addr));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let t = token("agent", 1, 60, |_| {});
    let _ = c.write_all(&common::upgrade("/ws", &format!("Authorization: Bearer {t}\r\n")));
    let answer = read_answer(&mut c, Duration::from_secs(5));
    assert_eq!(status(&answer), 101, "{answer:?}\n{}", s.logs());
    let shed = count_closed(&mut silent, Duration::from_millis(50));
    assert!(shed >= 26, "{shed} of the attacker's 34 connections shed");
}

// ---- Finding 5: the throttle -------------------------------------------

#[test]
fn f5_concurrent_wrong_passwords_reserve_their_attempts_before_hashing() {
    let d = scratch_dir("hostile", "reserve");
    let u = users(&d, &[("alice", "right", 10_000)]);
    let s = Server::start(&["--users", u.to_str().unwrap()]);
    let addr = s.addr;
    let threads: Vec<_> = (0..30)
        .map(|_| std::thread::spawn(move || status(&raw_from(v4(0, 7, 1), addr, &login_req("alice", "wrong", &[])))))
        .collect();
    let codes: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    if codes.contains(&0) {
        panic!("no answer: {codes:?}\n{}", s.logs());
    }
    let n401 = codes.iter().filter(|&&c| c == 401).count();
    let n429 = codes.iter().filter(|&&c| c == 429).count();
    assert!(n401 <= 10, "at most the limit are hashed and refused: {codes:?}");
    assert_eq!(n401 + n429, 30, "the rest are throttled: {codes:?}");
}

#[test]
fn f5_trusted_proxy_forwards_the_client_address_and_user_names_have_a_limit() {
    let d = scratch_dir("hostile", "proxy");
    let u = users(&d, &[("alice", "right", 1000), ("victim", "vpass", 1000)]);
    let s = Server::start(&["--users", u.to_str().unwrap(), "--trusted-proxy", "127.0.8.0/24"]);
    let proxy = v4(0, 8, 1);
    let via = |client: &str, user: &str, pw: &str| {
        status(&raw_from(
            proxy,
            s.addr,
            &login_req(user, pw, &[("X-Forwarded-For", client)]),
        ))
    };
    // One client's typos lock out that client only, not the whole proxy.
    for _ in 0..10 {
        assert_eq!(via("203.0.113.1", "alice", "typo"), 401);
    }
    assert_eq!(via("203.0.113.1", "alice", "right"), 429);
    assert_eq!(via("203.0.113.2", "alice", "right"), 200);
    let line = s
        .find_log(&["\"login_failed\"", "203.0.113.1"], Duration::from_secs(2))
        .unwrap();
    assert!(line.contains("\"peer\":\"127.0.8.1:"), "both addresses logged: {line}");
    // Untrusted peers cannot claim an address.
    for _ in 0..10 {
        let r = raw_from(
            v4(0, 18, 200),
            s.addr,
            &login_req("carol", "typo", &[("X-Forwarded-For", "198.51.100.9")]),
        );
        assert_eq!(status(&r), 401);
    }
    let r = raw_from(
        proxy,
        s.addr,
        &login_req("alice", "right", &[("X-Forwarded-For", "198.51.100.9")]),
    );
    assert_eq!(status(&r), 200, "the claim was ignored: {r}\n{}", s.logs());
    // One name guessed from many addresses is blocked for that name only.
    for i in 0..20 {
        assert_eq!(via(&format!("192.0.2.{}", 10 + i), "victim", "guess"), 401);
    }
    assert_eq!(via("192.0.2.200", "victim", "vpass"), 429);
    assert_eq!(via("192.0.2.200", "alice", "right"), 200);
}

#[test]
fn f5_valid_logins_get_through_a_wrong_password_flood_from_50_addresses() {
    let d = scratch_dir("hostile", "flood");
    // Debug builds hash slowly: a cost that keeps the flood going for a while.
    let u = users(&d, &[("alice", "right", 5_000)]);
    let s = Server::start(&["--users", u.to_str().unwrap()]);
    let addr = s.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = Vec::new();
    for a in 0..50u8 {
        for _ in 0..4 {
            let stop = stop.clone();
            flood.push(std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    // A new name each time: only the address limit applies.
                    raw_from(
                        v4(1, 0, 10 + a),
                        addr,
                        &login_req(&format!("guess-{a}-{n}"), "nope", &[]),
                    );
                }
            }));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut codes = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = raw_from(v4(0, 0, 1), addr, &login_req("alice", "right", &[]));
        codes.push((status(&r), t.elapsed()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in flood {
        let _ = t.join();
    }
    assert!(
        codes.iter().all(|(c, _)| *c == 200),
        "valid logins during the flood: {codes:?}"
    );
    assert!(s.logs().contains("\"ip_throttled\""), "the flood was throttled");
}

// ---- Finding 6: timing of unknown users ---------------------------------

fn login_time(addr: SocketAddr, src: Ipv4Addr, user: &str) -> Duration {
    let t = Instant::now();
    let r = raw_from(src, addr, &login_req(user, "x", &[]));
    assert_eq!(status(&r), 401, "{r}");
    t.elapsed()
}

#[test]
fn f6_unknown_users_cost_as_much_as_the_strongest_hash_also_after_sighup() {
    let d = scratch_dir("hostile", "timing");
    let u = users(&d, &[("weak", "w", 1), ("weak2", "w", 1)]);
    let s = Server::start(&["--users", u.to_str().unwrap()]);
    // Minimum of a few tries: other tests share the CPU, and hashing runs
    // at nice 19.
    let fastest = |user: &str, base: u8| {
        (0..3)
            .map(|i| login_time(s.addr, v4(0, 9, base + i), user))
            .min()
            .unwrap()
    };
    let weak = fastest("weak", 1);
    // The strongest user comes last in the file.
    users(&d, &[("weak", "w", 1), ("strong", "s", 500_000)]);
    let _ = Command::new("kill").args(["-HUP", &s.child.id().to_string()]).status();
    assert!(
        s.find_log(&["\"reload\"", "\"users\""], Duration::from_secs(5))
            .is_some()
    );
    let strong = fastest("strong", 10);
    let unknown = fastest("nobody", 20);
    let weak_after = fastest("weak", 30);
    assert!(
        unknown * 5 > strong && unknown > weak.max(weak_after) * 10,
        "unknown {unknown:?}, strong {strong:?}, weak {weak:?}"
    );
}

// ---- Finding 7: origin rule on cookie refresh and logout -----------------

#[test]
fn f7_cookie_refresh_and_logout_apply_the_origin_rule() {
    let d = scratch_dir("hostile", "origin");
    let u = users(&d, &[("alice", "right", 1000)]);
    let s = Server::start(&["--users", u.to_str().unwrap(), "--insecure-cookies"]);
    let r = raw_from(v4(0, 0, 1), s.addr, &login_req("alice", "right", &[]));
    assert_eq!(status(&r), 200);
    let refresh = body(&r)["refresh_token"].as_str().unwrap().to_string();
    let cookie = format!("tessera_refresh={refresh}");
    let evil = [("Cookie", cookie.as_str()), ("Origin", "http://evil.example")];
    let r = raw_from(v4(0, 0, 1), s.addr, &post("/auth/refresh", &evil, ""));
    assert_eq!(status(&r), 403, "cross-site cookie refresh: {r}");
    let r = raw_from(
        v4(0, 0, 1),
        s.addr,
        &post("/auth/refresh", &[("Cookie", cookie.as_str())], ""),
    );
    assert_eq!(status(&r), 403, "a cookie without any Origin: {r}");
    let r = raw_from(v4(0, 0, 1), s.addr, &post("/auth/logout", &evil, ""));
    assert_eq!(status(&r), 403, "cross-site cookie logout: {r}");
    let same = [("Cookie", cookie.as_str()), ("Origin", "http://localhost")];
    let r = raw_from(v4(0, 0, 1), s.addr, &post("/auth/refresh", &same, ""));
    assert_eq!(status(&r), 200, "same-origin cookie refresh: {r}");
    let refresh = body(&r)["refresh_token"].as_str().unwrap().to_string();
    // A token in the body is not ambient: no Origin needed.
    let b = json!({ "refresh_token": refresh }).to_string();
    let r = raw_from(
        v4(0, 0, 1),
        s.addr,
        &post("/auth/logout", &[("Content-Type", "application/json")], &b),
    );
    assert_eq!(status(&r), 204, "{r}");
}

// ---- Finding 8: the state file's temp file -------------------------------

#[test]
fn f8_a_planted_symlink_at_the_old_temp_name_is_never_followed() {
    let d = scratch_dir("hostile", "symlink");
    let u = users(&d, &[("alice", "right", 1000)]);
    let state = d.join("state.json");
    let victim = d.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let s = Server::start(&["--users", u.to_str().unwrap(), "--state", state.to_str().unwrap()]);
    // The old name was `.state.json.tmp-<pid>`; plant links for a range of
    // pids around the server's.
    let pid = s.child.id();
    for p in pid.saturating_sub(2)..pid + 3 {
        let _ = std::os::unix::fs::symlink(&victim, d.join(format!(".state.json.tmp-{p}")));
    }
    let r = raw_from(v4(0, 0, 1), s.addr, &login_req("alice", "right", &[]));
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let meta = std::fs::symlink_metadata(&state).unwrap();
    assert!(meta.file_type().is_file(), "state.json is a regular file");
    assert!(std::fs::read_to_string(&state).unwrap().contains("\"version\""));
}

// ---- Finding 9: bounded sessions -----------------------------------------

fn refresh_with(addr: SocketAddr, t: &str) -> String {
    let b = json!({ "refresh_token": t }).to_string();
    raw_from(
        v4(0, 0, 1),
        addr,
        &post("/auth/refresh", &[("Content-Type", "application/json")], &b),
    )
}

#[test]
fn f9_refresh_rotation_keeps_the_state_bounded_and_old_tokens_still_revoke() {
    let d = scratch_dir("hostile", "rotation");
    let u = users(&d, &[("alice", "right", 1000)]);
    let state = d.join("state.json");
    let s = Server::start(&["--users", u.to_str().unwrap(), "--state", state.to_str().unwrap()]);
    let r = raw_from(v4(0, 0, 1), s.addr, &login_req("alice", "right", &[]));
    let first = body(&r)["refresh_token"].as_str().unwrap().to_string();
    let mut t = first.clone();
    let mut sizes = Vec::new();
    for i in 0..120 {
        let r = refresh_with(s.addr, &t);
        assert_eq!(status(&r), 200, "{r}");
        t = body(&r)["refresh_token"].as_str().unwrap().to_string();
        if i == 9 || i == 119 {
            sizes.push(std::fs::metadata(&state).unwrap().len());
        }
    }
    assert!(sizes[1] <= sizes[0] + 16, "state grew with refreshes: {sizes:?}");
    let r = refresh_with(s.addr, &first);
    assert_eq!(body(&r)["error"], "refresh_token_reused", "{r}");
    let r = refresh_with(s.addr, &t);
    assert_eq!(status(&r), 401, "the session is revoked: {r}");
}

#[test]
fn f9_sessions_per_user_are_capped() {
    let d = scratch_dir("hostile", "sesscap");
    let u = users(&d, &[("alice", "right", 1000)]);
    let s = Server::start(&["--users", u.to_str().unwrap(), "--max-sessions-per-user", "2"]);
    let tokens: Vec<String> = (0..3)
        .map(|_| {
            let r = raw_from(v4(0, 0, 1), s.addr, &login_req("alice", "right", &[]));
            assert_eq!(status(&r), 200, "{r}");
            body(&r)["refresh_token"].as_str().unwrap().to_string()
        })
        .collect();
    let r = refresh_with(s.addr, &tokens[0]);
    assert_eq!(
        (status(&r), body(&r)["error"].as_str()),
        (401, Some("invalid_refresh_token")),
        "{r}"
    );
    assert_eq!(status(&refresh_with(s.addr, &tokens[1])), 200);
    assert_eq!(status(&refresh_with(s.addr, &tokens[2])), 200);
    assert!(s.find_log(&["\"session_evicted\""], Duration::from_secs(5)).is_some());
}

// ---- Finding 10: smaller items -------------------------------------------

#[test]
fn f10_malformed_upgrades_are_answered_and_counted() {
    let s = Server::start(&[]);
    let base = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let r = raw_from(v4(0, 10, 1), s.addr, format!("{base}\r\n").as_bytes());
    assert_eq!(status(&r), 426, "no Sec-WebSocket-Version: {r:?}");
    assert_eq!(header(&r, "sec-websocket-version"), Some("13"));
    let old = base.replace("HTTP/1.1", "HTTP/1.0");
    let r = raw_from(
        v4(0, 10, 1),
        s.addr,
        format!("{old}Sec-WebSocket-Version: 13\r\n\r\n").as_bytes(),
    );
    assert_eq!(status(&r), 400, "HTTP/1.0: {r:?}");
    let m = raw_from(
        v4(0, 0, 1),
        s.addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(m.contains("tessera_handshakes_total{result=\"bad_upgrade\"} 2"), "{m}");
}

#[test]
fn f10_expect_100_continue_is_answered_and_others_get_417() {
    let d = scratch_dir("hostile", "expect");
    let u = users(&d, &[("alice", "right", 1000)]);
    let s = Server::start(&["--users", u.to_str().unwrap()]);
    let b = json!({"username":"alice","password":"right"}).to_string();
    let mut c = connect_from(v4(0, 11, 1), s.addr);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        b.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    let mut first = [0u8; 25];
    c.read_exact(&mut first).expect("an interim answer before the body");
    assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b.as_bytes()).unwrap();
    let mut rest = String::new();
    let _ = c.read_to_string(&mut rest);
    assert_eq!(status(&rest), 200, "{rest}");
    let r = raw_from(
        v4(0, 11, 1),
        s.addr,
        &post("/auth/login", &[("Expect", "something-else")], &b),
    );
    assert_eq!(status(&r), 417, "{r}");
}

#[test]
fn f10_login_failed_logs_a_capped_escaped_user_name() {
    let d = scratch_dir("hostile", "logname");
    let u = users(&d, &[("alice", "right", 1000)]);
    let s = Server::start(&["--users", u.to_str().unwrap()]);
    let long = "p".repeat(10_000);
    assert_eq!(
        status(&raw_from(v4(0, 12, 1), s.addr, &login_req(&long, "x", &[]))),
        401
    );
    let line = s
        .find_log(&["\"login_failed\"", "ppp"], Duration::from_secs(5))
        .unwrap();
    assert!(line.len() < 400, "capped: {} bytes", line.len());
    assert!(line.contains("bytes]"), "truncation marked: {line}");
    let evil = "a\u{2028}b\u{202e}c";
    assert_eq!(status(&raw_from(v4(0, 12, 2), s.addr, &login_req(evil, "x", &[]))), 401);
    let line = s.find_log(&["\"login_failed\"", "a\\u2028b\\u202ec"], Duration::from_secs(5));
    let line = line.unwrap_or_else(|| panic!("escaped name not logged\n{}", s.logs()));
    assert!(!line.contains('\u{2028}') && !line.contains('\u{202e}'));
}

#[test]
fn f10_metrics_listen_moves_metrics_and_healthz_to_a_second_listener() {
    // A free port for the metrics listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let m = format!("127.0.0.1:{port}");
    let s = Server::start(&["--metrics-listen", &m]);
    let maddr: SocketAddr = m.parse().unwrap();
    let get = |a: SocketAddr, path: &str| {
        raw_from(
            v4(0, 0, 1),
            a,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    };
    assert_eq!(status(&get(s.addr, "/metrics")), 404);
    assert_eq!(status(&get(s.addr, "/healthz")), 404);
    assert_eq!(status(&get(s.addr, "/")), 200);
    assert_eq!(status(&get(maddr, "/metrics")), 200);
    assert_eq!(status(&get(maddr, "/healthz")), 200);
    assert_eq!(status(&get(maddr, "/")), 404);
    assert!(s.logs().contains("\"metrics_listening\""), "{}", s.logs());
}
