//! `tessera agent`: the field client (SPEC §9).
//!
//! Logs in over HTTP on the hub's host, opens the WebSocket with a Bearer
//! header, subscribes, and prints every server message as one JSON line on
//! stdout (diagnostics go to stderr). Before the token expires it refreshes
//! over HTTP and then in-band, so the socket and its subscriptions live on.
//! After a drop it reconnects with capped exponential backoff and jitter.
//! Every reconnect resumes each channel from the last offset printed
//! (SPEC §10, [`resume`]), so stdout holds every message once and in order;
//! `--positions FILE` keeps those offsets across agent restarts.
//! A user with a second factor (SPEC §11) gives a one-time code through
//! `TESSERA_OTP` or a no-echo prompt on the terminal, at start and at every
//! new login a failed refresh forces.
//! Exit codes: 0 on SIGINT/SIGTERM (or end of stdin with `--publish`), 1 on
//! bad credentials or an unusable token, 2 on bad flags or an unusable
//! positions file, 3 when the session is revoked (close 4003).

pub mod resume;

use crate::cli;
use crate::commands::{Failure, now_unix};
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::{Error as WsError, Message};
use futures_util::StreamExt;
use serde_json::{Value, json};
use smol::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where the hub is, from `--url ws://HOST:PORT/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub path: String,
    /// `wss://` (and https for login).
    pub tls: bool,
    /// Extra CA certificates to trust (`--ca-file`).
    pub ca_file: Option<std::path::PathBuf>,
}

/// The agent's connection: plain TCP, or TLS over it.
#[cfg(feature = "tls")]
type Conn = crate::tls::MaybeTls<smol::net::TcpStream, futures_rustls::client::TlsStream<smol::net::TcpStream>>;
#[cfg(not(feature = "tls"))]
type Conn = crate::tls::MaybeTls<smol::net::TcpStream, smol::net::TcpStream>;

/// Connects to the hub, with TLS for `wss://`.
async fn connect(t: &Target) -> std::io::Result<Conn> {
    let tcp = smol::net::TcpStream::connect((t.host.as_str(), t.port)).await?;
    if !t.tls {
        return Ok(crate::tls::MaybeTls::Plain(tcp));
    }
    #[cfg(feature = "tls")]
    {
        let other = |e: String| std::io::Error::other(e);
        let connector = crate::tls::connector(t.ca_file.as_deref()).map_err(other)?;
        let name = crate::tls::server_name(&t.host).map_err(other)?;
        let s = connector.connect(name, tcp).await?;
        Ok(crate::tls::MaybeTls::Tls(Box::new(s)))
    }
    #[cfg(not(feature = "tls"))]
    Err(std::io::Error::other(
        "wss:// needs a tessera built with --features tls",
    ))
}

/// Parses a `ws://` or `wss://` URL (`wss://` needs the `tls` feature).
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (tls, rest) = match url.split_once("://") {
        Some(("ws", r)) => (false, r),
        Some(("wss", r)) if cfg!(feature = "tls") => (true, r),
        Some(("wss", _)) => return Err("wss:// needs a tessera built with --features tls".into()),
        _ => return Err("expected ws://HOST:PORT/PATH or wss://…".into()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/ws"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?)
        }
        _ => (authority, if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok(Target {
        host: host.trim_matches(['[', ']']).to_string(),
        port,
        path: path.to_string(),
        tls,
        ca_file: None,
    })
}

/// Reconnect delay for the `attempt`-th consecutive failure (from 0):
/// 0.5 s doubling to a 30 s cap, then ±25 % jitter from `rand` (0..=1).
pub fn backoff(attempt: u32, rand: f64) -> Duration {
    let base = 0.5 * 2f64.powi(attempt.min(16) as i32);
    let capped = base.min(30.0);
    Duration::from_secs_f64(capped * (0.75 + 0.5 * rand.clamp(0.0, 1.0)))
}

/// When to refresh a token that expires at `exp`: a minute before, or a
/// third of its remaining life before for short-lived tokens.
pub fn refresh_time(now: u64, exp: u64) -> u64 {
    if exp == u64::MAX {
        return u64::MAX;
    }
    let left = exp.saturating_sub(now);
    exp.saturating_sub(60.min(left / 3).max(1))
}

fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX)
}

fn say(msg: &str) {
    eprintln!("tessera agent: {msg}");
}

/// One HTTP/1.1 request with a JSON body; returns status and JSON body.
async fn post_json(t: &Target, path: &str, body: &Value) -> std::io::Result<(u16, Value)> {
    let mut s = connect(t).await?;
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        t.host,
        t.port,
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    // A peer that ends TLS without close_notify still delivered a whole
    // response when the head parses and the body is complete.
    if let Err(e) = s.take(64 * 1024).read_to_end(&mut buf).await
        && (e.kind() != std::io::ErrorKind::UnexpectedEof || buf.is_empty())
    {
        return Err(e);
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let head_len = match resp.parse(&buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(bad("malformed HTTP response")),
    };
    let status = resp.code.unwrap_or(0);
    let json = serde_json::from_slice(&buf[head_len..]).unwrap_or(Value::Null);
    Ok((status, json))
}

/// The agent's credentials.
struct Creds {
    username: Option<String>,
    password: Option<String>,
    access: String,
    refresh: Option<String>,
}

/// Logs in; `Err` carries the exit failure for bad credentials. A server
/// that asks for a second factor (`mfa_required`, SPEC §11) gets a code
/// from `TESSERA_OTP` (sent with the first attempt, once) or from a prompt
/// on the terminal, which asks again after a refused code ([`OTP_TRIES`]
/// in all).
async fn login(t: &Target, user: &str, password: &str) -> Result<(String, Option<String>), Failure> {
    match login_once(t, user, password, take_env_otp().as_deref()).await {
        Err((_, code)) if code == "mfa_required" => {
            let mut tries = 1;
            loop {
                let otp = prompt_otp().await?;
                match login_once(t, user, password, Some(&otp)).await {
                    Err((_, code)) if code == "invalid_otp" && tries < OTP_TRIES => {
                        say(&format!(
                            "that code was refused (invalid_otp: wrong, malformed or already used); type the next one ({} left)",
                            OTP_TRIES - tries
                        ));
                        tries += 1;
                    }
                    other => return other.map_err(|(f, _)| f),
                }
            }
        }
        other => other.map_err(|(f, _)| f),
    }
}

/// Codes the terminal prompt takes for one login before the agent gives
/// up (each refused code also counts toward the hub's throttle, SPEC §7).
const OTP_TRIES: u32 = 3;

/// `TESSERA_OTP`, the first time only: a code works once, so a later
/// login (after a refresh failure) must ask for a new one.
fn take_env_otp() -> Option<String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::Relaxed) {
        return None;
    }
    std::env::var("TESSERA_OTP")
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
}

/// Set once `--publish` reads its lines from stdin: from then on a code
/// typed at a prompt could be read (and published) as a message instead.
static STDIN_IS_INPUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks for a one-time code on the terminal, without echo (`Err` when
/// there is no terminal, at the end of its input, or on SIGINT/SIGTERM —
/// then with exit status 0 and the echo back on).
async fn prompt_otp() -> Result<String, Failure> {
    use std::io::{BufRead, IsTerminal};
    use std::sync::atomic::Ordering;
    let refused = |why: &str| Failure {
        code: 1,
        message: format!(
            "login refused (401 mfa_required): set TESSERA_OTP to the code of your authenticator app, or {why}"
        ),
    };
    if !std::io::stdin().is_terminal() {
        return Err(refused("run on a terminal"));
    }
    if STDIN_IS_INPUT.load(Ordering::Relaxed) {
        return Err(refused(
            "restart the agent (with --publish the terminal is the message input, so it cannot ask again)",
        ));
    }
    let mut signals = async_signal::Signals::new([async_signal::Signal::Int, async_signal::Signal::Term])
        .map_err(|e| Failure::usage(format!("signals: {e}")))?;
    let stty = |arg: &str| {
        let _ = std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    };
    // Echo goes off before the prompt shows, so nothing typed after it is
    // ever drawn on the terminal (or in a recording of it).
    stty("-echo");
    eprint!("one-time code: ");
    let read = smol::unblock(|| {
        let mut line = String::new();
        std::io::Read::take(std::io::stdin().lock(), 256)
            .read_line(&mut line)
            .map(|_| line)
    });
    // The signal first: Ctrl-C then Enter stops the agent, not a login.
    let got = smol::future::or(
        async {
            signals.next().await;
            None
        },
        async { Some(read.await) },
    )
    .await;
    stty("echo");
    eprintln!();
    match got {
        None => Err(Failure {
            code: 0,
            message: "agent interrupted at the one-time code prompt".into(),
        }),
        Some(Ok(line)) if line.is_empty() => Err(Failure {
            code: 1,
            message: "no one-time code (end of input at the prompt)".into(),
        }),
        Some(Ok(line)) => Ok(line.trim().to_string()),
        Some(Err(e)) => Err(Failure {
            code: 1,
            message: format!("no one-time code (the terminal: {})", e.kind()),
        }),
    }
}

/// One login request (with a one-time code when given); `Err` carries the
/// failure and the server's error code.
async fn login_once(
    t: &Target,
    user: &str,
    password: &str,
    otp: Option<&str>,
) -> Result<(String, Option<String>), (Failure, String)> {
    let mut req = json!({"username": user, "password": password});
    if let Some(code) = otp {
        req["otp"] = json!(code);
    }
    let (status, body) = post_json(t, "/auth/login", &req).await.map_err(|e| {
        (
            Failure {
                code: 1,
                message: format!("login to {}:{} failed: {e}", t.host, t.port),
            },
            String::new(),
        )
    })?;
    match status {
        200 => {
            let access = body["access_token"].as_str().unwrap_or_default().to_string();
            let refresh = body["refresh_token"].as_str().map(String::from);
            if access.is_empty() {
                return Err((
                    Failure {
                        code: 1,
                        message: "login answered without an access token".into(),
                    },
                    String::new(),
                ));
            }
            Ok((access, refresh))
        }
        _ => {
            let code = body["error"].as_str().unwrap_or("?").to_string();
            let message = format!(
                "login refused ({status} {code}): {}",
                body["message"].as_str().unwrap_or("")
            );
            Err((Failure { code: 1, message }, code))
        }
    }
}

/// Refreshes over HTTP, or logs in again when the refresh token is gone.
async fn renew(t: &Target, c: &mut Creds) -> Result<(), Failure> {
    if let Some(r) = c.refresh.clone() {
        match post_json(t, "/auth/refresh", &json!({"refresh_token": r})).await {
            Ok((200, body)) => {
                if let Some(a) = body["access_token"].as_str() {
                    c.access = a.to_string();
                    c.refresh = body["refresh_token"].as_str().map(String::from);
                    say("token refreshed");
                    return Ok(());
                }
            }
            Ok((status, body)) => {
                say(&format!(
                    "refresh refused ({status} {})",
                    body["error"].as_str().unwrap_or("?")
                ));
                if body["error"] == "refresh_token_reused" {
                    return Err(Failure {
                        code: 3,
                        message: "session revoked (refresh token reuse)".into(),
                    });
                }
            }
            Err(e) => {
                return Err(Failure {
                    code: 1,
                    message: format!("refresh failed: {e}"),
                });
            }
        }
    }
    match (&c.username, &c.password) {
        (Some(u), Some(p)) => {
            let (a, r) = login(t, u, p).await?;
            c.access = a;
            c.refresh = r;
            say("logged in again");
            Ok(())
        }
        _ => Err(Failure {
            code: 1,
            message: "the token expired and there is no way to renew it".into(),
        }),
    }
}

fn print_line(v: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// The resume state of a run and where it is kept (`--positions`).
struct Resume {
    tracker: resume::Tracker,
    file: Option<PathBuf>,
    saved_at: Instant,
    /// The last write failed (said once, until one succeeds).
    failing: bool,
}

/// Positions are written at most this often while messages flow (flash
/// wear), and always when a connection ends and at exit.
const SAVE_EVERY: Duration = Duration::from_secs(1);

impl Resume {
    /// Loads `--positions FILE`: a missing file starts empty and is created
    /// at once; an unreadable, invalid or unwritable one is a usage error
    /// (exit 2), never silently replaced.
    fn load(file: Option<PathBuf>) -> Result<Resume, Failure> {
        let positions = match &file {
            None => resume::Positions::default(),
            Some(p) => match std::fs::read_to_string(p) {
                Ok(text) => resume::Positions::parse(&text)
                    .map_err(|e| Failure::usage(format!("--positions {}: {e}", p.display())))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Created now, so that an unwritable place shows at once.
                    let empty = resume::Positions::default();
                    crate::auth::state_file::write_atomic(p, empty.render().as_bytes()).map_err(|e| {
                        Failure::usage(format!("--positions {}: cannot be written: {}", p.display(), e.kind()))
                    })?;
                    empty
                }
                Err(e) => return Err(Failure::usage(format!("--positions {}: {}", p.display(), e.kind()))),
            },
        };
        Ok(Resume {
            tracker: resume::Tracker::new(positions),
            file,
            saved_at: Instant::now(),
            failing: false,
        })
    }

    /// Writes the positions if they moved (and, unless `now`, if the last
    /// write is [`SAVE_EVERY`] old), atomically: temp file, fsync, rename.
    fn save(&mut self, now: bool) {
        let Some(path) = &self.file else {
            return;
        };
        if !now && self.saved_at.elapsed() < SAVE_EVERY {
            return;
        }
        if !self.tracker.take_dirty() {
            return;
        }
        self.saved_at = Instant::now();
        let text = self.tracker.positions().render();
        match crate::auth::state_file::write_atomic(path, text.as_bytes()) {
            Ok(()) => self.failing = false,
            Err(e) => {
                if !self.failing {
                    say(&format!("cannot write --positions {}: {}", path.display(), e.kind()));
                }
                self.failing = true;
            }
        }
    }

    /// Feeds one server frame through the tracker to stdout and stderr.
    fn show(&mut self, text: &str, v: &Value) {
        for out in self.tracker.on_parsed(text, v) {
            self.put(out);
        }
    }

    fn put(&mut self, out: resume::Out) {
        match out {
            resume::Out::Print(line) => print_line(&line),
            resume::Out::Warn(line) => say(&line),
        }
    }
}

/// How one connection ended.
enum End {
    /// Reconnect (after backoff unless `fast`).
    Retry {
        fast: bool,
    },
    Exit(Result<(), Failure>),
}

/// Entry point of `tessera agent`.
pub fn run(args: &cli::Agent) -> Result<(), Failure> {
    let mut target = parse_url(&args.url).map_err(|e| Failure::usage(format!("--url {:?}: {e}", args.url)))?;
    target.ca_file = args.ca_file.clone();
    for c in args.subscribe.iter().chain(args.publish.iter()) {
        if !crate::hub::channel_name_ok(c) {
            return Err(Failure::usage(format!("{c:?} is not a channel name")));
        }
    }
    let token = match &args.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| Failure::usage(format!("--token-file {}: {}", p.display(), e.kind())))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let password = if token.is_some() {
        None
    } else {
        Some(read_password(args)?)
    };
    if token.is_none() && args.username.is_none() {
        return Err(Failure::usage("--username is required (or --token-file)"));
    }
    if args.publish.is_some() && args.positions.is_some() {
        return Err(Failure::usage("--positions goes with --subscribe, not --publish"));
    }
    let mut resume = Resume::load(args.positions.clone())?;
    smol::block_on(async {
        let mut creds = match token {
            Some(t) => Creds {
                username: None,
                password: None,
                access: t,
                refresh: None,
            },
            None => {
                let user = args.username.clone().unwrap_or_default();
                let pw = password.unwrap_or_default();
                let (access, refresh) = login(&target, &user, &pw).await?;
                say(&format!("logged in as {user}"));
                Creds {
                    username: Some(user),
                    password: Some(pw),
                    access,
                    refresh,
                }
            }
        };
        let mut signals = async_signal::Signals::new([async_signal::Signal::Int, async_signal::Signal::Term])
            .map_err(|e| Failure::usage(format!("signals: {e}")))?;
        let mut stdin_lines = args.publish.as_ref().map(|_| {
            STDIN_IS_INPUT.store(true, std::sync::atomic::Ordering::Relaxed);
            smol::io::BufReader::new(smol::Unblock::new(std::io::stdin())).lines()
        });
        let mut attempt: u32 = 0;
        loop {
            let end = session(
                &target,
                args,
                &mut creds,
                &mut signals,
                stdin_lines.as_mut(),
                &mut attempt,
                &mut resume,
            )
            .await;
            resume.save(true);
            match end {
                End::Exit(r) => return r,
                End::Retry { fast } => {
                    if !fast {
                        let wait = backoff(attempt, jitter());
                        say(&format!("reconnecting in {:.1} s", wait.as_secs_f64()));
                        attempt = attempt.saturating_add(1);
                        let sig = smol::future::or(
                            async {
                                smol::Timer::after(wait).await;
                                false
                            },
                            async {
                                signals.next().await;
                                true
                            },
                        )
                        .await;
                        if sig {
                            return Ok(());
                        }
                    }
                }
            }
        }
    })
}

fn read_password(args: &cli::Agent) -> Result<String, Failure> {
    if let Some(p) = &args.password_file {
        let s = std::fs::read_to_string(p)
            .map_err(|e| Failure::usage(format!("--password-file {}: {}", p.display(), e.kind())))?;
        return Ok(s.trim_end_matches(['\r', '\n']).to_string());
    }
    if let Ok(p) = std::env::var("TESSERA_PASSWORD") {
        return Ok(p);
    }
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        return crate::commands::prompt_password();
    }
    Err(Failure::usage(
        "no password: set TESSERA_PASSWORD, give --password-file, run on a terminal, or use --token-file",
    ))
}

type Lines = smol::io::Lines<smol::io::BufReader<smol::Unblock<std::io::Stdin>>>;

/// One connection, from upgrade to close.
async fn session(
    t: &Target,
    args: &cli::Agent,
    creds: &mut Creds,
    signals: &mut async_signal::Signals,
    mut stdin: Option<&mut Lines>,
    attempt: &mut u32,
    resume: &mut Resume,
) -> End {
    let url = format!("{}://{}:{}{}", if t.tls { "wss" } else { "ws" }, t.host, t.port, t.path);
    let mut req = match url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => return End::Exit(Err(Failure::usage(format!("--url: {e}")))),
    };
    match format!("Bearer {}", creds.access).parse() {
        Ok(v) => {
            req.headers_mut().insert("authorization", v);
        }
        Err(_) => {
            return End::Exit(Err(Failure {
                code: 1,
                message: "the token has characters a header cannot hold".into(),
            }));
        }
    }
    let stream = match connect(t).await {
        Ok(s) => s,
        Err(e) => {
            say(&format!("cannot connect: {e}"));
            return End::Retry { fast: false };
        }
    };
    let mut ws = match async_tungstenite::client_async(req, stream).await {
        Ok((ws, _)) => ws,
        Err(WsError::Http(resp)) => {
            let status = resp.status().as_u16();
            let body: Value = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            let code = body["error"].as_str().unwrap_or("?").to_string();
            say(&format!("handshake refused: {status} {code}"));
            return match (status, code.as_str()) {
                (401, "token_revoked") => End::Exit(Err(Failure {
                    code: 3,
                    message: "session revoked".into(),
                })),
                (401, "token_expired") => match renew(t, creds).await {
                    Ok(()) => End::Retry { fast: true },
                    Err(f) => End::Exit(Err(f)),
                },
                (401, _) | (403, _) => End::Exit(Err(Failure {
                    code: 1,
                    message: format!("not allowed in: {code}"),
                })),
                _ => End::Retry { fast: false },
            };
        }
        Err(e) => {
            say(&format!("handshake failed: {e}"));
            return End::Retry { fast: false };
        }
    };

    let mut ref_counter: u64 = 0;
    resume.tracker.new_session();
    if args.publish.is_none() {
        for c in &args.subscribe {
            ref_counter += 1;
            // With `since` when the channel's position is known (SPEC §10).
            let m = resume.tracker.subscribe(c, ref_counter);
            if ws.send(Message::text(m)).await.is_err() {
                return End::Retry { fast: false };
            }
        }
    }
    let mut expires_at: u64 = u64::MAX;
    let mut refreshing_at: u64 = u64::MAX;
    let mut pending_publish: u64 = 0;
    let mut stdin_done = stdin.is_none();

    enum Ev {
        In(Option<Result<Message, WsError>>),
        Line(Option<std::io::Result<String>>),
        Tick,
        Signal,
    }
    loop {
        if stdin_done && args.publish.is_some() && pending_publish == 0 {
            let _ = ws.close(None).await;
            return End::Exit(Ok(()));
        }
        let now = now_unix();
        if now >= refreshing_at {
            refreshing_at = u64::MAX;
            if creds.refresh.is_some() || creds.password.is_some() {
                match renew(t, creds).await {
                    Ok(()) => {
                        let m = json!({"type":"refresh","token":creds.access}).to_string();
                        if ws.send(Message::text(m)).await.is_err() {
                            return End::Retry { fast: false };
                        }
                    }
                    // Revoked, or interrupted at the code prompt: stop.
                    Err(f) if f.code == 3 || f.code == 0 => return End::Exit(Err(f)),
                    Err(f) => say(&f.message),
                }
            }
        }
        let mut wait = Duration::from_secs(refreshing_at.saturating_sub(now).clamp(1, 3600));
        if resume.tracker.holds() || (resume.file.is_some() && resume.tracker.is_dirty()) {
            // Positions to write, or a replay merge to finish: look again soon.
            wait = wait.min(SAVE_EVERY);
        }
        let lines = async {
            match stdin.as_deref_mut() {
                Some(l) if !stdin_done => Ev::Line(l.next().await),
                _ => std::future::pending().await,
            }
        };
        let ev = smol::future::or(
            smol::future::or(async { Ev::In(ws.next().await) }, lines),
            smol::future::or(
                async {
                    smol::Timer::after(wait).await;
                    Ev::Tick
                },
                async {
                    signals.next().await;
                    Ev::Signal
                },
            ),
        )
        .await;
        match ev {
            Ev::Signal => {
                let _ = ws.close(None).await;
                say("interrupted");
                return End::Exit(Ok(()));
            }
            Ev::Tick => {
                for out in resume.tracker.tick() {
                    resume.put(out);
                }
                resume.save(false);
            }
            Ev::Line(Some(Ok(line))) => {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let Ok(data) = serde_json::from_str::<Value>(line) else {
                    say("skipped a stdin line that is not JSON");
                    continue;
                };
                ref_counter += 1;
                pending_publish += 1;
                let channel = args.publish.as_deref().unwrap_or_default();
                let m = json!({"type":"publish","channel":channel,"data":data,"ref":ref_counter}).to_string();
                if ws.send(Message::text(m)).await.is_err() {
                    return End::Retry { fast: false };
                }
            }
            Ev::Line(_) => stdin_done = true,
            Ev::In(Some(Ok(Message::Text(text)))) => {
                let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                resume.show(text.as_str(), &v);
                resume.save(false);
                match v["type"].as_str() {
                    Some("welcome") => {
                        *attempt = 0;
                        // The hub joined us to `@sub` at connect: subscribing
                        // again learns its epoch, or resumes it (SPEC §10).
                        let personal = format!("@{}", v["sub"].as_str().unwrap_or_default());
                        if args.publish.is_none()
                            && crate::hub::channel_name_ok(&personal)
                            && !args.subscribe.contains(&personal)
                        {
                            ref_counter += 1;
                            let m = resume.tracker.subscribe(&personal, ref_counter);
                            if ws.send(Message::text(m)).await.is_err() {
                                return End::Retry { fast: false };
                            }
                        }
                        expires_at = v["expires_at"].as_u64().unwrap_or(u64::MAX);
                        refreshing_at = refresh_time(now_unix(), expires_at);
                    }
                    Some("refreshed") => {
                        expires_at = v["expires_at"].as_u64().unwrap_or(expires_at);
                        refreshing_at = refresh_time(now_unix(), expires_at);
                    }
                    Some("expiring") if refreshing_at == u64::MAX => refreshing_at = now_unix(),
                    Some("published") => pending_publish = pending_publish.saturating_sub(1),
                    Some("error") if args.publish.is_some() && v.get("ref").is_some() => {
                        pending_publish = pending_publish.saturating_sub(1);
                    }
                    _ => {}
                }
            }
            Ev::In(Some(Ok(Message::Close(frame)))) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                say(&format!("closed by the hub: {code} {reason}"));
                return match code {
                    4003 => End::Exit(Err(Failure {
                        code: 3,
                        message: "session revoked (4003)".into(),
                    })),
                    4001 => match renew(t, creds).await {
                        Ok(()) => End::Retry { fast: true },
                        Err(f) => End::Exit(Err(f)),
                    },
                    _ => End::Retry { fast: false },
                };
            }
            Ev::In(Some(Ok(_))) => {}
            Ev::In(Some(Err(e))) => {
                say(&format!("connection lost: {e}"));
                return End::Retry { fast: false };
            }
            Ev::In(None) => {
                say("connection closed");
                return End::Retry { fast: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec9_url_parsing() {
        assert_eq!(
            parse_url("ws://127.0.0.1:8080/ws").unwrap(),
            Target {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/ws".into(),
                tls: false,
                ca_file: None
            }
        );
        assert_eq!(
            parse_url("ws://hub").unwrap(),
            Target {
                host: "hub".into(),
                port: 80,
                path: "/ws".into(),
                tls: false,
                ca_file: None
            }
        );
        assert_eq!(parse_url("ws://[::1]:9/x").unwrap().host, "::1");
        assert!(parse_url("http://h/ws").is_err());
        assert_eq!(parse_url("wss://h/ws").is_ok(), cfg!(feature = "tls"));
        assert!(parse_url("ws://h:99999/ws").is_err());
    }

    #[test]
    fn refresh_before_expiry() {
        assert_eq!(refresh_time(1000, 4600), 4540);
        assert_eq!(refresh_time(1000, 1009), 1006);
        assert_eq!(refresh_time(1000, 1001), 1000);
        assert_eq!(refresh_time(1000, u64::MAX), u64::MAX);
    }

    #[test]
    fn spec9_backoff_grows_caps_and_jitters() {
        assert_eq!(backoff(0, 0.5), Duration::from_millis(500));
        assert_eq!(backoff(1, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(20, 0.5), Duration::from_secs(30));
        assert!(backoff(3, 0.0) < backoff(3, 1.0));
        assert!(backoff(30, 1.0) <= Duration::from_secs_f64(37.5));
    }
}
