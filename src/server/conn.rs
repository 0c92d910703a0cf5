//! One TCP connection: read request heads (within `--handshake-timeout`,
//! later ones within `--keepalive-timeout`), route, answer plain HTTP with
//! keep-alive (every write within `--write-timeout`), or upgrade a
//! `GET /ws`: [`gate::authorize`] decides on the head already parsed, and
//! the `101` leaves in one write with the `welcome` ([`socket::Outlet`]).
//! Until it upgrades, a connection holds a [`PendingSlot`] and can be shed
//! while it waits for a head.

use super::pending::{Admit, Tier};
use super::{Shared, socket};
use crate::commands::now_unix;
use crate::events::Kind;
use crate::gate::{self, Context, Rejection};
use crate::http::{self, BodyLength, Expect, Head, Request, Response, Route};
use crate::hub::Rights;
use crate::reactor::{Listener as TcpListener, Tcp, Timer};
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use smol::LocalExecutor;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

/// A client connection: plain TCP, or TLS over it (feature `tls`).
#[cfg(feature = "tls")]
pub type Stream = crate::tls::MaybeTls<Tcp, futures_rustls::server::TlsStream<Tcp>>;
/// A client connection: plain TCP (built without the `tls` feature).
#[cfg(not(feature = "tls"))]
pub type Stream = crate::tls::MaybeTls<Tcp, Tcp>;

/// Tells an idle pre-upgrade connection to go (it was shed at a cap).
/// Only the connection's own task waits on it, so it keeps that task's
/// waker itself: no `event_listener` list, lock and boxed listener per
/// request head (issue 16).
#[derive(Default)]
pub struct ShedSignal {
    shed: Cell<bool>,
    /// The tasks waiting (one in practice; a waker already here is not
    /// added twice).
    waiters: RefCell<Vec<Waker>>,
}

impl ShedSignal {
    fn fire(&self) {
        self.shed.set(true);
        let waiters = self.waiters.try_borrow_mut().map(|mut w| std::mem::take(&mut *w));
        for w in waiters.unwrap_or_default() {
            w.wake();
        }
    }

    /// Resolves once the connection has been shed.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.shed.get() {
                return Poll::Ready(());
            }
            match self.waiters.try_borrow_mut() {
                Ok(mut w) => {
                    if !w.iter().any(|x| x.will_wake(cx.waker())) {
                        w.push(cx.waker().clone());
                    }
                }
                // Not reachable (nothing holds the list across a poll); if
                // it were, look again on the next turn rather than miss it.
                Err(_) => cx.waker().wake_by_ref(),
            }
            Poll::Pending
        })
    }
}

/// A connection's place in the pre-upgrade table ([`super::pending`]);
/// given back when dropped.
pub struct PendingSlot {
    shared: Rc<Shared>,
    id: u64,
    pub signal: Rc<ShedSignal>,
}

impl PendingSlot {
    /// The connection has been read from and waits for a request head;
    /// `partial`: part of one is buffered. Only waiting connections can be
    /// shed.
    pub fn waiting(&self, partial: bool) {
        let tier = if partial { Tier::Partial } else { Tier::Empty };
        self.shared.pending.borrow_mut().sheddable(self.id, tier);
    }

    fn busy(&self) {
        self.shared.pending.borrow_mut().busy(self.id);
    }

    /// A complete request head arrived: its address is not a silent one.
    fn spoke(&self) {
        self.shared.pending.borrow_mut().spoke(self.id);
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.shared.pending.borrow_mut().remove(self.id);
    }
}

/// Admits a new connection under `--max-pending` and
/// `--max-pending-per-address`, shedding the one that has waited longest
/// for a request head at a cap; `None`: refused (close it at once).
pub fn admit(shared: &Rc<Shared>, id: u64, peer: SocketAddr) -> Option<PendingSlot> {
    let signal = Rc::new(ShedSignal::default());
    let exempt = shared.cfg.trusted_proxies.iter().any(|c| c.contains(peer.ip()));
    let admitted = shared.pending.borrow_mut().admit(id, peer.ip(), exempt, signal.clone());
    match admitted {
        Admit::Yes => {}
        Admit::Shed(victim) => {
            crate::metrics::add(&shared.metrics.pending_shed, 1);
            victim.fire();
        }
        Admit::No => {
            crate::metrics::add(&shared.metrics.pending_refused, 1);
            return None;
        }
    }
    Some(PendingSlot {
        shared: shared.clone(),
        id,
        signal,
    })
}

/// Sheds the pre-upgrade connection that has waited longest for a request
/// head (the process is out of file descriptors); true if there was one.
pub fn shed_one(shared: &Shared) -> bool {
    let victim = shared.pending.borrow_mut().shed_one();
    victim
        .inspect(|v| {
            crate::metrics::add(&shared.metrics.pending_shed, 1);
            v.fire();
        })
        .is_some()
}

/// Sets what every accepted socket inherits from its listener on Linux
/// (`TCP_NODELAY`), so no per-connection `setsockopt` is needed.
pub fn listener_options(listener: &std::net::TcpListener) {
    #[cfg(target_os = "linux")]
    let _ = rustix::net::sockopt::set_tcp_nodelay(listener, true);
    #[cfg(not(target_os = "linux"))]
    let _ = listener;
}

/// Accepts one connection: one `accept4` on Linux (non-blocking and
/// close-on-exec, no `ioctl(FIONBIO)` after), with `TCP_NODELAY` inherited
/// from the listener ([`listener_options`]).
pub async fn accept(listener: &TcpListener) -> std::io::Result<(Tcp, SocketAddr)> {
    let (stream, peer) = listener.accept().await?;
    #[cfg(not(target_os = "linux"))]
    let _ = stream.get_ref().set_nodelay(true);
    Ok((stream, peer))
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `--listen`: everything (but `/metrics` and `/healthz` when
    /// `--metrics-listen` is set).
    Main,
    /// `--metrics-listen`: only `/metrics` and `/healthz`.
    Metrics,
}

/// Writes `bytes` within `--write-timeout`; false on error, timeout or
/// shed (the connection is then closed). While the client leaves the
/// response unread the connection can be shed (a write that completes
/// at once is never seen in that state).
async fn write_by(shared: &Shared, stream: &mut Stream, bytes: &[u8], peer: SocketAddr, slot: &PendingSlot) -> bool {
    let shed = async {
        slot.signal.wait().await;
        false
    };
    slot.shared.pending.borrow_mut().sheddable(slot.id, Tier::Stalled);
    let ok = smol::future::or(write_within(shared, stream, bytes, peer), shed).await;
    slot.busy();
    ok
}

/// Writes `bytes` within `--write-timeout`; false on error or timeout.
async fn write_within(shared: &Shared, stream: &mut Stream, bytes: &[u8], peer: SocketAddr) -> bool {
    let write = async { stream.write_all(bytes).await.is_ok() };
    let timeout = async {
        Timer::after(shared.cfg.write_timeout).await;
        shared
            .log
            .info("http_write_timeout", &[("peer", (&peer.to_string()).into())]);
        false
    };
    smol::future::or(write, timeout).await
}

/// Serves one accepted connection until it closes, upgrades, or is shed.
///
/// A plain function returning an `async move` block (not an `async fn`), so
/// that the arguments live in the future once, not twice (an `async fn`
/// moves them into locals beside the captured copies): this future lives
/// until the connection closes or upgrades (the socket then runs in a task
/// of its own, see [`upgrade`]).
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn serve_connection(
    shared: Rc<Shared>,
    ex: Rc<LocalExecutor<'static>>,
    mut stream: Stream,
    peer: SocketAddr,
    slot: PendingSlot,
    listener: Listener,
) -> impl std::future::Future<Output = ()> {
    async move {
        let mut buf: Vec<u8> = Vec::new();
        let mut first = true;
        loop {
            // The first head within --handshake-timeout; later ones (keep-alive)
            // within --keepalive-timeout.
            let wait = if first {
                shared.cfg.handshake_timeout
            } else {
                shared.cfg.keepalive_timeout
            };
            first = false;
            let deadline = crate::reactor::now() + wait;
            let head = smol::future::or(read_head(&shared, &mut stream, &mut buf, deadline, &slot), async {
                slot.signal.wait().await;
                ReadHead::Closed
            })
            .await;
            slot.busy();
            let req = match head {
                ReadHead::Request(r) => {
                    slot.spoke();
                    r
                }
                ReadHead::Refused(e) => {
                    write_by(&shared, &mut stream, &e.response().to_bytes(false), peer, &slot).await;
                    break;
                }
                ReadHead::Closed => break,
            };
            let client = http::client_address(&req, peer.ip(), &shared.cfg.trusted_proxies);
            let keep_alive = req.keep_alive() && !shared.shutting_down.get();
            // With --metrics-listen, /metrics and /healthz live only there, and
            // that listener serves nothing else.
            let monitoring = matches!(req.path(), "/metrics" | "/healthz");
            let route = match listener {
                Listener::Main if monitoring && shared.cfg.metrics_listen.is_some() => Route::NotFound,
                Listener::Metrics if !monitoring => Route::NotFound,
                _ => http::route(req.method(), req.path()),
            };
            if route == Route::WebSocket {
                let problem = if req.is_websocket_upgrade() {
                    http::upgrade_problem(&req)
                } else {
                    Some(
                        Response::error(426, "upgrade_required", "GET /ws is a WebSocket endpoint")
                            .header("Upgrade", "websocket"),
                    )
                };
                if let Some(r) = problem {
                    shared.metrics.reject("bad_upgrade");
                    shared.log.info(
                        "ws_reject",
                        &[
                            ("reason", "bad_upgrade".into()),
                            ("status", u64::from(r.status).into()),
                            ("peer", (&peer.to_string()).into()),
                        ],
                    );
                    write_by(&shared, &mut stream, &r.to_bytes(false), peer, &slot).await;
                    break;
                }
                // The WebSocket task owns the stream from here; it counts under
                // --max-connections instead.
                drop(slot);
                return upgrade(shared, &ex, stream, buf, req, peer, client).await;
            }
            // Plain HTTP, out of line (boxed): its code and state stay out
            // of the upgrade path's, which is most connections' only path.
            let exchange = exchange(
                &shared,
                &mut stream,
                &mut buf,
                &req,
                route,
                peer,
                client,
                &slot,
                keep_alive,
            );
            if !Box::pin(exchange).await {
                break;
            }
            if buf.capacity() > 2 * http::MAX_HEAD_BYTES {
                buf.shrink_to(http::MAX_HEAD_BYTES);
            }
        }
        // End the connection politely (TLS close_notify, TCP FIN), bounded.
        let close = async {
            let _ = stream.close().await;
        };
        smol::future::or(close, async {
            Timer::after(std::time::Duration::from_secs(1)).await;
        })
        .await;
    }
}

/// One plain-HTTP exchange after its head ([`serve_connection`]): the body
/// (SPEC §4: ≤ 16 KiB, POST needs Content-Length), the route's answer, the
/// write. False: the connection ends (an error, or no keep-alive).
#[allow(clippy::too_many_arguments)]
async fn exchange(
    shared: &Rc<Shared>,
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    req: &Request,
    route: Route,
    peer: SocketAddr,
    client: IpAddr,
    slot: &PendingSlot,
    keep_alive: bool,
) -> bool {
    let deadline = crate::reactor::now() + shared.cfg.handshake_timeout;
    // Read the body, if any (SPEC §4: ≤ 16 KiB, POST needs Content-Length).
    let body_len = match (req.method(), req.body_length()) {
        (_, BodyLength::Invalid) => Err(Response::error(400, "bad_request", "invalid Content-Length")),
        ("POST", BodyLength::None | BodyLength::Chunked) => Err(Response::error(
            411,
            "length_required",
            "POST needs Content-Length (chunked bodies are refused)",
        )),
        (_, BodyLength::Chunked) => Err(Response::error(411, "length_required", "chunked bodies are refused")),
        (_, BodyLength::Length(n)) if n > http::MAX_BODY_BYTES => {
            Err(Response::error(413, "body_too_large", "request body over 16 KiB"))
        }
        (_, BodyLength::Length(_)) | (_, BodyLength::None) if req.expect() == Expect::Unsupported => Err(
            Response::error(417, "expectation_failed", "only Expect: 100-continue is supported"),
        ),
        (_, BodyLength::Length(n)) => Ok(n),
        (_, BodyLength::None) => Ok(0),
    };
    let body_len = match body_len {
        Ok(n) => n,
        Err(r) => {
            write_by(shared, stream, &r.to_bytes(false), peer, slot).await;
            return false;
        }
    };
    buf.drain(..req.head_len);
    // RFC 9110 §10.1.1: a client that waits for 100 before sending its
    // body gets it (unless the body is already here).
    if req.expect() == Expect::Continue
        && buf.len() < body_len
        && !write_by(shared, stream, http::CONTINUE, peer, slot).await
    {
        return false;
    }
    if !read_exact_by(shared, stream, buf, body_len, deadline).await {
        return false;
    }
    let body: Vec<u8> = buf.drain(..body_len).collect();
    let response = match route {
        Route::Login => super::auth::login(shared, req, &body, peer, client).await,
        Route::Refresh => super::auth::refresh(shared, req, &body, peer).await,
        Route::Logout => super::auth::logout(shared, req, &body, peer).await,
        // Boxed: the wait for room must not size every exchange.
        Route::Publish => Box::pin(publish(shared, req, &body, peer)).await,
        Route::AdminConnections | Route::AdminEvents | Route::AdminRevoke => {
            Box::pin(super::admin::handle(shared, req, route, &body, peer)).await
        }
        _ => respond(shared, req, route),
    };
    let head_only = req.method() == "HEAD";
    let mut bytes = response.to_bytes(keep_alive);
    if head_only {
        let cut = bytes.len() - if response.status == 204 { 0 } else { response.body.len() };
        bytes.truncate(cut);
    }
    write_by(shared, stream, &bytes, peer, slot).await && keep_alive
}

enum ReadHead {
    Request(Request),
    Refused(http::HeadError),
    Closed,
}

/// Reads until a full head is in `buf` (bytes after it stay in `buf`).
/// The slot waits (sheddable) from the first read on, partial once part of
/// a head is in.
async fn read_head(
    shared: &Shared,
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    slot: &PendingSlot,
) -> ReadHead {
    loop {
        if !buf.is_empty() {
            match http::parse_head(buf) {
                Ok(Head::Complete(r)) => return ReadHead::Request(r),
                Ok(Head::Partial) => {}
                Err(e) => return ReadHead::Refused(e),
            }
        }
        // Sheddable only while it waits: a read that finds the head there
        // never lists it, which no other task could tell apart (they run
        // only once this one waits).
        let partial = !buf.is_empty();
        let mut read = std::pin::pin!(read_more(shared, stream, buf, deadline));
        let got = match smol::future::poll_once(&mut read).await {
            Some(got) => got,
            None => {
                slot.waiting(partial);
                read.await
            }
        };
        match got {
            Some(n) if n > 0 => {}
            _ => return ReadHead::Closed,
        }
    }
}

/// One read into `buf` before `deadline` (kept by the socket alarms, no
/// reactor timer per connection); `None` on timeout or error.
/// Reads straight into `buf` so no buffer lives in the task's future.
async fn read_more(shared: &Shared, stream: &mut Stream, buf: &mut Vec<u8>, deadline: Instant) -> Option<usize> {
    let len = buf.len();
    buf.resize(len + 2048, 0);
    let read = async { stream.read(&mut buf[len..]).await.ok() };
    let timeout = async {
        shared.alarms.sleep_until(deadline).await;
        None
    };
    let n = smol::future::or(read, timeout).await.unwrap_or(0);
    buf.truncate(len + n);
    (n > 0).then_some(n)
}

async fn read_exact_by(
    shared: &Shared,
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    want: usize,
    deadline: Instant,
) -> bool {
    while buf.len() < want {
        match read_more(shared, stream, buf, deadline).await {
            Some(n) if n > 0 => {}
            _ => return false,
        }
    }
    true
}

/// Plain HTTP endpoints (everything but `/ws`).
fn respond(shared: &Shared, req: &Request, route: Route) -> Response {
    match route {
        Route::Health => {
            let mut health = serde_json::json!({
                "status": "ok",
                "version": env!("TESSERA_VERSION"),
                "commit": env!("TESSERA_COMMIT"),
                "connections": shared.hub.borrow().len(),
            });
            // Cluster mode (SPEC §12): whether Redis is reachable, and the node.
            if let (Some(up), Some(o)) = (shared.engine.broker_up(), health.as_object_mut()) {
                o.insert("broker".into(), (if up { "up" } else { "down" }).into());
                o.insert("node".into(), shared.engine.node_id().unwrap_or_default().into());
            }
            Response::json(200, &health)
        }
        Route::Metrics => {
            shared.metrics.connections.set(shared.hub.borrow().len() as u64);
            let hub = shared.hub.borrow();
            let m = &shared.metrics;
            m.history_messages.set(hub.history().retained_len() as u64);
            m.channels.set(hub.channel_count() as u64);
            m.history_bytes.set(hub.history().retained_bytes());
            m.history_disk_bytes
                .set(shared.disk.borrow().as_ref().map_or(0, |l| l.disk_bytes()));
            let mut text = shared.metrics.render();
            text.push_str(&shared.engine.metrics_text());
            Response::with_body(200, "text/plain; version=0.0.4", text.into_bytes())
        }
        Route::Publish => Response::error(500, "internal", "routed elsewhere"),
        Route::WrongMethod(allow) => {
            Response::error(405, "method_not_allowed", "this path does not take that method").header("Allow", allow)
        }
        Route::Console => super::console::page(req),
        Route::NotFound => Response::error(404, "not_found", "no such path"),
        Route::Login
        | Route::Refresh
        | Route::Logout
        | Route::AdminConnections
        | Route::AdminEvents
        | Route::AdminRevoke => Response::error(500, "internal", "routed elsewhere"),
        Route::WebSocket => Response::error(426, "upgrade_required", "GET /ws is a WebSocket endpoint"),
    }
}

fn is_json(req: &Request) -> bool {
    req.header("content-type")
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// `POST /publish` (SPEC §4.1): waits for room in the channel's
/// subscribers' queues first, and yields after, like a WebSocket publish.
async fn publish(shared: &Shared, req: &Request, body: &[u8], peer: SocketAddr) -> Response {
    let Some((token, source)) = gate::find_token(req, false) else {
        return Rejection::MissingToken.response();
    };
    if !gate::origin_allowed(req, source, &shared.cfg.gate) {
        return Rejection::OriginNotAllowed.response();
    }
    let claims = match crate::jwt::verify(&token, &shared.keys(), &shared.cfg.gate.verify, now_unix()) {
        Ok(c) if c.sid.as_deref().is_some_and(|s| shared.is_revoked(s)) => {
            return Rejection::Token(crate::jwt::Reject::TokenRevoked).response();
        }
        Ok(c) => c,
        Err(r) => return Rejection::Token(r).response(),
    };
    // SPEC §11: the same second-factor rule as the handshake.
    if shared.cfg.gate.needs_mfa(claims.clearance) && !claims.has_amr("otp") {
        return Rejection::MfaRequired.response();
    }
    if !is_json(req) {
        return Response::error(415, "unsupported_media_type", "send Content-Type: application/json");
    }
    #[derive(serde::Deserialize)]
    struct Body {
        channel: String,
        data: Box<serde_json::value::RawValue>,
    }
    let Ok(b) = serde_json::from_slice::<Body>(body) else {
        return Response::error(400, "bad_request", "body must be {\"channel\":…,\"data\":…}");
    };
    let rights = Rights::from_claims(&claims);
    if crate::hub::may_publish(&rights, &b.channel, shared.hub.borrow().levels()).is_ok() {
        socket::room_for(shared, &b.channel).await;
    }
    let result = crate::broker::publish(shared, &rights, &b.channel, &b.data).await;
    smol::future::yield_now().await;
    match result {
        Ok(p) => {
            shared.log.info(
                "publish",
                &[
                    ("sub", (&rights.sub).into()),
                    ("channel", (&b.channel).into()),
                    ("id", p.id.into()),
                    ("peer", (&peer.to_string()).into()),
                ],
            );
            Response::json(
                202,
                &serde_json::json!({ "id": p.id, "delivered": p.delivered, "epoch": &*p.epoch }),
            )
        }
        Err(crate::hub::PublishError::Store(failure)) => {
            let (code, message) = failure.code();
            Response::error(503, code, message)
        }
        Err(crate::hub::PublishError::Denied(d)) => Response::error(
            match d {
                crate::hub::Denied::BadChannel => 400,
                crate::hub::Denied::TooManyChannels => 503,
                _ => 403,
            },
            d.as_str(),
            d.message(),
        ),
    }
}

/// The `101 Switching Protocols` head for a checked upgrade request
/// (RFC 6455 §4.2.2); `Sec-WebSocket-Key` was validated by
/// [`http::upgrade_problem`].
fn switching_protocols(req: &Request, mut head: Vec<u8>) -> Vec<u8> {
    let key = req.header("sec-websocket-key").unwrap_or_default();
    let accept = accept_key(key.as_bytes());
    head.clear();
    head.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n");
    head.extend_from_slice(b"Sec-WebSocket-Accept: ");
    head.extend_from_slice(&accept);
    head.extend_from_slice(b"\r\n\r\n");
    head
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2:
/// base64 of the SHA-1 of the key and the protocol's GUID), on the stack.
fn accept_key(key: &[u8]) -> [u8; 28] {
    use sha1::Digest as _;
    const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = sha1::Sha1::default();
    sha1.update(key);
    sha1.update(WS_GUID);
    let digest = sha1.finalize();
    let mut out = [0u8; 28];
    // 20 bytes encode to exactly 28 characters (with padding).
    data_encoding::BASE64.encode_mut(&digest, &mut out);
    out
}

/// The WebSocket settings of every socket.
fn ws_config(shared: &Shared) -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    // Client messages are small commands: a small eagerly-allocated read
    // buffer keeps idle sockets cheap (larger frames grow it as needed).
    config.read_buffer_size = 256;
    // The socket task frames and writes its messages itself (a batch in
    // one send, `socket::Outlet`); tungstenite writes only pongs and the
    // close handshake.
    config.max_write_buffer_size = shared.cfg.max_message_bytes.max(64 * 1024) * 4;
    config.max_message_size = Some(shared.cfg.max_message_bytes);
    config.max_frame_size = Some(shared.cfg.max_message_bytes);
    config.accept_unmasked_frames = false;
    config
}

/// `GET /ws`: the upgrade decision ([`gate::authorize`] on the parsed
/// head), then `101` and the socket. The head was read and checked
/// (RFC 6455 §4.2.1) by [`serve_connection`]; no second parse.
async fn upgrade(
    shared: Rc<Shared>,
    ex: &LocalExecutor<'static>,
    mut stream: Stream,
    mut buf: Vec<u8>,
    req: Request,
    peer: SocketAddr,
    client: IpAddr,
) {
    // Bytes after the head: frames the client sent without waiting.
    let early = if buf.len() > req.head_len {
        buf.split_off(req.head_len)
    } else {
        Vec::new()
    };
    let now = now_unix();
    // Cluster mode: blocks started by the cluster's count too (kept in
    // memory from the broadcast: no Redis round trip here).
    let throttled = shared
        .throttle
        .borrow()
        .blocked(client, now)
        .or_else(|| crate::broker::handshake_blocked(&shared, client, now));
    let full = shared.sockets.get() >= shared.cfg.max_connections;
    // Counted from here so that concurrent handshakes respect the cap.
    let addr = crate::throttle::address_key(client);
    let (mut counted, addr_full) = Counted::new(&shared, addr, shared.cfg.max_sockets_per_address);

    let decision = if addr_full && throttled.is_none() && !full {
        Err(Rejection::TooManySocketsForAddress)
    } else {
        let revoked = |sid: &str| shared.is_revoked(sid);
        let ctx = Context {
            now,
            throttled,
            full,
            is_revoked: &revoked,
        };
        gate::authorize(&req, &shared.cfg.gate, &shared.keys(), &ctx)
    };
    // Set once the token is accepted: the `sub` is counted from then on.
    let decision = decision.and_then(|c| {
        if counted.sub(&c.sub, shared.cfg.max_sockets_per_sub) {
            Ok(c)
        } else {
            Err(Rejection::TooManySocketsForSub)
        }
    });
    let claims = match decision {
        Ok(d) => d,
        Err(rej) => {
            drop(req);
            let peer_s = crate::log::addr_text(&peer);
            write_within(&shared, &mut stream, &rej.response().to_bytes(false), peer).await;
            shared.metrics.reject(rej.code());
            if !matches!(rej, Rejection::Throttled(_) | Rejection::ServerFull) {
                shared.metrics.auth_failure(rej.code());
            }
            super::admin::security_event(&shared, Kind::WsReject, rej.code(), Some(&peer_s), None, None);
            shared.log.info(
                "ws_reject",
                &[
                    ("reason", rej.code().into()),
                    ("status", u64::from(rej.status()).into()),
                    ("peer", (&peer_s).into()),
                    ("client", (&client.to_string()).into()),
                ],
            );
            if rej.is_auth_failure() {
                crate::broker::handshake_failure(&shared, client);
                if shared.throttle.borrow_mut().failure(client, now) {
                    address_throttled(&shared, &peer.ip().to_string(), client);
                }
            }
            return;
        }
    };
    // The read buffer holds the answer: no allocation for it, and the
    // welcome joins it without growing it (one write for both).
    let outlet = socket::Outlet::new(stream, switching_protocols(&req, buf));
    drop(req);
    let ws = WebSocketStream::from_partially_read(outlet, early, Role::Server, Some(ws_config(&shared))).await;
    shared.metrics.handshakes_ok.set(shared.metrics.handshakes_ok.get() + 1);
    // The socket gets a task of its own, sized by what it keeps for its
    // life (with its counts under the caps). This connection's task, sized
    // by reading heads and deciding the upgrade, ends here instead of
    // waiting for the socket: an idle socket does not hold it.
    ex.spawn(socket::run(shared.clone(), ws, claims, peer, counted))
        .detach();
}

/// Records that `client` is now blocked for failed authentications (by
/// this node's count or, in cluster mode, the cluster's): the
/// `ip_throttled` security event and log line.
pub fn address_throttled(shared: &Shared, peer_ip: &str, client: IpAddr) {
    let ip = client.to_string();
    super::admin::security_event(shared, Kind::IpThrottled, "too_many_failures", Some(&ip), None, None);
    shared.log.warn(
        "ip_throttled",
        &[
            ("peer", peer_ip.into()),
            ("client", (&ip).into()),
            ("seconds", crate::throttle::WINDOW_SECS.into()),
        ],
    );
}

/// Sockets per `sub` and per address (`--max-sockets-per-sub`,
/// `--max-sockets-per-address`).
#[derive(Default)]
pub struct SocketCounts {
    subs: HashMap<Rc<str>, usize>,
    addresses: HashMap<IpAddr, usize>,
}

impl SocketCounts {
    pub fn sub(&self, sub: &str) -> usize {
        self.subs.get(sub).copied().unwrap_or(0)
    }

    pub fn address(&self, addr: IpAddr) -> usize {
        self.addresses.get(&addr).copied().unwrap_or(0)
    }
}

/// What a socket holds under the connection caps: a place under
/// `--max-connections` and `--max-sockets-per-address` from the moment its
/// upgrade is decided, and under `--max-sockets-per-sub` once its token is
/// accepted. All given back on drop: by a refused handshake on its way
/// out, by an open socket when its task ends. One guard for the three (one
/// `Rc`): it lives in every open socket's task.
pub struct Counted {
    shared: Rc<Shared>,
    address: IpAddr,
    sub: Option<Rc<str>>,
}

impl Counted {
    /// Counts a socket, and one of `address`; whether the address had
    /// `max` or more before (one lookup for both).
    fn new(shared: &Rc<Shared>, address: IpAddr, max: usize) -> (Counted, bool) {
        shared.sockets.set(shared.sockets.get() + 1);
        let mut per = shared.sockets_per.borrow_mut();
        let n = per.addresses.entry(address).or_default();
        let full = *n >= max;
        *n += 1;
        let counted = Counted {
            shared: shared.clone(),
            address,
            sub: None,
        };
        (counted, full)
    }

    /// Counts the socket under `sub` unless it has `max` already (one
    /// lookup for the check and the count; the table and the guard share
    /// the name).
    fn sub(&mut self, sub: &str, max: usize) -> bool {
        use std::collections::hash_map::Entry;
        let mut per = self.shared.sockets_per.borrow_mut();
        match per.subs.entry(Rc::from(sub)) {
            Entry::Occupied(n) if *n.get() >= max => return false,
            Entry::Occupied(mut n) => {
                *n.get_mut() += 1;
                self.sub = Some(n.key().clone());
            }
            Entry::Vacant(_) if max == 0 => return false,
            Entry::Vacant(v) => {
                self.sub = Some(v.key().clone());
                v.insert(1);
            }
        }
        true
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        fn give_back<K: std::hash::Hash + Eq>(m: &mut HashMap<K, usize>, k: K) {
            use std::collections::hash_map::Entry;
            // One lookup for the count and its removal.
            if let Entry::Occupied(mut c) = m.entry(k) {
                *c.get_mut() = c.get().saturating_sub(1);
                if *c.get() > 0 {
                    return;
                }
                c.remove();
                // After a spike of sockets, give the table's room back once
                // it is under a quarter full (amortised O(1)).
                if m.capacity() > 64 && m.len() < m.capacity() / 4 {
                    m.shrink_to(m.len() * 2);
                }
            }
        }
        let shared = &self.shared;
        shared.sockets.set(shared.sockets.get().saturating_sub(1));
        let mut per = shared.sockets_per.borrow_mut();
        give_back(&mut per.addresses, self.address);
        if let Some(sub) = self.sub.take() {
            give_back(&mut per.subs, sub);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_is_rfc6455s_and_tungstenites() {
        // RFC 6455 §1.3's example.
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        for key in ["x3JJHMbDL1EzLkh9GBhXDw==", "AQIDBAUGBwgJCgsMDQ4PEA==", ""] {
            let theirs = async_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            assert_eq!(accept_key(key.as_bytes()).as_slice(), theirs.as_bytes());
        }
    }
}
