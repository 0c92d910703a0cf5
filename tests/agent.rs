//! Black-box tests of `tessera agent` (SPEC §9) against the real server.

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// `hq` (5, publish) and `agent-7` (2).
fn users_file(dir: &Path) -> String {
    let users = [user("hq", 5, true, "hq-pass"), user("agent-7", 2, false, "a7-pass")];
    write_users(dir, users).to_str().unwrap().to_string()
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
    let d = scratch_dir("agent", "basic");
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
    let d = scratch_dir("agent", "badcreds");
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
    let d = scratch_dir("agent", "restart");
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
    let d = scratch_dir("agent", "expiry");
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
    let d = scratch_dir("agent", "revoked");
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
    let d = scratch_dir("agent", "publish");
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

// ---- SPEC §10: resume after a reconnect, positions across agent restarts ----

/// `POST /publish` that tolerates a server that is down: `None` when the
/// connection fails or no full answer comes.
fn try_publish(addr: std::net::SocketAddr, token: &str, body: &str) -> Option<u16> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!(
        "POST /publish HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    match status(&String::from_utf8_lossy(&out)) {
        0 => None,
        code => Some(code),
    }
}

impl Agent {
    /// The `data` of every `message` line on `channel` until one whose data
    /// is `last` (other lines are skipped).
    fn data_until(&self, channel: &str, last: &Value, within: Duration) -> Vec<Value> {
        let until = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v["type"] == "message" && v["channel"] == channel => {
                    seen.push(v["data"].clone());
                    if &v["data"] == last {
                        return seen;
                    }
                }
                Ok(_) => continue,
                Err(_) => panic!(
                    "no {last} on {channel}; got {seen:?}; agent stderr:\n{}",
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    /// The `data` of the `message` lines of each of `channels` until every
    /// one has had `last`.
    fn data_by_channel(&self, channels: &[&str], last: &Value, within: Duration) -> Vec<Vec<Value>> {
        let until = Instant::now() + within;
        let mut seen = vec![Vec::new(); channels.len()];
        while seen.iter().any(|s| s.last() != Some(last)) {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v["type"] == "message" => {
                    if let Some(i) = channels.iter().position(|c| v["channel"] == *c) {
                        seen[i].push(v["data"].clone());
                    }
                }
                Ok(_) => continue,
                Err(_) => panic!(
                    "not every channel reached {last}; got {seen:?}; agent stderr:\n{}",
                    self.stderr.lock().unwrap()
                ),
            }
        }
        seen
    }

    fn interrupt(&mut self) -> Option<i32> {
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.wait(Duration::from_secs(10))
    }

    fn stderr_lines(&self, needle: &str) -> Vec<String> {
        let err = self.stderr.lock().unwrap().clone();
        err.lines().filter(|l| l.contains(needle)).map(String::from).collect()
    }
}

fn numbers(a: u64, z: u64) -> Vec<Value> {
    (a..=z).map(|n| json!(n)).collect()
}

#[test]
fn spec10_agent_across_server_restarts_prints_every_message_once_in_order() {
    const N: u64 = 90;
    let d = scratch_dir("agent", "resume");
    let users = users_file(&d);
    let hist = d.join("history");
    let args = ["--users", users.as_str(), "--history-dir", hist.to_str().unwrap()];
    let mut s = Server::start(&args);
    let addr = s.addr;
    let a = Agent::start(
        &s.url(),
        &["--username", "agent-7", "--subscribe", "feed"],
        Some("a7-pass"),
        false,
    );
    a.expect("subscribed", Duration::from_secs(10));

    // The publisher sends 1..N, each until it is acknowledged, and keeps at
    // it while the server is down. The lock keeps a stop from landing while
    // a request is in flight: "acknowledged" is then never ambiguous.
    let gate = std::sync::Arc::new(std::sync::Mutex::new(()));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publisher = {
        let (gate, sent) = (gate.clone(), sent.clone());
        std::thread::spawn(move || {
            let hq = token("hq", 5, 600, |c| c.publish = true);
            let until = Instant::now() + Duration::from_secs(90);
            for n in 1..=N {
                // Every third one also to the agent's personal channel.
                let channels: &[&str] = if n % 3 == 0 { &["feed", "@agent-7"] } else { &["feed"] };
                for ch in channels {
                    loop {
                        assert!(Instant::now() < until, "publisher stuck at {n}");
                        let r = {
                            let _g = gate.lock().unwrap_or_else(|e| e.into_inner());
                            try_publish(addr, &hq, &json!({"channel":ch,"data":n}).to_string())
                        };
                        if r == Some(202) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                sent.store(n, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };
    let wait_sent = |n: u64| {
        let until = Instant::now() + Duration::from_secs(60);
        while sent.load(std::sync::atomic::Ordering::SeqCst) < n {
            assert!(Instant::now() < until, "the publisher did not reach {n}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    for (after, sig) in [(20, "TERM"), (50, "KILL")] {
        wait_sent(after);
        {
            let _g = gate.lock().unwrap_or_else(|e| e.into_inner());
            s.signal(sig);
            if sig == "TERM" {
                assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0), "SIGTERM: exit 0");
            } else {
                let _ = s.child.wait();
            }
        }
        // Down for a while: the publisher keeps trying, the agent reconnects.
        std::thread::sleep(Duration::from_millis(700));
        s = Server::start_at(&addr.to_string(), &args, &[("TESSERA_SECRET", KEY)]);
    }
    publisher.join().unwrap();
    let got = a.data_by_channel(&["feed", "@agent-7"], &json!(N), Duration::from_secs(30));
    assert_eq!(got[0], numbers(1, N), "every message once, in order");
    let thirds: Vec<Value> = (1..=N).filter(|n| n % 3 == 0).map(|n| json!(n)).collect();
    assert_eq!(got[1], thirds, "the personal channel too");
    assert_eq!(a.stderr_lines("not recovered"), Vec::<String>::new());
    // Nothing more comes for feed (no late duplicate).
    assert_eq!(status(&publish(&s, "feed", json!("end"))), 202);
    assert_eq!(
        a.data_until("feed", &json!("end"), Duration::from_secs(10)),
        vec![json!("end")]
    );
}

#[test]
fn spec10_positions_file_resumes_across_an_agent_restart() {
    let d = scratch_dir("agent", "positions");
    let s = Server::start(&["--users", &users_file(&d)]);
    let pos = d.join("agent.positions");
    let pos_arg = pos.to_str().unwrap();
    let agent_args = ["--username", "agent-7", "--subscribe", "feed", "--positions", pos_arg];
    let mut a = Agent::start(&s.url(), &agent_args, Some("a7-pass"), false);
    a.expect("subscribed", Duration::from_secs(10));
    for n in 1..=5 {
        assert_eq!(status(&publish(&s, "feed", json!(n))), 202);
    }
    assert_eq!(status(&publish(&s, "@agent-7", json!("p1"))), 202);
    assert_eq!(a.data_until("feed", &json!(5), Duration::from_secs(10)), numbers(1, 5));
    assert_eq!(
        a.data_until("@agent-7", &json!("p1"), Duration::from_secs(10)),
        vec![json!("p1")]
    );
    assert_eq!(a.interrupt(), Some(0));
    let text = std::fs::read_to_string(&pos).unwrap();
    let line = |ch: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{ch} ")))
            .unwrap_or_else(|| panic!("no {ch} in {text}"))
            .split(' ')
            .nth(2)
            .unwrap()
            .to_string()
    };
    assert_eq!((line("feed").as_str(), line("@agent-7").as_str()), ("5", "1"), "{text}");

    // While the agent is stopped.
    for n in 6..=8 {
        assert_eq!(status(&publish(&s, "feed", json!(n))), 202);
    }
    assert_eq!(status(&publish(&s, "@agent-7", json!("p2"))), 202);
    let b = Agent::start(&s.url(), &agent_args, Some("a7-pass"), false);
    assert_eq!(b.data_until("feed", &json!(8), Duration::from_secs(10)), numbers(6, 8));
    assert_eq!(
        b.data_until("@agent-7", &json!("p2"), Duration::from_secs(10)),
        vec![json!("p2")]
    );
    assert_eq!(status(&publish(&s, "feed", json!(9))), 202);
    assert_eq!(b.data_until("feed", &json!(9), Duration::from_secs(10)), vec![json!(9)]);
    assert_eq!(b.stderr_lines("not recovered"), Vec::<String>::new());
    drop(b);

    // A positions file that cannot be used stops the agent with exit 2.
    std::fs::write(&pos, "feed epochOne1 5\nfeed\n").unwrap();
    let mut c = Agent::start(&s.url(), &agent_args, Some("a7-pass"), false);
    assert_eq!(c.wait(Duration::from_secs(10)), Some(2));
    let err = c.stderr.lock().unwrap().clone();
    assert!(err.contains("--positions") && err.contains("line 2"), "{err}");
    let nowhere = d.join("no-such-dir").join("positions");
    let mut c = Agent::start(
        &s.url(),
        &["--username", "agent-7", "--positions", nowhere.to_str().unwrap()],
        Some("a7-pass"),
        false,
    );
    assert_eq!(c.wait(Duration::from_secs(10)), Some(2));
    assert!(c.stderr.lock().unwrap().contains("cannot be written"));
    let mut c = Agent::start(
        &s.url(),
        &["--username", "hq", "--publish", "feed", "--positions", pos_arg],
        Some("hq-pass"),
        false,
    );
    assert_eq!(c.wait(Duration::from_secs(10)), Some(2));
}

#[test]
fn spec10_agent_says_once_when_a_resume_is_not_recovered() {
    let d = scratch_dir("agent", "notrecovered");
    let users = users_file(&d);
    let s = Server::start(&["--users", &users]);
    let addr = s.addr.to_string();
    let a = Agent::start(
        &s.url(),
        &["--username", "agent-7", "--subscribe", "feed"],
        Some("a7-pass"),
        false,
    );
    let first = a.expect("subscribed", Duration::from_secs(10));
    assert_eq!(first["channel"], "feed");
    let epoch = first["epoch"].as_str().expect("subscribed has an epoch").to_string();
    for n in 1..=2 {
        assert_eq!(status(&publish(&s, "feed", json!(n))), 202);
    }
    assert_eq!(a.data_until("feed", &json!(2), Duration::from_secs(10)), numbers(1, 2));
    // A restart without --history-dir loses the history: a new epoch.
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let s = Server::start_at(&addr, &["--users", &users], &[("TESSERA_SECRET", KEY)]);
    let again = loop {
        let v = a.expect("subscribed", Duration::from_secs(20));
        if v["channel"] == "feed" && v.get("recovered").is_some() {
            break v;
        }
    };
    assert_ne!(again["epoch"].as_str(), Some(epoch.as_str()));
    assert_eq!(again["recovered"], false);
    assert_eq!(status(&publish(&s, "feed", json!("new"))), 202);
    assert_eq!(
        a.data_until("feed", &json!("new"), Duration::from_secs(10)),
        vec![json!("new")]
    );
    let lines = a.stderr_lines("resume of feed not recovered");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&epoch), "{}", lines[0]);
}

/// A TCP proxy in front of the server that can cut every connection and
/// refuse new ones for a while, like a link that drops.
struct Link {
    addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Link {
    fn to(server: std::net::SocketAddr) -> Link {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (o, c) = (open.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                if !o.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the connection closes at once
                }
                let Ok(upstream) = std::net::TcpStream::connect(server) else {
                    continue;
                };
                let pipes = [
                    (client.try_clone(), upstream.try_clone()),
                    (upstream.try_clone(), client.try_clone()),
                ];
                let mut list = c.lock().unwrap_or_else(|e| e.into_inner());
                list.push(client);
                list.push(upstream);
                for (from, to) in pipes {
                    if let (Ok(mut from), Ok(mut to)) = (from, to) {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
            }
        });
        Link { addr, open, conns }
    }

    fn down(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for s in self.conns.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn up(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn spec10_agent_resumes_after_dropped_links_without_loss_or_duplicates() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    let d = scratch_dir("agent", "droppedlink");
    let s = Server::start(&["--users", &users_file(&d), "--history", "1000"]);
    let link = Link::to(s.addr);
    let a = Agent::start(
        &format!("ws://{}/ws", link.addr),
        &["--username", "agent-7", "--subscribe", "feed"],
        Some("a7-pass"),
        false,
    );
    a.expect("subscribed", Duration::from_secs(10));
    // Publishes 1, 2, … (every third one also to the personal channel) until told to stop.
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let publisher = {
        let (sent, stop, addr) = (sent.clone(), stop.clone(), s.addr);
        std::thread::spawn(move || {
            let hq = token("hq", 5, 600, |c| c.publish = true);
            let mut n = 0;
            while !stop.load(SeqCst) && n < 5000 {
                n += 1;
                let channels: &[&str] = if n % 3 == 0 { &["feed", "@agent-7"] } else { &["feed"] };
                for ch in channels {
                    let r = try_publish(addr, &hq, &json!({"channel":ch,"data":n}).to_string());
                    assert_eq!(r, Some(202), "publish {n} to {ch}");
                }
                sent.store(n, SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
            n
        })
    };
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let until = Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let accepts = || s.logs().matches("\"ws_accept\"").count();
    for drop in 1..=3 {
        // Cut the link while messages flow, keep it down, then let the agent back in.
        let from = sent.load(SeqCst);
        wait_for("more messages", &|| sent.load(SeqCst) >= from + 20);
        link.down();
        std::thread::sleep(Duration::from_millis(600));
        link.up();
        wait_for("the agent to reconnect", &|| accepts() > drop);
    }
    let from = sent.load(SeqCst);
    wait_for("more messages", &|| sent.load(SeqCst) >= from + 20);
    stop.store(true, SeqCst);
    let n = publisher.join().unwrap();
    let last = json!(n - n % 3);
    let got = a.data_by_channel(&["feed", "@agent-7"], &last, Duration::from_secs(30));
    assert_eq!(got[0], numbers(1, n - n % 3), "every message once, in order");
    let thirds: Vec<Value> = (1..=n - n % 3).filter(|k| k % 3 == 0).map(|k| json!(k)).collect();
    assert_eq!(got[1], thirds, "the personal channel too");
    assert_eq!(a.stderr_lines("not recovered"), Vec::<String>::new());
    let drops = a.stderr_lines("connection lost").len() + a.stderr_lines("connection closed").len();
    assert_eq!(drops, 3, "{}", a.stderr.lock().unwrap());
}
