//! Black-box tests of the second factor (SPEC §11) against the real binary:
//! TOTP at login, replay refusal (within a step and across a restart),
//! `--mfa-min-clearance` at login and handshake, `amr` in tokens, the
//! throttle, logs, `useradd --totp` with its QR code, and the agent.
//!
//! The codes come from an independent TOTP implementation, `oathtool`
//! (Debian package `oathtool`, installed by `.ci/run`), never from
//! tessera's own code; the QR code is read back with `zbarimg` (Debian
//! `zbar-tools`).

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tessera::auth::totp::TotpSecret;
use tessera::auth::users::{PasswordHash, User, UsersFile};

/// `hq`'s secret (20 bytes) and `ops`'s (16 bytes), as base32.
const HQ_SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
const OPS_SECRET: &str = "KRUGS4ZANFZSA5DPOAQHGZLDOJSXI2LT";

fn mfa_user(name: &str, clearance: u32, pw: &str, iterations: u32, totp: Option<&str>) -> User {
    User {
        hash: PasswordHash::new(pw.as_bytes(), iterations, [9; 16]),
        totp: totp.map(|t| TotpSecret::from_base32(t).unwrap()),
        ..user(name, clearance, clearance >= 5, pw)
    }
}

/// `hq` (5, TOTP), `ops` (3, TOTP), `boss` (4, no TOTP), `agent-7` (2, no
/// TOTP); passwords `<name>-pass`.
fn users_file(dir: &Path, iterations: u32) -> PathBuf {
    let users = [
        mfa_user("hq", 5, "hq-pass", iterations, Some(HQ_SECRET)),
        mfa_user("ops", 3, "ops-pass", iterations, Some(OPS_SECRET)),
        mfa_user("boss", 4, "boss-pass", iterations, None),
        mfa_user("agent-7", 2, "agent-7-pass", iterations, None),
    ];
    write_users(dir, users)
}

fn start(dir: &Path, extra: &[&str]) -> Server {
    let users = users_file(dir, 1000);
    let mut args = vec!["--users".to_string(), users.to_str().unwrap().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&refs)
}

/// Waits, if needed, until at least 4 s remain in the current 30 s step,
/// so that "the step of now" means the same to the test and the server.
fn settle() -> u64 {
    while now() % 30 >= 26 {
        std::thread::sleep(Duration::from_millis(200));
    }
    now()
}

fn login_body(s: &Server, body: &Value) -> String {
    http(
        s.addr,
        "POST",
        "/auth/login",
        &[("Content-Type", "application/json")],
        &body.to_string(),
    )
}

fn login(s: &Server, user: &str, pw: &str, otp: Option<&str>) -> String {
    let mut b = json!({"username": user, "password": pw});
    if let Some(c) = otp {
        b["otp"] = json!(c);
    }
    login_body(s, &b)
}

/// (status, error code) of a response.
fn outcome(r: &str) -> (u16, String) {
    (status(r), body(r)["error"].as_str().unwrap_or("").to_string())
}

fn claims_of(token: &str) -> Value {
    let keys = tessera::keys::KeySet::single(KEY.as_bytes()).unwrap();
    let c = tessera::jwt::verify(token, &keys, &Default::default(), now()).unwrap();
    serde_json::to_value(&*c).unwrap()
}

fn access_of(r: &str) -> String {
    body(r)["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string()
}

#[test]
fn spec11_login_with_a_code_carries_amr_and_refresh_keeps_it() {
    if missing_tools(&["oathtool"]) {
        return;
    }
    let d = scratch_dir("mfa", "amr");
    let s = start(&d, &[]);
    assert_eq!(outcome(&login(&s, "hq", "hq-pass", None)), (401, "mfa_required".into()));
    let t = settle();
    let r = login(&s, "hq", "hq-pass", Some(&oath(HQ_SECRET, t)));
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(claims_of(&access_of(&r))["amr"], json!(["pwd", "otp"]));
    // RFC 8176: refreshed tokens keep the login's amr.
    let refresh_token = body(&r)["refresh_token"].as_str().unwrap().to_string();
    let r2 = http(
        s.addr,
        "POST",
        "/auth/refresh",
        &[("Content-Type", "application/json")],
        &json!({ "refresh_token": refresh_token }).to_string(),
    );
    assert_eq!(status(&r2), 200, "{r2}");
    assert_eq!(claims_of(&access_of(&r2))["amr"], json!(["pwd", "otp"]));
    // A user without a secret logs in with the password alone: amr pwd (an
    // `otp` sent anyway changes nothing).
    let r = login(&s, "agent-7", "agent-7-pass", None);
    assert_eq!(claims_of(&access_of(&r))["amr"], json!(["pwd"]));
    let r = login(&s, "agent-7", "agent-7-pass", Some("123456"));
    assert_eq!(claims_of(&access_of(&r))["amr"], json!(["pwd"]));
    // `null` is no code.
    let r = login_body(&s, &json!({"username":"ops","password":"ops-pass","otp":null}));
    assert_eq!(outcome(&r), (401, "mfa_required".into()));
}

#[test]
fn spec11_wrong_password_with_or_without_a_code_reveals_nothing() {
    if missing_tools(&["oathtool"]) {
        return;
    }
    let d = scratch_dir("mfa", "wrongpw");
    let s = start(&d, &[]);
    let t = settle();
    let code = oath(HQ_SECRET, t);
    let cases = [
        login(&s, "hq", "nope", None),
        login(&s, "hq", "nope", Some(&code)),
        login(&s, "hq", "nope", Some("x")),
        login(&s, "agent-7", "nope", None),
        login(&s, "nobody", "nope", None),
        login(&s, "nobody", "nope", Some(&code)),
    ];
    let first = body(&cases[0]);
    assert_eq!(first["error"], "invalid_credentials");
    for r in &cases {
        assert_eq!(status(r), 401, "{r}");
        assert_eq!(body(r), first, "same body whatever the user has");
        assert!(header(r, "www-authenticate").is_none());
    }
    // The code sent with a wrong password was not used up.
    assert_eq!(status(&login(&s, "hq", "hq-pass", Some(&code))), 200);
}

#[test]
fn spec11_malformed_codes_are_invalid_otp() {
    if missing_tools(&["oathtool"]) {
        return;
    }
    let d = scratch_dir("mfa", "malformed");
    let s = start(&d, &[]);
    let t = settle();
    let code = oath(HQ_SECRET, t);
    let full_width: String = code
        .chars()
        .map(|c| char::from_u32(c as u32 - '0' as u32 + 0xFF10).unwrap())
        .collect();
    let bad: Vec<Value> = vec![
        json!(code[..5]),
        json!(format!("{code}0")),
        json!("12a456"),
        json!(full_width),
        json!(code.parse::<u64>().unwrap()),
        json!(format!(" {code}")),
        json!(""),
        json!([code]),
    ];
    for otp in &bad {
        let r = login_body(&s, &json!({"username":"hq","password":"hq-pass","otp":otp}));
        assert_eq!(outcome(&r), (401, "invalid_otp".into()), "{otp}: {r}");
    }
    // None of those used the step: the real code still works.
    assert_eq!(status(&login(&s, "hq", "hq-pass", Some(&code))), 200);
}

#[test]
fn spec11_neighbour_steps_and_replay_within_a_step() {
    if missing_tools(&["oathtool"]) {
        return;
    }
    let d = scratch_dir("mfa", "steps");
    let s = start(&d, &[]);
    let t = settle();
    let at = |dt: i64| oath(HQ_SECRET, (t as i64 + dt) as u64);
    let invalid = (401, "invalid_otp".to_string());
    // Two steps away either way: refused.
    assert_eq!(outcome(&login(&s, "hq", "hq-pass", Some(&at(-60)))), invalid);
    assert_eq!(outcome(&login(&s, "hq", "hq-pass", Some(&at(60)))), invalid);
    // The step before now is accepted, once.
    assert_eq!(status(&login(&s, "hq", "hq-pass", Some(&at(-30)))), 200);
    assert_eq!(outcome(&login(&s, "hq", "hq-pass", Some(&at(-30)))), invalid);
    // Now, then the step after; after that, now is an earlier step: refused.
    assert_eq!(status(&login(&s, "hq", "hq-pass", Some(&at(0)))), 200);
    assert_eq!(outcome(&login(&s, "hq", "hq-pass", Some(&at(0)))), invalid);
    assert_eq!(status(&login(&s, "hq", "hq-pass", Some(&at(30)))), 200);
    assert_eq!(outcome(&login(&s, "hq", "hq-pass", Some(&at(0)))), invalid);
    // Replay memory is per user: ops's code of now still works.
    assert_eq!(status(&login(&s, "ops", "ops-pass", Some(&oath(OPS_SECRET, t)))), 200);
}

#[test]
fn spec11_a_used_code_stays_used_across_a_crash_and_restart() {
    if missing_tools(&["oathtool"]) {
        return;
    }
    let d = scratch_dir("mfa", "restart");
    let state = d.join("state.json");
    let st = state.to_str().unwrap().to_string();
    let mut s = start(&d, &["--state", &st]);
    let t = settle();
    let code = oath(HQ_SECRET, t);
    assert_eq!(status(&login(&s, "hq", "hq-pass", Some(&code))), 200);
    // SIGKILL right after the answer: the used step was on disk before it.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.contains("\"totp\"") && text.contains("\"hq\""), "{text}");
    assert!(!text.contains(HQ_SECRET) && !text.contains(&code), "{text}");
    let s = start(&d, &["--state", &st]);
    assert_eq!(
        outcome(&login(&s, "hq", "hq-pass", Some(&code))),
        (401, "invalid_otp".into())
    );
    // The next step's code is fine.
    assert_eq!(status(&login(&s, "hq", "hq-pass", Some(&oath(HQ_SECRET, t + 30)))), 200);
}

#[test]
fn spec11_mfa_min_clearance_login_and_handshake() {
    if missing_tools(&["oathtool"]) {
        return;
    }
    let d = scratch_dir("mfa", "minclr");
    let s = start(&d, &["--mfa-min-clearance", "3"]);
    // Enrolled, clearance 5: needs the code.
    assert_eq!(outcome(&login(&s, "hq", "hq-pass", None)), (401, "mfa_required".into()));
    // Not enrolled, clearance 4: refused after the right password only.
    assert_eq!(
        outcome(&login(&s, "boss", "boss-pass", None)),
        (403, "mfa_not_enrolled".into())
    );
    assert_eq!(
        outcome(&login(&s, "boss", "nope", None)),
        (401, "invalid_credentials".into())
    );
    // Below the line: the password is enough, and the socket opens.
    let agent = access_of(&login(&s, "agent-7", "agent-7-pass", None));
    let t = settle();
    let hq = access_of(&login(&s, "hq", "hq-pass", Some(&oath(HQ_SECRET, t))));
    smol::block_on(async {
        let (_ws, w) = ws_bearer(s.addr, &agent).await;
        assert_eq!(w["sub"], "agent-7");
        let (mut ws, w) = ws_bearer(s.addr, &hq).await;
        assert_eq!(w["sub"], "hq");
        // An in-band refresh to a token without otp is refused the same way.
        let weak = token("hq", 5, 600, |c| c.amr = Some(vec!["pwd".into()]));
        send(&mut ws, json!({"type":"refresh","token":weak,"ref":1})).await;
        let e = recv(&mut ws).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("mfa_required")),
            "{e}"
        );
    });
    // Handshake: clearance ≥ 3 without otp in amr → 403 mfa_required.
    let up = |t: &str| raw(s.addr, &upgrade("/ws", &format!("Authorization: Bearer {t}\r\n")));
    for weak in [
        token("x", 3, 60, |_| {}),
        token("x", 9, 60, |c| c.amr = Some(vec!["pwd".into()])),
        token("x", 3, 60, |c| c.amr = Some(vec![])),
    ] {
        let r = up(&weak);
        assert_eq!(outcome(&r), (403, "mfa_required".into()), "{r}");
    }
    let r = up(&token("x", 3, 60, |c| c.amr = Some(vec!["pwd".into(), "otp".into()])));
    assert_eq!(status(&r), 101, "{r}");
    let r = up(&token("x", 2, 60, |_| {}));
    assert_eq!(status(&r), 101, "{r}");
    // POST /publish follows the same rule.
    let msg = r#"{"channel":"ops","data":1}"#;
    let r = publish_as(s.addr, &token("x", 5, 60, |c| c.publish = true), msg);
    assert_eq!(outcome(&r), (403, "mfa_required".into()), "{r}");
    let r = publish_as(
        s.addr,
        &token("x", 5, 60, |c| {
            c.publish = true;
            c.amr = Some(vec!["pwd".into(), "otp".into()]);
        }),
        msg,
    );
    assert_eq!(status(&r), 202, "{r}");
    s.wait_log(&["ws_reject", "mfa_required"]);
}

#[test]
fn spec11_ten_wrong_codes_throttle_the_address() {
    if missing_tools(&["oathtool"]) {
        return;
    }
    let d = scratch_dir("mfa", "throttle");
    let s = start(&d, &[]);
    let t = settle();
    let good = oath(HQ_SECRET, t);
    let wrong = if good == "000000" { "111111" } else { "000000" };
    for i in 0..10 {
        let r = login(&s, "hq", "hq-pass", Some(wrong));
        assert_eq!(outcome(&r), (401, "invalid_otp".into()), "attempt {i}: {r}");
    }
    let r = login(&s, "hq", "hq-pass", Some(&good));
    assert_eq!(outcome(&r), (429, "too_many_attempts".into()), "{r}");
    s.wait_log(&["ip_throttled"]);
}

#[test]
fn spec11_mfa_required_counts_toward_the_throttle_too() {
    if missing_tools(&["oathtool"]) {
        return;
    }
    let d = scratch_dir("mfa", "throttle2");
    let s = start(&d, &[]);
    for _ in 0..10 {
        assert_eq!(
            outcome(&login(&s, "ops", "ops-pass", None)),
            (401, "mfa_required".into())
        );
    }
    assert_eq!(status(&login(&s, "agent-7", "agent-7-pass", None)), 429);
}

/// Digit runs of a text, to look for a 6-digit code as a whole number.
fn digit_runs(text: &str) -> Vec<&str> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|r| !r.is_empty())
        .collect()
}

#[test]
fn spec11_logs_hold_no_code_or_secret() {
    if missing_tools(&["oathtool"]) {
        return;
    }
    let d = scratch_dir("mfa", "logs");
    let s = start(&d, &[]);
    let t = settle();
    let good = oath(HQ_SECRET, t);
    let next = oath(HQ_SECRET, t + 30);
    let other = oath(OPS_SECRET, t);
    let _ = login(&s, "hq", "hq-pass", Some(&good));
    let _ = login(&s, "hq", "hq-pass", Some(&good));
    let _ = login(&s, "hq", "wrong-pass", Some(&next));
    let _ = login(&s, "ops", "ops-pass", Some(&other[..5]));
    s.wait_log(&["login_failed", "invalid_credentials"]);
    s.wait_log(&["login_failed", "invalid_otp"]);
    let logs = s.logs();
    for secret in [HQ_SECRET, OPS_SECRET, &HQ_SECRET[..16], "hq-pass", "wrong-pass"] {
        assert!(!logs.contains(secret), "{secret} in logs:\n{logs}");
    }
    let runs = digit_runs(&logs);
    for code in [&good, &next, &other, &other[..5].to_string()] {
        assert!(!runs.contains(&code.as_str()), "code {code} in logs:\n{logs}");
    }
}

/// Enumeration (SPEC §4.1, §11): an unknown user, a wrong password for a
/// user with and without a second factor, and the right password of a user
/// with one (no code yet) all cost one password hash: same timing class.
/// The hash is made slow enough (200000 iterations) that a missing hash
/// would show as a factor of many times, far beyond scheduling noise.
#[test]
fn spec11_enumeration_same_error_and_timing_class() {
    if missing_tools(&["oathtool"]) {
        return;
    }
    let d = scratch_dir("mfa", "enum");
    let users = users_file(&d, 200_000);
    let s = Server::start(&["--users", users.to_str().unwrap()]);
    let classes = [("nobody", "x"), ("hq", "x"), ("agent-7", "x"), ("hq", "hq-pass")];
    // Two rounds of four: 8 failures, under the throttle's 10.
    let mut best = [Duration::MAX; 4];
    for _ in 0..2 {
        for (i, (u, p)) in classes.iter().enumerate() {
            let t0 = Instant::now();
            let r = login(&s, u, p, None);
            best[i] = best[i].min(t0.elapsed());
            let want = if i == 3 { "mfa_required" } else { "invalid_credentials" };
            assert_eq!(outcome(&r), (401, want.into()), "{u}: {r}");
        }
    }
    let fastest = best.iter().min().unwrap().as_secs_f64();
    let slowest = best.iter().max().unwrap().as_secs_f64();
    assert!(slowest < fastest * 3.0, "timing classes differ: {best:?}");
    // Bodies of the three password failures are identical.
    let a = body(&login(&s, "nobody", "x", None));
    assert_eq!(a, body(&login(&s, "hq", "x", None)));
}

fn run_useradd(users: &Path, name: &str, pw: &str, extra: &[&str]) -> std::process::Output {
    use std::io::Write;
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "useradd",
            "--users",
            users.to_str().unwrap(),
            "--name",
            name,
            "--iterations",
            "1000",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refused flag exits before reading stdin: a broken pipe is fine.
    let _ = c.stdin.take().unwrap().write_all(format!("{pw}\n").as_bytes());
    c.wait_with_output().unwrap()
}

/// Turns the half-block QR drawing back into a greyscale image (PGM, 8
/// pixels a module; a drawn half is a light module) for a QR reader.
fn qr_drawing_to_pgm(drawing: &[&str], path: &Path) {
    let width = drawing.iter().map(|l| l.chars().count()).max().unwrap();
    let mut rows: Vec<Vec<bool>> = Vec::new();
    for line in drawing {
        let (mut top, mut bottom) = (Vec::new(), Vec::new());
        for c in line.chars().chain(std::iter::repeat(' ')).take(width) {
            let (t, b) = match c {
                ' ' => (false, false),
                '\u{2584}' => (false, true),
                '\u{2580}' => (true, false),
                '\u{2588}' => (true, true),
                other => panic!("unexpected character {other:?} in the QR drawing"),
            };
            top.push(t);
            bottom.push(b);
        }
        rows.push(top);
        rows.push(bottom);
    }
    let scale = 8;
    let mut img = format!("P5\n{} {}\n255\n", width * scale, rows.len() * scale).into_bytes();
    for row in &rows {
        for _ in 0..scale {
            for &light in row {
                img.extend(std::iter::repeat_n(if light { 255u8 } else { 0 }, scale));
            }
        }
    }
    std::fs::write(path, img).unwrap();
}

#[test]
fn spec11_useradd_totp_qr_scans_no_totp_and_readd_keeps() {
    if missing_tools(&["oathtool", "zbarimg"]) {
        return;
    }
    let d = scratch_dir("mfa", "useradd");
    let f = d.join("users");
    std::fs::write(&f, "# team\n").unwrap();
    let o = run_useradd(&f, "field-1", "pw-1", &["--clearance", "3", "--totp"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let uri_line = out
        .lines()
        .find(|l| l.starts_with("otpauth://"))
        .unwrap_or_else(|| panic!("{out}"));
    let secret = uri_line
        .strip_prefix("otpauth://totp/tessera:field-1?secret=")
        .and_then(|r| r.strip_suffix("&issuer=tessera"))
        .unwrap_or_else(|| panic!("{uri_line}"))
        .to_string();
    assert_eq!(secret.len(), 32, "20 bytes of base32");
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains(&secret),
        "the secret goes to stdout only"
    );
    let text = std::fs::read_to_string(&f).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("field-1:3:0::$pbkdf2-sha256$") && l.ends_with(&format!(":totp:{secret}"))),
        "{text}"
    );

    // The QR code on the terminal reads back as the URI (zbarimg).
    let drawing: Vec<&str> = out
        .lines()
        .filter(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| matches!(c, ' ' | '\u{2580}' | '\u{2584}' | '\u{2588}'))
        })
        .collect();
    assert!(drawing.len() > 10, "{out}");
    let pgm = d.join("qr.pgm");
    qr_drawing_to_pgm(&drawing, &pgm);
    let z = Command::new("zbarimg")
        .args(["--quiet", "--raw", pgm.to_str().unwrap()])
        .output()
        .expect("zbarimg is needed for this test (apt-get install zbar-tools; .ci/run does it)");
    assert!(z.status.success(), "zbarimg: {}", String::from_utf8_lossy(&z.stderr));
    assert_eq!(String::from_utf8(z.stdout).unwrap().trim(), uri_line);

    // The secret from the URI logs in (codes from oathtool).
    let s = Server::start(&["--users", f.to_str().unwrap()]);
    let t = settle();
    assert_eq!(status(&login(&s, "field-1", "pw-1", Some(&oath(&secret, t)))), 200);
    drop(s);

    // Re-adding without --totp/--no-totp keeps the secret; --no-totp drops it.
    let o = run_useradd(&f, "field-1", "pw-2", &["--clearance", "4"]);
    assert!(o.status.success());
    assert!(!String::from_utf8_lossy(&o.stdout).contains(&secret));
    let u = UsersFile::parse(&std::fs::read_to_string(&f).unwrap()).unwrap();
    let field = u.get("field-1").unwrap();
    assert_eq!(field.clearance, 4);
    assert_eq!(field.totp.as_ref().unwrap().to_base32(), secret);
    // --totp again makes a new secret.
    let o = run_useradd(&f, "field-1", "pw-2", &["--totp"]);
    assert!(o.status.success());
    let u = UsersFile::parse(&std::fs::read_to_string(&f).unwrap()).unwrap();
    assert_ne!(u.get("field-1").unwrap().totp.as_ref().unwrap().to_base32(), secret);
    let o = run_useradd(&f, "field-1", "pw-2", &["--no-totp"]);
    assert!(o.status.success());
    let text = std::fs::read_to_string(&f).unwrap();
    assert!(!text.contains("totp"), "{text}");
    assert!(text.starts_with("# team\n"));
    let o = run_useradd(&f, "field-1", "pw-2", &["--totp", "--no-totp"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn spec11_old_five_field_file_then_sighup_enrols() {
    if missing_tools(&["oathtool"]) {
        return;
    }
    let d = scratch_dir("mfa", "sighup");
    let f = d.join("users");
    let mut u = UsersFile::default();
    u.upsert(mfa_user("agent-7", 2, "agent-7-pass", 1000, None));
    let five = u.render();
    assert_eq!(five.trim_end().split(':').count(), 5, "a five-field line: {five}");
    std::fs::write(&f, &five).unwrap();
    let s = Server::start(&["--users", f.to_str().unwrap()]);
    let r = login(&s, "agent-7", "agent-7-pass", None);
    assert_eq!(claims_of(&access_of(&r))["amr"], json!(["pwd"]));
    // Enrol, reload, and the code becomes necessary.
    u.upsert(mfa_user("agent-7", 2, "agent-7-pass", 1000, Some(OPS_SECRET)));
    std::fs::write(&f, u.render()).unwrap();
    s.signal("HUP");
    s.wait_log(&["reload", "\"users\":1"]);
    assert_eq!(
        outcome(&login(&s, "agent-7", "agent-7-pass", None)),
        (401, "mfa_required".into())
    );
    let t = settle();
    let r = login(&s, "agent-7", "agent-7-pass", Some(&oath(OPS_SECRET, t)));
    assert_eq!(claims_of(&access_of(&r))["amr"], json!(["pwd", "otp"]));
}

#[test]
fn spec11_token_amr_flag_and_verify_prints_amr() {
    let bin = env!("CARGO_BIN_EXE_tessera");
    let mint = |amr: &str| {
        Command::new(bin)
            .args(["token", "--sub", "hq", "--clearance", "5", "--amr", amr])
            .env("TESSERA_SECRET", KEY)
            .output()
            .unwrap()
    };
    let o = mint("pwd,otp");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = String::from_utf8(o.stdout).unwrap();
    assert_eq!(claims_of(t.trim())["amr"], json!(["pwd", "otp"]));
    let mut v = Command::new(bin)
        .arg("verify")
        .env("TESSERA_SECRET", KEY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    v.stdin.take().unwrap().write_all(t.as_bytes()).unwrap();
    let out = v.wait_with_output().unwrap();
    assert!(out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["amr"], json!(["pwd", "otp"]));
    for bad in ["", ",", "p w", "otp,é"] {
        assert_eq!(mint(bad).status.code(), Some(2), "--amr {bad:?}");
    }
}

fn agent(url: &str, user: &str, pw: &str, otp: Option<&str>) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(["agent", "--url", url, "--username", user])
        .env_remove("TESSERA_OTP")
        .env("TESSERA_PASSWORD", pw)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(c) = otp {
        cmd.env("TESSERA_OTP", c);
    }
    cmd.spawn().unwrap()
}

#[test]
fn spec11_agent_logs_in_with_tessera_otp() {
    if missing_tools(&["oathtool"]) {
        return;
    }
    use std::io::{BufRead, BufReader};
    let d = scratch_dir("mfa", "agent");
    let s = start(&d, &["--mfa-min-clearance", "3"]);
    // Without a code and without a terminal: a clear refusal, exit 1.
    let mut a = agent(&s.url(), "hq", "hq-pass", None);
    let st = a.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(a.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("mfa_required") && err.contains("TESSERA_OTP"), "{err}");
    // With TESSERA_OTP: logged in with amr otp, the socket opens.
    let t = settle();
    let mut a = agent(&s.url(), "hq", "hq-pass", Some(&oath(HQ_SECRET, t)));
    let mut out = BufReader::new(a.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let _ = a.kill();
    let _ = a.wait();
    let welcome: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line:?}"));
    assert_eq!(
        (welcome["type"].as_str(), welcome["sub"].as_str()),
        (Some("welcome"), Some("hq"))
    );
    s.wait_log(&["login_ok", "\"hq\""]);
}
