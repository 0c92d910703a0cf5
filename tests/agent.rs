//! Black-box tests of `tessera agent` (SPEC §9) against the real server.

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};
use tessera::auth::users::{PasswordHash, User, UsersFile};

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-agent-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn users_file(dir: &Path) -> String {
    let mut f = UsersFile::default();
    f.upsert(User {
        name: "hq".into(),
        clearance: 5,
        publish: true,
        channels: vec![],
        hash: PasswordHash::new(b"hq-pass", 1000, [1; 16]),
        totp: None,
    });
    f.upsert(User {
        name: "agent-7".into(),
        clearance: 2,
        publish: false,
        channels: vec![],
        hash: PasswordHash::new(b"a7-pass", 1000, [2; 16]),
        totp: None,
    });
    let p = dir.join("users");
    std::fs::write(&p, f.render()).unwrap();
    p.to_str().unwrap().to_string()
}

struct Agent {
    child: Child,
    lines: Receiver<Value>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    fn start(url: &str, args: &[&str], password: Option<&str>, stdin: bool) -> Agent {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
        cmd.args(["agent", "--url", url]).args(args);
        cmd.env_remove("TESSERA_PASSWORD");
        if let Some(p) = password {
            cmd.env("TESSERA_PASSWORD", p);
        }
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&l).unwrap_or_else(|_| panic!("stdout line is not JSON: {l}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        Agent {
            child,
            lines,
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    /// The next stdout line whose `type` is `kind`.
    fn expect(&self, kind: &str, within: Duration) -> Value {
        let until = Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v["type"] == kind => return v,
                Ok(_) => continue,
                Err(_) => panic!("no {kind} line; agent stderr:\n{}", self.stderr.lock().unwrap()),
            }
        }
    }

    fn wait(&mut self, within: Duration) -> Option<i32> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Some(s) = self.child.try_wait().unwrap() {
                // The pipe is closed: let the reader take the last lines.
                if let Some(r) = self.stderr_reader.take() {
                    let _ = r.join();
                }
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn publish(s: &Server, channel: &str, data: Value) -> String {
    let hq = token("hq", 5, 600, |c| c.publish = true);
    publish_as(s.addr, &hq, &json!({"channel":channel,"data":data}).to_string())
}

#[test]
fn spec9_agent_logs_in_subscribes_and_prints_messages_then_exits_0_on_sigint() {
    let d = tempdir("basic");
    let s = Server::start(&["--users", &users_file(&d), "--channel", "ops=1"]);
    let mut a = Agent::start(
        &s.url(),
        &["--username", "agent-7", "--subscribe", "ops"],
        Some("a7-pass"),
        false,
    );
    assert_eq!(a.expect("welcome", Duration::from_secs(10))["sub"], "agent-7");
    a.expect("subscribed", Duration::from_secs(5));
    assert_eq!(status(&publish(&s, "ops", json!({"n": 1}))), 202);
    let m = a.expect("message", Duration::from_secs(5));
    assert_eq!((m["channel"].as_str(), &m["data"]), (Some("ops"), &json!({"n": 1})));
    Command::new("kill")
        .args(["-INT", &a.child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(a.wait(Duration::from_secs(5)), Some(0));
}

#[test]
fn spec9_bad_credentials_clear_error_nonzero_exit() {
    let d = tempdir("badcreds");
    let s = Server::start(&["--users", &users_file(&d)]);
    let mut a = Agent::start(&s.url(), &["--username", "agent-7"], Some("Xyzzy-guess"), false);
    let code = a.wait(Duration::from_secs(10));
    assert_eq!(code, Some(1));
    let err = a.stderr.lock().unwrap().clone();
    assert!(err.contains("invalid_credentials"), "{err}");
    assert!(!err.contains("Xyzzy-guess"), "password echoed: {err}");
    // No password at all and no terminal: exit 2 with a hint.
    let mut a = Agent::start(&s.url(), &["--username", "agent-7"], None, false);
    assert_eq!(a.wait(Duration::from_secs(10)), Some(2));
}

#[test]
fn spec9_agent_survives_server_restart_and_resubscribes() {
    let d = tempdir("restart");
    let users = users_file(&d);
    let s = Server::start(&["--users", &users]);
    let addr = s.addr.to_string();
    let a = Agent::start(
        &s.url(),
        &["--username", "agent-7", "--subscribe", "news"],
        Some("a7-pass"),
        false,
    );
    a.expect("subscribed", Duration::from_secs(10));
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let s = Server::start_at(&addr, &["--users", &users], &[("TESSERA_SECRET", KEY)]);
    a.expect("welcome", Duration::from_secs(20));
    a.expect("subscribed", Duration::from_secs(5));
    assert_eq!(status(&publish(&s, "news", json!("back"))), 202);
    assert_eq!(a.expect("message", Duration::from_secs(5))["data"], "back");
}

#[test]
fn spec9_agent_keeps_its_subscription_across_token_expiry() {
    let d = tempdir("expiry");
    let s = Server::start(&["--users", &users_file(&d), "--access-ttl", "3", "--leeway", "0"]);
    let a = Agent::start(
        &s.url(),
        &["--username", "agent-7", "--subscribe", "ops"],
        Some("a7-pass"),
        false,
    );
    a.expect("subscribed", Duration::from_secs(10));
    // Three lifetimes of the token go by.
    a.expect("refreshed", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(status(&publish(&s, "ops", json!("still here"))), 202);
    assert_eq!(a.expect("message", Duration::from_secs(5))["data"], "still here");
    let err = a.stderr.lock().unwrap().clone();
    assert!(!err.contains("closed by the hub"), "socket was closed: {err}");
    assert!(!s.logs().contains("\"code\":4001"));
}

#[test]
fn spec9_agent_exits_3_when_its_session_is_revoked() {
    let d = tempdir("revoked");
    let s = Server::start(&["--users", &users_file(&d)]);
    let login = http(
        s.addr,
        "POST",
        "/auth/login",
        &[("Content-Type", "application/json")],
        r#"{"username":"agent-7","password":"a7-pass"}"#,
    );
    let b = body(&login);
    let tf = d.join("token");
    std::fs::write(&tf, b["access_token"].as_str().unwrap()).unwrap();
    let mut a = Agent::start(&s.url(), &["--token-file", tf.to_str().unwrap()], None, false);
    a.expect("welcome", Duration::from_secs(10));
    let r = http(
        s.addr,
        "POST",
        "/auth/logout",
        &[("Content-Type", "application/json")],
        &json!({"refresh_token": b["refresh_token"]}).to_string(),
    );
    assert_eq!(status(&r), 204);
    assert_eq!(a.wait(Duration::from_secs(10)), Some(3));
    assert!(a.stderr.lock().unwrap().contains("4003"));
}

#[test]
fn spec9_publish_mode_round_trip() {
    let d = tempdir("publish");
    let s = Server::start(&["--users", &users_file(&d)]);
    smol::block_on(async {
        let (mut sub, _) = ws_bearer(s.addr, &token("watcher", 0, 600, |_| {})).await;
        send(&mut sub, json!({"type":"subscribe","channel":"field"})).await;
        recv(&mut sub).await;
        let mut a = Agent::start(
            &s.url(),
            &["--username", "hq", "--publish", "field"],
            Some("hq-pass"),
            true,
        );
        {
            let mut stdin = a.child.stdin.take().unwrap();
            stdin.write_all(b"{\"report\":1}\nnot json\n[2]\n").unwrap();
        }
        let p1 = a.expect("published", Duration::from_secs(10));
        assert_eq!(p1["channel"], "field");
        a.expect("published", Duration::from_secs(5));
        assert_eq!(recv(&mut sub).await["data"], json!({"report":1}));
        assert_eq!(recv(&mut sub).await["data"], json!([2]));
        assert_eq!(a.wait(Duration::from_secs(10)), Some(0));
        assert!(a.stderr.lock().unwrap().contains("not JSON"));
    });
}
