//! Black-box harness: starts the real `tessera serve` binary on an ephemeral
//! port, and talks to it with raw TCP and a real WebSocket client.
#![allow(dead_code)]

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::{Error as WsError, Message};
#[allow(unused_imports)]
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use smol::Async;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera::auth::users::{PasswordHash, User, UsersFile};
use tessera::jwt::{self, Claims};
use tessera::keys::KeySet;

pub const KEY: &str = "test-key-0123456789abcdefghijklmnopqrstuvwxyz";

pub type Ws = WebSocketStream<Async<TcpStream>>;

/// The server binary under test: `TESSERA_BIN` when set (e.g. a static
/// cross-built binary), else this build's. `TESSERA_RUNNER` (e.g.
/// `qemu-aarch64`; words split on spaces) runs it under an emulator.
/// qemu-user keeps the guest's pid, so signals still reach it.
pub fn tessera_command() -> Command {
    let bin = std::env::var_os("TESSERA_BIN")
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tessera").into());
    let runner = std::env::var("TESSERA_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(r) => {
            let mut cmd = Command::new(r);
            cmd.args(words).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

/// How a server is started beyond its flags: the builder behind every
/// `Server::start*`. Defaults: `--listen 127.0.0.1:0`, `TESSERA_SECRET=KEY`
/// and nothing else from the test's environment for that variable, no
/// `ulimit`. E.g. `Server::launch().listen(&addr).ulimit("-n 64").start(&args)`.
#[derive(Clone, Debug)]
pub struct Launch {
    listen: String,
    env: Vec<(String, String)>,
    ulimit: Option<String>,
}

impl Default for Launch {
    fn default() -> Launch {
        Launch {
            listen: "127.0.0.1:0".into(),
            env: vec![("TESSERA_SECRET".into(), KEY.into())],
            ulimit: None,
        }
    }
}

impl Launch {
    /// `--listen ADDR` (e.g. the address of a server that was stopped).
    pub fn listen(mut self, addr: &str) -> Launch {
        self.listen = addr.into();
        self
    }

    /// Exactly these environment variables for tessera (replacing the
    /// default `TESSERA_SECRET=KEY`; the test's own `TESSERA_SECRET` is
    /// never passed on).
    pub fn envs(mut self, env: &[(&str, &str)]) -> Launch {
        self.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self
    }

    /// One more environment variable (or another value for one already set).
    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs tessera through `sh -c 'ulimit ARGS || exit 99; exec …'`, e.g.
    /// `-n 64` (a limit the shell refuses fails the start: exit 99).
    pub fn ulimit(mut self, args: &str) -> Launch {
        self.ulimit = Some(args.into());
        self
    }

    /// `tessera serve --listen ADDR ARGS…`; returns once it logs `listening`.
    pub fn start(&self, args: &[&str]) -> Server {
        let mut serve = tessera_command();
        serve.arg("serve").args(["--listen", &self.listen]).args(args);
        let mut cmd = match &self.ulimit {
            None => serve,
            Some(limits) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit {limits} || exit 99; exec \"$@\""))
                    .arg("sh")
                    .arg(serve.get_program())
                    .args(serve.get_args());
                sh
            }
        };
        cmd.env_remove("TESSERA_SECRET");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        Server::spawn(cmd)
    }
}

impl Server {
    /// `tessera serve --listen 127.0.0.1:0 ARGS…` with TESSERA_SECRET=KEY.
    pub fn start(args: &[&str]) -> Server {
        Server::launch().start(args)
    }

    /// A [`Launch`] builder for anything beyond flags (address, environment, ulimit).
    pub fn launch() -> Launch {
        Launch::default()
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::launch().envs(env).start(args)
    }

    /// Starts on a given address (e.g. the port of a server that was stopped).
    pub fn start_at(listen: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::launch().listen(listen).envs(env).start(args)
    }

    /// Spawns `cmd` with piped output and waits (20 s at most) for its
    /// `listening` log line.
    fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tessera");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                if line.contains("\"listening\"") {
                    let v: Value = serde_json::from_str(&line).unwrap();
                    let _ = tx.send(v["addr"].as_str().unwrap().to_string());
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let out_pipe = child.stdout.take().unwrap();
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(e) => {
                // Not left running behind the failed test.
                let _ = child.kill();
                let status = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "server did not log `listening` ({e}; exit {status:?}); its log:\n{}",
                    stderr.lock().map(|s| s.clone()).unwrap_or_default()
                );
            }
        };
        Server {
            child,
            addr: addr.parse().unwrap(),
            stderr,
            stdout,
        }
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until the log holds a line containing every needle.
    pub fn wait_log(&self, needles: &[&str]) -> String {
        match self.find_log(needles, Duration::from_secs(10)) {
            Some(l) => l,
            None => panic!("no log line with {needles:?} in\n{}", self.logs()),
        }
    }

    /// The first log line holding every needle, waiting up to `within`
    /// (`None` if none came).
    pub fn find_log(&self, needles: &[&str], within: Duration) -> Option<String> {
        let until = Instant::now() + within;
        loop {
            if let Some(l) = self.logs().lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return Some(l.to_string());
            }
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit; its status code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let until = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh, empty directory for one test:
/// `$TMPDIR/tessera-SUITE-NAME-PID-THREAD` (tests of one binary run in
/// parallel threads, and a suite runs more than once in CI). Removed when
/// the returned guard is dropped; kept, and its path printed, when the test
/// failed (dropped while panicking), so that what the server wrote can be
/// read. Declare it before the servers that write into it: locals drop in
/// reverse order, so the servers stop first.
pub fn scratch_dir(suite: &str, name: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!(
        "tessera-{suite}-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

/// A test's directory ([`scratch_dir`]); derefs to its path.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: its directory is kept: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A users-file entry: `password` hashed with 1000 PBKDF2 iterations (fast
/// enough for tests), no channel limits, no TOTP. Change the rest with
/// struct update syntax: `User { channels: …, ..user("a", 2, false, "pw") }`.
pub fn user(name: &str, clearance: u32, publish: bool, password: &str) -> User {
    User {
        name: name.into(),
        clearance,
        publish,
        channels: vec![],
        hash: PasswordHash::new(password.as_bytes(), 1000, [7; 16]),
        totp: None,
    }
}

/// Writes `users` (in this order) to `DIR/users`; its path.
pub fn write_users(dir: &Path, users: impl IntoIterator<Item = User>) -> PathBuf {
    let mut f = UsersFile::default();
    for u in users {
        f.upsert(u);
    }
    let p = dir.join("users");
    std::fs::write(&p, f.render()).unwrap();
    p
}

/// A token for `hq`: clearance 9, may publish, 10 minutes.
pub fn hq() -> String {
    token("hq", 9, 600, |c| c.publish = true)
}

/// Subscribes (with `since` when given) and returns the `subscribed` reply.
pub async fn subscribe(ws: &mut Ws, channel: &str, since: Option<Value>) -> Value {
    let mut cmd = serde_json::json!({"type":"subscribe","channel":channel});
    if let Some(s) = since {
        cmd["since"] = s;
    }
    send(ws, cmd).await;
    let r = recv(ws).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    r
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed with KEY.
pub fn token(sub: &str, clearance: u32, ttl: i64, edit: impl FnOnce(&mut Claims)) -> String {
    let mut c = Claims {
        sub: sub.into(),
        exp: (now() as i64 + ttl) as f64,
        iat: Some(now() as f64),
        clearance,
        ..Claims::default()
    };
    edit(&mut c);
    jwt::sign(&c, &KeySet::single(KEY.as_bytes()).unwrap(), None).unwrap()
}

/// Sends raw bytes, returns everything the server answers until it closes
/// (or 5 s pass).
pub fn raw(addr: SocketAddr, request: &[u8]) -> String {
    raw_within(addr, request, Duration::from_secs(5))
}

/// [`raw`] with the read timeout given: for an answer that is slow by
/// design (a login at the full PBKDF2 iteration count, at nice 19, maybe
/// under qemu on a busy machine). An upper bound, not a timed assertion.
pub fn raw_within(addr: SocketAddr, request: &[u8], timeout: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// [`raw`] for a server that may be gone or going (a test that kills it
/// mid-stream): a refused connection is no answer (""), a failed write is
/// ignored and whatever was answered before the close is returned.
pub fn raw_tolerant(addr: SocketAddr, request: &[u8]) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// True (after one `SKIPPED:` line naming the Debian package) when one of
/// the command-line `tools` a test needs is not installed: `cargo test` on
/// a fresh machine passes without them; `.ci/run` installs them, so CI runs
/// every test.
pub fn missing_tools(tools: &[&str]) -> bool {
    for t in tools {
        if Command::new(t).arg("--version").output().is_err() {
            let package = match *t {
                "zbarimg" => "zbar-tools",
                "script" => "bsdutils",
                other => other,
            };
            println!("SKIPPED: `{t}` is not installed (apt-get install {package}; .ci/run does it)");
            return true;
        }
    }
    false
}

/// The TOTP code of base32 `secret` at Unix time `at`, from Debian's
/// `oathtool` (an independent implementation, never tessera's own).
pub fn oath(secret: &str, at: u64) -> String {
    let out = Command::new("oathtool")
        .args(["--totp", "-b", secret, "-N", &format!("@{at}")])
        .output()
        .expect("oathtool is needed for these tests (apt-get install oathtool; .ci/run does it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let code = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(code.len(), 6, "{code}");
    code
}

/// A WebSocket upgrade request with extra header lines (each ending in \r\n).
pub fn upgrade(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// The status code of a raw HTTP response.
pub fn status(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The JSON body of a raw HTTP response.
pub fn body(resp: &str) -> Value {
    let b = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(b).unwrap_or(Value::Null)
}

/// A header value of a raw HTTP response (case-insensitive name).
pub fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = resp.split_once("\r\n\r\n").map(|(h, _)| h).unwrap_or(resp);
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// An HTTP request and its full response (Connection: close).
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    raw(addr, http_request(addr, method, path, headers, body).as_bytes())
}

/// [`http`] through [`raw_tolerant`]: "" (status 0) when the server is gone.
pub fn http_tolerant(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    raw_tolerant(addr, http_request(addr, method, path, headers, body).as_bytes())
}

/// The bytes of an HTTP/1.1 request with `Connection: close` (and a
/// `Content-Length` for POST).
pub fn http_request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req
}

/// `POST /publish` with `Authorization: Bearer TOKEN` and a JSON body.
pub fn publish_as(addr: SocketAddr, token: &str, body: &str) -> String {
    let auth = format!("Bearer {token}");
    http(
        addr,
        "POST",
        "/publish",
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        body,
    )
}

/// Opens a WebSocket with these extra request headers.
pub async fn ws_connect(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<Ws, WsError> {
    let mut req = format!("ws://{addr}/ws").into_client_request()?;
    for (n, v) in headers {
        req.headers_mut().insert(
            async_tungstenite::tungstenite::http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let stream = Async::<TcpStream>::connect(addr).await?;
    let (ws, _) = async_tungstenite::client_async(req, stream).await?;
    Ok(ws)
}

/// Opens a WebSocket with a Bearer token and reads the welcome.
pub async fn ws_bearer(addr: SocketAddr, token: &str) -> (Ws, Value) {
    let mut ws = ws_connect(addr, &[("Authorization", &format!("Bearer {token}"))])
        .await
        .expect("upgrade");
    let welcome = recv(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// The next text message as JSON (5 s timeout; panics on close).
pub async fn recv(ws: &mut Ws) -> Value {
    match next_event(ws, Duration::from_secs(5)).await {
        Event::Json(v) => v,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[derive(Debug)]
pub enum Event {
    Json(Value),
    Close(Option<u16>),
    Timeout,
    Error(String),
}

/// The next text message or close, skipping pings.
pub async fn next_event(ws: &mut Ws, within: Duration) -> Event {
    let until = Instant::now() + within;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let next = smol::future::or(async { Some(ws.next().await) }, async {
            smol::Timer::after(left).await;
            None
        })
        .await;
        match next {
            None => return Event::Timeout,
            Some(None) => return Event::Close(None),
            Some(Some(Ok(Message::Text(t)))) => return Event::Json(serde_json::from_str(t.as_str()).unwrap()),
            Some(Some(Ok(Message::Close(f)))) => return Event::Close(f.map(|f| u16::from(f.code))),
            Some(Some(Ok(_))) => continue,
            Some(Some(Err(e))) => return Event::Error(e.to_string()),
        }
    }
}

/// Sends a JSON command.
pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// Reads until a close frame arrives; its code.
pub async fn close_code(ws: &mut Ws, within: Duration) -> Option<u16> {
    let until = Instant::now() + within;
    loop {
        match next_event(ws, until.saturating_duration_since(Instant::now())).await {
            Event::Json(_) => continue,
            Event::Close(c) => return c,
            Event::Timeout => return None,
            Event::Error(_) => return None,
        }
    }
}

/// `POST /auth/refresh` with `token` in the JSON body; the raw answer.
#[allow(dead_code)]
pub fn refresh(s: &Server, token: &str) -> String {
    http(
        s.addr,
        "POST",
        "/auth/refresh",
        &[("Content-Type", "application/json")],
        &serde_json::json!({ "refresh_token": token }).to_string(),
    )
}
