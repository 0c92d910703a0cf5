//! Where publications and history live (SPEC §10, §12): the seam between the
//! server shell and its engine. [`Engine::Local`] is the in-process hub with
//! its memory history and `--history-dir` (the default, and the only engine
//! without the cargo feature `cluster`); [`Engine::Redis`] makes this process
//! one node of a cluster whose offsets, epochs, history and fan-out live in
//! Redis ([`redis`]). The socket tasks and `POST /publish` call
//! [`publish`] and [`ready_to_subscribe`], and logins [`state_available`],
//! [`claim_totp_step`], [`login_blocked`] and [`login_failure`]; none of
//! them knows which engine runs.
//!
//! The cluster flags are validated here as plain functions (no sockets).

#[cfg(feature = "cluster")]
pub mod redis;

use crate::hub::{PublishError, Published, Rights};
use crate::server::Shared;
use serde_json::value::RawValue;

/// `--redis URL` parsed: `redis://[user:pass@]HOST:PORT[/DB]`, or
/// `redis://user@…` with the password in env `TESSERA_REDIS_PASSWORD`
/// ([`ClusterConfig::password_from_env`]). `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl RedisUrl {
    /// Parses `redis://[user:pass@]HOST:PORT[/DB]` (port defaults to 6379,
    /// DB to 0; IPv6 hosts in brackets). Errors never repeat the password.
    pub fn parse(s: &str) -> Result<RedisUrl, String> {
        let rest = s
            .strip_prefix("redis://")
            .ok_or("expected redis://[user:pass@]HOST:PORT[/DB] (rediss:// and unix sockets are not supported)")?;
        let (auth, hostpart) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (user, password) = match auth {
            None => (None, None),
            // `user@`: the password comes from TESSERA_REDIS_PASSWORD.
            Some(u) if !u.contains(':') && !u.is_empty() => (Some(u.to_string()), None),
            Some(a) => {
                let (u, p) = a
                    .split_once(':')
                    .ok_or("credentials must be user:pass@, :pass@ or user@ (with TESSERA_REDIS_PASSWORD)")?;
                let user = (!u.is_empty()).then(|| u.to_string());
                if p.is_empty() {
                    return Err("the password after ':' is empty".into());
                }
                (user, Some(p.to_string()))
            }
        };
        let (hostport, db) = match hostpart.split_once('/') {
            None => (hostpart, 0),
            Some((hp, "")) => (hp, 0),
            Some((hp, d)) => (
                hp,
                d.parse::<u32>()
                    .map_err(|_| format!("database {d:?} is not a number"))?,
            ),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("an IPv6 host needs its closing ']'")?;
            match after {
                "" => (h, 6379),
                p => (
                    h,
                    p.strip_prefix(':')
                        .and_then(|p| p.parse::<u16>().ok())
                        .ok_or("expected :PORT after the IPv6 host")?,
                ),
            }
        } else {
            match hostport.rsplit_once(':') {
                None => (hostport, 6379),
                Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("port {p:?} is not a number"))?),
            }
        };
        if host.is_empty() || host.len() > 253 || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the host is empty or not a host name".into());
        }
        if port == 0 {
            return Err("port 0".into());
        }
        Ok(RedisUrl {
            host: host.to_string(),
            port,
            db,
            user,
            password,
        })
    }
}

/// The cluster flags, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub url: RedisUrl,
    /// `--redis-prefix` [tessera]: every key and the pub/sub channel start
    /// with it.
    pub prefix: String,
    /// `--node-id` [random].
    pub node_id: String,
}

impl ClusterConfig {
    /// Takes the Redis password from env `TESSERA_REDIS_PASSWORD` (`env`)
    /// when it is set and not empty, so that it need not stand in the
    /// `--redis` flag, where the process list shows it. Given in both
    /// places, it is refused (which one was meant is unclear).
    pub fn password_from_env(mut self, env: Option<String>) -> Result<ClusterConfig, String> {
        match env.filter(|p| !p.is_empty()) {
            None if self.url.user.is_some() && self.url.password.is_none() => {
                Err("--redis names a user without a password: add :PASSWORD or set TESSERA_REDIS_PASSWORD".into())
            }
            None => Ok(self),
            Some(_) if self.url.password.is_some() => {
                Err("the Redis password is given twice, in --redis and in TESSERA_REDIS_PASSWORD: keep one".into())
            }
            Some(p) => {
                self.url.password = Some(p);
                Ok(self)
            }
        }
    }
}

/// Whether `s` is a `--redis-prefix` (1-64 of `A-Z a-z 0-9 _ . : -`).
pub fn prefix_ok(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// Whether `s` is a `--node-id` (1-64 of `A-Z a-z 0-9 _ . -`).
pub fn node_id_ok(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Validates `--redis`, `--redis-prefix` and `--node-id` (SPEC §12).
/// `--history-dir` and `--state` are refused with `--redis` (history,
/// sessions and revocations live in Redis). `random_id` names the node when `--node-id` is absent. Errors name the
/// flag; without the cargo feature `cluster`, `--redis` is refused.
pub fn cluster_config(
    redis: Option<&str>,
    prefix: Option<&str>,
    node_id: Option<&str>,
    history_dir: bool,
    state_file: bool,
    random_id: impl FnOnce() -> String,
) -> Result<Option<ClusterConfig>, String> {
    let Some(url) = redis else {
        if prefix.is_some() || node_id.is_some() {
            return Err("--redis-prefix and --node-id need --redis".into());
        }
        return Ok(None);
    };
    if !cfg!(feature = "cluster") {
        return Err("--redis: this tessera was built without cluster mode (cargo build --features cluster)".into());
    }
    let url = RedisUrl::parse(url).map_err(|e| format!("--redis: {e}"))?;
    if history_dir {
        return Err("--history-dir: with --redis the history lives in Redis; drop one of them".into());
    }
    if state_file {
        return Err("--state: with --redis sessions and revocations live in Redis; drop one of them".into());
    }
    let prefix = prefix.unwrap_or("tessera");
    if !prefix_ok(prefix) {
        return Err(format!(
            "--redis-prefix {prefix:?}: expected 1-64 of A-Z a-z 0-9 _ . : -"
        ));
    }
    let node_id = match node_id {
        Some(n) if node_id_ok(n) => n.to_string(),
        Some(n) => return Err(format!("--node-id {n:?}: expected 1-64 of A-Z a-z 0-9 _ . -")),
        None => random_id(),
    };
    Ok(Some(ClusterConfig {
        url,
        prefix: prefix.to_string(),
        node_id,
    }))
}

/// Why a publish was not made, beyond the hub's access rules.
#[derive(Debug)]
pub enum StoreFailure {
    /// `--history-dir` could not take the message: 503 `history_unavailable`.
    History(std::io::Error),
    /// Redis is unreachable (cluster mode): 503 `broker_unavailable`.
    Broker,
}

impl StoreFailure {
    /// The SPEC error code and its message.
    pub fn code(&self) -> (&'static str, &'static str) {
        match self {
            StoreFailure::History(_) => (
                "history_unavailable",
                "the message could not be stored; it was not published",
            ),
            StoreFailure::Broker => (
                "broker_unavailable",
                "the cluster's broker (Redis) is unreachable; the message was not published",
            ),
        }
    }
}

/// The engine this server runs.
pub enum Engine {
    /// Hub, memory history and `--history-dir`, in this process.
    Local,
    /// One node of a cluster on Redis.
    #[cfg(feature = "cluster")]
    Redis(std::rc::Rc<redis::Node>),
}

impl Engine {
    pub fn is_local(&self) -> bool {
        matches!(self, Engine::Local)
    }

    /// `/healthz` field `broker`: `None` for the local engine.
    pub fn broker_up(&self) -> Option<bool> {
        match self {
            Engine::Local => None,
            #[cfg(feature = "cluster")]
            Engine::Redis(n) => Some(n.is_up()),
        }
    }

    /// `/healthz` field `node`.
    pub fn node_id(&self) -> Option<&str> {
        match self {
            Engine::Local => None,
            #[cfg(feature = "cluster")]
            Engine::Redis(n) => Some(n.node_id()),
        }
    }

    /// Extra `/metrics` lines (`tessera_broker_up`), empty for the local engine.
    pub fn metrics_text(&self) -> String {
        match self.broker_up() {
            None => String::new(),
            Some(up) => format!(
                "# HELP tessera_broker_up 1 while the cluster's Redis is reachable.\n# TYPE tessera_broker_up gauge\ntessera_broker_up {}\n",
                u8::from(up)
            ),
        }
    }
}

/// Publishes through the engine. Local: appended to `--history-dir` (when
/// set) and fanned out now. Redis: one script run allocates the offset,
/// appends to the channel's history and broadcasts to every node; this
/// node's subscribers get it from the broadcast like every other node's
/// (`delivered` is then 0).
pub async fn publish(
    shared: &Shared,
    rights: &Rights,
    channel: &str,
    data: &RawValue,
) -> Result<Published, PublishError<StoreFailure>> {
    match &shared.engine {
        Engine::Local => crate::server::publish_here(shared, rights, channel, data).map_err(|e| match e {
            PublishError::Denied(d) => PublishError::Denied(d),
            PublishError::Store(io) => PublishError::Store(StoreFailure::History(io)),
        }),
        #[cfg(feature = "cluster")]
        Engine::Redis(node) => node.clone().publish(shared, rights, channel, data).await,
    }
}

/// Before a `subscribe` to `channel` is handed to the hub: in cluster mode,
/// makes sure this node's copy of the channel's history is the cluster's
/// (loaded from Redis when it is not), so the hub's reply and replay are
/// right. `Err` when that cannot be done now (Redis down): error
/// `broker_unavailable`. The local engine is always ready.
pub async fn ready_to_subscribe(shared: &std::rc::Rc<Shared>, rights: &Rights, channel: &str) -> Result<(), ()> {
    match &shared.engine {
        Engine::Local => {
            let _ = (rights, channel);
            Ok(())
        }
        #[cfg(feature = "cluster")]
        Engine::Redis(node) => node.clone().ready(shared, rights, channel).await,
    }
}

/// Whether logins and refreshes can be served now: always with the local
/// engine; in cluster mode only while Redis is reachable (else 503
/// `state_unavailable`, SPEC §12).
pub fn state_available(shared: &Shared) -> bool {
    shared.engine.broker_up() != Some(false)
}

/// Claims TOTP step `step` of `user` across the cluster (SPEC §11 replay
/// refusal on every node): `Ok(false)` when this or a later step was
/// already used on some node, `Err` when Redis is away. The local engine
/// has nothing to add to the state file's check.
pub async fn claim_totp_step(shared: &Shared, user: &str, step: u64) -> Result<bool, ()> {
    match &shared.engine {
        Engine::Local => {
            let _ = (user, step);
            Ok(true)
        }
        #[cfg(feature = "cluster")]
        Engine::Redis(node) => node.claim_totp_step(user, step).await,
    }
}

/// Cluster mode: whether logins from `client` or naming `user` are blocked
/// on the cluster's §7 counters (`Ok(Some(seconds))`), `Err` when Redis is
/// away. The local engine's counters are the [`crate::throttle::Throttle`]
/// the caller checked already.
pub async fn login_blocked(shared: &Shared, client: std::net::IpAddr, user: &str) -> Result<Option<u64>, ()> {
    match &shared.engine {
        Engine::Local => {
            let _ = (client, user);
            Ok(None)
        }
        #[cfg(feature = "cluster")]
        Engine::Redis(node) => node.login_blocked(client, user).await,
    }
}

/// Cluster mode: counts a failed login in Redis; which blocks it started
/// (none when Redis is away: the node's own count still holds).
pub async fn login_failure(shared: &Shared, client: std::net::IpAddr, user: &str) -> crate::throttle::NewBlocks {
    match &shared.engine {
        Engine::Local => {
            let _ = (client, user);
            crate::throttle::NewBlocks::default()
        }
        #[cfg(feature = "cluster")]
        Engine::Redis(node) => node.login_failure(client, user).await,
    }
}

/// Cluster mode: sends a security event recorded here to every other node
/// (SPEC §13 across the cluster); nothing with the local engine.
pub fn share_event(shared: &Shared, event: &crate::events::Event) {
    match &shared.engine {
        Engine::Local => {
            let _ = event;
        }
        #[cfg(feature = "cluster")]
        Engine::Redis(node) => node.share_event(event),
    }
}

/// Cluster mode: counts a handshake answered 401 in Redis too (in the
/// background: the answer does not wait), so the §7 limit holds across
/// nodes; a block it starts reaches every node by the broadcast.
pub fn handshake_failure(shared: &Shared, client: std::net::IpAddr) {
    match &shared.engine {
        Engine::Local => {
            let _ = client;
        }
        #[cfg(feature = "cluster")]
        Engine::Redis(node) => node.handshake_failure(client),
    }
}

/// Cluster mode: whether handshakes from `client` are blocked by the
/// cluster's count (a local check, no Redis round trip): seconds left.
pub fn handshake_blocked(shared: &Shared, client: std::net::IpAddr, now: u64) -> Option<u64> {
    match &shared.engine {
        Engine::Local => {
            let _ = (client, now);
            None
        }
        #[cfg(feature = "cluster")]
        Engine::Redis(node) => node.address_blocked(client, now),
    }
}

/// Whether session `sid` was revoked on another node of the cluster (the
/// handshake's check stays local: nodes keep the cluster's revoked set).
pub fn revoked_elsewhere(shared: &Shared, sid: &str) -> bool {
    match &shared.engine {
        Engine::Local => {
            let _ = sid;
            false
        }
        #[cfg(feature = "cluster")]
        Engine::Redis(node) => node.is_revoked(sid),
    }
}

/// After a session (`sub`: `None`) or every session of an agent was revoked
/// here: in cluster mode every node revokes it too and closes its sockets
/// with 4003 (SPEC §12).
pub fn announce_revocation(shared: &Shared, sid: Option<&str>, sub: Option<&str>) {
    match &shared.engine {
        Engine::Local => {
            let _ = (sid, sub);
        }
        #[cfg(feature = "cluster")]
        Engine::Redis(node) => {
            let _ = shared;
            if let Some(sid) = sid {
                node.announce(redis::Revocation::Sid(sid.to_string()));
            }
            if let Some(sub) = sub {
                node.announce(redis::Revocation::Sub(sub.to_string()));
            }
        }
    }
}

/// A session opened in the cluster's store (SPEC §12).
#[derive(Debug)]
pub struct Opened {
    pub sid: String,
    pub refresh: String,
    /// Sessions of the user revoked to stay under `--max-sessions-per-user`.
    pub evicted: Vec<String>,
}

/// A refresh done in the cluster's store.
#[derive(Debug)]
pub struct Rotated {
    pub sid: String,
    pub sub: String,
    pub amr: Vec<String>,
    pub refresh: String,
}

/// What a refresh in the cluster's store came to: the rotation, or the
/// refusal (with the agent concerned, for a reuse).
pub type RefreshOutcome = Result<Rotated, (crate::auth::sessions::RefreshError, Option<String>)>;

/// Cluster mode: opens a session of `sub` in Redis, evicting the user's
/// least recently used sessions past `--max-sessions-per-user` on every
/// node. `None` with the local engine (the caller uses `shared.sessions`);
/// `Some(Err)` while Redis is away (503 `state_unavailable`).
pub async fn open_session(
    shared: &Shared,
    sub: &str,
    amr: &[&str],
    now: u64,
    random: [u8; 32],
) -> Option<Result<Opened, ()>> {
    match &shared.engine {
        Engine::Local => {
            let _ = (sub, amr, now, random);
            None
        }
        #[cfg(feature = "cluster")]
        Engine::Redis(node) => Some(node.open_session(shared, sub, amr, now, random).await),
    }
}

/// Cluster mode: rotates a refresh token in Redis (atomic across nodes; a
/// reuse revokes the session on every node). `None` with the local engine.
pub async fn rotate_refresh(
    shared: &Shared,
    presented: &str,
    now: u64,
    random: [u8; 32],
) -> Option<Result<RefreshOutcome, ()>> {
    match &shared.engine {
        Engine::Local => {
            let _ = (presented, now, random);
            None
        }
        #[cfg(feature = "cluster")]
        Engine::Redis(node) => Some(node.rotate_refresh(shared, presented, now, random).await),
    }
}

/// Cluster mode: the session a refresh token names (derived from the
/// token, whether or not Redis has it). `None` with the local engine.
pub fn sid_of_refresh(shared: &Shared, presented: &str) -> Option<Option<String>> {
    match &shared.engine {
        Engine::Local => {
            let _ = presented;
            None
        }
        #[cfg(feature = "cluster")]
        Engine::Redis(_) => Some(redis::sessions::Presented::parse(presented).map(|p| p.sid)),
    }
}

/// Cluster mode: revokes session `sid` in Redis now and on every node:
/// `Some(Ok((had, live, sub)))`: whether Redis had the session, whether it
/// was live until now, and its user; `Some(Err)` while Redis is away (then
/// [`announce_revocation`] sends it later). `None` with the local engine.
pub async fn revoke_now(shared: &Shared, sid: &str) -> Option<Result<(bool, bool, Option<String>), ()>> {
    match &shared.engine {
        Engine::Local => {
            let _ = sid;
            None
        }
        #[cfg(feature = "cluster")]
        Engine::Redis(node) => Some(node.revoke_sid(shared, sid).await.map(|(r, sub)| {
            (
                r != redis::sessions::RevokeReply::NoSession,
                r == redis::sessions::RevokeReply::Revoked,
                sub,
            )
        })),
    }
}

/// Cluster mode: revokes every session of `sub` in Redis and on every node;
/// how many were live. `None` with the local engine.
pub async fn revoke_sub_now(shared: &Shared, sub: &str) -> Option<Result<u64, ()>> {
    match &shared.engine {
        Engine::Local => {
            let _ = sub;
            None
        }
        #[cfg(feature = "cluster")]
        Engine::Redis(node) => Some(node.revoke_sub_now(shared, sub).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec12_redis_urls() {
        let u = RedisUrl::parse("redis://127.0.0.1:6380/2").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.db, u.user, u.password),
            ("127.0.0.1", 6380, 2, None, None)
        );
        let u = RedisUrl::parse("redis://app:s3cret@redis.lan").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("redis.lan", 6379, 0));
        assert_eq!(u.user.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        assert!(!format!("{u:?}").contains("s3cret"));
        let u = RedisUrl::parse("redis://:pw@[::1]:7000/").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.user), ("::1", 7000, None));
        for bad in [
            "http://h:1",
            "redis://",
            "redis://h:0",
            "redis://h:x",
            "redis://h:1/x",
            "redis://@h",
            "redis://u:@h",
            "redis://[::1",
            "rediss://h:1",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
        let e = RedisUrl::parse("redis://u:topsecret@h:x").unwrap_err();
        assert!(!e.contains("topsecret"), "{e}");
    }

    #[test]
    fn spec12_cluster_flags() {
        let id = || "n1".to_string();
        assert_eq!(cluster_config(None, None, None, false, false, id), Ok(None));
        if cfg!(feature = "cluster") {
            let c = |url: &str| {
                cluster_config(Some(url), None, None, false, false, id)
                    .unwrap()
                    .unwrap()
            };
            let env = Some("Env-Pw".to_string());
            let with = c("redis://app@h:1").password_from_env(env.clone()).unwrap();
            assert_eq!(
                (with.url.user.as_deref(), with.url.password.as_deref()),
                (Some("app"), Some("Env-Pw"))
            );
            let twice = c("redis://:UrlPw@h:1").password_from_env(env).unwrap_err();
            assert!(
                twice.contains("twice") && !twice.contains("UrlPw") && !twice.contains("Env-Pw"),
                "{twice}"
            );
            let kept = c("redis://:UrlPw@h:1").password_from_env(Some(String::new())).unwrap();
            assert_eq!(kept.url.password.as_deref(), Some("UrlPw"));
            assert_eq!(c("redis://h:1").password_from_env(None).unwrap().url.password, None);
            assert!(c("redis://app@h:1").password_from_env(None).is_err());
        }
        assert!(cluster_config(None, Some("p"), None, false, false, id).is_err());
        assert!(cluster_config(None, None, Some("n"), false, false, id).is_err());
        let r = cluster_config(Some("redis://h:1"), None, None, false, false, id);
        if cfg!(feature = "cluster") {
            let c = r.unwrap().unwrap();
            assert_eq!((c.prefix.as_str(), c.node_id.as_str()), ("tessera", "n1"));
            assert!(cluster_config(Some("redis://h:1"), None, None, true, false, id).is_err());
            assert!(
                cluster_config(Some("redis://h:1"), None, None, false, true, id)
                    .unwrap_err()
                    .contains("--state")
            );
            assert!(cluster_config(Some("redis://h:1"), Some("a b"), None, false, false, id).is_err());
            assert!(cluster_config(Some("redis://h:1"), Some(""), None, false, false, id).is_err());
            assert!(cluster_config(Some("redis://h:1"), None, Some("a/b"), false, false, id).is_err());
            let c = cluster_config(Some("redis://h:1"), Some("x:y"), Some("node-2"), false, false, id)
                .unwrap()
                .unwrap();
            assert_eq!((c.prefix.as_str(), c.node_id.as_str()), ("x:y", "node-2"));
        } else {
            assert!(r.unwrap_err().contains("without cluster mode"));
        }
    }
}
