//! Black-box tests of login, refresh rotation, logout and the state file
//! (SPEC §4.1, §6, §7) against the real binary.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use tessera::auth::users::{User, UsersFile};

/// A users file with `hq` (5, publish) and `agent-7` (2, channels ops).
fn users_file(dir: &std::path::Path) -> PathBuf {
    let agent = User {
        channels: vec!["ops".into(), "team.*".into()],
        ..user("agent-7", 2, false, "a7-pass")
    };
    write_users(dir, [user("hq", 5, true, "hq-pass"), agent])
}

fn start(dir: &std::path::Path, extra: &[&str]) -> Server {
    let users = users_file(dir);
    let mut args = vec!["--users", users.to_str().unwrap()];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&refs)
}

fn login(s: &Server, user: &str, pw: &str) -> String {
    login_within(s, user, pw, Duration::from_secs(5))
}

/// [`login`] waiting up to `timeout` for the answer (see [`raw_within`]).
fn login_within(s: &Server, user: &str, pw: &str, timeout: Duration) -> String {
    let body = json!({"username":user,"password":pw}).to_string();
    let req = http_request(
        s.addr,
        "POST",
        "/auth/login",
        &[("Content-Type", "application/json")],
        &body,
    );
    raw_within(s.addr, req.as_bytes(), timeout)
}

fn set_cookies(resp: &str) -> Vec<String> {
    let head = resp.split_once("\r\n\r\n").map(|(h, _)| h).unwrap_or("");
    head.lines()
        .filter_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
                .map(|(_, v)| v.trim().to_string())
        })
        .collect()
}

fn claims_of(token: &str) -> Value {
    let keys = tessera::keys::KeySet::single(KEY.as_bytes()).unwrap();
    let c = tessera::jwt::verify(token, &keys, &Default::default(), now()).unwrap();
    serde_json::to_value(&*c).unwrap()
}

#[test]
fn spec4_1_login_body_cookies_and_claims() {
    let d = scratch_dir("sessions", "login");
    let s = start(&d, &[]);
    let r = login(&s, "agent-7", "a7-pass");
    assert_eq!(status(&r), 200, "{r}");
    let b = body(&r);
    assert_eq!(
        (
            b["token_type"].as_str(),
            b["expires_in"].as_u64(),
            b["refresh_expires_in"].as_u64()
        ),
        (Some("Bearer"), Some(3600), Some(604800))
    );
    let access = b["access_token"].as_str().unwrap();
    let refresh_t = b["refresh_token"].as_str().unwrap();
    assert_eq!(refresh_t.len(), 43);
    let c = claims_of(access);
    assert_eq!((c["sub"].as_str(), c["clearance"].as_u64()), (Some("agent-7"), Some(2)));
    assert_eq!(c["channels"], json!(["ops", "team.*"]));
    assert!(c["sid"].is_string());
    assert!(c.get("publish").is_none());
    let cookies = set_cookies(&r);
    assert_eq!(
        cookies[0],
        format!("tessera_access={access}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=3600")
    );
    assert_eq!(
        cookies[1],
        format!("tessera_refresh={refresh_t}; Path=/auth; HttpOnly; Secure; SameSite=Strict; Max-Age=604800")
    );
    let hq = body(&login(&s, "hq", "hq-pass"));
    assert_eq!(claims_of(hq["access_token"].as_str().unwrap())["publish"], true);
    // --insecure-cookies drops Secure.
    let d2 = scratch_dir("sessions", "login-insecure");
    let s2 = start(&d2, &["--insecure-cookies"]);
    let r = login(&s2, "hq", "hq-pass");
    assert!(set_cookies(&r).iter().all(|c| !c.contains("Secure")));
}

#[test]
fn spec4_1_login_http_errors() {
    let d = scratch_dir("sessions", "login-errors");
    let s = start(&d, &[]);
    let a = s.addr;
    let cases: Vec<(u16, String)> = vec![
        (415, http(a, "POST", "/auth/login", &[("Content-Type", "text/plain")], r#"{"username":"hq","password":"x"}"#)),
        (400, http(a, "POST", "/auth/login", &[("Content-Type", "application/json")], r#"{"username":"hq"}"#)),
        (400, http(a, "POST", "/auth/login", &[("Content-Type", "application/json")], "not json")),
        (411, raw(a, b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n")),
        (411, raw(a, b"POST /auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        (413, raw(a, b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20000\r\n\r\n")),
        (431, raw(a, format!("POST /auth/login HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000)).as_bytes())),
        (405, http(a, "GET", "/auth/login", &[], "")),
        (404, http(a, "POST", "/auth/nope", &[("Content-Type", "application/json")], "{}")),
    ];
    for (want, r) in cases {
        assert_eq!(status(&r), want, "{r}");
        let b = body(&r);
        assert!(b["error"].is_string() && b["message"].is_string(), "{r}");
    }
}

#[test]
fn spec4_1_unknown_user_and_wrong_password_look_the_same() {
    let d = scratch_dir("sessions", "indist");
    let s = start(&d, &[]);
    let unknown = login(&s, "nobody", "x");
    let wrong = login(&s, "hq", "x");
    assert_eq!((status(&unknown), status(&wrong)), (401, 401));
    assert_eq!(body(&unknown), body(&wrong));
    assert_eq!(body(&wrong)["error"], "invalid_credentials");
    s.wait_log(&["login_failed", "nobody"]);
}

#[test]
fn spec4_1_rotation_reuse_revokes_session_and_closes_socket_4003() {
    let d = scratch_dir("sessions", "reuse");
    let s = start(&d, &[]);
    let b1 = body(&login(&s, "agent-7", "a7-pass"));
    let t1 = b1["refresh_token"].as_str().unwrap().to_string();
    let r2 = refresh(&s, &t1);
    assert_eq!(status(&r2), 200, "{r2}");
    let b2 = body(&r2);
    let t2 = b2["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(t1, t2);
    let a2 = b2["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        claims_of(&a2)["sid"],
        claims_of(b1["access_token"].as_str().unwrap())["sid"]
    );
    // Cookie-based refresh works too (from the page's own origin).
    let origin = format!("http://{}", s.addr);
    let r3 = http(
        s.addr,
        "POST",
        "/auth/refresh",
        &[("Cookie", &format!("tessera_refresh={t2}")), ("Origin", &origin)],
        "",
    );
    assert_eq!(status(&r3), 200, "{r3}");
    let a3 = body(&r3)["access_token"].as_str().unwrap().to_string();
    smol::block_on(async {
        let (mut ws, _) = ws_bearer(s.addr, &a3).await;
        // Reuse of t1: the session dies.
        let r = refresh(&s, &t1);
        assert_eq!(
            (status(&r), body(&r)["error"].as_str()),
            (401, Some("refresh_token_reused")),
            "{r}"
        );
        assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await, Some(4003));
    });
    s.wait_log(&["refresh_reused"]);
    // Every token of that session is refused now.
    let r = raw(s.addr, &upgrade("/ws", &format!("Authorization: Bearer {a2}\r\n")));
    assert_eq!(
        (status(&r), body(&r)["error"].as_str()),
        (401, Some("token_revoked")),
        "{r}"
    );
    let latest = body(&r3)["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(status(&refresh(&s, &latest)), 401);
}

#[test]
fn spec4_1_logout_revokes_and_clears_cookies() {
    let d = scratch_dir("sessions", "logout");
    let s = start(&d, &[]);
    let b = body(&login(&s, "hq", "hq-pass"));
    let access = b["access_token"].as_str().unwrap().to_string();
    smol::block_on(async {
        let (mut ws, _) = ws_bearer(s.addr, &access).await;
        let r = http(
            s.addr,
            "POST",
            "/auth/logout",
            &[("Authorization", &format!("Bearer {access}"))],
            "",
        );
        assert_eq!(status(&r), 204, "{r}");
        let cookies = set_cookies(&r);
        assert!(
            cookies
                .iter()
                .any(|c| c.starts_with("tessera_access=;") && c.contains("Max-Age=0"))
        );
        assert!(
            cookies
                .iter()
                .any(|c| c.starts_with("tessera_refresh=;") && c.contains("Path=/auth") && c.contains("Max-Age=0"))
        );
        assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await, Some(4003));
    });
    let r = raw(s.addr, &upgrade("/ws", &format!("Authorization: Bearer {access}\r\n")));
    assert_eq!(body(&r)["error"], "token_revoked");
    assert_eq!(status(&refresh(&s, b["refresh_token"].as_str().unwrap())), 401);
    // Logout by refresh token in the body.
    let b = body(&login(&s, "hq", "hq-pass"));
    let r = http(
        s.addr,
        "POST",
        "/auth/logout",
        &[("Content-Type", "application/json")],
        &json!({"refresh_token": b["refresh_token"]}).to_string(),
    );
    assert_eq!(status(&r), 204);
    assert_eq!(status(&refresh(&s, b["refresh_token"].as_str().unwrap())), 401);
    s.wait_log(&["\"logout\""]);
}

#[test]
fn spec6_restart_with_state_keeps_sessions_and_revocations() {
    let d = scratch_dir("sessions", "restart");
    let state = d.join("state.json");
    let st = state.to_str().unwrap().to_string();
    let mut s = start(&d, &["--state", &st]);
    let live = body(&login(&s, "hq", "hq-pass"));
    let dead = body(&login(&s, "agent-7", "a7-pass"));
    let r = http(
        s.addr,
        "POST",
        "/auth/logout",
        &[(
            "Authorization",
            &format!("Bearer {}", dead["access_token"].as_str().unwrap()),
        )],
        "",
    );
    assert_eq!(status(&r), 204);
    s.signal("TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(6)), Some(0));
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(
        !text.contains(live["refresh_token"].as_str().unwrap()),
        "refresh tokens are stored hashed"
    );

    let s = start(&d, &["--state", &st]);
    assert_eq!(status(&refresh(&s, live["refresh_token"].as_str().unwrap())), 200);
    let r = raw(
        s.addr,
        &upgrade(
            "/ws",
            &format!("Authorization: Bearer {}\r\n", dead["access_token"].as_str().unwrap()),
        ),
    );
    assert_eq!(body(&r)["error"], "token_revoked", "{r}");
    let r = raw(
        s.addr,
        &upgrade(
            "/ws",
            &format!("Authorization: Bearer {}\r\n", live["access_token"].as_str().unwrap()),
        ),
    );
    assert_eq!(status(&r), 101);
}

/// The state file stores the current refresh token of a session as
/// base64url(SHA-256(token)), and the session's token family (the first 16
/// bytes every one of its tokens shares) as base64url(SHA-256(prefix)): a
/// token rotated away is known by its family.
fn stored(state: &std::path::Path, token: &str) -> bool {
    use base64::Engine as _;
    use sha2::Digest;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let text = std::fs::read_to_string(state).unwrap_or_default();
    let h = b64.encode(sha2::Sha256::digest(token.as_bytes()));
    let raw = b64.decode(token).unwrap_or_default();
    let family = b64.encode(sha2::Sha256::digest(raw.get(..16).unwrap_or_default()));
    text.contains(&h) || text.contains(&format!("\"family\": \"{family}\""))
}

#[test]
fn spec6_crash_during_refreshes_loses_no_answered_token() {
    let d = scratch_dir("sessions", "crash");
    let state = d.join("state.json");
    let st = state.to_str().unwrap().to_string();
    let mut seed: u64 = 0x2545F4914F6CDD1D ^ now();
    let mut s = start(&d, &["--state", &st]);
    let (mut honoured, mut total) = (0, 0);
    for round in 0..5 {
        let first = body(&login(&s, "hq", "hq-pass"))["refresh_token"]
            .as_str()
            .unwrap()
            .to_string();
        // A stream of refreshes from another thread; SIGKILL at a random moment.
        // The kill may land anywhere in a request: a refused connection, a
        // failed write or a cut answer ends the stream (http_tolerant); only
        // a complete 200 with its token counts as answered.
        let addr = s.addr;
        let worker = std::thread::spawn(move || {
            let mut t = first;
            let mut answered = vec![];
            for _ in 0..500 {
                let r = http_tolerant(
                    addr,
                    "POST",
                    "/auth/refresh",
                    &[("Content-Type", "application/json")],
                    &json!({"refresh_token": t}).to_string(),
                );
                if status(&r) != 200 {
                    break;
                }
                let Some(next) = body(&r)["refresh_token"].as_str().map(str::to_string) else {
                    break;
                };
                t = next;
                answered.push(t.clone());
            }
            answered
        });
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(30 + seed % 300));
        s.signal("KILL");
        let _ = s.wait_exit(Duration::from_secs(5));
        let answered = worker.join().unwrap();
        s = start(&d, &["--state", &st]);
        total += answered.len();
        // Every token handed out in a response reached the disk first.
        for t in &answered {
            assert!(
                stored(&state, t),
                "round {round}: an answered refresh token is missing from the state file"
            );
        }
        // The last one answered is honoured, unless the request that used it
        // was processed and its answer lost in the crash (then it is known as
        // used: refresh_token_reused, never unknown).
        if let Some(last) = answered.last() {
            let r = refresh(&s, last);
            match status(&r) {
                200 => honoured += 1,
                _ => assert_eq!(body(&r)["error"], "refresh_token_reused", "round {round}: {r}"),
            }
        }
    }
    eprintln!("{total} refreshes answered; last answered token honoured after {honoured} of 5 crashes");
    assert!(
        total > 0,
        "no refresh was answered before any crash: the test exercised nothing"
    );
}

#[test]
fn spec6_garbage_state_file_exit_2_untouched() {
    let d = scratch_dir("sessions", "garbage");
    let state = d.join("state.json");
    std::fs::write(&state, "{not json").unwrap();
    let users = users_file(&d);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--users",
            users.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ])
        .env("TESSERA_SECRET", KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--state") && err.contains("state.json"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "{not json");
    // A bad users file likewise.
    std::fs::write(&users, "hq:5:1::nohash\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--listen", "127.0.0.1:0", "--users", users.to_str().unwrap()])
        .env("TESSERA_SECRET", KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
}

#[test]
fn spec7_ten_failed_logins_throttle_login_and_upgrade() {
    let d = scratch_dir("sessions", "throttle");
    let s = start(&d, &[]);
    for _ in 0..10 {
        assert_eq!(status(&login(&s, "hq", "wrong")), 401);
    }
    let r = login(&s, "hq", "hq-pass");
    assert_eq!(
        (status(&r), body(&r)["error"].as_str()),
        (429, Some("too_many_attempts"))
    );
    assert!(header(&r, "retry-after").is_some());
    let r = raw(
        s.addr,
        &upgrade(
            "/ws",
            &format!("Authorization: Bearer {}\r\n", token("x", 0, 60, |_| {})),
        ),
    );
    assert_eq!(status(&r), 429);
    s.wait_log(&["ip_throttled"]);
}

#[test]
fn spec7_logs_hold_no_password_token_or_cookie() {
    let d = scratch_dir("sessions", "logs");
    let s = start(&d, &[]);
    let b = body(&login(&s, "hq", "hq-pass"));
    let _ = login(&s, "hq", "wrong-password-123");
    let t = b["refresh_token"].as_str().unwrap();
    let r = refresh(&s, t);
    let _ = refresh(&s, t);
    let a = body(&r)["access_token"].as_str().unwrap().to_string();
    let _ = http(
        s.addr,
        "POST",
        "/auth/logout",
        &[("Cookie", &format!("tessera_access={a}"))],
        "",
    );
    s.wait_log(&["refresh_reused"]);
    let logs = s.logs();
    for secret in [
        "hq-pass",
        "wrong-password-123",
        t,
        &a,
        b["access_token"].as_str().unwrap(),
    ] {
        assert!(!logs.contains(secret), "{secret} in logs");
    }
    for ev in ["login_ok", "login_failed", "refresh_ok", "refresh_reused"] {
        assert!(logs.contains(ev), "{ev} missing");
    }
}

#[test]
fn spec6_useradd_rewrites_atomically_keeping_comments() {
    use std::io::Write;
    let d = scratch_dir("sessions", "useradd");
    let f = d.join("users");
    std::fs::write(&f, "# the team\n").unwrap();
    let add = |name: &str, pw: &str, extra: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args([
                "useradd",
                "--users",
                f.to_str().unwrap(),
                "--name",
                name,
                "--iterations",
                "1000",
            ])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A refused flag exits before reading stdin: a broken pipe is fine.
        let _ = c.stdin.take().unwrap().write_all(format!("{pw}\n").as_bytes());
        c.wait_with_output().unwrap()
    };
    let o = add("hq", "first", &["--clearance", "5", "--publish"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("first"));
    add("a7", "x", &["--channels", "ops,team.*"]);
    let o = add("hq", "second", &["--clearance", "4"]);
    assert!(o.status.success());
    let text = std::fs::read_to_string(&f).unwrap();
    assert!(
        text.starts_with("# the team\nhq:4:0::$pbkdf2-sha256$i=1000,l=32$"),
        "{text}"
    );
    assert!(text.contains("\na7:0:0:ops,team.*:$pbkdf2-sha256$"));
    assert_eq!(text.lines().count(), 3);
    let u = UsersFile::parse(&text).unwrap();
    assert!(u.get("hq").unwrap().hash.verify(b"second"));
    assert!(!text.contains("second"));
    assert_eq!(add("bad name", "x", &[]).status.code(), Some(2));
    // The new password works for login.
    let s = Server::start(&["--users", f.to_str().unwrap()]);
    assert_eq!(status(&login(&s, "hq", "second")), 200);
}

#[test]
fn demo_prints_users_whose_passwords_log_in() {
    // The demo users' hashes use the full iteration count (600,000): two
    // at start-up and one per login, at nice 19, which under qemu on a
    // busy CI machine takes tens of seconds. The waits are upper bounds.
    let s = Server::start_with_env(&["--demo"], &[]);
    let until = std::time::Instant::now() + Duration::from_secs(120);
    while !s.stdout().contains("demo user agent-007 password") {
        assert!(std::time::Instant::now() < until, "{}", s.stdout());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = s.stdout();
    let pw = out
        .lines()
        .find_map(|l| l.strip_prefix("demo user agent-007 password: "))
        .unwrap()
        .trim()
        .to_string();
    let r = login_within(&s, "agent-007", &pw, Duration::from_secs(120));
    assert_eq!(status(&r), 200, "{r}");
    assert!(!s.logs().contains(&pw));
}

/// The nice value of each thread of a process, by thread id.
#[cfg(target_os = "linux")]
fn thread_nices(pid: u32) -> Vec<(u32, i64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
        // Field 19 (nice), counted after the parenthesised command name.
        let after = &stat[stat.rfind(')')? + 2..];
        let nice = after.split(' ').nth(16)?.parse().ok()?;
        Some((tid, nice))
    })
    .collect()
}

/// Password hashing drops its thread to nice 19 while the event loop keeps
/// the process's priority (`benches/login-burst.sh` shows why it matters).
#[cfg(target_os = "linux")]
#[test]
fn login_hashing_runs_at_nice_19_and_the_event_loop_does_not() {
    let d = scratch_dir("sessions", "nice");
    let s = start(&d, &[]);
    let pid = s.child.id();
    let own = thread_nices(std::process::id())
        .into_iter()
        .find(|&(t, _)| t == std::process::id())
        .map(|(_, n)| n)
        .unwrap();
    // Idle blocking-pool threads exit after a while: look right after a
    // login, and try a few logins on a slow machine.
    let mut seen = Vec::new();
    for _ in 0..5 {
        assert_eq!(status(&login(&s, "hq", "hq-pass")), 200);
        seen = thread_nices(pid);
        if seen.iter().any(|&(_, n)| n == 19) {
            break;
        }
    }
    assert!(seen.iter().any(|&(_, n)| n == 19), "no thread at nice 19: {seen:?}");
    assert_eq!(
        seen.iter().find(|&&(t, _)| t == pid).map(|&(_, n)| n),
        Some(own),
        "{seen:?}"
    );
}
