//! Black-box tests of the agent's one-time-code prompt (SPEC §11 clients):
//! the real `tessera agent` runs on a pseudo-terminal against the real
//! server, for a user enrolled with `tessera useradd --totp`. It must ask
//! for the code when the hub answers `mfa_required`, ask again after a
//! refused code, ask again when a refresh failure forces a new login, and
//! never show the code: not on the terminal (no echo), not on stdout.
//!
//! The terminal is util-linux `script` (Debian `bsdutils`, essential): it
//! runs the agent in a new session on a pty, writes what the test pipes in
//! to the pty (the "typing") and copies everything the terminal shows to
//! its stdout (the "screen"). The agent's stdout goes to a file, so the
//! screen holds the prompts and diagnostics and the file the messages.
//! Codes come from Debian `oathtool`, never from tessera's own TOTP code;
//! without `oathtool` or `script` a test prints `SKIPPED:` and passes
//! (`.ci/run` installs `oathtool`).

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PROMPT: &str = "one-time code: ";

/// Enrols `field-1` (clearance 3, may publish, password `field-pass`) with the real
/// `useradd --totp`; returns the users file and the printed secret.
fn enrol(dir: &Path) -> (String, String) {
    let users = dir.join("users");
    let mut c = tessera_command()
        .args(["useradd", "--users", users.to_str().unwrap(), "--name", "field-1"])
        .args(["--clearance", "3", "--publish", "--iterations", "1000", "--totp"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"field-pass\n").unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap_or_else(|| panic!("no secret line in {text}"))
        .trim()
        .to_string();
    (users.to_str().unwrap().to_string(), secret)
}

fn publish(s: &Server, data: Value) {
    let hq = token("hq", 5, 600, |c| c.publish = true);
    let r = publish_as(s.addr, &hq, &json!({"channel":"ops","data":data}).to_string());
    assert_eq!(status(&r), 202, "{r}");
}

/// Waits until the server's log holds `needle` exactly `n` times.
fn wait_count(s: &Server, needle: &str, n: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    while s.logs().matches(needle).count() < n && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.logs().matches(needle).count(), n, "{needle}:\n{}", s.logs());
}

/// Single-quotes `s` for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `tessera agent --subscribe ops` for `field-1` on a pseudo-terminal.
struct PtyAgent {
    script: Child,
    typing: Option<std::process::ChildStdin>,
    screen: Arc<Mutex<String>>,
    stdout: PathBuf,
    pid_file: PathBuf,
}

impl PtyAgent {
    fn start(dir: &Path, s: &Server) -> PtyAgent {
        PtyAgent::start_then(dir, s, "--subscribe", None)
    }

    /// `mode` is `--subscribe` or `--publish` (channel `ops`). With `then`,
    /// the shell on the terminal runs the agent (surviving a Ctrl-C
    /// itself), prints `agent-exit=STATUS` and runs `then`.
    fn start_then(dir: &Path, s: &Server, mode: &str, then: Option<&str>) -> PtyAgent {
        let stdout = dir.join("agent.stdout");
        let pid_file = dir.join("agent.pid");
        let bin = env!("CARGO_BIN_EXE_tessera");
        let agent = format!(
            "{} agent --url {} --username field-1 {mode} ops > {}",
            sh_quote(bin),
            sh_quote(&s.url()),
            sh_quote(stdout.to_str().unwrap()),
        );
        let inner = match then {
            None => format!("echo $$ > {}; exec {agent}", sh_quote(pid_file.to_str().unwrap())),
            Some(then) => format!("trap true INT; {agent}; echo agent-exit=$?; {then}"),
        };
        let mut script = Command::new("script")
            .args(["-q", "-f", "-e", "-c", &inner, "/dev/null"])
            .env("SHELL", "/bin/sh")
            .env("TESSERA_PASSWORD", "field-pass")
            .env_remove("TESSERA_OTP")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn script");
        let screen = Arc::new(Mutex::new(String::new()));
        let sink = screen.clone();
        let mut out = script.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        PtyAgent {
            typing: script.stdin.take(),
            script,
            screen,
            stdout,
            pid_file,
        }
    }

    fn screen(&self) -> String {
        self.screen.lock().unwrap().clone()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits until the screen shows the prompt `n` times (and nothing after
    /// the last one: it is waiting for a code).
    fn wait_prompt(&self, n: usize, within: Duration) {
        let until = Instant::now() + within;
        loop {
            let sc = self.screen();
            if sc.matches(PROMPT).count() >= n && sc.ends_with(PROMPT) {
                return;
            }
            assert!(Instant::now() < until, "no prompt #{n} on the screen:\n{sc}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_screen(&self, needle: &str, within: Duration) -> String {
        let until = Instant::now() + within;
        loop {
            let sc = self.screen();
            if sc.contains(needle) {
                return sc;
            }
            assert!(Instant::now() < until, "no {needle:?} on the screen:\n{sc}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a stdout line that `pred` accepts.
    fn wait_stdout(&self, what: &str, pred: impl Fn(&Value) -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.stdout();
            if out
                .lines()
                .any(|l| serde_json::from_str(l).map(|v| pred(&v)).unwrap_or(false))
            {
                return;
            }
            assert!(
                Instant::now() < until,
                "no {what} on the agent's stdout:\n{out}\nscreen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `text` and Enter on the terminal.
    fn type_line(&mut self, text: &str) {
        let t = self.typing.as_mut().unwrap();
        t.write_all(format!("{text}\n").as_bytes()).unwrap();
        t.flush().unwrap();
    }

    /// Types `text` as is (no Enter).
    fn type_raw(&mut self, text: &str) {
        let t = self.typing.as_mut().unwrap();
        t.write_all(text.as_bytes()).unwrap();
        t.flush().unwrap();
    }

    fn agent_pid(&self) -> String {
        std::fs::read_to_string(&self.pid_file).unwrap().trim().to_string()
    }

    /// Waits for the agent to exit; its status (`script -e` passes it on).
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let until = Instant::now() + within;
        loop {
            if let Some(st) = self.script.try_wait().unwrap() {
                return st.code();
            }
            assert!(Instant::now() < until, "the agent did not exit:\n{}", self.screen());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGINT to the agent; its exit status.
    fn interrupt(&mut self) -> Option<i32> {
        let ok = Command::new("kill").args(["-INT", &self.agent_pid()]).status().unwrap();
        assert!(ok.success());
        self.wait_exit(Duration::from_secs(10))
    }

    /// Every stdout line is a server message (a JSON object with a `type`)
    /// and neither stdout nor the screen shows any of `codes`.
    fn assert_no_code_shown(&self, codes: &[&str]) {
        let out = self.stdout();
        for l in out.lines() {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|_| panic!("not a message on stdout: {l:?}\n{out}"));
            assert!(v["type"].is_string(), "not a message on stdout: {l:?}");
        }
        let screen = self.screen();
        for (name, text) in [("stdout", &out), ("the screen", &screen)] {
            for run in text.split(|c: char| !c.is_ascii_digit()) {
                assert!(
                    !codes.contains(&run),
                    "a typed code ({run}) is shown on {name}:\n{text}"
                );
            }
        }
    }
}

impl Drop for PtyAgent {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill")
                .args(["-KILL", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.script.kill();
        let _ = self.script.wait();
    }
}

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn spec11_agent_prompts_on_a_terminal_for_the_code_and_receives() {
    if missing_tools(&["oathtool", "script"]) {
        return;
    }
    let d = scratch_dir("agent-prompt", "ok");
    let (users, secret) = enrol(&d);
    let s = Server::start(&["--users", &users]);
    let mut a = PtyAgent::start(&d, &s);
    // The password came from TESSERA_PASSWORD; the hub said mfa_required.
    a.wait_prompt(1, WAIT);
    let code = oath(&secret, now());
    a.type_line(&code);
    a.wait_screen("logged in as field-1", WAIT);
    a.wait_stdout("the welcome", |v| v["type"] == "welcome" && v["sub"] == "field-1");
    a.wait_stdout("the subscription", |v| {
        v["type"] == "subscribed" && v["channel"] == "ops"
    });
    publish(&s, json!({"text":"hello over a code"}));
    a.wait_stdout("the message", |v| {
        v["type"] == "message" && v["data"]["text"] == "hello over a code"
    });
    s.wait_log(&["login_ok", "\"field-1\""]);
    // The code was not echoed on the terminal, and stdout holds messages only.
    a.assert_no_code_shown(&[&code]);
    assert_eq!(a.screen().matches(PROMPT).count(), 1, "{}", a.screen());
    assert_eq!(a.interrupt(), Some(0), "{}", a.screen());
}

#[test]
fn spec11_agent_prompt_asks_again_after_a_wrong_code_and_gives_up_after_three() {
    if missing_tools(&["oathtool", "script"]) {
        return;
    }
    let d = scratch_dir("agent-prompt", "wrong");
    let (users, secret) = enrol(&d);
    let s = Server::start(&["--users", &users]);
    let mut a = PtyAgent::start(&d, &s);
    // Codes of steps far from now: refused (invalid_otp), unless one happens
    // to equal a code of the accepted window.
    let t = now();
    let window: Vec<String> = (0..4).map(|i| oath(&secret, t + i * 30 - 30)).collect();
    let wrong: Vec<String> = (10..40)
        .map(|i| oath(&secret, t + i * 30))
        .filter(|c| !window.contains(c))
        .take(3)
        .collect();
    for (i, w) in wrong.iter().enumerate() {
        a.wait_prompt(i + 1, WAIT);
        a.type_line(w);
        if i < 2 {
            a.wait_screen(&format!("({} left)", 2 - i), WAIT);
        }
    }
    // After the third refused code: a clear message and exit 1, no socket.
    assert_eq!(a.wait_exit(WAIT), Some(1), "{}", a.screen());
    let screen = a.screen();
    assert_eq!(screen.matches(PROMPT).count(), 3, "{screen}");
    assert!(screen.contains("login refused (401 invalid_otp)"), "{screen}");
    assert_eq!(a.stdout(), "", "nothing on stdout without a login");
    let refs: Vec<&str> = wrong.iter().map(String::as_str).collect();
    a.assert_no_code_shown(&refs);
    wait_count(&s, "\"invalid_otp\"", 3);

    // A wrong code, then the right one: logged in.
    let d = scratch_dir("agent-prompt", "wrong-then-right");
    let (users, secret) = enrol(&d);
    let s = Server::start(&["--users", &users]);
    let mut a = PtyAgent::start(&d, &s);
    a.wait_prompt(1, WAIT);
    a.type_line("12345");
    a.wait_prompt(2, WAIT);
    assert!(a.screen().contains("that code was refused"), "{}", a.screen());
    let code = oath(&secret, now());
    a.type_line(&code);
    a.wait_stdout("the welcome", |v| v["type"] == "welcome" && v["sub"] == "field-1");
    a.assert_no_code_shown(&["12345", &code]);
    assert_eq!(a.interrupt(), Some(0), "{}", a.screen());
}

#[test]
fn spec11_agent_prompts_again_when_a_refresh_failure_forces_a_new_login() {
    if missing_tools(&["oathtool", "script"]) {
        return;
    }
    let d = scratch_dir("agent-prompt", "relogin");
    let (users, secret) = enrol(&d);
    // Refresh tokens live 2 s, access tokens 12 s: the agent's refresh (8 s
    // in, a third of the life before expiry) finds its refresh token
    // expired and must log in again, with a new code.
    let s = Server::start(&["--users", &users, "--access-ttl", "12", "--refresh-ttl", "2"]);
    let mut a = PtyAgent::start(&d, &s);
    a.wait_prompt(1, WAIT);
    let first = oath(&secret, now());
    a.type_line(&first);
    a.wait_stdout("the subscription", |v| {
        v["type"] == "subscribed" && v["channel"] == "ops"
    });
    publish(&s, json!({"n":1}));
    a.wait_stdout("message 1", |v| v["type"] == "message" && v["data"]["n"] == 1);

    // The refresh fails; the agent asks for a code again.
    a.wait_prompt(2, Duration::from_secs(30));
    let screen = a.screen();
    assert!(
        screen.contains("refresh refused (401 refresh_token_expired)"),
        "{screen}"
    );
    // The code already used is a replay: refused, and it asks once more.
    a.type_line(&first);
    a.wait_prompt(3, WAIT);
    assert!(a.screen().contains("that code was refused"), "{}", a.screen());
    // The next step's code (a neighbour of now) is accepted.
    let next = oath(&secret, now() + 30);
    assert_ne!(next, first);
    a.type_line(&next);
    a.wait_screen("logged in again", WAIT);
    // The socket lives on with the new token (in-band refresh), and the
    // agent keeps receiving.
    a.wait_stdout("refreshed", |v| v["type"] == "refreshed");
    publish(&s, json!({"n":2}));
    a.wait_stdout("message 2", |v| v["type"] == "message" && v["data"]["n"] == 2);
    wait_count(&s, "login_ok", 2);
    wait_count(&s, "\"invalid_otp\"", 1);
    a.assert_no_code_shown(&[&first, &next]);
    assert_eq!(a.interrupt(), Some(0), "{}", a.screen());
}

#[test]
fn spec11_agent_ctrl_c_at_the_prompt_exits_0_with_the_echo_back_on() {
    if missing_tools(&["oathtool", "script"]) {
        return;
    }
    let d = scratch_dir("agent-prompt", "ctrl-c");
    let (users, _secret) = enrol(&d);
    let s = Server::start(&["--users", &users]);
    let mut a = PtyAgent::start_then(&d, &s, "--subscribe", Some("stty -a"));
    a.wait_prompt(1, WAIT);
    // Ctrl-C as a terminal sends it: the line discipline signals the
    // foreground process group.
    a.type_raw("\u{3}");
    let screen = a.wait_screen("agent-exit=", WAIT);
    let _ = a.wait_exit(WAIT);
    let screen = a.screen().split_off(screen.find("agent-exit=").unwrap());
    assert!(screen.starts_with("agent-exit=0"), "{screen}");
    let words: Vec<&str> = screen.split(|c: char| c.is_whitespace() || c == ';').collect();
    assert!(
        words.contains(&"echo") && !words.contains(&"-echo"),
        "the terminal was left without echo:\n{screen}"
    );
    assert_eq!(a.stdout(), "");
}

#[test]
fn spec11_agent_publishing_from_the_terminal_does_not_prompt_again() {
    if missing_tools(&["oathtool", "script"]) {
        return;
    }
    let d = scratch_dir("agent-prompt", "publish");
    let (users, secret) = enrol(&d);
    let s = Server::start(&[
        "--users",
        &users,
        "--access-ttl",
        "12",
        "--refresh-ttl",
        "2",
        "--leeway",
        "1",
    ]);
    let mut a = PtyAgent::start_then(&d, &s, "--publish", Some("true"));
    // At start the terminal is free: the prompt takes the code.
    a.wait_prompt(1, WAIT);
    let code = oath(&secret, now());
    a.type_line(&code);
    a.wait_stdout("the welcome", |v| v["type"] == "welcome");
    // Then stdin is the message input: typed lines are published.
    a.type_line(r#"{"n":1}"#);
    a.wait_stdout("published", |v| v["type"] == "published");
    // A refresh failure needs a new login, which must not prompt on the
    // terminal the publisher reads (a code typed there would be published):
    // a clear line instead, and exit 1 once the token is gone (4001).
    a.wait_screen("refresh refused (401 refresh_token_expired)", Duration::from_secs(30));
    let screen = a.wait_screen("agent-exit=", Duration::from_secs(30));
    assert!(screen.contains("agent-exit=1"), "{screen}");
    assert!(
        screen.contains("with --publish the terminal is the message input"),
        "{screen}"
    );
    assert_eq!(screen.matches(PROMPT).count(), 1, "{screen}");
    a.assert_no_code_shown(&[&code]);
}
