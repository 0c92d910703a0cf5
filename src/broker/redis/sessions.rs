//! Sessions and refresh tokens in Redis (SPEC §12, cargo feature `cluster`):
//! a login on one node, a refresh on another, a reuse on a third, and the
//! session is revoked everywhere.
//!
//! A refresh token is 32 random bytes (base64url); its first 16 are the
//! session's *family*, kept by every rotation (as on one node,
//! [`crate::auth::sessions`]). In cluster mode the session id is derived
//! from the family ([`sid_of_family`]: SHA-256, cut to 16 bytes), so a node
//! finds the session of a presented token without a lookup, and the sid in
//! an access token says nothing about the family. Redis holds, under
//! `--redis-prefix P`:
//! - `P:s:SID`, a hash: `sub`, `amr` (space separated), `cur` (SHA-256 of
//!   the current refresh token, base64url: never the token), `rexp` (when
//!   it expires), `aexp` (the latest access token's `exp`), `gen`
//!   (rotations), `rev` (`1` once revoked), `t` (last login or refresh, ms),
//!   `us` (the key of the user's set).
//!   It expires (Redis TTL) when neither its refresh token nor its access
//!   tokens can be valid any more.
//! - `P:us:HEX(sub)`, a sorted set of the user's session ids by last use
//!   (scored with `t`, raised above the set's highest when clocks tie), for
//!   `--max-sessions-per-user` and revocation by `sub` (each login drops
//!   the revoked and expired ones, so it holds about the live sessions); it
//!   lives as long as the user's longest session.
//!
//! One script run per step, so rotation and reuse detection are atomic
//! across nodes: [`LOGIN_SCRIPT`] (evicts the least recently used sessions
//! beyond the cap and opens the new one), [`REFRESH_SCRIPT`] (rotates the
//! current token, or revokes the session when an older one comes back).
//! Revocations (reuse, eviction, logout, `POST /admin/revoke`) mark the hash,
//! add the sid to `P:revoked` and broadcast `!sid ID` in the same run, so
//! every node closes the session's sockets with 4003 and refuses its access
//! tokens at the handshake from its own memory.
//!
//! Token parsing, key names, scripts and reply decoding are sans-IO and
//! tested here; [`Node`]'s session methods are the thin shell around them.

use super::{Keys, Node, Value, bytes, int};
use crate::auth::sessions::RefreshError;
use crate::broker::{Opened, Rotated};
use crate::server::Shared;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

impl Keys {
    /// Where session `sid` is kept (a hash).
    pub fn session(&self, sid: &str) -> String {
        format!("{}{sid}", self.session_prefix())
    }
    /// The prefix of every session key (the scripts build keys of other
    /// sessions of a user from it).
    pub fn session_prefix(&self) -> String {
        format!("{}:s:", self.prefix)
    }
    /// The sorted set of `sub`'s sessions (the whole name in hex: two
    /// users never share a set).
    pub fn user_sessions(&self, sub: &str) -> String {
        let hex: String = sub.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{}:us:{hex}", self.prefix)
    }
}

/// The session id of a refresh-token family: base64url of the first 16
/// bytes of `SHA-256("tessera-sid" || family)` (22 characters).
pub fn sid_of_family(family: &[u8; 16]) -> String {
    let mut h = Sha256::new();
    h.update(b"tessera-sid");
    h.update(family);
    let d = h.finalize();
    URL_SAFE_NO_PAD.encode(d.get(..16).unwrap_or_default())
}

/// SHA-256 of a refresh token, base64url: what Redis keeps of it.
pub fn token_digest(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// A presented refresh token, taken apart. Only well-formed tokens (32
/// bytes of base64url) get this far; anything else is
/// `invalid_refresh_token` without asking Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    pub sid: String,
    pub family: [u8; 16],
    pub digest: String,
}

impl Presented {
    pub fn parse(token: &str) -> Option<Presented> {
        let raw: [u8; 32] = URL_SAFE_NO_PAD.decode(token).ok()?.try_into().ok()?;
        let family: [u8; 16] = raw.get(..16)?.try_into().ok()?;
        Some(Presented {
            sid: sid_of_family(&family),
            family,
            digest: token_digest(token),
        })
    }

    /// The next token of the family: the family, then 16 fresh bytes of
    /// `random`.
    pub fn next(&self, random: [u8; 32]) -> String {
        new_token(self.family, random)
    }
}

/// A token of `family` whose other 16 bytes come from `random`.
pub fn new_token(family: [u8; 16], random: [u8; 32]) -> String {
    let mut t = random;
    if let Some(head) = t.get_mut(..16) {
        head.copy_from_slice(&family);
    }
    URL_SAFE_NO_PAD.encode(t)
}

/// When a session's hash may go: past its refresh token and, with
/// `leeway`, its newest access token.
pub fn expire_at(refresh_expires: u64, access_expires: u64, leeway: u64) -> u64 {
    refresh_expires
        .max(access_expires.saturating_add(leeway))
        .saturating_add(1)
}

/// Helpers of the scripts below: keep the user's set alive as long as its
/// longest session; revoke one session (mark it, keep its sid in the
/// revoked set, broadcast `!sid ID`); make `sid` the user's most recently
/// used session. Its score is the node's clock in ms, raised above the
/// set's highest when that is not below it: nodes' clocks can tie or lag,
/// and Redis runs scripts one at a time, so the order of the scripts is the
/// order of use (as the single node's logical clock, `Sessions::touched`).
const EXTEND_USER_SET: &str = r#"
local function touch(set, now_ms, sid)
  local t = tonumber(now_ms)
  local top = redis.call('ZRANGE', set, -1, -1, 'WITHSCORES')
  if top[2] and tonumber(top[2]) >= t then t = tonumber(top[2]) + 1 end
  redis.call('ZADD', set, t, sid)
end
local function extend_user_set(key, at, now)
  local ttl = redis.call('TTL', key)
  if ttl < 0 or now + ttl < at then redis.call('EXPIREAT', key, at) end
end
local function revoke_one(key, sid, revoked, till, chan)
  redis.call('HSET', key, 'rev', '1')
  redis.call('ZADD', revoked, till, sid)
  redis.call('PUBLISH', chan, '!sid ' .. sid)
end
"#;

/// A login: KEYS session, user set, revoked set, broadcast; ARGV sid, sub,
/// amr, token digest, refresh expiry, access expiry, expire_at, now (ms),
/// sessions kept per user, session-key prefix, revoked until, now (s).
/// Revokes (and announces) the user's least recently used live sessions
/// beyond `keep - 1`, then opens the new one. Returns the evicted sids.
pub fn login_script() -> String {
    format!(
        "{EXTEND_USER_SET}{}",
        r#"
local live = {}
for _, sid in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  -- Gone or revoked sessions leave the set: it holds the live ones.
  if redis.call('HGET', ARGV[10] .. sid, 'rev') == '0' then live[#live + 1] = sid
  else redis.call('ZREM', KEYS[2], sid) end
end
local evicted = {}
local excess = #live + 1 - math.max(tonumber(ARGV[9]), 1)
for i = 1, excess do
  revoke_one(ARGV[10] .. live[i], live[i], KEYS[3], ARGV[11], KEYS[4])
  redis.call('ZREM', KEYS[2], live[i])
  evicted[#evicted + 1] = live[i]
end
redis.call('HSET', KEYS[1], 'sub', ARGV[2], 'amr', ARGV[3], 'cur', ARGV[4], 'rexp', ARGV[5],
  'aexp', ARGV[6], 'gen', 0, 'rev', '0', 't', ARGV[8], 'us', KEYS[2])
redis.call('EXPIREAT', KEYS[1], ARGV[7])
touch(KEYS[2], ARGV[8], ARGV[1])
extend_user_set(KEYS[2], tonumber(ARGV[7]), tonumber(ARGV[12]))
return evicted
"#
    )
}

/// A refresh: KEYS session, revoked set, broadcast; ARGV sid, presented
/// digest, new digest, now (s), new refresh expiry, new access expiry,
/// expire_at, now (ms), revoked until. The user's set is named in the
/// session (`us`, written at login). It compares SHA-256 digests, never
/// tokens (as the state file does): how long a comparison takes says
/// nothing about a token. Returns `{'ok', sub, amr,
/// generation}`, `{'reused', sub}` (the session is now revoked and
/// announced), `{'revoked'}`, `{'expired'}` or `{'unknown'}`.
pub fn refresh_script() -> String {
    format!(
        "{EXTEND_USER_SET}{}",
        r#"
local s = redis.call('HMGET', KEYS[1], 'sub', 'amr', 'cur', 'rexp', 'rev', 'aexp', 'us')
if not s[1] or not s[3] or not s[4] or not s[7] then return {'unknown'} end
local now = tonumber(ARGV[4])
if s[3] ~= ARGV[2] then
  -- An older token of the family: reuse, unless the session has expired.
  if now >= tonumber(s[4]) then return {'expired'} end
  revoke_one(KEYS[1], ARGV[1], KEYS[2], ARGV[9], KEYS[3])
  return {'reused', s[1]}
end
if s[5] == '1' then return {'revoked'} end
if now >= tonumber(s[4]) then return {'expired'} end
local gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)
redis.call('HSET', KEYS[1], 'cur', ARGV[3], 'rexp', ARGV[5], 't', ARGV[8])
if tonumber(ARGV[6]) > tonumber(s[6] or '0') then redis.call('HSET', KEYS[1], 'aexp', ARGV[6]) end
redis.call('EXPIREAT', KEYS[1], ARGV[7])
touch(s[7], ARGV[8], ARGV[1])
extend_user_set(s[7], tonumber(ARGV[7]), now)
return {'ok', s[1], s[2] or '', gen}
"#
    )
}

/// What a [`refresh_script`] run decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshReply {
    /// Rotated: hand out the new token and an access token for `sub`.
    Rotated {
        sub: String,
        amr: Vec<String>,
        generation: u64,
    },
    /// An old token came back: the session is revoked on every node.
    Reused {
        sub: String,
    },
    Revoked,
    Expired,
    Unknown,
}

impl RefreshReply {
    /// What the node answers: `Ok((sub, amr))` for a rotation, else the
    /// refusal (SPEC §4.1 codes) and, for a reuse, the agent concerned.
    pub fn outcome(self, sid: &str) -> Result<(String, Vec<String>), (RefreshError, Option<String>)> {
        match self {
            RefreshReply::Rotated { sub, amr, .. } => Ok((sub, amr)),
            RefreshReply::Reused { sub } => Err((RefreshError::Reused { sid: sid.to_string() }, Some(sub))),
            RefreshReply::Revoked => Err((RefreshError::Revoked, None)),
            RefreshReply::Expired => Err((RefreshError::Expired, None)),
            RefreshReply::Unknown => Err((RefreshError::Unknown, None)),
        }
    }
}

fn text(v: &Value) -> Option<String> {
    std::str::from_utf8(bytes(v)?).ok().map(str::to_string)
}

/// Parses a [`refresh_script`] reply (`None`: malformed, logged as
/// `broker_bad_reply` and answered 503).
pub fn decode_refresh(v: &Value) -> Option<RefreshReply> {
    let Value::Array(items) = v else { return None };
    let (tag, rest) = items.split_first()?;
    match (bytes(tag)?, rest) {
        (b"ok", [sub, amr, generation]) => Some(RefreshReply::Rotated {
            sub: text(sub)?,
            amr: text(amr)?.split_ascii_whitespace().map(str::to_string).collect(),
            generation: u64::try_from(int(generation)?).ok()?,
        }),
        (b"reused", [sub]) => Some(RefreshReply::Reused { sub: text(sub)? }),
        (b"revoked", []) => Some(RefreshReply::Revoked),
        (b"expired", []) => Some(RefreshReply::Expired),
        (b"unknown", []) => Some(RefreshReply::Unknown),
        _ => None,
    }
}

/// Parses a [`login_script`] reply: the evicted session ids.
pub fn decode_login(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Array(items) => items.iter().map(text).collect(),
        _ => None,
    }
}

/// How a revocation of one session went ([`super::REVOKE_SCRIPT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReply {
    /// No such session in Redis (its sid is still refused everywhere).
    NoSession,
    Revoked,
    AlreadyRevoked,
}

/// Parses a `sid` [`super::REVOKE_SCRIPT`] reply: how it went, and the
/// session's user when Redis knew the session.
pub fn decode_revoke(v: &Value) -> Option<(RevokeReply, Option<String>)> {
    let Value::Array(parts) = v else { return None };
    let reply = match int(parts.first()?)? {
        0 => RevokeReply::NoSession,
        1 => RevokeReply::Revoked,
        2 => RevokeReply::AlreadyRevoked,
        _ => return None,
    };
    let sub = match parts.get(1) {
        Some(Value::BulkString(b)) => std::str::from_utf8(b).ok().map(str::to_string),
        _ => None,
    };
    Some((reply, sub))
}

impl Node {
    /// Opens a session for `sub` in Redis (one script run). `random`: the
    /// new refresh token's bytes. `Err` while Redis is away.
    pub async fn open_session(
        &self,
        shared: &Shared,
        sub: &str,
        amr: &[&str],
        now: u64,
        random: [u8; 32],
    ) -> Result<Opened, ()> {
        let family: [u8; 16] = random.get(..16).and_then(|f| f.try_into().ok()).ok_or(())?;
        let sid = sid_of_family(&family);
        let refresh = new_token(family, random);
        let cfg = &shared.cfg;
        let rexp = now.saturating_add(cfg.refresh_ttl);
        let aexp = now.saturating_add(cfg.access_ttl);
        let at = expire_at(rexp, aexp, cfg.gate.verify.leeway);
        let keys = [
            self.keys.session(&sid),
            self.keys.user_sessions(sub),
            self.keys.revoked(),
            self.keys.broadcast(),
        ];
        let argv = [
            sid.clone(),
            sub.to_string(),
            amr.join(" "),
            token_digest(&refresh),
            rexp.to_string(),
            aexp.to_string(),
            at.to_string(),
            crate::server::now_millis().to_string(),
            cfg.max_sessions_per_user.to_string(),
            self.keys.session_prefix(),
            Self::revoked_until(shared).to_string(),
            now.to_string(),
        ];
        let reply = self.run(&self.scripts.login, &keys, &argv).await?;
        let Some(evicted) = decode_login(&reply) else {
            shared.log.warn("broker_bad_reply", &[("command", "login".into())]);
            return Err(());
        };
        for old in &evicted {
            self.revoked_here(shared, old);
        }
        Ok(Opened { sid, refresh, evicted })
    }

    /// Rotates `presented` in Redis (one script run): `Ok(Ok(..))` with the
    /// new token, `Ok(Err(..))` refused (a reuse revoked the session on
    /// every node already), `Err` while Redis is away.
    pub async fn rotate_refresh(
        &self,
        shared: &Shared,
        presented: &str,
        now: u64,
        random: [u8; 32],
    ) -> Result<Result<Rotated, (RefreshError, Option<String>)>, ()> {
        let Some(p) = Presented::parse(presented) else {
            return Ok(Err((RefreshError::Unknown, None)));
        };
        let next = p.next(random);
        let cfg = &shared.cfg;
        let rexp = now.saturating_add(cfg.refresh_ttl);
        let aexp = now.saturating_add(cfg.access_ttl);
        let keys = [self.keys.session(&p.sid), self.keys.revoked(), self.keys.broadcast()];
        let argv = [
            p.sid.clone(),
            p.digest.clone(),
            token_digest(&next),
            now.to_string(),
            rexp.to_string(),
            aexp.to_string(),
            expire_at(rexp, aexp, cfg.gate.verify.leeway).to_string(),
            crate::server::now_millis().to_string(),
            Self::revoked_until(shared).to_string(),
        ];
        let reply = self.run(&self.scripts.refresh, &keys, &argv).await?;
        let Some(reply) = decode_refresh(&reply) else {
            shared.log.warn("broker_bad_reply", &[("command", "refresh".into())]);
            return Err(());
        };
        if matches!(reply, RefreshReply::Reused { .. }) {
            self.revoked_here(shared, &p.sid);
        }
        Ok(reply.outcome(&p.sid).map(|(sub, amr)| Rotated {
            sid: p.sid,
            sub,
            amr,
            refresh: next,
        }))
    }

    /// Revokes session `sid` in Redis and announces it (one script run);
    /// `Err` while Redis is away (the caller then falls back to
    /// [`Node::announce`], which sends it later).
    pub async fn revoke_sid(&self, shared: &Shared, sid: &str) -> Result<(RevokeReply, Option<String>), ()> {
        let reply = self
            .send_revocation(shared, &super::Revocation::Sid(sid.to_string()))
            .await?;
        self.revoked_here(shared, sid);
        decode_revoke(&reply).ok_or(())
    }

    /// Revokes every session of `sub` in Redis and announces each: how
    /// many were live.
    pub async fn revoke_sub_now(&self, shared: &Shared, sub: &str) -> Result<u64, ()> {
        let reply = self
            .send_revocation(shared, &super::Revocation::Sub(sub.to_string()))
            .await?;
        int(&reply).and_then(|n| u64::try_from(n).ok()).ok_or(())
    }

    /// Refuses `sid` here at once and closes its sockets (the broadcast
    /// does the same on every node, this one included, a moment later).
    fn revoked_here(&self, shared: &Shared, sid: &str) {
        self.revoked
            .borrow_mut()
            .insert(sid.to_string(), Self::revoked_until(shared));
        crate::server::close_session(shared, sid);
    }

    /// Runs a script with owned keys and arguments.
    async fn run(&self, script: &::redis::Script, keys: &[String], argv: &[String]) -> Result<Value, ()> {
        let k: Vec<&[u8]> = keys.iter().map(|s| s.as_bytes()).collect();
        let a: Vec<&[u8]> = argv.iter().map(|s| s.as_bytes()).collect();
        self.script(script, &k, &a).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec12_session_keys_and_sids() {
        let k = Keys::new("t");
        assert_eq!(k.session("abc"), "t:s:abc");
        assert_eq!(k.user_sessions("a b"), "t:us:612062");
        let long = "x".repeat(300);
        assert_ne!(k.user_sessions(&long), k.user_sessions(&format!("{long}y")));
        let sid = sid_of_family(&[7; 16]);
        assert_eq!(sid.len(), 22);
        assert_ne!(sid, sid_of_family(&[8; 16]));
        // Every token of a family names the same session; only the digest differs.
        let t1 = new_token([7; 16], [1; 32]);
        let t2 = new_token([7; 16], [2; 32]);
        let (p1, p2) = (Presented::parse(&t1).unwrap(), Presented::parse(&t2).unwrap());
        assert_eq!((p1.sid.as_str(), p2.sid.as_str()), (sid.as_str(), sid.as_str()));
        assert_ne!(p1.digest, p2.digest);
        assert_eq!(p1.digest.len(), 43);
        assert!(!p1.digest.contains(&t1) && !t1.contains(&p1.digest));
        // The next token keeps the family.
        assert_eq!(Presented::parse(&p1.next([9; 32])).unwrap().sid, sid);
        for bad in ["", "nope", "AAAA", &t1[..42], &format!("{t1}A"), "!!!!"] {
            assert_eq!(Presented::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn spec12_expiry_covers_refresh_and_access_tokens() {
        assert_eq!(expire_at(1000, 100, 30), 1001);
        assert_eq!(expire_at(100, 1000, 30), 1031);
        assert_eq!(expire_at(u64::MAX, u64::MAX, 30), u64::MAX);
    }

    #[test]
    fn spec12_refresh_replies_map_to_what_the_node_answers() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let ok = Value::Array(vec![b("ok"), b("agent-7"), b("pwd otp"), Value::Int(3)]);
        let r = decode_refresh(&ok).unwrap();
        assert_eq!(
            r,
            RefreshReply::Rotated {
                sub: "agent-7".into(),
                amr: vec!["pwd".into(), "otp".into()],
                generation: 3
            }
        );
        assert_eq!(r.outcome("S"), Ok(("agent-7".into(), vec!["pwd".into(), "otp".into()])));
        let none = Value::Array(vec![b("ok"), b("a"), b(""), Value::Int(1)]);
        assert_eq!(decode_refresh(&none).unwrap().outcome("S"), Ok(("a".into(), vec![])));
        let reused = decode_refresh(&Value::Array(vec![b("reused"), b("agent-7")])).unwrap();
        let (e, sub) = reused.outcome("S").unwrap_err();
        assert_eq!((e.code(), sub.as_deref()), ("refresh_token_reused", Some("agent-7")));
        assert_eq!(e, RefreshError::Reused { sid: "S".into() });
        for (tag, code) in [
            ("revoked", "invalid_refresh_token"),
            ("expired", "refresh_token_expired"),
            ("unknown", "invalid_refresh_token"),
        ] {
            let (e, sub) = decode_refresh(&Value::Array(vec![b(tag)]))
                .unwrap()
                .outcome("S")
                .unwrap_err();
            assert_eq!((e.code(), sub), (code, None), "{tag}");
        }
        for bad in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![b("ok"), b("a")]),
            Value::Array(vec![b("ok"), b("a"), b(""), b("x")]),
            Value::Array(vec![b("ok"), b("a"), b(""), Value::Int(-1)]),
            Value::Array(vec![b("reused")]),
            Value::Array(vec![b("expired"), b("x")]),
            Value::Array(vec![b("what")]),
        ] {
            assert_eq!(decode_refresh(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn spec12_login_and_revoke_replies() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(decode_login(&Value::Array(vec![])), Some(vec![]));
        assert_eq!(
            decode_login(&Value::Array(vec![b("s1"), b("s2")])),
            Some(vec!["s1".to_string(), "s2".to_string()])
        );
        assert_eq!(decode_login(&Value::Array(vec![Value::Int(1)])), None);
        assert_eq!(decode_login(&Value::Okay), None);
        let reply = |code: i64, sub: Option<&str>| {
            let mut v = vec![Value::Int(code)];
            v.extend(sub.map(|s| Value::BulkString(s.as_bytes().to_vec())));
            decode_revoke(&Value::Array(v))
        };
        assert_eq!(reply(0, None), Some((RevokeReply::NoSession, None)));
        assert_eq!(
            reply(1, Some("agent-7")),
            Some((RevokeReply::Revoked, Some("agent-7".into())))
        );
        assert_eq!(
            reply(2, Some("hq")),
            Some((RevokeReply::AlreadyRevoked, Some("hq".into())))
        );
        assert_eq!(reply(3, Some("hq")), None);
        assert_eq!(decode_revoke(&Value::Array(vec![])), None);
        assert_eq!(decode_revoke(&Value::Int(1)), None);
        assert_eq!(decode_revoke(&Value::Nil), None);
    }
}
