//! Monitoring for operators (SPEC §13): `GET /admin/connections`,
//! `GET /admin/events`, `POST /admin/revoke`, and the one place security
//! events are recorded ([`security_event`]), which also publishes each one
//! live on the reserved `$security` channel.
//!
//! Operators are tokens with `clearance >= --admin-min-clearance` (and,
//! when `--mfa-min-clearance` is set, `otp` in `amr`). Without the flag
//! these paths answer 404. The token is taken as for `POST /publish`: a
//! Bearer header, or the cookie from an allowed `Origin`; a same-origin
//! browser `GET` without `Origin` is told apart by `Sec-Fetch-Site`, which
//! scripts cannot set. Connections are node-local (this node's sockets);
//! in cluster mode events come from every node (each names its `node`, ids
//! count up on the node that answers) and revocations reach every node.

use super::{Shared, now_millis};
use crate::commands::now_unix;
use crate::events::Kind;
use crate::gate::{self, Rejection, TokenSource};
use crate::http::{self, Request, Response, Route};
use crate::jwt::{self, Claims, Reject};
use serde::Serialize;
use std::net::SocketAddr;

/// Events returned by `GET /admin/events` without `limit`.
pub const DEFAULT_PAGE: usize = 100;

/// Whether the operator rule of SPEC §13 holds for a token of `clearance`
/// that did (`has_otp`) or did not use a second factor.
///
/// ```
/// use tessera::server::operator_rule;
/// assert!(operator_rule(Some(5), None, 5, false));
/// assert!(!operator_rule(Some(5), Some(1), 5, false)); // MFA is on: needs otp
/// assert!(!operator_rule(None, None, u32::MAX, true)); // off
/// ```
pub fn operator_rule(admin_min: Option<u32>, mfa_min: Option<u32>, clearance: u32, has_otp: bool) -> bool {
    admin_min.is_some_and(|n| clearance >= n) && (mfa_min.is_none() || has_otp)
}

/// Whether these claims make an operator under this configuration.
pub fn is_operator(cfg: &super::Config, c: &Claims) -> bool {
    operator_rule(
        cfg.admin_min_clearance,
        cfg.gate.mfa_min_clearance,
        c.clearance,
        c.has_amr("otp"),
    )
}

/// Records a security event: the ring, the counter, and a live `message`
/// on `$security` to every operator subscribed. Callers pass codes, agent
/// ids and addresses only. Not to be called while the hub is borrowed
/// (then the live copy is skipped; the ring still has it).
///
/// Cluster mode (SPEC §12): the event also goes to every other node
/// ([`crate::broker::share_event`]), which records it in its own ring and
/// `$security` ([`remote_security_event`]); each event names its `node`.
pub fn security_event(
    shared: &Shared,
    kind: Kind,
    reason: &str,
    peer: Option<&str>,
    sub: Option<&str>,
    by: Option<&str>,
) {
    let event = shared.events.borrow_mut().record(crate::events::Report {
        peer,
        sub,
        by,
        node: shared.engine.node_id(),
        ..crate::events::Report::new(kind, reason, now_millis())
    });
    shared.metrics.security_event(kind.as_str());
    crate::broker::share_event(shared, &event);
    live_event(shared, &event);
}

/// A security event another node of the cluster recorded: into this
/// node's ring (with the next id here) and `$security`. Not counted in
/// this node's metrics (the other node counts it).
pub fn remote_security_event(shared: &Shared, e: &crate::events::Event) {
    let event = shared.events.borrow_mut().record(e.report());
    live_event(shared, &event);
}

/// Publishes an event on `$security`.
fn live_event(shared: &Shared, event: &crate::events::Event) {
    let Ok(data) = serde_json::value::to_raw_value(event) else {
        return;
    };
    let published = match shared.hub.try_borrow_mut() {
        Ok(mut hub) => hub.publish_security(&data, event.ts),
        Err(_) => return,
    };
    super::socket::after_publish(shared, &published);
}

/// The operator's claims, or the refusal: 404 when off, 401/403 as for
/// `POST /publish`, 403 `forbidden` for a token that is not an operator's.
fn operator(shared: &Shared, req: &Request) -> Result<Claims, Response> {
    if shared.cfg.admin_min_clearance.is_none() {
        return Err(Response::error(404, "not_found", "no such path"));
    }
    let Some((token, source)) = gate::find_token(req, false) else {
        return Err(Rejection::MissingToken.response());
    };
    if !origin_ok(shared, req, source) {
        return Err(Rejection::OriginNotAllowed.response());
    }
    let claims = match jwt::verify(&token, &shared.keys(), &shared.cfg.gate.verify, now_unix()) {
        Ok(c) if c.sid.as_deref().is_some_and(|s| shared.is_revoked(s)) => {
            return Err(Rejection::Token(Reject::TokenRevoked).response());
        }
        Ok(c) => c.into_inner(),
        Err(r) => return Err(Rejection::Token(r).response()),
    };
    if !is_operator(&shared.cfg, &claims) {
        return Err(Response::error(
            403,
            "forbidden",
            "operators only (--admin-min-clearance, and a one-time code at login when --mfa-min-clearance is set)",
        ));
    }
    Ok(claims)
}

/// The `/publish` origin rule, plus: a browser's same-origin `GET` (no
/// `Origin` header, `Sec-Fetch-Site: same-origin`) may use the cookie.
fn origin_ok(shared: &Shared, req: &Request, source: TokenSource) -> bool {
    if gate::origin_allowed(req, source, &shared.cfg.gate) {
        return true;
    }
    let read_only = req.method() == "GET" || req.method() == "HEAD";
    read_only
        && req.header("origin").is_none()
        && req
            .header("sec-fetch-site")
            .is_some_and(|v| v.eq_ignore_ascii_case("same-origin"))
}

/// Routes an `/admin/*` request.
pub async fn handle(shared: &Shared, req: &Request, route: Route, body: &[u8], peer: SocketAddr) -> Response {
    let claims = match operator(shared, req) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match route {
        Route::AdminConnections => connections(shared),
        Route::AdminEvents => events(shared, req),
        Route::AdminRevoke => revoke(shared, req, body, &claims, peer).await,
        _ => Response::error(404, "not_found", "no such path"),
    }
}

#[derive(Serialize)]
struct Connection<'a> {
    conn: u64,
    sub: &'a str,
    /// The session of its token (for `POST /admin/revoke {"sid"}`), if any.
    sid: Option<String>,
    clearance: u32,
    peer: String,
    since_ms: u64,
    channels: Vec<&'a str>,
    messages_in: u64,
    messages_out: u64,
    queued: usize,
}

/// `GET /admin/connections`: every open socket, oldest first.
fn connections(shared: &Shared) -> Response {
    let hub = shared.hub.borrow();
    let mut list: Vec<Connection<'_>> = hub
        .connections()
        .map(|(conn, rights, subs, handle)| {
            let s = handle.stats();
            Connection {
                conn,
                sub: &rights.sub,
                sid: handle.session(),
                clearance: rights.clearance,
                peer: s.peer.to_string(),
                since_ms: s.since_ms,
                channels: {
                    let mut v: Vec<&str> = subs.iter().map(|c| &**c).collect();
                    v.sort_unstable();
                    v
                },
                messages_in: s.messages_in,
                messages_out: s.messages_out,
                queued: s.queued,
            }
        })
        .collect();
    list.sort_unstable_by_key(|c| c.conn);
    Response::json(200, &serde_json::json!({ "connections": list, "now_ms": now_millis() }))
}

/// `GET /admin/events?after=ID&limit=N`: oldest first; without `after`, the
/// newest `limit` (default [`DEFAULT_PAGE`], at most [`crate::events::MAX_PAGE`]).
fn events(shared: &Shared, req: &Request) -> Response {
    let q = req.query().unwrap_or("");
    let number = |name: &str| -> Result<Option<u64>, Response> {
        match http::query_value(q, name) {
            None => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                Response::error(
                    400,
                    "bad_request",
                    "after and limit must be whole numbers (after: an event id)",
                )
            }),
        }
    };
    let (after, limit) = match (number("after"), number("limit")) {
        (Ok(a), Ok(l)) => (a, l),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let limit = limit.map_or(DEFAULT_PAGE, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let ring = shared.events.borrow();
    let page = ring.page(after, limit);
    let mut v = serde_json::json!({ "events": page, "last_id": ring.last_id() });
    // Cluster mode: ids count up on this node (SPEC §12); name it.
    if let Some(node) = shared.engine.node_id() {
        v["node"] = node.into();
    }
    Response::json(200, &v)
}

/// `POST /admin/revoke` with `{"sub":S}` or `{"sid":ID}`: revokes the
/// sessions (their refresh and access tokens die), closes the matching
/// sockets with 4003, writes the state like a logout.
async fn revoke(shared: &Shared, req: &Request, body: &[u8], by: &Claims, peer: SocketAddr) -> Response {
    let json = req
        .header("content-type")
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Response::error(415, "unsupported_media_type", "send Content-Type: application/json");
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        sub: Option<String>,
        sid: Option<String>,
    }
    let target = match serde_json::from_slice::<Body>(body) {
        Ok(Body {
            sub: Some(s),
            sid: None,
        }) if !s.is_empty() => Target::Sub(s),
        Ok(Body {
            sub: None,
            sid: Some(s),
        }) if !s.is_empty() => Target::Sid(s),
        _ => return Response::error(400, "bad_request", "body must be {\"sub\":…} or {\"sid\":…}"),
    };
    let mut sids = Vec::new();
    let (revoked, mut sub) = {
        let mut sessions = shared.sessions.borrow_mut();
        match &target {
            Target::Sub(s) => {
                sids = sessions.revoke_sub(s);
                (sids.len(), Some(s.clone()))
            }
            Target::Sid(sid) => {
                let n = usize::from(sessions.revoke(sid));
                (n, sessions.session(sid).map(|s| s.sub.clone()))
            }
        }
    };
    // This node's sockets first (before the cluster's broadcast closes them
    // too, which would leave them out of `closed`).
    let mut closed = 0;
    for (_, rights, _, h) in shared.hub.borrow().connections() {
        let hit = match &target {
            Target::Sub(s) => rights.sub == *s,
            Target::Sid(sid) => h.session().as_deref() == Some(sid.as_str()),
        };
        if hit && !h.closing() {
            h.close(4003, "session revoked");
            closed += 1;
        }
    }
    // Cluster mode: the sessions in Redis are revoked and every node closes
    // their sockets; `revoked` counts the cluster's sessions (`closed` this
    // node's sockets). While Redis is away: announced when it is back.
    let in_redis = match &target {
        Target::Sub(s) => crate::broker::revoke_sub_now(shared, s)
            .await
            .map(|r| r.map(|n| n as usize)),
        Target::Sid(sid) => crate::broker::revoke_now(shared, sid).await.map(|r| {
            r.map(|(_, live, of)| {
                // Cluster mode: the session lives in Redis, not here.
                sub = sub.take().or(of);
                usize::from(live)
            })
        }),
    };
    let revoked = match in_redis {
        Some(Ok(n)) => n.max(revoked),
        Some(Err(())) | None => {
            match &target {
                Target::Sub(s) => {
                    crate::broker::announce_revocation(shared, None, Some(s));
                    for sid in &sids {
                        crate::broker::announce_revocation(shared, Some(sid), None);
                    }
                }
                Target::Sid(sid) => crate::broker::announce_revocation(shared, Some(sid), None),
            }
            revoked
        }
    };
    let peer_s = peer.to_string();
    let sub = sub.as_deref();
    security_event(shared, Kind::Revoked, "operator", Some(&peer_s), sub, Some(&by.sub));
    shared.log.warn(
        "admin_revoke",
        &[
            ("by", (&by.sub).into()),
            ("sub", sub.unwrap_or("").into()),
            ("sessions", (revoked as u64).into()),
            ("closed", (closed as u64).into()),
            ("peer", (&peer_s).into()),
        ],
    );
    if !shared.persist.commit().await {
        return Response::error(
            503,
            "state_unavailable",
            "revoked in memory, but the state file could not be written",
        );
    }
    Response::json(200, &serde_json::json!({ "revoked": revoked, "closed": closed }))
}

enum Target {
    Sub(String),
    Sid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec13_operator_rule() {
        // Off: nobody.
        assert!(!operator_rule(None, None, u32::MAX, true));
        // Clearance at or above N.
        assert!(operator_rule(Some(5), None, 5, false));
        assert!(operator_rule(Some(5), None, 9, false));
        assert!(!operator_rule(Some(5), None, 4, false));
        assert!(operator_rule(Some(0), None, 0, false));
        // With --mfa-min-clearance set (at any level): otp in amr too.
        assert!(!operator_rule(Some(5), Some(9), 5, false));
        assert!(operator_rule(Some(5), Some(9), 5, true));
        assert!(!operator_rule(Some(5), Some(1), 4, true));
    }
}
