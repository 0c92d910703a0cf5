//! `/auth/login`, `/auth/refresh`, `/auth/logout` (SPEC §4.1), and the
//! durable-state writer behind them.
//!
//! Password hashing runs in `smol::unblock` at nice 19, at most
//! [`HASH_WORKERS`] at a time, so the event loop keeps serving sockets
//! during a burst of logins. Waiting logins are served round-robin by
//! client address (at most `--max-pending`, and at least [`HASH_QUEUE`],
//! wait; beyond: 503 `busy`), and each reserves its throttle attempt before
//! it is hashed. A response
//! that hands out a refresh token is sent only once the state holding it is
//! on disk (with `--state`): [`Persist`] groups concurrent changes into one
//! atomic write.
//!
//! The second factor (SPEC §11) is looked at only after a correct password,
//! so a wrong password reads the same with or without it: `mfa_required`
//! when the code is missing, `invalid_otp` when it is wrong, malformed or
//! used already (the used step is saved with the session before the token
//! goes out), 403 `mfa_not_enrolled` under `--mfa-min-clearance` without a
//! secret. Every 401 counts toward the address's throttle. No code or secret
//! is ever logged.

use super::{Shared, socket};
use crate::auth::state_file;
use crate::auth::totp;
use crate::auth::users::{PasswordHash, User};
use crate::commands::now_unix;
use crate::events::Kind;
use crate::gate::{self, Rejection};
use crate::http::{Request, Response};
use crate::jwt::{self, Claims};
use event_listener::Event;
use serde::Deserialize;
use std::cell::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;

/// Password hashes computed at once (the machine's cores are few).
pub const HASH_WORKERS: usize = 2;
/// Logins that may wait for a hashing slot even with a lower
/// `--max-pending`; past the bound new ones get 503 `busy`.
pub const HASH_QUEUE: usize = 32;

/// Drops the calling thread to nice 19 (Linux nice values are per thread).
/// Hashing then takes only the CPU the event loop leaves: on a one-core
/// device a burst of logins slows the logins, not the deliveries. It cannot
/// be raised again without privileges, so a blocking-pool thread that once
/// hashed stays low: that pool also runs the state-file writes, which spend
/// their time waiting for the disk, not on the CPU. Elsewhere: no change.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // Best effort: a failure only means hashing competes at the same priority.
        let _ = rustix::process::setpriority_process(None, 19);
    }
}

/// Group-committing writer of the state file.
pub struct Persist {
    pub path: Option<PathBuf>,
    wanted: Cell<u64>,
    written: Cell<u64>,
    /// The last generation whose write failed.
    failed: Cell<u64>,
    changed: Event,
    done: Event,
}

impl Persist {
    pub fn new(path: Option<PathBuf>) -> Persist {
        Persist {
            path,
            wanted: Cell::new(0),
            written: Cell::new(0),
            failed: Cell::new(0),
            changed: Event::new(),
            done: Event::new(),
        }
    }

    /// Waits until the state as of now is on disk. False if it could not be
    /// written. Without `--state`, returns at once.
    pub async fn commit(&self) -> bool {
        if self.path.is_none() {
            return true;
        }
        let generation = self.wanted.get() + 1;
        self.wanted.set(generation);
        self.changed.notify(1);
        loop {
            if self.written.get() >= generation {
                return true;
            }
            if self.failed.get() >= generation {
                return false;
            }
            let l = self.done.listen();
            if self.written.get() >= generation || self.failed.get() >= generation {
                continue;
            }
            l.await;
        }
    }
}

/// The writer task: one atomic write per batch of changes.
pub async fn persist_task(shared: Rc<Shared>) {
    let p = &shared.persist;
    let Some(path) = p.path.clone() else { return };
    loop {
        while p.written.get().max(p.failed.get()) >= p.wanted.get() {
            let l = p.changed.listen();
            if p.written.get().max(p.failed.get()) < p.wanted.get() {
                break;
            }
            l.await;
        }
        let generation = p.wanted.get();
        // Only a copy is taken on the event loop; serialising and writing
        // happen on the blocking pool.
        let copy = {
            let mut s = shared.sessions.borrow_mut();
            s.prune(now_unix(), shared.cfg.gate.verify.leeway);
            s.clone()
        };
        let path2 = path.clone();
        let result = smol::unblock(move || state_file::write_atomic(&path2, copy.to_json().as_bytes())).await;
        match result {
            Ok(()) => p.written.set(generation),
            Err(e) => {
                p.failed.set(generation);
                shared.log.warn(
                    "state_write_failed",
                    &[
                        ("file", (&path.display().to_string()).into()),
                        ("error", (&e.kind().to_string()).into()),
                    ],
                );
            }
        }
        p.done.notify(usize::MAX);
    }
}

/// Writes the state now, synchronously (shutdown).
pub fn persist_now(shared: &Shared) {
    if let Some(path) = &shared.persist.path {
        let text = shared.sessions.borrow().to_json();
        if let Err(e) = state_file::write_atomic(path, text.as_bytes()) {
            shared
                .log
                .warn("state_write_failed", &[("error", (&e.kind().to_string()).into())]);
        }
    }
}

fn is_json(req: &Request) -> bool {
    req.header("content-type")
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

fn random<const N: usize>() -> Option<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).ok()?;
    Some(b)
}

fn cookie(shared: &Shared, name: &str, value: &str, path: &str, max_age: u64) -> String {
    let secure = if shared.cfg.insecure_cookies { "" } else { " Secure;" };
    format!("{name}={value}; Path={path}; HttpOnly;{secure} SameSite=Strict; Max-Age={max_age}")
}

/// Issues an access token for `user` in session `sid` and the SPEC body and
/// cookies around it.
/// `amr`: how the login was made (RFC 8176); refreshes keep it.
fn token_response(shared: &Shared, user: &User, sid: &str, refresh: &str, amr: Vec<String>, now: u64) -> Response {
    let cfg = &shared.cfg;
    let exp = now + cfg.access_ttl;
    let claims = Claims {
        sub: user.name.clone(),
        exp: exp as f64,
        iat: Some(now as f64),
        iss: cfg.gate.verify.issuer.clone(),
        aud: cfg.gate.verify.audience.iter().cloned().collect(),
        clearance: user.clearance,
        channels: (!user.channels.is_empty()).then(|| user.channels.clone()),
        publish: user.publish,
        sid: Some(sid.to_string()),
        jti: None,
        nbf: None,
        amr: (!amr.is_empty()).then_some(amr),
    };
    let access = match jwt::sign(&claims, &shared.keys(), None) {
        Ok(t) => t,
        Err(_) => return Response::error(500, "internal", "no signing key"),
    };
    shared.sessions.borrow_mut().issued_access(sid, exp);
    Response::json(
        200,
        &serde_json::json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": cfg.access_ttl,
            "refresh_token": refresh,
            "refresh_expires_in": cfg.refresh_ttl,
        }),
    )
    .header(
        "Set-Cookie",
        cookie(shared, "tessera_access", &access, "/", cfg.access_ttl),
    )
    .header(
        "Set-Cookie",
        cookie(shared, "tessera_refresh", refresh, "/auth", cfg.refresh_ttl),
    )
}

/// A login's claim on the hashing queue: gives back its place or slot
/// however the login ends.
enum QueueClaim<'a> {
    Waiting(&'a Shared, u64),
    Running(&'a Shared),
}

impl Drop for QueueClaim<'_> {
    fn drop(&mut self) {
        let changed = match *self {
            QueueClaim::Waiting(s, t) => {
                s.login_queue.borrow_mut().leave(t);
                s
            }
            QueueClaim::Running(s) => {
                s.login_queue.borrow_mut().done();
                s
            }
        };
        changed.login_turn.notify(usize::MAX);
    }
}

/// Waits for a hashing slot, served round-robin by client address
/// ([`crate::throttle::LoginQueue`]); `None`: 503 `busy`.
async fn hashing_slot(shared: &Shared, client: std::net::IpAddr) -> Option<QueueClaim<'_>> {
    let arrival = shared.login_queue.borrow_mut().arrive(client);
    // An arrival may have pushed out another waiter: wake it.
    shared.login_turn.notify(usize::MAX);
    let ticket = match arrival {
        crate::throttle::Arrival::Run => return Some(QueueClaim::Running(shared)),
        crate::throttle::Arrival::Busy => return None,
        crate::throttle::Arrival::Wait(t) => t,
    };
    let waiting = QueueClaim::Waiting(shared, ticket);
    loop {
        let l = shared.login_turn.listen();
        let polled = shared.login_queue.borrow_mut().poll(ticket);
        if let Some(granted) = polled {
            // The queue has already turned the place into a slot (or
            // dropped it): nothing to give back.
            std::mem::forget(waiting);
            return granted.then_some(QueueClaim::Running(shared));
        }
        l.await;
    }
}

/// Gives back a reserved login attempt (as a success) if the login ends
/// before its outcome is known.
struct Reserved<'a>(&'a Shared, Option<crate::throttle::Attempt>);

impl Reserved<'_> {
    /// Settles the attempt; true when a failure started a block.
    fn settle(mut self, failed: bool) -> crate::throttle::NewBlocks {
        match self.1.take() {
            Some(a) => self.0.throttle.borrow_mut().settle(a, failed, now_unix()),
            None => Default::default(),
        }
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.1.take() {
            self.0.throttle.borrow_mut().settle(a, false, now_unix());
        }
    }
}

/// `POST /auth/login`. `client` is the address throttling counts (the peer,
/// or the address a trusted proxy forwarded).
pub async fn login(
    shared: &Shared,
    req: &Request,
    body: &[u8],
    peer: SocketAddr,
    client: std::net::IpAddr,
) -> Response {
    let now = now_unix();
    if !crate::broker::state_available(shared) {
        return state_unavailable();
    }
    if let Some(secs) = shared.throttle.borrow().blocked(client, now) {
        return Rejection::Throttled(secs).response();
    }
    if !is_json(req) {
        return Response::error(415, "unsupported_media_type", "send Content-Type: application/json");
    }
    #[derive(Deserialize)]
    struct Body {
        username: String,
        password: String,
        /// SPEC §11: the one-time code; anything but a string is a
        /// malformed code (`invalid_otp`), `null` is no code.
        #[serde(default)]
        otp: Option<serde_json::Value>,
    }
    let Ok(b) = serde_json::from_slice::<Body>(body) else {
        return Response::error(400, "bad_request", "body must be {\"username\":…,\"password\":…}");
    };
    // The attempt counts from before hashing, so concurrent wrong passwords
    // cannot overshoot the limit.
    let attempt = shared.throttle.borrow_mut().reserve(client, &b.username, now);
    let reserved = match attempt {
        Ok(a) => Reserved(shared, Some(a)),
        Err(secs) => return Rejection::Throttled(secs).response(),
    };
    // Cluster mode: blocks started on any node count here too (SPEC §12).
    match crate::broker::login_blocked(shared, client, &b.username).await {
        Ok(None) => {}
        Ok(Some(secs)) => return Rejection::Throttled(secs).response(),
        Err(()) => return state_unavailable(),
    }
    // Unknown users are hashed against a dummy record with the cost of the
    // strongest user's, so neither status nor timing tells them apart.
    let users = shared.users.borrow().clone();
    let user = users.get(&b.username).cloned();
    let hash = match &user {
        Some(u) => u.hash.clone(),
        None => shared.dummy_hash.borrow().clone(),
    };
    let Some(slot) = hashing_slot(shared, client).await else {
        return Response::error(503, "busy", "too many logins at once; retry shortly").header("Retry-After", "1");
    };
    let password = b.password;
    let ok = smol::unblock(move || {
        lower_thread_priority();
        hash.verify(password.as_bytes())
    })
    .await;
    drop(slot);
    let user = match (ok, user) {
        (true, Some(u)) => u,
        _ => {
            login_failed(shared, &b.username, peer, client, reserved, "invalid_credentials").await;
            return Response::error(401, "invalid_credentials", "unknown user or wrong password");
        }
    };
    // The reserved attempt stays open through the second factor: a wrong
    // code counts like a wrong password (SPEC §11).
    let amr = match second_factor(shared, &user, b.otp.as_ref()) {
        Ok((amr, step)) => {
            // Cluster mode: the step is claimed in Redis too, so a code used
            // on one node is refused on every other (SPEC §11, §12).
            if let Some(step) = step {
                match crate::broker::claim_totp_step(shared, &user.name, step).await {
                    Ok(true) => {}
                    Ok(false) => {
                        login_failed(shared, &user.name, peer, client, reserved, "invalid_otp").await;
                        return invalid_otp();
                    }
                    Err(()) => {
                        reserved.settle(false);
                        return state_unavailable();
                    }
                }
            }
            reserved.settle(false);
            amr
        }
        Err((reason, r)) => {
            login_failed(shared, &user.name, peer, client, reserved, reason).await;
            return r;
        }
    };
    let (Some(sid_bytes), Some(tok)) = (random::<16>(), random::<32>()) else {
        return Response::error(503, "busy", "no randomness from the OS");
    };
    // Cluster mode: the session lives in Redis (SPEC §12); the eviction
    // past the cap happens there, on every node.
    let (sid, refresh) = match crate::broker::open_session(shared, &user.name, amr, now, tok).await {
        Some(Ok(opened)) => {
            for old in &opened.evicted {
                shared
                    .log
                    .info("session_evicted", &[("user", (&user.name).into()), ("sid", old.into())]);
            }
            (opened.sid, opened.refresh)
        }
        Some(Err(())) => return state_unavailable(),
        None => {
            let over = shared
                .sessions
                .borrow()
                .over_cap(&user.name, shared.cfg.max_sessions_per_user);
            for old in over {
                revoke_session(shared, &old);
                shared.log.info(
                    "session_evicted",
                    &[("user", (&user.name).into()), ("sid", (&old).into())],
                );
            }
            let (sid, refresh) = shared.sessions.borrow_mut().login(
                &user.name,
                now,
                now + shared.cfg.access_ttl,
                shared.cfg.refresh_ttl,
                sid_bytes,
                tok,
            );
            shared.sessions.borrow_mut().set_amr(&sid, amr);
            (sid, refresh)
        }
    };
    let amr: Vec<String> = amr.iter().map(|m| m.to_string()).collect();
    let response = token_response(shared, &user, &sid, &refresh, amr, now);
    if !shared.persist.commit().await {
        return Response::error(503, "state_unavailable", "the state file could not be written");
    }
    crate::metrics::add(&shared.metrics.logins_ok, 1);
    shared.log.info(
        "login_ok",
        &[("user", (&user.name).into()), ("peer", (&peer.to_string()).into())],
    );
    response
}

/// Counts and logs a failed login (`reason` is a code, never what was
/// sent); a 401 also counts toward the address's throttle (SPEC §7).
async fn login_failed(
    shared: &Shared,
    username: &str,
    peer: SocketAddr,
    client: std::net::IpAddr,
    reserved: Reserved<'_>,
    reason: &'static str,
) {
    crate::metrics::add(&shared.metrics.logins_failed, 1);
    let shown = crate::log::clip(username, 64);
    let client_s = client.to_string();
    // The event names a user only when one by that name exists: what was
    // typed into the name field (maybe a password) is not kept.
    let known = shared.users.borrow().get(username).is_some();
    let why = match reason {
        "invalid_credentials" if known => "wrong_password",
        "invalid_credentials" => "unknown_user",
        other => other,
    };
    shared.metrics.auth_failure(why);
    let peer_s = peer.to_string();
    let sub = known.then_some(username);
    super::admin::security_event(shared, Kind::LoginFailed, why, Some(&peer_s), sub, None);
    shared.log.info(
        "login_failed",
        &[
            ("user", (&shown).into()),
            ("peer", (&peer.to_string()).into()),
            ("client", (&client_s).into()),
            ("reason", reason.into()),
        ],
    );
    // 403 `mfa_not_enrolled` follows a correct password: nothing was guessed.
    let counted = reason != "mfa_not_enrolled";
    let mut blocks = reserved.settle(counted);
    if counted {
        // Cluster mode: counted in Redis too; a block it starts is logged
        // here unless this node's own count started one already.
        let cluster = crate::broker::login_failure(shared, client, username).await;
        blocks.address |= cluster.address;
        blocks.user |= cluster.user;
    }
    if blocks.address {
        super::admin::security_event(
            shared,
            Kind::IpThrottled,
            "too_many_failures",
            Some(&client_s),
            None,
            None,
        );
        shared.log.warn(
            "ip_throttled",
            &[
                ("peer", (&peer.ip().to_string()).into()),
                ("client", (&client_s).into()),
                ("seconds", crate::throttle::WINDOW_SECS.into()),
            ],
        );
    }
    if blocks.user {
        shared.log.warn(
            "user_throttled",
            &[
                ("user", (&shown).into()),
                ("seconds", crate::throttle::WINDOW_SECS.into()),
            ],
        );
    }
}

/// 503 `state_unavailable` while the cluster's Redis is away (SPEC §12).
fn state_unavailable() -> Response {
    Response::error(
        503,
        "state_unavailable",
        "the cluster's state store (Redis) is unreachable; retry shortly",
    )
    .header("Retry-After", "1")
}

fn invalid_otp() -> Response {
    Response::error(
        401,
        "invalid_otp",
        "the code is wrong, malformed or already used; wait for the next one",
    )
}

/// A login's `amr` (RFC 8176).
type Amr = &'static [&'static str];

/// The second factor after a correct password (SPEC §11): the `amr` of the
/// login and the TOTP step used (if any), or the refusal. An accepted code's
/// step is marked used at once (no await between the check and the mark),
/// so two logins racing with one code cannot both pass.
fn second_factor(
    shared: &Shared,
    user: &User,
    otp: Option<&serde_json::Value>,
) -> Result<(Amr, Option<u64>), (&'static str, Response)> {
    let now = now_unix();
    let Some(secret) = &user.totp else {
        if shared.cfg.gate.needs_mfa(user.clearance) {
            return Err((
                "mfa_not_enrolled",
                Response::error(
                    403,
                    "mfa_not_enrolled",
                    "your clearance needs a second factor; ask for TOTP enrolment (tessera useradd --totp)",
                ),
            ));
        }
        return Ok((&["pwd"], None));
    };
    let Some(otp) = otp else {
        return Err((
            "mfa_required",
            Response::error(
                401,
                "mfa_required",
                "send the 6-digit code of your authenticator app as \"otp\"",
            ),
        ));
    };
    // A JSON number or anything else but a string is a malformed code.
    let code = otp.as_str().unwrap_or("");
    let last = shared.sessions.borrow().totp_last_step(&user.name);
    match totp::check(secret, code, now, last) {
        Some(step) => {
            shared.sessions.borrow_mut().use_totp_step(&user.name, step);
            Ok((&["pwd", "otp"], Some(step)))
        }
        None => Err(("invalid_otp", invalid_otp())),
    }
}

#[derive(Deserialize, Default)]
struct TokenBody {
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

fn token_body(req: &Request, body: &[u8]) -> Result<TokenBody, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(TokenBody::default());
    }
    if !is_json(req) {
        return Err(Response::error(
            415,
            "unsupported_media_type",
            "send Content-Type: application/json",
        ));
    }
    serde_json::from_slice(body).map_err(|_| Response::error(400, "bad_request", "body must be a JSON object"))
}

/// When a cookie would supply the token (no token in the body, none in an
/// `Authorization` header), the request must pass the same origin rule as
/// the upgrade and `/publish` (cross-site requests carry cookies too).
fn cookie_origin_ok(shared: &Shared, req: &Request) -> bool {
    let from_cookie =
        req.bearer().is_none() && (req.cookie("tessera_refresh").is_some() || req.cookie("tessera_access").is_some());
    !from_cookie || gate::origin_allowed(req, gate::TokenSource::Cookie, &shared.cfg.gate)
}

/// Revokes a session and closes its sockets with 4003.
pub fn revoke_session(shared: &Shared, sid: &str) {
    shared.sessions.borrow_mut().revoke(sid);
    socket::close_session(shared, sid);
    // Cluster mode: every node revokes it and closes its sockets (SPEC §12).
    crate::broker::announce_revocation(shared, Some(sid), None);
}

/// `POST /auth/refresh`.
pub async fn refresh(shared: &Shared, req: &Request, body: &[u8], peer: SocketAddr) -> Response {
    let b = match token_body(req, body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if b.refresh_token.is_none() && !cookie_origin_ok(shared, req) {
        return Rejection::OriginNotAllowed.response();
    }
    let Some(presented) = b
        .refresh_token
        .or_else(|| req.cookie("tessera_refresh").map(String::from))
    else {
        return Response::error(
            401,
            "missing_token",
            "send the refresh token (cookie tessera_refresh or body)",
        );
    };
    if !crate::broker::state_available(shared) {
        return state_unavailable();
    }
    let now = now_unix();
    let Some(tok) = random::<32>() else {
        return Response::error(503, "busy", "no randomness from the OS");
    };
    // Cluster mode: rotation and reuse detection are one script run in
    // Redis, and a reuse is already revoked on every node (SPEC §12).
    let (rotated, local) = match crate::broker::rotate_refresh(shared, &presented, now, tok).await {
        Some(Ok(r)) => (r, false),
        Some(Err(())) => return state_unavailable(),
        None => {
            let mut sessions = shared.sessions.borrow_mut();
            let r = match sessions.rotate(&presented, now, now + shared.cfg.refresh_ttl, tok) {
                Ok((sid, sub, refresh)) => Ok(crate::broker::Rotated {
                    amr: sessions.amr(&sid),
                    sid,
                    sub,
                    refresh,
                }),
                Err(e) => {
                    let sub = match &e {
                        crate::auth::sessions::RefreshError::Reused { sid } => {
                            sessions.session(sid).map(|s| s.sub.clone())
                        }
                        _ => None,
                    };
                    Err((e, sub))
                }
            };
            (r, true)
        }
    };
    let peer_s = peer.to_string();
    match rotated {
        Ok(crate::broker::Rotated {
            sid,
            sub,
            amr,
            refresh: new_refresh,
        }) => {
            let user = shared.users.borrow().get(&sub).cloned();
            let Some(user) = user else {
                revoke_session(shared, &sid);
                shared.persist.commit().await;
                return Response::error(401, "invalid_refresh_token", "the user no longer exists");
            };
            let response = token_response(shared, &user, &sid, &new_refresh, amr, now);
            if !shared.persist.commit().await {
                return Response::error(503, "state_unavailable", "the state file could not be written");
            }
            shared
                .log
                .info("refresh_ok", &[("user", (&sub).into()), ("peer", (&peer_s).into())]);
            response
        }
        Err((e, sub)) => {
            shared.metrics.auth_failure(e.code());
            if let crate::auth::sessions::RefreshError::Reused { sid } = &e {
                super::admin::security_event(
                    shared,
                    Kind::RefreshReused,
                    e.code(),
                    Some(&peer_s),
                    sub.as_deref(),
                    None,
                );
                if local {
                    revoke_session(shared, sid);
                    shared.persist.commit().await;
                }
                shared
                    .log
                    .warn("refresh_reused", &[("sid", sid.into()), ("peer", (&peer_s).into())]);
            } else {
                shared.log.info(
                    "refresh_failed",
                    &[("reason", e.code().into()), ("peer", (&peer_s).into())],
                );
            }
            Response::error(401, e.code(), "the refresh token is not valid; log in again")
        }
    }
}

/// `POST /auth/logout`: by refresh token (body or cookie) or access token
/// (Bearer header, cookie or body).
pub async fn logout(shared: &Shared, req: &Request, body: &[u8], peer: SocketAddr) -> Response {
    let b = match token_body(req, body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if b.refresh_token.is_none() && b.access_token.is_none() && !cookie_origin_ok(shared, req) {
        return Rejection::OriginNotAllowed.response();
    }
    let refresh = b
        .refresh_token
        .or_else(|| req.cookie("tessera_refresh").map(String::from));
    let mut sid = refresh.as_deref().and_then(|r| {
        // Cluster mode: the session is named by the token itself.
        crate::broker::sid_of_refresh(shared, r)
            .unwrap_or_else(|| shared.sessions.borrow().sid_of_refresh(r).map(String::from))
    });
    let by_refresh = sid.is_some();
    if sid.is_none() {
        let access = b
            .access_token
            .or_else(|| gate::find_token(req, false).map(|(t, _)| t.into_owned()));
        if let Some(t) = access
            && let Ok(c) = jwt::verify(&t, &shared.keys(), &shared.cfg.gate.verify, now_unix())
        {
            sid = c.sid.clone();
        }
    }
    let Some(sid) = sid else {
        return Response::error(401, "invalid_token", "send a refresh or access token of a session");
    };
    // Cluster mode: revoked in Redis and on every node before the answer
    // (a refresh token Redis does not know is refused like on one node);
    // while Redis is away, here at once and announced when it is back.
    match crate::broker::revoke_now(shared, &sid).await {
        Some(Ok((false, _, _))) if by_refresh => {
            return Response::error(401, "invalid_token", "send a refresh or access token of a session");
        }
        Some(Ok(_)) => {
            shared.sessions.borrow_mut().revoke(&sid);
        }
        Some(Err(())) | None => revoke_session(shared, &sid),
    }
    shared.persist.commit().await;
    shared.log.info(
        "logout",
        &[("sid", (&sid).into()), ("peer", (&peer.to_string()).into())],
    );
    Response::with_body(204, "application/json", Vec::new())
        .header("Set-Cookie", cookie(shared, "tessera_access", "", "/", 0))
        .header("Set-Cookie", cookie(shared, "tessera_refresh", "", "/auth", 0))
}

/// A dummy hash with the cost of the strongest user's (the largest
/// iteration count in the file), for unknown names.
pub fn dummy_hash(users: &crate::auth::users::UsersFile) -> PasswordHash {
    let iterations = users
        .users()
        .map(|u| u.hash.iterations)
        .max()
        .unwrap_or(crate::auth::users::DEFAULT_ITERATIONS);
    let salt = random::<16>().unwrap_or([0; 16]);
    let fake = random::<32>().unwrap_or([0xa5; 32]);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    PasswordHash::parse(&format!(
        "$pbkdf2-sha256$i={iterations},l=32${}${}",
        b64.encode(salt),
        b64.encode(fake)
    ))
    .unwrap_or_else(|_| PasswordHash::new(b"", 1, salt))
}
