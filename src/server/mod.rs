//! `tessera serve`: the async shell around the pure core.
//!
//! One thread runs a `smol::LocalExecutor`. Shared state lives in
//! [`Shared`] behind `Rc`/`RefCell`; no locks. This module builds the
//! configuration from flags, accepts connections, handles signals
//! (SIGINT/SIGTERM shut down, SIGHUP reloads the key file) and runs the demo
//! ticker. [`conn`] serves one TCP connection's HTTP requests; [`socket`]
//! runs one authenticated WebSocket.

mod admin;
mod auth;
mod conn;
mod console;
mod pending;
mod socket;

use crate::auth::sessions::Sessions;
use crate::auth::users::{PasswordHash, User, UsersFile};
use crate::cli;
use crate::commands::{Failure, now_unix};
use crate::gate::GateConfig;
use crate::hub::{Hub, Levels};
use crate::jwt::{self, Claims, VerifyOptions};
use crate::keys::{self, KeySet};
use crate::log::{Format, Logger};
use crate::metrics::Metrics;
use crate::reactor::Timer;
use crate::throttle::Throttle;
use futures_util::StreamExt;
use smol::LocalExecutor;
use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

pub use admin::operator_rule;
pub use admin::remote_security_event;
pub use conn::address_throttled;
pub use socket::ConnHandle;
pub use socket::{after_publish, close_session, publish as publish_here};

/// Everything `serve` was told, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub secret_file: Option<PathBuf>,
    pub access_ttl: u64,
    pub refresh_ttl: u64,
    pub users_file: Option<PathBuf>,
    pub state_file: Option<PathBuf>,
    pub insecure_cookies: bool,
    pub gate: GateConfig,
    pub levels: Levels,
    pub max_connections: usize,
    pub max_message_bytes: usize,
    pub queue_depth: usize,
    /// `--history`, `--history-ttl`, `--history-max-bytes`.
    pub history: crate::history::Limits,
    pub history_dir: Option<PathBuf>,
    pub ping_interval: Duration,
    pub handshake_timeout: Duration,
    pub log_format: Format,
    pub demo: bool,
    /// `--admin-min-clearance` (SPEC §13); `None`: the admin API is off.
    pub admin_min_clearance: Option<u32>,
    /// `--tls-cert` and `--tls-key`.
    pub tls: Option<(PathBuf, PathBuf)>,
    // Hostile clients (README "What a careful user should know").
    pub max_pending: usize,
    pub max_pending_per_address: usize,
    pub write_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub trusted_proxies: Vec<crate::http::Cidr>,
    pub metrics_listen: Option<SocketAddr>,
    pub max_sessions_per_user: usize,
    pub max_subscriptions: usize,
    pub max_channels: usize,
    pub max_commands_per_sec: u32,
    pub max_sockets_per_sub: usize,
    pub max_sockets_per_address: usize,
    /// `--redis`, `--redis-prefix`, `--node-id` (SPEC §12); `None`: one
    /// node on its own.
    pub cluster: Option<crate::broker::ClusterConfig>,
    /// `--reuse-port`.
    pub reuse_port: bool,
}

impl Config {
    /// Validates flags; errors name the flag.
    pub fn from_flags(a: &cli::Serve) -> Result<Config, Failure> {
        let listen = a.listen.parse().map_err(|_| {
            Failure::usage(format!(
                "--listen {:?}: expected HOST:PORT, e.g. 127.0.0.1:8080",
                a.listen
            ))
        })?;
        let log_format = match a.log_format.as_str() {
            "json" => Format::Json,
            "text" => Format::Text,
            other => return Err(Failure::usage(format!("--log-format {other:?}: expected json or text"))),
        };
        for (name, v) in [
            ("--max-connections", a.max_connections),
            ("--queue-depth", a.queue_depth),
            ("--max-message-bytes", a.max_message_bytes),
            ("--max-pending", a.max_pending),
            ("--max-pending-per-address", a.max_pending_per_address),
            ("--max-sessions-per-user", a.max_sessions_per_user),
            ("--max-subscriptions", a.max_subscriptions),
            ("--max-channels", a.max_channels),
            ("--max-commands-per-sec", a.max_commands_per_sec as usize),
            ("--max-sockets-per-sub", a.max_sockets_per_sub),
            ("--max-sockets-per-address", a.max_sockets_per_address),
        ] {
            if v == 0 {
                return Err(Failure::usage(format!("{name}: must be at least 1")));
            }
        }
        if a.queue_depth > 1 << 20 {
            return Err(Failure::usage("--queue-depth: must be at most 1048576"));
        }
        for (name, v) in [
            ("--ping-interval", a.ping_interval),
            ("--handshake-timeout", a.handshake_timeout),
            ("--access-ttl", a.access_ttl),
            ("--refresh-ttl", a.refresh_ttl),
            ("--history-ttl", a.history_ttl),
            ("--write-timeout", a.write_timeout),
            ("--keepalive-timeout", a.keepalive_timeout),
        ] {
            if v == 0 || v > 10 * 365 * 86_400 {
                return Err(Failure::usage(format!("{name}: must be 1 second to 10 years")));
            }
        }
        let mut levels = Levels::default();
        for (name, level) in &a.channel {
            levels.0.insert(name.clone(), *level);
        }
        if a.demo {
            levels.0.entry("ops".into()).or_insert(1);
            levels.0.entry("briefing".into()).or_insert(3);
        }
        let tls = match (&a.tls_cert, &a.tls_key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            _ => return Err(Failure::usage("--tls-cert and --tls-key go together")),
        };
        if tls.is_some() && !cfg!(feature = "tls") {
            return Err(Failure::usage(
                "--tls-cert: this tessera was built without TLS (cargo build --features tls)",
            ));
        }
        if tls.is_some() && a.insecure_cookies {
            return Err(Failure::usage(
                "--insecure-cookies: cookies are always Secure when serving TLS",
            ));
        }
        let metrics_listen = match &a.metrics_listen {
            None => None,
            Some(m) => Some(m.parse().map_err(|_| {
                Failure::usage(format!(
                    "--metrics-listen {m:?}: expected HOST:PORT, e.g. 127.0.0.1:9090"
                ))
            })?),
        };
        #[cfg(feature = "cluster")]
        let random_id = crate::broker::redis::random_node_id;
        #[cfg(not(feature = "cluster"))]
        let random_id = String::new;
        let cluster = crate::broker::cluster_config(
            a.redis.as_deref(),
            a.redis_prefix.as_deref(),
            a.node_id.as_deref(),
            a.history_dir.is_some(),
            a.state.is_some(),
            random_id,
        )
        .and_then(|c| {
            c.map(|c| c.password_from_env(std::env::var("TESSERA_REDIS_PASSWORD").ok()))
                .transpose()
        })
        .map_err(Failure::usage)?;
        if a.reuse_port && !cfg!(target_os = "linux") {
            return Err(Failure::usage("--reuse-port: SO_REUSEPORT is only used on Linux"));
        }
        Ok(Config {
            cluster,
            reuse_port: a.reuse_port,
            max_pending: a.max_pending,
            max_pending_per_address: a.max_pending_per_address,
            write_timeout: Duration::from_secs(a.write_timeout),
            keepalive_timeout: Duration::from_secs(a.keepalive_timeout),
            trusted_proxies: a.trusted_proxy.clone(),
            metrics_listen,
            max_sessions_per_user: a.max_sessions_per_user,
            max_subscriptions: a.max_subscriptions,
            max_channels: a.max_channels,
            max_commands_per_sec: a.max_commands_per_sec,
            // One agent never takes every slot: at most all but one.
            max_sockets_per_sub: if a.max_connections > 1 {
                a.max_sockets_per_sub.min(a.max_connections - 1)
            } else {
                a.max_sockets_per_sub
            },
            max_sockets_per_address: a.max_sockets_per_address,
            listen,
            secret_file: a.secret_file.clone(),
            access_ttl: a.access_ttl,
            refresh_ttl: a.refresh_ttl,
            users_file: a.users.clone(),
            state_file: a.state.clone(),
            insecure_cookies: a.insecure_cookies,
            gate: GateConfig {
                verify: VerifyOptions {
                    leeway: a.leeway,
                    issuer: a.issuer.clone(),
                    audience: a.audience.clone(),
                },
                min_clearance: a.min_clearance,
                allowed_origins: a.allowed_origin.clone(),
                allow_query_token: a.allow_query_token,
                tls: tls.is_some(),
                mfa_min_clearance: a.mfa_min_clearance,
            },
            levels,
            max_connections: a.max_connections,
            max_message_bytes: a.max_message_bytes,
            queue_depth: a.queue_depth,
            history: crate::history::Limits {
                per_channel: a.history,
                ttl_ms: a.history_ttl.saturating_mul(1000),
                max_bytes: a.history_max_bytes,
            },
            history_dir: a.history_dir.clone(),
            ping_interval: Duration::from_secs(a.ping_interval),
            handshake_timeout: Duration::from_secs(a.handshake_timeout),
            log_format,
            demo: a.demo,
            admin_min_clearance: a.admin_min_clearance.or(a.demo.then_some(5)),
            tls,
        })
    }
}

/// State shared by every task on the event loop.
pub struct Shared {
    pub cfg: Config,
    pub keys: RefCell<Rc<KeySet>>,
    pub hub: RefCell<Hub<Rc<ConnHandle>>>,
    pub throttle: RefCell<Throttle>,
    pub metrics: Metrics,
    pub log: Logger,
    next_id: Cell<u64>,
    /// Sockets mid-handshake or open, for `--max-connections`.
    pub sockets: Cell<usize>,
    /// Open sockets (and accepted handshakes) per token `sub`
    /// (`--max-sockets-per-sub`) and per client address, IPv6 by /64,
    /// counting handshakes in progress (`--max-sockets-per-address`).
    pub sockets_per: RefCell<conn::SocketCounts>,
    pub shutting_down: Cell<bool>,
    /// Sockets over their queue depth, which may hold publishers back.
    pub congested: RefCell<Vec<(crate::hub::ConnId, Rc<ConnHandle>)>>,
    /// Notified when a congested socket takes its queue.
    pub room: event_listener::Event,
    /// Every socket's next deadline, swept by one task.
    pub alarms: socket::Alarms,
    /// Recent security events (SPEC §13), for `/admin/events`.
    pub events: RefCell<crate::events::Events>,
    /// The durable history log (`--history-dir`).
    pub disk: RefCell<Option<crate::history::disk::Log>>,
    /// Notified after an append: the sync task starts its interval.
    pub disk_dirty: event_listener::Event,
    /// A sync runs off the event loop now.
    pub disk_syncing: Cell<bool>,
    pub users: RefCell<Rc<UsersFile>>,
    /// Hashed against when a login names an unknown user (recomputed on
    /// SIGHUP).
    pub dummy_hash: RefCell<PasswordHash>,
    pub sessions: RefCell<Sessions>,
    pub persist: auth::Persist,
    /// Logins waiting for a hashing slot, served round-robin by address.
    pub login_queue: RefCell<crate::throttle::LoginQueue>,
    /// Wakes waiting logins when the queue changes.
    pub login_turn: event_listener::Event,
    /// Connections that have not upgraded (`--max-pending*`).
    pub pending: RefCell<pending::Pending<Rc<conn::ShedSignal>>>,
    /// Where publications and history live (this process, or Redis).
    pub engine: crate::broker::Engine,
    /// The TLS server config; replaced on SIGHUP.
    #[cfg(feature = "tls")]
    pub tls: RefCell<Option<futures_rustls::TlsAcceptor>>,
}

impl Shared {
    fn next_id(&self) -> u64 {
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        id
    }

    /// Whether a session id is revoked.
    pub fn is_revoked(&self, sid: &str) -> bool {
        self.sessions.borrow().is_revoked(sid) || crate::broker::revoked_elsewhere(self, sid)
    }

    /// The current key set (cheap clone of an `Rc`).
    pub fn keys(&self) -> Rc<KeySet> {
        self.keys.borrow().clone()
    }
}

/// Entry point of `tessera serve`.
pub fn serve(args: &cli::Serve) -> Result<(), Failure> {
    let cfg = Config::from_flags(args)?;
    let log = Logger { format: cfg.log_format };
    let (keys, demo_key) = if cfg.demo && cfg.secret_file.is_none() && std::env::var_os("TESSERA_SECRET").is_none() {
        let k = keys::generate().map_err(|e| Failure::usage(format!("no randomness from the OS: {e}")))?;
        (
            KeySet::single(k.as_bytes()).map_err(|e| Failure::usage(e.to_string()))?,
            true,
        )
    } else {
        (crate::commands::load_keys(cfg.secret_file.as_deref())?, false)
    };
    let (users, demo_passwords) = load_users(&cfg)?;
    #[cfg(feature = "tls")]
    let tls_acceptor = match &cfg.tls {
        Some((c, k)) => {
            Some(crate::tls::acceptor(c, k).map_err(|e| Failure::usage(format!("--tls-cert/--tls-key: {e}")))?)
        }
        None => None,
    };
    let sessions = match &cfg.state_file {
        Some(p) => crate::auth::state_file::load(p)
            .map_err(|e| Failure::usage(format!("--state {}: {e}", p.display())))?
            .unwrap_or_default(),
        None => Sessions::default(),
    };
    raise_nofile_limit(&log);
    let listener = bind_listener(cfg.listen, cfg.reuse_port)
        .map_err(|e| Failure::usage(format!("--listen {}: {e}", cfg.listen)))?;
    conn::listener_options(&listener);
    let metrics_listener = match cfg.metrics_listen {
        None => None,
        Some(m) => {
            let l = TcpListener::bind(m)
                .inspect(conn::listener_options)
                .and_then(crate::reactor::Listener::from_std)
                .map_err(|e| Failure::usage(format!("--metrics-listen {m}: {e}")))?;
            Some(l)
        }
    };
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::usage(format!("--listen: {e}")))?;
    let listener = crate::reactor::Listener::from_std(listener)
        .map_err(|e| Failure::usage(format!("--listen {}: {e}", cfg.listen)))?;

    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| Failure::usage(format!("no randomness from the OS: {e}")))?;
    let mut history = crate::history::History::new(cfg.history, seed);
    let disk = match &cfg.history_dir {
        Some(dir) => Some(open_history(dir, &mut history, &log)?),
        None => None,
    };
    let mut salt = [0u8; 32];
    getrandom::fill(&mut salt).map_err(|e| Failure::usage(format!("no randomness from the OS: {e}")))?;
    history.set_salt(salt);
    let mut hub = Hub::with_history(cfg.levels.clone(), history);
    hub.set_limits(cfg.max_subscriptions, cfg.max_channels);
    let ex = Rc::new(LocalExecutor::new());
    let engine = match &cfg.cluster {
        None => crate::broker::Engine::Local,
        #[cfg(feature = "cluster")]
        Some(c) => crate::broker::Engine::Redis(Rc::new(crate::broker::redis::Node::new(c.clone(), ex.clone()))),
        #[cfg(not(feature = "cluster"))]
        Some(_) => return Err(Failure::usage("--redis: this tessera was built without cluster mode")),
    };
    let shared = Rc::new(Shared {
        engine,
        disk: RefCell::new(disk),
        disk_dirty: event_listener::Event::new(),
        disk_syncing: Cell::new(false),
        hub: RefCell::new(hub),
        congested: RefCell::default(),
        room: event_listener::Event::new(),
        alarms: socket::Alarms::default(),
        events: RefCell::default(),
        dummy_hash: RefCell::new(auth::dummy_hash(&users)),
        users: RefCell::new(Rc::new(users)),
        sessions: RefCell::new(sessions),
        persist: auth::Persist::new(cfg.state_file.clone()),
        // Every waiting login holds a pre-upgrade connection, so
        // --max-pending bounds the queue already.
        login_queue: RefCell::new(crate::throttle::LoginQueue::new(
            auth::HASH_WORKERS,
            cfg.max_pending.max(auth::HASH_QUEUE),
        )),
        login_turn: event_listener::Event::new(),
        pending: RefCell::new(pending::Pending::new(cfg.max_pending, cfg.max_pending_per_address)),
        #[cfg(feature = "tls")]
        tls: RefCell::new(tls_acceptor),
        cfg,
        keys: RefCell::new(Rc::new(keys)),
        throttle: RefCell::default(),
        metrics: Metrics::default(),
        log,
        next_id: Cell::new(0),
        sockets: Cell::new(0),
        sockets_per: RefCell::default(),
        shutting_down: Cell::new(false),
    });
    #[cfg(feature = "cluster")]
    if let crate::broker::Engine::Redis(node) = &shared.engine {
        ex.spawn(node.clone().supervise(shared.clone())).detach();
    }
    if let Some(m) = metrics_listener {
        let at = m.get_ref().local_addr().map(|a| a.to_string()).unwrap_or_default();
        shared.log.info("metrics_listening", &[("addr", (&at).into())]);
        if shared.cfg.metrics_listen.is_some_and(|a| !a.ip().is_loopback()) {
            shared.log.warn(
                "metrics_public",
                &[(
                    "message",
                    "--metrics-listen is not loopback: counters and version are public".into(),
                )],
            );
        }
        ex.spawn(accept_loop(shared.clone(), ex.clone(), m, conn::Listener::Metrics))
            .detach();
    }
    // Log lines go out together when the loop is idle (issue 16); the guard
    // writes what is left when `serve` returns.
    let _lines = crate::log::buffer_lines();
    let main = std::pin::pin!(ex.run(run(shared, ex.clone(), listener, addr, demo_key, demo_passwords)));
    crate::reactor::block_on(crate::log::FlushWhenIdle::new(main))
        .map_err(|e| Failure::usage(format!("event loop: {e}")))?
}

/// Binds `--listen`; with `--reuse-port` (Linux) SO_REUSEPORT is set first,
/// so several processes can listen on the same address and the kernel
/// spreads connections among them.
fn bind_listener(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    #[cfg(target_os = "linux")]
    if reuse_port {
        use rustix::net::{AddressFamily, SocketType, bind, listen, socket, sockopt};
        let family = if addr.is_ipv4() {
            AddressFamily::INET
        } else {
            AddressFamily::INET6
        };
        let fd = socket(family, SocketType::STREAM, None)?;
        sockopt::set_socket_reuseaddr(&fd, true)?;
        sockopt::set_socket_reuseport(&fd, true)?;
        bind(&fd, &addr)?;
        // std's backlog: a longer queue let attack connections queue ahead
        // of clients (BENCHMARKS.md "Under attack").
        listen(&fd, 128)?;
        return Ok(TcpListener::from(fd));
    }
    let _ = reuse_port;
    TcpListener::bind(addr)
}

/// Raises the soft limit on open files to the hard limit (connections are
/// files) and logs both.
fn raise_nofile_limit(log: &Logger) {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let before = getrlimit(Resource::Nofile);
        let mut raised = before;
        raised.current = before.maximum;
        let result = if before.current == before.maximum {
            Ok(())
        } else {
            setrlimit(Resource::Nofile, raised)
        };
        let after = getrlimit(Resource::Nofile);
        let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
        let (b, c, h) = (show(before.current), show(after.current), show(after.maximum));
        let fields = [
            ("soft_before", (&b).into()),
            ("soft", (&c).into()),
            ("hard", (&h).into()),
        ];
        match result {
            Ok(()) => log.info("open_files_limit", &fields),
            Err(_) => log.warn("open_files_limit", &fields),
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = log;
}

async fn run(
    shared: Rc<Shared>,
    ex: Rc<LocalExecutor<'static>>,
    listener: crate::reactor::Listener,
    addr: SocketAddr,
    demo_key: bool,
    demo_passwords: Vec<(String, String)>,
) -> Result<(), Failure> {
    // Signal handlers first: a SIGHUP right after `listening` must not kill us.
    let mut signals = async_signal::Signals::new([
        async_signal::Signal::Term,
        async_signal::Signal::Int,
        async_signal::Signal::Hup,
    ])
    .map_err(|e| Failure::usage(format!("cannot install signal handlers: {e}")))?;

    let log = shared.log;
    log.info(
        "listening",
        &[
            ("addr", (&addr.to_string()).into()),
            ("version", env!("TESSERA_VERSION").into()),
            ("demo", shared.cfg.demo.into()),
        ],
    );
    if !addr.ip().is_loopback() && shared.cfg.tls.is_none() {
        log.warn(
            "plaintext",
            &[("message", "not loopback and no TLS: tokens travel in clear text".into())],
        );
    }
    // Cluster mode: sessions and revocations live in Redis.
    if shared.cfg.state_file.is_none() && shared.engine.is_local() {
        log.warn(
            "state_in_memory",
            &[(
                "message",
                "no --state: sessions and revocations are lost on restart".into(),
            )],
        );
    }
    ex.spawn(auth::persist_task(shared.clone())).detach();
    ex.spawn(expire_history(shared.clone())).detach();
    ex.spawn(socket::sweep_alarms(shared.clone())).detach();
    if shared.disk.borrow().is_some() {
        ex.spawn(sync_history(shared.clone())).detach();
    }
    let systemd = systemd_ready(&shared, &ex);
    if shared.cfg.demo {
        print_demo(&shared, addr, demo_key, &demo_passwords);
        ex.spawn(demo_ticker(shared.clone())).detach();
    }

    let mut accept_errors = AcceptErrors::default();
    // Signals wait in a task of their own: polled beside every accept, the
    // signal pipe cost a read per connection (issue 16).
    let stop = Rc::new(event_listener::Event::new());
    let mut stopped = stop.listen();
    {
        let (shared, stop) = (shared.clone(), stop.clone());
        ex.spawn(async move {
            loop {
                match signals.next().await {
                    Some(Ok(async_signal::Signal::Hup)) => reload(&shared),
                    Some(Err(e)) => shared.log.warn("signal_error", &[("error", (&e.to_string()).into())]),
                    Some(Ok(_)) | None => break,
                }
            }
            stop.notify(usize::MAX);
        })
        .detach();
    }
    loop {
        let next = smol::future::or(async { Some(conn::accept(&listener).await) }, async {
            (&mut stopped).await;
            None
        })
        .await;
        match next {
            Some(r) => accepted(&shared, &ex, r, conn::Listener::Main, &mut accept_errors).await,
            None => break,
        }
    }

    // SPEC §5: stop accepting, close every socket with 1001, exit within 5 s.
    drop(listener);
    let _ = systemd.send("STOPPING=1");
    shared.shutting_down.set(true);
    let open = shared.hub.borrow().len() as u64;
    log.info("shutdown", &[("open_sockets", open.into())]);
    for (_, h) in shared.hub.borrow().outboxes() {
        h.close(1001, "server shutting down");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while shared.sockets.get() > 0 && std::time::Instant::now() < deadline {
        Timer::after(Duration::from_millis(20)).await;
    }
    auth::persist_now(&shared);
    sync_history_now(&shared).await;
    log.info("stopped", &[]);
    Ok(())
}

/// `accept_failed` is logged at most once a second, with how many failures
/// it stands for; `burst`: connections accepted since the loop last let
/// other tasks run.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<std::time::Instant>,
    unlogged: u64,
    burst: usize,
}

/// Connections accepted in a row before the accept loop yields so their
/// first reads happen (at most a quarter of `--max-pending`, so a burst
/// cannot fill the table with connections that may not be shed yet).
/// Yielding after every accept made the loop too slow to drain the listen
/// queue under attack (BENCHMARKS.md, "Under attack").
const ACCEPT_BURST: usize = 16;

/// Handles one result of `accept`: admit the connection under the
/// pre-upgrade caps and spawn its task, or account for the failure (out of
/// file descriptors: shed the pre-upgrade connection that has waited
/// longest for a request head).
async fn accepted(
    shared: &Rc<Shared>,
    ex: &Rc<LocalExecutor<'static>>,
    r: std::io::Result<(crate::reactor::Tcp, SocketAddr)>,
    listener: conn::Listener,
    errors: &mut AcceptErrors,
) {
    match r {
        Ok((stream, peer)) => {
            let id = shared.next_id();
            // Refused: dropping the stream closes it at once.
            if let Some(slot) = conn::admit(shared, id, peer) {
                ex.spawn(accept(shared.clone(), ex.clone(), stream, peer, slot, listener))
                    .detach();
                // New connections cannot be shed until their task has
                // read from them once: after a burst, let those tasks run
                // before this loop takes (and maybe sheds for) more.
                errors.burst += 1;
                if errors.burst >= (shared.cfg.max_pending / 4).clamp(1, ACCEPT_BURST) {
                    errors.burst = 0;
                    smol::future::yield_now().await;
                }
            }
        }
        Err(e) => {
            crate::metrics::add(&shared.metrics.accept_failed, 1);
            errors.unlogged += 1;
            let now = std::time::Instant::now();
            if errors
                .last_logged
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                shared.log.warn(
                    "accept_failed",
                    &[("error", (&e.to_string()).into()), ("count", errors.unlogged.into())],
                );
                errors.last_logged = Some(now);
                errors.unlogged = 0;
            }
            // Out of descriptors: free one held by an idle pre-upgrade
            // connection, then retry soon; otherwise back off.
            let shed = conn::shed_one(shared);
            Timer::after(Duration::from_millis(if shed { 5 } else { 100 })).await;
        }
    }
}

/// The accept loop of `--metrics-listen`.
async fn accept_loop(
    shared: Rc<Shared>,
    ex: Rc<LocalExecutor<'static>>,
    listener: crate::reactor::Listener,
    kind: conn::Listener,
) {
    let mut errors = AcceptErrors::default();
    while !shared.shutting_down.get() {
        let r = conn::accept(&listener).await;
        accepted(&shared, &ex, r, kind, &mut errors).await;
    }
}

/// systemd `Type=notify` (see [`crate::notify`]): `READY=1` now that the
/// listener is bound, and `WATCHDOG=1` from a task on this event loop every
/// half `WatchdogSec`, so a stuck loop misses its pings and gets restarted.
fn systemd_ready(shared: &Shared, ex: &LocalExecutor<'static>) -> Rc<crate::notify::Notifier> {
    let (sd, err) = crate::notify::Notifier::from_env();
    if let Some(e) = err {
        shared.log.warn("notify_failed", &[("error", (&e).into())]);
    }
    if !sd.enabled() {
        return Rc::new(sd);
    }
    if let Err(e) = sd.send("READY=1") {
        shared.log.warn("notify_failed", &[("error", (&e.to_string()).into())]);
    }
    let sd = Rc::new(sd);
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    if let Some(period) = crate::notify::watchdog_period(usec.as_deref(), pid.as_deref(), std::process::id()) {
        let pinger = sd.clone();
        ex.spawn(async move {
            loop {
                Timer::after(period).await;
                let _ = pinger.send("WATCHDOG=1");
            }
        })
        .detach();
    }
    sd
}

/// Starts serving an accepted TCP connection, after the TLS handshake when
/// TLS is on (bounded by `--handshake-timeout`).
/// A plain function returning an `async move` block, so the arguments live
/// in the task once (see [`conn::serve_connection`]).
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn accept(
    shared: Rc<Shared>,
    ex: Rc<LocalExecutor<'static>>,
    stream: crate::reactor::Tcp,
    peer: SocketAddr,
    slot: conn::PendingSlot,
    listener: conn::Listener,
) -> impl std::future::Future<Output = ()> {
    async move {
        #[cfg(feature = "tls")]
        {
            let acceptor = shared.tls.borrow().clone();
            if let Some(acceptor) = acceptor {
                // Sheddable (as waiting) while the TLS handshake reads.
                slot.waiting(false);
                let handshake = async { acceptor.accept(stream).await.ok() };
                let timeout = async {
                    smol::future::or(Timer::after(shared.cfg.handshake_timeout), async {
                        slot.signal.wait().await;
                        std::time::Instant::now()
                    })
                    .await;
                    None
                };
                match smol::future::or(Box::pin(handshake), timeout).await {
                    Some(tls) => {
                        let s = crate::tls::MaybeTls::Tls(Box::new(tls));
                        return conn::serve_connection(shared, ex, s, peer, slot, listener).await;
                    }
                    None => {
                        shared.log.info("tls_failed", &[("peer", (&peer.to_string()).into())]);
                        return;
                    }
                }
            }
        }
        conn::serve_connection(shared, ex, crate::tls::MaybeTls::Plain(stream), peer, slot, listener).await
    }
}

/// SIGHUP: reload the key file, the users file and the TLS certificate; a
/// bad file keeps the old contents and logs why.
fn reload(shared: &Shared) {
    #[cfg(feature = "tls")]
    if let Some((c, k)) = &shared.cfg.tls {
        match crate::tls::acceptor(c, k) {
            Ok(a) => {
                *shared.tls.borrow_mut() = Some(a);
                shared.log.info("reload", &[("tls", "certificate reloaded".into())]);
            }
            Err(e) => shared.log.warn("reload_failed", &[("tls", (&e).into())]),
        }
    }
    if let Some(path) = shared.cfg.users_file.as_deref() {
        match read_users(path) {
            Ok(u) => {
                let n = u.users().count() as u64;
                *shared.dummy_hash.borrow_mut() = auth::dummy_hash(&u);
                *shared.users.borrow_mut() = Rc::new(u);
                shared.log.info("reload", &[("users", n.into())]);
            }
            Err(e) => shared.log.warn("reload_failed", &[("error", (&e).into())]),
        }
    }
    reload_keys(shared);
}

fn reload_keys(shared: &Shared) {
    let Some(path) = shared.cfg.secret_file.as_deref() else {
        shared
            .log
            .info("reload", &[("keys", "unchanged (no --secret-file)".into())]);
        return;
    };
    match KeySet::from_file(path) {
        Ok(k) => {
            let n = k.len() as u64;
            *shared.keys.borrow_mut() = Rc::new(k);
            shared.log.info("reload", &[("keys", n.into())]);
        }
        Err(e) => shared.log.warn(
            "reload_failed",
            &[
                ("file", (&path.display().to_string()).into()),
                ("error", (&e.to_string()).into()),
            ],
        ),
    }
}

fn read_users(path: &std::path::Path) -> Result<UsersFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--users {}: {}", path.display(), e.kind()))?;
    UsersFile::parse(&text).map_err(|e| format!("--users {}: {e}", path.display()))
}

/// The users file, plus the demo users (with fresh random passwords) in
/// `--demo` mode.
fn load_users(cfg: &Config) -> Result<(UsersFile, Vec<(String, String)>), Failure> {
    let mut users = match &cfg.users_file {
        Some(p) => read_users(p).map_err(Failure::usage)?,
        None => UsersFile::default(),
    };
    let mut passwords = Vec::new();
    if cfg.demo {
        for (name, clearance, publish) in [("hq", 5, true), ("agent-007", 2, false)] {
            if users.get(name).is_some() {
                continue;
            }
            let pw = keys::generate().map_err(|e| Failure::usage(format!("no randomness: {e}")))?;
            let pw: String = pw.chars().take(16).collect();
            let hash = PasswordHash::new(
                pw.as_bytes(),
                crate::auth::users::DEFAULT_ITERATIONS,
                crate::commands::random16()?,
            );
            users.upsert(User {
                name: name.into(),
                clearance,
                publish,
                channels: Vec::new(),
                hash,
                totp: None,
            });
            passwords.push((name.to_string(), pw));
        }
    }
    Ok((users, passwords))
}

fn print_demo(shared: &Shared, addr: SocketAddr, ephemeral: bool, passwords: &[(String, String)]) {
    let now = now_unix();
    let keys = shared.keys();
    let mint = |sub: &str, clearance: u32, publish: bool| {
        let c = Claims {
            sub: sub.into(),
            exp: (now + shared.cfg.access_ttl) as f64,
            iat: Some(now as f64),
            iss: shared.cfg.gate.verify.issuer.clone(),
            aud: shared.cfg.gate.verify.audience.iter().cloned().collect(),
            clearance,
            publish,
            ..Claims::default()
        };
        jwt::sign(&c, &keys, None).unwrap_or_default()
    };
    let publisher = mint("hq", 5, true);
    let agent = mint("agent-007", 2, false);
    let (http, ws) = if shared.cfg.tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    println!("tessera demo on {http}://{addr}/ ({ws}://{addr}/ws)");
    if ephemeral {
        println!("signing key: ephemeral (tokens die with this process)");
    }
    println!("channels: ops (clearance 1, a mission update every 5 s), briefing (clearance 3)");
    for (name, pw) in passwords {
        println!("demo user {name} password: {pw}");
    }
    if let Some((name, pw)) = passwords.first() {
        println!("log in (console): open {http}://{addr}/ and use {name} / {pw}");
        let secure = if shared.cfg.insecure_cookies {
            ""
        } else {
            "  (cookies are Secure: browsers keep them only over https or on localhost)"
        };
        println!(
            "log in (curl): curl -s -X POST {http}://{addr}/auth/login -H 'Content-Type: application/json' -d '{{\"username\":\"{name}\",\"password\":\"{pw}\"}}'{secure}"
        );
    }
    println!("demo publisher token (hq, clearance 5, publish):\n  {publisher}");
    println!("demo agent token (agent-007, clearance 2):\n  {agent}");
    println!("try:");
    println!(
        "  curl -s -X POST {http}://{addr}/publish -H 'Authorization: Bearer {publisher}' -H 'Content-Type: application/json' -d '{{\"channel\":\"ops\",\"data\":{{\"text\":\"hello\"}}}}'"
    );
    println!(
        "  websocat -H 'Authorization: Bearer {agent}' {ws}://{addr}/ws   # then send {{\"type\":\"subscribe\",\"channel\":\"ops\"}}"
    );
}

async fn demo_ticker(shared: Rc<Shared>) {
    let hq = crate::hub::Rights {
        sub: "hq".into(),
        clearance: u32::MAX,
        channels: None,
        publish: true,
    };
    let mut n: u64 = 0;
    loop {
        Timer::after(Duration::from_secs(5)).await;
        if shared.shutting_down.get() {
            return;
        }
        n += 1;
        let data = serde_json::json!({ "mission": n, "text": format!("mission update #{n}: all quiet") });
        let raw = match serde_json::value::to_raw_value(&data) {
            Ok(r) => r,
            Err(_) => continue,
        };
        let _ = crate::broker::publish(&shared, &hq, "ops", &raw).await;
    }
}

/// Opens `--history-dir`, logs every torn tail it cut, and fills `history`
/// from it (records with an empty frame are channel markers: an epoch and a
/// last offset). Exit 2 only for real I/O errors, never for content.
fn open_history(
    dir: &std::path::Path,
    history: &mut crate::history::History,
    log: &Logger,
) -> Result<crate::history::disk::Log, Failure> {
    let opened = crate::history::disk::Log::open(dir)
        .map_err(|e| Failure::usage(format!("--history-dir {}: {e}", dir.display())))?;
    for cut in &opened.cuts {
        log.warn(
            "history_tail_cut",
            &[
                ("file", (&cut.file.display().to_string()).into()),
                ("kept_bytes", cut.kept_bytes.into()),
                ("dropped_bytes", cut.dropped_bytes.into()),
                ("reason", cut.reason.into()),
            ],
        );
    }
    let now = now_millis();
    let (mut loaded, mut skipped) = (0u64, 0u64);
    for rec in opened.records {
        if !crate::hub::channel_name_ok(&rec.channel) || !crate::history::epoch_ok(&rec.epoch) {
            skipped += 1;
            continue;
        }
        if rec.frame.is_empty() {
            history.restore_marker(&rec.channel, &rec.epoch, rec.offset);
        } else {
            history.restore(&rec.channel, &rec.epoch, rec.offset, rec.ts_ms, rec.frame.into(), now);
            loaded += 1;
        }
    }
    log.info(
        "history_loaded",
        &[
            ("dir", (&dir.display().to_string()).into()),
            ("records", loaded.into()),
            ("retained", (history.retained_len() as u64).into()),
            ("skipped", skipped.into()),
            ("disk_bytes", opened.log.disk_bytes().into()),
        ],
    );
    Ok(opened.log)
}

/// How long appended history may wait for its `fdatasync`.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Syncs the durable history about [`SYNC_INTERVAL`] after the first
/// unsynced append (off the event loop), and compacts it when it holds far
/// more than the history retains.
async fn sync_history(shared: Rc<Shared>) {
    loop {
        let dirty = shared.disk_dirty.listen();
        let unsynced = shared.disk.borrow().as_ref().is_some_and(|l| l.has_unsynced());
        if !unsynced {
            dirty.await;
        }
        Timer::after(SYNC_INTERVAL).await;
        if shared.shutting_down.get() {
            return;
        }
        let job = shared.disk.borrow_mut().as_mut().and_then(|l| l.take_sync_job());
        if let Some(file) = job {
            shared.disk_syncing.set(true);
            let r = smol::unblock(move || file.sync_data()).await;
            shared.disk_syncing.set(false);
            if let Err(e) = r {
                shared
                    .log
                    .warn("history_sync_failed", &[("error", (&e.to_string()).into())]);
            }
        }
        compact_history(&shared);
    }
}

/// Rewrites the disk log as what the history retains, when it has grown to
/// far more than that (blocking, like the sync at shutdown; bounded by
/// `--history-max-bytes`).
fn compact_history(shared: &Shared) {
    let mut disk = shared.disk.borrow_mut();
    let Some(log) = disk.as_mut() else { return };
    if log.disk_bytes() <= crate::history::disk::SEGMENT_BYTES {
        return;
    }
    let hub = shared.hub.borrow();
    let retained: u64 = hub
        .history()
        .retained()
        .filter(durable)
        .map(|r| crate::history::disk::Log::encoded_len(as_ref(r)))
        .sum();
    if !log.wants_compaction(retained) {
        return;
    }
    let before = log.disk_bytes();
    match log.compact(hub.history().retained().filter(durable).map(as_ref)) {
        Ok(()) => shared.log.info(
            "history_compacted",
            &[
                ("before_bytes", before.into()),
                ("after_bytes", log.disk_bytes().into()),
            ],
        ),
        Err(e) => shared
            .log
            .warn("history_compact_failed", &[("error", (&e.to_string()).into())]),
    }
}

/// Whether a retained message belongs on disk: `$security` (SPEC §13)
/// stays in memory.
fn durable(r: &crate::history::Retained<'_>) -> bool {
    r.channel != crate::hub::SECURITY
}

fn as_ref(r: crate::history::Retained<'_>) -> crate::history::disk::RecordRef<'_> {
    crate::history::disk::RecordRef {
        channel: r.channel,
        epoch: r.epoch,
        offset: r.offset,
        ts_ms: r.ts_ms,
        frame: r.frame,
    }
}

/// At shutdown: wait for a sync in flight, then sync what is left.
async fn sync_history_now(shared: &Shared) {
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while shared.disk_syncing.get() && std::time::Instant::now() < until {
        Timer::after(Duration::from_millis(10)).await;
    }
    if let Some(log) = shared.disk.borrow_mut().as_mut()
        && let Err(e) = log.sync()
    {
        shared
            .log
            .warn("history_sync_failed", &[("error", (&e.to_string()).into())]);
    }
}

/// Drops history older than `--history-ttl` once a second.
async fn expire_history(shared: Rc<Shared>) {
    loop {
        Timer::after(Duration::from_secs(1)).await;
        if shared.shutting_down.get() {
            return;
        }
        let now = now_millis();
        let mut hub = shared.hub.borrow_mut();
        hub.history_mut().expire(now);
        // Idle channels without subscribers go once nothing is retained
        // (issue 14: channels are not kept forever).
        hub.prune_idle(now);
    }
}

/// Unix milliseconds.
pub fn now_millis() -> u64 {
    crate::reactor::wall_now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
