//! The Redis engine (SPEC §12, cargo feature `cluster`): this process as one
//! node of a cluster whose per-channel offsets, epochs, history and fan-out
//! live in one Redis.
//!
//! Data, under `--redis-prefix P`: `P:m:CHANNEL` is a hash with the channel's
//! epoch (`e`) and last offset (`o`); `P:h:CHANNEL` is a list of the last
//! `--history` messages (`OFFSET TS SUBLEN SUB DATA`); `P:pub` is the one
//! pub/sub channel every node subscribes to. A publish is one script run
//! ([`PUBLISH_SCRIPT`], one round trip): it takes the next offset, appends
//! and trims the history and broadcasts `CHLEN CHANNEL EPOCH ENTRY` on
//! `P:pub`, so every node sees every channel in the same order. A missing
//! hash means the history was lost (`FLUSHALL`, eviction, expiry): the next
//! publish or read starts a new epoch, so a resume says `recovered:false`
//! and never hides a gap.
//!
//! Each node keeps its hub's history as a copy of the channels its sockets
//! use ([`Mirror`]). A channel is *synced* once loaded from Redis
//! ([`READ_SCRIPT`], atomic) while the pub/sub subscription is up; the
//! broadcast keeps it synced. Broadcasts that arrive during a load are held
//! and applied after it, deduplicated by offset, so a `subscribe` (handled
//! by the hub only once its channel is synced) has no gap or duplicate at
//! the history/live boundary. A gap or a new epoch in the broadcast, or a
//! reconnect after Redis was down, reloads the channel and delivers what
//! its live subscribers missed.
//!
//! Shared login state: `P:totp:USER` holds the user's last used TOTP step
//! ([`TOTP_SCRIPT`]: a code's step must be later, so a code works on one
//! node only), and `P:thr:*` the §7 failure counts and blocks per address
//! and per user name ([`FAILURE_SCRIPT`], [`BLOCKED_SCRIPT`]; failed logins
//! and failed handshakes count, and an address block goes out on `P:pub` as
//! `!blk ADDRESS SECONDS` so handshakes check it locally). Sessions and
//! refresh tokens live in `P:s:*` and `P:us:*` ([`sessions`]). Revocations
//! go out on `P:pub` as `!sid ID` / `!sub NAME` ([`REVOKE_SCRIPT`]) and
//! session ids stay in the sorted set `P:revoked` until their access tokens
//! are dead; every node keeps that set in memory for its handshakes.
//! Security events go out as `!ev NODE JSON` ([`EVENT_SCRIPT`]): every node
//! records the others' in its own ring and `$security`.
//!
//! Key names, scripts, payload codecs and [`Mirror`] are sans-IO and tested
//! here. The async shell ([`Node`]) talks to Redis through the `redis` crate:
//! one multiplexed connection for commands and scripts (`EVALSHA`; after a
//! `NOSCRIPT`, `SCRIPT LOAD` and `EVALSHA` again) and one pub/sub connection. The
//! crate runs each connection's driver on smol's global executor (one extra
//! thread); the event loop only awaits replies and messages, with the reactor's timers
//! as timeouts. The node reconnects with backoff and logs `broker_down` /
//! `broker_up`.

pub mod sessions;

use super::{ClusterConfig, StoreFailure};
use crate::history::{Position, epoch_ok};
use crate::hub::{Frame, PublishError, Published, Rights};
use crate::server::Shared;
/// A Redis reply, as the `redis` crate reads it.
pub use ::redis::Value;
use ::redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

// ---------------------------------------------------------------- replies (sans-IO)

/// A reply's bytes (bulk or simple string).
fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A reply's integer (an integer, or a bulk string of one).
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

// ---------------------------------------------------------------- keys, scripts, payloads (sans-IO)

/// Key and pub/sub channel names under `--redis-prefix`.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    /// The channel's epoch and last offset (a hash).
    pub fn meta(&self, channel: &str) -> String {
        format!("{}:m:{channel}", self.prefix)
    }
    /// A user's last used TOTP step. User names may hold any byte but
    /// `:` and newlines, so the name goes in hex.
    pub fn totp(&self, user: &str) -> String {
        let hex: String = user.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{}:totp:{hex}", self.prefix)
    }
    /// The §7 failure count (`c`) and block (`b`) keys of an address
    /// (IPv6 by its /64) and of a user name (in hex, first 128 bytes).
    pub fn throttle(&self, client: std::net::IpAddr, user: &str) -> [String; 4] {
        let addr = crate::throttle::address_key(client);
        let name: String = user.bytes().take(128).map(|b| format!("{b:02x}")).collect();
        [
            format!("{}:thr:c:a:{addr}", self.prefix),
            format!("{}:thr:b:a:{addr}", self.prefix),
            format!("{}:thr:c:u:{name}", self.prefix),
            format!("{}:thr:b:u:{name}", self.prefix),
        ]
    }
    /// The sorted set of revoked session ids (score: until when).
    pub fn revoked(&self) -> String {
        format!("{}:revoked", self.prefix)
    }
    /// The channel's retained messages (a list, oldest first).
    pub fn history(&self, channel: &str) -> String {
        format!("{}:h:{channel}", self.prefix)
    }
    /// The one pub/sub channel of the cluster.
    pub fn broadcast(&self) -> String {
        format!("{}:pub", self.prefix)
    }
}

/// One publish: KEYS meta, history, broadcast; ARGV channel, ts, sub, data,
/// new epoch, messages kept, history TTL ms, channel TTL ms. Returns
/// `{epoch, offset}`.
pub const PUBLISH_SCRIPT: &str = r#"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 'o', 0)
end
local o = redis.call('HINCRBY', KEYS[1], 'o', 1)
local entry = string.format('%d', o) .. ' ' .. ARGV[2] .. ' ' .. #ARGV[3] .. ' ' .. ARGV[3] .. ARGV[4]
local n = tonumber(ARGV[6])
if n > 0 then
  redis.call('RPUSH', KEYS[2], entry)
  redis.call('LTRIM', KEYS[2], -n, -1)
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
end
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('PUBLISH', KEYS[3], #ARGV[1] .. ' ' .. ARGV[1] .. e .. ' ' .. entry)
return {e, o}
"#;

/// A channel's state, made when missing (so every node names the same
/// epoch for an empty channel): KEYS meta, history; ARGV new epoch, channel
/// TTL ms. Returns `{epoch, last offset, entry...}`.
pub const READ_SCRIPT: &str = r#"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 'o', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local r = {e, redis.call('HGET', KEYS[1], 'o')}
for _, v in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do r[#r + 1] = v end
return r
"#;

/// Claims a TOTP step for a user: KEYS the user's last-step key; ARGV the
/// step, its TTL ms. Returns 1 when `step` is later than every step used
/// so far (now recorded), 0 when it was used already.
pub const TOTP_SCRIPT: &str = r#"
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) <= last then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// How long a used step is remembered in Redis: codes of steps before the
/// one before now are refused anyway (SPEC §11 accepts now ±1 step).
pub const TOTP_STEP_TTL_MS: u64 = 10 * 60 * 1000;

/// Whether logins are blocked: KEYS the address's and the user's block
/// keys. Returns the seconds left of the longer block (0: none).
pub const BLOCKED_SCRIPT: &str = r#"
local t = 0
for i = 1, #KEYS do
  local ttl = redis.call('TTL', KEYS[i])
  if ttl > t then t = ttl end
end
return t
"#;

/// Counts one failed authentication (SPEC §7, shared): KEYS address
/// count, address block, and for a login the user count and user block;
/// ARGV address limit, user limit, window seconds, the broadcast channel,
/// the address. A count lives one window from its first failure; reaching
/// the limit replaces it with a block for one window, and an address block
/// is broadcast (`!blk ADDRESS SECONDS`) so every node refuses handshakes
/// from it without asking Redis. Returns 1 when an address block started,
/// plus 2 when a user block did.
pub const FAILURE_SCRIPT: &str = r#"
local started = 0
for i = 0, #KEYS / 2 - 1 do
  local count, block = KEYS[2 * i + 1], KEYS[2 * i + 2]
  if redis.call('EXISTS', block) == 0 then
    local n = redis.call('INCR', count)
    if n == 1 then redis.call('EXPIRE', count, ARGV[3]) end
    if n >= tonumber(ARGV[i + 1]) then
      redis.call('DEL', count)
      redis.call('SET', block, '1', 'EX', ARGV[3])
      started = started + i + 1
      if i == 0 then redis.call('PUBLISH', ARGV[4], '!blk ' .. ARGV[5] .. ' ' .. ARGV[3]) end
    end
  end
end
return started
"#;

/// Parses an address-block broadcast (`!blk ADDRESS SECONDS`).
pub fn decode_block(payload: &[u8]) -> Option<(std::net::IpAddr, u64)> {
    let text = std::str::from_utf8(payload.strip_prefix(b"!blk ")?).ok()?;
    let (addr, secs) = text.split_once(' ')?;
    let secs: u64 = secs.parse().ok()?;
    (secs <= 3600).then_some(())?;
    Some((addr.parse().ok()?, secs))
}

/// Announces a revocation (SPEC §12): KEYS the revoked-sessions sorted
/// set, the broadcast channel, and for `sub` the user's set of sessions;
/// ARGV `sid` or `sub`, the id, until (Unix seconds), now, the session-key
/// prefix. A session id is kept in the set until its access tokens can no
/// longer be valid (nodes load it when they connect) and broadcast as
/// `!sid ID`; its session in Redis ([`sessions`]) is marked revoked. For
/// `sub`, each live session of the user is revoked so, then `!sub NAME` is
/// broadcast. Returns, for `sid`, `{code, sub}`: code 0 (no such session
/// in Redis), 1 (revoked now) or 2 (revoked before), and the session's
/// user (absent with code 0); for `sub`, the sessions revoked now.
pub const REVOKE_SCRIPT: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
local function revoke(sid)
  local rev = redis.call('HGET', ARGV[5] .. sid, 'rev')
  if rev == '0' then redis.call('HSET', ARGV[5] .. sid, 'rev', '1') end
  redis.call('ZADD', KEYS[1], ARGV[3], sid)
  redis.call('PUBLISH', KEYS[2], '!sid ' .. sid)
  return rev
end
if ARGV[1] == 'sid' then
  local sub = redis.call('HGET', ARGV[5] .. ARGV[2], 'sub')
  local rev = revoke(ARGV[2])
  if not rev then return {0} elseif rev == '0' then return {1, sub} else return {2, sub} end
end
local n = 0
if KEYS[3] then
  for _, sid in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    if redis.call('HGET', ARGV[5] .. sid, 'rev') == '0' then
      revoke(sid)
      n = n + 1
    end
  end
end
redis.call('PUBLISH', KEYS[2], '!sub ' .. ARGV[2])
return n
"#;

/// Shares a security event (SPEC §13) with every node: KEYS the broadcast
/// channel; ARGV `!ev NODE JSON`.
pub const EVENT_SCRIPT: &str = r#"
return redis.call('PUBLISH', KEYS[1], ARGV[1])
"#;

/// A security event as broadcast: `!ev NODE {event JSON}`.
pub fn encode_event(node: &str, e: &crate::events::Event) -> String {
    format!("!ev {node} {}", e.to_json())
}

/// Parses an event broadcast: the node it came from and the event (its
/// `id` is the sender's; the receiver numbers it anew).
pub fn decode_event(payload: &[u8]) -> Option<(String, crate::events::Event)> {
    #[derive(serde::Deserialize)]
    struct Wire {
        ts: u64,
        event: String,
        reason: String,
        peer: Option<String>,
        sub: Option<String>,
        #[serde(default)]
        by: Option<String>,
    }
    let text = std::str::from_utf8(payload.strip_prefix(b"!ev ")?).ok()?;
    let (node, json) = text.split_once(' ')?;
    if !super::node_id_ok(node) {
        return None;
    }
    let w: Wire = serde_json::from_str(json).ok()?;
    let clip = crate::events::clip;
    Some((
        node.to_string(),
        crate::events::Event {
            id: 0,
            ts: w.ts,
            event: crate::events::Kind::parse(&w.event)?,
            reason: clip(&w.reason),
            peer: w.peer.as_deref().map(clip),
            sub: w.sub.as_deref().map(clip),
            by: w.by.as_deref().map(clip),
            node: Some(node.to_string()),
        },
    ))
}

/// The revoked sessions still relevant: KEYS the sorted set; ARGV now.
/// Returns `{sid, until, ...}`.
pub const REVOKED_SCRIPT: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
"#;

/// Most security events a node sends to the others per second, and most
/// failed handshakes it counts in Redis per second: a flood of refused
/// upgrades costs Redis and the other nodes a bounded amount (past it the
/// events stay on their node, and the node's own §7 count still holds).
pub const SHARED_PER_SEC: u32 = 500;

/// A per-second budget: `(second, used)`. Takes one unit at `now` (Unix
/// seconds) if fewer than `max` were used in that second.
pub fn take_budget(budget: &Cell<(u64, u32)>, now: u64, max: u32) -> bool {
    let (sec, used) = budget.get();
    let used = if sec == now { used } else { 0 };
    if used >= max {
        return false;
    }
    budget.set((now, used + 1));
    true
}

/// Most revocations kept for announcing after Redis is back (each is also
/// in force on this node at once).
const MAX_UNSENT: usize = 10_000;

/// A revocation broadcast: `!sid ID` or `!sub NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    Sid(String),
    Sub(String),
}

/// Parses a revocation broadcast (`None` when it is not one).
pub fn decode_revocation(payload: &[u8]) -> Option<Revocation> {
    let text = std::str::from_utf8(payload.strip_prefix(b"!")?).ok()?;
    let (kind, id) = text.split_once(' ')?;
    if id.is_empty() || id.len() > 256 {
        return None;
    }
    match kind {
        "sid" => Some(Revocation::Sid(id.to_string())),
        "sub" => Some(Revocation::Sub(id.to_string())),
        _ => None,
    }
}

/// How long a channel's epoch outlives its last publish or read in Redis
/// beyond `--history-ttl`.
pub const CHANNEL_GRACE_MS: u64 = 86_400_000;

/// One message as stored and broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    pub ts_ms: u64,
    pub sub: String,
    pub data: String,
}

/// A broadcast publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pub {
    pub channel: String,
    pub epoch: String,
    pub entry: Entry,
}

fn split_word(s: &str) -> Option<(&str, &str)> {
    s.split_once(' ')
}

/// `OFFSET TS SUBLEN SUB DATA` (what [`PUBLISH_SCRIPT`] stores).
pub fn encode_entry(e: &Entry) -> String {
    format!("{} {} {} {}{}", e.offset, e.ts_ms, e.sub.len(), e.sub, e.data)
}

/// Parses what [`encode_entry`] makes.
pub fn decode_entry(s: &str) -> Option<Entry> {
    let (offset, rest) = split_word(s)?;
    let (ts, rest) = split_word(rest)?;
    let (sublen, rest) = split_word(rest)?;
    let sublen: usize = sublen.parse().ok()?;
    let sub = rest.get(..sublen)?;
    let data = rest.get(sublen..)?;
    let offset: u64 = offset.parse().ok()?;
    if offset == 0 || data.is_empty() {
        return None;
    }
    Some(Entry {
        offset,
        ts_ms: ts.parse().ok()?,
        sub: sub.to_string(),
        data: data.to_string(),
    })
}

/// `CHLEN CHANNEL EPOCH ENTRY` (what [`PUBLISH_SCRIPT`] broadcasts).
pub fn encode_pub(p: &Pub) -> String {
    format!(
        "{} {}{} {}",
        p.channel.len(),
        p.channel,
        p.epoch,
        encode_entry(&p.entry)
    )
}

/// Parses a broadcast; `None` for anything malformed (logged and skipped).
pub fn decode_pub(s: &str) -> Option<Pub> {
    let (chlen, rest) = split_word(s)?;
    let chlen: usize = chlen.parse().ok()?;
    let channel = rest.get(..chlen)?;
    let (epoch, entry) = split_word(rest.get(chlen..)?)?;
    if !crate::hub::channel_name_ok(channel) || !epoch_ok(epoch) {
        return None;
    }
    Some(Pub {
        channel: channel.to_string(),
        epoch: epoch.to_string(),
        entry: decode_entry(entry)?,
    })
}

/// A channel as [`READ_SCRIPT`] returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub epoch: String,
    pub last: u64,
    /// Oldest first, offsets ascending.
    pub entries: Vec<Entry>,
}

/// Parses a [`READ_SCRIPT`] reply.
pub fn decode_snapshot(v: &Value) -> Option<Snapshot> {
    let Value::Array(items) = v else { return None };
    let mut it = items.iter();
    let epoch = std::str::from_utf8(bytes(it.next()?)?).ok()?;
    if !epoch_ok(epoch) {
        return None;
    }
    let last = u64::try_from(int(it.next()?)?).ok()?;
    let mut entries: Vec<Entry> = Vec::new();
    for v in it {
        let e = decode_entry(std::str::from_utf8(bytes(v)?).ok()?)?;
        if e.offset > last || entries.last().is_some_and(|p| p.offset >= e.offset) {
            return None;
        }
        entries.push(e);
    }
    Some(Snapshot {
        epoch: epoch.to_string(),
        last,
        entries,
    })
}

/// Parses a [`PUBLISH_SCRIPT`] reply: `(epoch, offset)`.
pub fn decode_published(v: &Value) -> Option<(String, u64)> {
    let Value::Array(items) = v else { return None };
    let [e, o] = items.as_slice() else { return None };
    let epoch = std::str::from_utf8(bytes(e)?).ok()?;
    let offset = u64::try_from(int(o)?).ok()?;
    (epoch_ok(epoch) && offset > 0).then(|| (epoch.to_string(), offset))
}

/// A fresh random epoch (16 characters of `A-Z a-z 0-9 _ -`).
fn random_epoch() -> String {
    use base64::Engine;
    let mut b = [0u8; 12];
    // Without OS randomness a zero epoch still names one history: a new one
    // is only ever needed after Redis lost the old one.
    let _ = getrandom::fill(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A random `--node-id`.
pub fn random_node_id() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    format!("node-{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

// ---------------------------------------------------------------- the mirror (sans-IO)

/// Where this node's copy of one channel stands.
#[derive(Debug)]
enum Sync {
    /// Equal to Redis, kept so by the broadcast.
    Synced,
    /// Was synced before the pub/sub connection dropped.
    Stale,
    /// A load from Redis is under way; broadcasts wait in `held`.
    Loading {
        /// Where this node's subscribers were (epoch, last offset) when the
        /// channel was synced before; `None` for a channel never synced.
        prev: Option<(String, u64)>,
        held: Vec<Pub>,
    },
}

/// What to do with one broadcast.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Keep it in the history and offer it to the channel's subscribers.
    Deliver,
    /// Nothing (a duplicate, or a channel no one here uses).
    Skip,
    /// Held until the load under way finishes.
    Held,
    /// Held; start loading the channel.
    Load,
}

/// Which channels this node has synced with Redis, and the broadcasts
/// held while loading. Pure: the shell passes the hub's view in.
#[derive(Debug, Default)]
pub struct Mirror {
    channels: HashMap<String, Sync>,
}

impl Mirror {
    /// Whether `channel` is synced (`known`: the hub's history still has it).
    pub fn is_synced(&self, channel: &str, known: bool) -> bool {
        known && matches!(self.channels.get(channel), Some(Sync::Synced))
    }

    pub fn is_loading(&self, channel: &str) -> bool {
        matches!(self.channels.get(channel), Some(Sync::Loading { .. }))
    }

    /// Marks `channel` as loading (call [`Mirror::loaded`] or
    /// [`Mirror::load_failed`] after). `pos`: the hub's position of it.
    pub fn start_load(&mut self, channel: &str, pos: Option<Position>) {
        let was = matches!(self.channels.get(channel), Some(Sync::Synced | Sync::Stale));
        let prev = if was {
            pos.map(|p| (p.epoch.to_string(), p.offset))
        } else {
            None
        };
        self.channels
            .insert(channel.to_string(), Sync::Loading { prev, held: Vec::new() });
    }

    /// A broadcast arrived. `pos`: the hub's position of the channel when
    /// its history has it; `subscribed`: some socket here is on it.
    pub fn on_pub(&mut self, p: Pub, pos: Option<Position>, subscribed: bool) -> Step {
        match self.channels.get_mut(&p.channel) {
            Some(Sync::Loading { held, .. }) => {
                held.push(p);
                Step::Held
            }
            Some(Sync::Synced) if pos.is_some() => {
                let Some(pos) = pos else { return Step::Skip };
                if *pos.epoch == *p.epoch && p.entry.offset <= pos.offset {
                    return Step::Skip;
                }
                if *pos.epoch == *p.epoch && p.entry.offset == pos.offset + 1 {
                    return Step::Deliver;
                }
                // A gap or a new epoch: reload, then deliver what was missed.
                let channel = p.channel.clone();
                self.start_load(&channel, Some(pos));
                self.hold(p);
                Step::Load
            }
            _ if subscribed => {
                let channel = p.channel.clone();
                self.start_load(&channel, pos);
                self.hold(p);
                Step::Load
            }
            _ => Step::Skip,
        }
    }

    fn hold(&mut self, p: Pub) {
        if let Some(Sync::Loading { held, .. }) = self.channels.get_mut(&p.channel) {
            held.push(p);
        }
    }

    /// A load finished with `snap` (the shell puts it in the history).
    /// Returns what the channel's subscribers here have not seen, in
    /// order: entries of the snapshot after their last position (when the
    /// channel was synced before), then the held broadcasts not yet seen.
    pub fn loaded(&mut self, channel: &str, snap: &Snapshot) -> Vec<Entry> {
        let Some(Sync::Loading { prev, held }) = self.channels.remove(channel) else {
            return Vec::new();
        };
        self.channels.insert(channel.to_string(), Sync::Synced);
        let mut out: Vec<Entry> = Vec::new();
        let mut sent = 0;
        match prev {
            Some((e, last)) if e == snap.epoch => {
                out.extend(snap.entries.iter().filter(|x| x.offset > last).cloned());
                sent = last.max(snap.last);
            }
            Some(_) => {
                out.extend(snap.entries.iter().cloned());
                sent = snap.last;
            }
            None => {}
        }
        for p in held {
            if p.epoch == snap.epoch && p.entry.offset > sent {
                sent = p.entry.offset;
                out.push(p.entry);
            }
        }
        out
    }

    /// A load failed (Redis went away): the channel waits for the next one.
    pub fn load_failed(&mut self, channel: &str) {
        if let Some(Sync::Loading { prev, .. }) = self.channels.remove(channel)
            && prev.is_some()
        {
            self.channels.insert(channel.to_string(), Sync::Stale);
        }
    }

    /// The pub/sub connection dropped: nothing is synced any more.
    pub fn disconnected(&mut self) {
        for s in self.channels.values_mut() {
            if matches!(s, Sync::Synced) {
                *s = Sync::Stale;
            }
        }
    }

    /// After a reconnect: the channels that were synced. The shell reloads
    /// those with subscribers and calls [`Mirror::forget`] on the others.
    pub fn stale(&self) -> Vec<String> {
        self.channels
            .iter()
            .filter(|(_, s)| matches!(s, Sync::Stale))
            .map(|(c, _)| c.clone())
            .collect()
    }

    pub fn forget(&mut self, channel: &str) {
        if !self.is_loading(channel) {
            self.channels.remove(channel);
        }
    }

    /// Channels known (synced, stale or loading).
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Drops channels the hub no longer has (pruned).
    pub fn retain(&mut self, known: impl Fn(&str) -> bool) {
        self.channels
            .retain(|c, s| matches!(s, Sync::Loading { .. }) || known(c));
    }
}

// ---------------------------------------------------------------- the async shell

/// How long one command may take before the connection counts as broken.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Silence on the subscription after which the node sends a PING.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Reconnect backoff: first wait and cap.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// `fut`, or an error after [`CALL_TIMEOUT`] (a timer of the loop's reactor).
async fn within<T>(fut: impl std::future::Future<Output = ::redis::RedisResult<T>>) -> Result<T, String> {
    smol::future::or(async { fut.await.map_err(|e| describe(&e)) }, async {
        crate::reactor::Timer::after(CALL_TIMEOUT).await;
        Err("timed out".to_string())
    })
    .await
}

/// A Redis error for the log: a refused AUTH is named without Redis's text.
fn describe(e: &::redis::RedisError) -> String {
    if e.kind() == ::redis::ErrorKind::AuthenticationFailed {
        "AUTH refused".to_string()
    } else {
        e.to_string()
    }
}

/// The `redis` crate's client for `--redis` (it keeps the password; it is
/// never logged). No `CLIENT SETINFO` at connect: the handshake is AUTH and
/// SELECT only, as needed.
fn client(cfg: &ClusterConfig) -> Result<::redis::Client, String> {
    use ::redis::IntoConnectionInfo;
    let mut r = ::redis::RedisConnectionInfo::default()
        .set_db(i64::from(cfg.url.db))
        .set_skip_set_lib_name();
    if let Some(u) = &cfg.url.user {
        r = r.set_username(u);
    }
    if let Some(p) = &cfg.url.password {
        r = r.set_password(p);
    }
    let info = ::redis::ConnectionAddr::Tcp(cfg.url.host.clone(), cfg.url.port)
        .into_connection_info()
        .map_err(|e| describe(&e))?
        .set_redis_settings(r);
    ::redis::Client::open(info).map_err(|e| describe(&e))
}

/// The scripts, with their SHA-1 names.
struct Scripts {
    publish: ::redis::Script,
    read: ::redis::Script,
    totp: ::redis::Script,
    blocked: ::redis::Script,
    failure: ::redis::Script,
    revoke: ::redis::Script,
    revoked: ::redis::Script,
    login: ::redis::Script,
    refresh: ::redis::Script,
    event: ::redis::Script,
}

/// This node: the Redis connections, the mirror, and the up/down state.
pub struct Node {
    cfg: ClusterConfig,
    keys: Keys,
    scripts: Scripts,
    /// Sessions revoked anywhere in the cluster, until when (Unix seconds):
    /// the handshake checks it locally.
    revoked: RefCell<HashMap<String, u64>>,
    /// Revocations made while Redis was away, announced when it is back.
    unsent: RefCell<Vec<Revocation>>,
    /// Addresses blocked by the cluster's §7 counts, until when (Unix
    /// seconds), from the broadcast: handshakes check it locally.
    blocked: RefCell<HashMap<std::net::IpAddr, u64>>,
    /// [`SHARED_PER_SEC`] budgets: events sent, failed handshakes counted.
    events_budget: Cell<(u64, u32)>,
    failures_budget: Cell<(u64, u32)>,
    /// The server's shared state (set when [`Node::supervise`] starts).
    shared: RefCell<std::rc::Weak<Shared>>,
    /// The command connection (multiplexed: a clone per call); `None`
    /// while Redis is down.
    cmd: RefCell<Option<MultiplexedConnection>>,
    up: Cell<bool>,
    /// Set (and `broken_event` notified) when a command failed: the
    /// supervisor reconnects.
    broken: Cell<bool>,
    broken_event: event_listener::Event,
    mirror: RefCell<Mirror>,
    /// Notified after every load (success or not).
    loaded: event_listener::Event,
    ex: Rc<smol::LocalExecutor<'static>>,
}

/// Where the history of `channel` stands in the hub, if it has it.
fn hub_position(shared: &Shared, channel: &str) -> Option<Position> {
    let hub = shared.hub.borrow();
    hub.history().has(channel).then(|| hub.history().position(channel))
}

impl Node {
    pub fn new(cfg: ClusterConfig, ex: Rc<smol::LocalExecutor<'static>>) -> Node {
        Node {
            keys: Keys::new(&cfg.prefix),
            cfg,
            scripts: Scripts {
                publish: ::redis::Script::new(PUBLISH_SCRIPT),
                read: ::redis::Script::new(READ_SCRIPT),
                totp: ::redis::Script::new(TOTP_SCRIPT),
                blocked: ::redis::Script::new(BLOCKED_SCRIPT),
                failure: ::redis::Script::new(FAILURE_SCRIPT),
                revoke: ::redis::Script::new(REVOKE_SCRIPT),
                revoked: ::redis::Script::new(REVOKED_SCRIPT),
                login: ::redis::Script::new(&sessions::login_script()),
                refresh: ::redis::Script::new(&sessions::refresh_script()),
                event: ::redis::Script::new(EVENT_SCRIPT),
            },
            revoked: RefCell::default(),
            unsent: RefCell::default(),
            blocked: RefCell::default(),
            events_budget: Cell::new((0, 0)),
            failures_budget: Cell::new((0, 0)),
            shared: RefCell::new(std::rc::Weak::new()),
            cmd: RefCell::new(None),
            up: Cell::new(false),
            broken: Cell::new(false),
            broken_event: event_listener::Event::new(),
            mirror: RefCell::default(),
            loaded: event_listener::Event::new(),
            ex,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.get()
    }

    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }

    fn mark_broken(&self) {
        self.broken.set(true);
        self.broken_event.notify(usize::MAX);
    }

    /// Runs a script by its SHA (`EVALSHA`), loading it (`SCRIPT LOAD`,
    /// then `EVALSHA` again) when Redis does not know it yet: one round trip
    /// once loaded. `Err` when Redis is down or the call
    /// failed, was refused or took longer than [`CALL_TIMEOUT`]: the
    /// connection then counts as broken.
    async fn script(&self, script: &::redis::Script, keys: &[&[u8]], argv: &[&[u8]]) -> Result<Value, ()> {
        if !self.up.get() {
            return Err(());
        }
        let Some(mut conn) = self.cmd.borrow().clone() else {
            return Err(());
        };
        let mut call = script.prepare_invoke();
        for k in keys {
            call.key(*k);
        }
        for a in argv {
            call.arg(*a);
        }
        match within(call.invoke_async::<Value>(&mut conn)).await {
            Ok(v) => Ok(v),
            Err(_) => {
                *self.cmd.borrow_mut() = None;
                self.mark_broken();
                Err(())
            }
        }
    }

    /// Whether session `sid` was revoked on some node.
    pub fn is_revoked(&self, sid: &str) -> bool {
        self.revoked
            .borrow()
            .get(sid)
            .is_some_and(|&until| until > crate::commands::now_unix())
    }

    /// How long a revoked session id matters: its access tokens, at most
    /// `--access-ttl` (plus leeway) old, are dead after that.
    fn revoked_until(shared: &Shared) -> u64 {
        crate::commands::now_unix()
            .saturating_add(shared.cfg.access_ttl)
            .saturating_add(shared.cfg.gate.verify.leeway)
            .saturating_add(60)
    }

    /// Tells every node about a revocation made here (see
    /// [`super::announce_revocation`]); kept for later while Redis is away.
    pub fn announce(self: &Rc<Self>, r: Revocation) {
        let Some(shared) = self.shared.borrow().upgrade() else {
            return;
        };
        if let Revocation::Sid(sid) = &r {
            self.revoked
                .borrow_mut()
                .insert(sid.clone(), Self::revoked_until(&shared));
        }
        let node = self.clone();
        self.ex
            .spawn(async move {
                if node.send_revocation(&shared, &r).await.is_err() {
                    let mut unsent = node.unsent.borrow_mut();
                    if unsent.len() < MAX_UNSENT {
                        unsent.push(r);
                    }
                }
            })
            .detach();
    }

    /// One [`REVOKE_SCRIPT`] run; its reply.
    async fn send_revocation(&self, shared: &Shared, r: &Revocation) -> Result<Value, ()> {
        let until = Self::revoked_until(shared).to_string();
        let now = crate::commands::now_unix().to_string();
        let (set, ch, prefix) = (self.keys.revoked(), self.keys.broadcast(), self.keys.session_prefix());
        let (kind, id, users) = match r {
            Revocation::Sid(s) => ("sid", s, None),
            Revocation::Sub(s) => ("sub", s, Some(self.keys.user_sessions(s))),
        };
        let mut keys: Vec<&[u8]> = vec![set.as_bytes(), ch.as_bytes()];
        if let Some(u) = &users {
            keys.push(u.as_bytes());
        }
        self.script(
            &self.scripts.revoke,
            &keys,
            &[
                kind.as_bytes(),
                id.as_bytes(),
                until.as_bytes(),
                now.as_bytes(),
                prefix.as_bytes(),
            ],
        )
        .await
    }

    /// At `broker_up`: loads the cluster's revoked sessions, then announces
    /// what was revoked here while Redis was away.
    async fn sync_revocations(self: Rc<Self>, shared: Rc<Shared>) {
        let now = crate::commands::now_unix().to_string();
        let set = self.keys.revoked();
        if let Ok(Value::Array(items)) = self
            .script(&self.scripts.revoked, &[set.as_bytes()], &[now.as_bytes()])
            .await
        {
            let mut revoked = self.revoked.borrow_mut();
            for pair in items.chunks(2) {
                if let [sid, until] = pair
                    && let Some(sid) = bytes(sid).and_then(|b| std::str::from_utf8(b).ok())
                    && let Some(until) = bytes(until).and_then(|b| std::str::from_utf8(b).ok()?.parse::<f64>().ok())
                {
                    revoked.insert(sid.to_string(), until as u64);
                }
            }
        }
        let unsent = std::mem::take(&mut *self.unsent.borrow_mut());
        for r in unsent {
            if self.send_revocation(&shared, &r).await.is_err() {
                self.unsent.borrow_mut().push(r);
            }
        }
        let now = crate::commands::now_unix();
        self.revoked.borrow_mut().retain(|_, until| *until > now);
    }

    /// A revocation broadcast (possibly this node's own): the session is
    /// revoked here too and its sockets close with 4003.
    fn on_revocation(self: &Rc<Self>, shared: &Rc<Shared>, r: Revocation) {
        let changed = match &r {
            Revocation::Sid(sid) => {
                self.revoked
                    .borrow_mut()
                    .insert(sid.clone(), Self::revoked_until(shared));
                let changed = shared.sessions.borrow_mut().revoke(sid);
                crate::server::close_session(shared, sid);
                changed
            }
            Revocation::Sub(sub) => {
                let sids = shared.sessions.borrow_mut().revoke_sub(sub);
                for (_, rights, _, h) in shared.hub.borrow().connections() {
                    if rights.sub == *sub && !h.closing() {
                        h.close(4003, "session revoked");
                    }
                }
                // The sessions this node held: their tokens die everywhere.
                for sid in &sids {
                    self.announce(Revocation::Sid(sid.clone()));
                }
                !sids.is_empty()
            }
        };
        if changed {
            let shared = shared.clone();
            self.ex
                .spawn(async move {
                    shared.persist.commit().await;
                })
                .detach();
        }
    }

    /// See [`super::login_blocked`].
    pub async fn login_blocked(&self, client: std::net::IpAddr, user: &str) -> Result<Option<u64>, ()> {
        let [_, addr_block, _, user_block] = self.keys.throttle(client, user);
        let v = self
            .script(
                &self.scripts.blocked,
                &[addr_block.as_bytes(), user_block.as_bytes()],
                &[],
            )
            .await?;
        match int(&v) {
            Some(0) => Ok(None),
            Some(s) if s > 0 => Ok(Some(s as u64)),
            _ => Err(()),
        }
    }

    /// See [`super::login_failure`].
    pub async fn login_failure(&self, client: std::net::IpAddr, user: &str) -> crate::throttle::NewBlocks {
        self.count_failure(client, Some(user)).await
    }

    /// One [`FAILURE_SCRIPT`] run: a failed login (`user`) or handshake
    /// (`None`: the address only).
    async fn count_failure(&self, client: std::net::IpAddr, user: Option<&str>) -> crate::throttle::NewBlocks {
        let keys = self.keys.throttle(client, user.unwrap_or(""));
        let keys = match user {
            Some(_) => keys.each_ref().map(|k| k.as_bytes()).to_vec(),
            None => keys.get(..2).unwrap_or_default().iter().map(|k| k.as_bytes()).collect(),
        };
        let (addr_limit, user_limit, window) = (
            crate::throttle::LIMIT.to_string(),
            crate::throttle::USER_LIMIT.to_string(),
            crate::throttle::WINDOW_SECS.to_string(),
        );
        let (bcast, addr) = (self.keys.broadcast(), crate::throttle::address_key(client).to_string());
        let started = self
            .script(
                &self.scripts.failure,
                &keys,
                &[
                    addr_limit.as_bytes(),
                    user_limit.as_bytes(),
                    window.as_bytes(),
                    bcast.as_bytes(),
                    addr.as_bytes(),
                ],
            )
            .await
            .ok()
            .and_then(|v| int(&v))
            .unwrap_or(0);
        crate::throttle::NewBlocks {
            address: started & 1 != 0,
            user: started & 2 != 0,
        }
    }

    /// A handshake answered 401 here (see [`super::handshake_failure`]):
    /// counted in Redis in the background; when the count starts a block,
    /// this node logs it like its own (`ip_throttled`).
    pub fn handshake_failure(self: &Rc<Self>, client: std::net::IpAddr) {
        let Some(shared) = self.shared.borrow().upgrade() else {
            return;
        };
        if !self.up.get() || !take_budget(&self.failures_budget, crate::commands::now_unix(), SHARED_PER_SEC) {
            return;
        }
        let node = self.clone();
        self.ex
            .spawn(async move {
                // Logged once: not again when this node's own count
                // started a block already.
                if node.count_failure(client, None).await.address
                    && shared
                        .throttle
                        .borrow()
                        .blocked(client, crate::commands::now_unix())
                        .is_none()
                {
                    crate::server::address_throttled(&shared, &client.to_string(), client);
                }
            })
            .detach();
    }

    /// Sends a security event recorded here to every other node (in the
    /// background; while Redis is away it stays this node's only).
    pub fn share_event(self: &Rc<Self>, e: &crate::events::Event) {
        if !self.up.get() || !take_budget(&self.events_budget, crate::commands::now_unix(), SHARED_PER_SEC) {
            return;
        }
        let payload = encode_event(&self.cfg.node_id, e);
        let node = self.clone();
        self.ex
            .spawn(async move {
                let ch = node.keys.broadcast();
                let _ = node
                    .script(&node.scripts.event, &[ch.as_bytes()], &[payload.as_bytes()])
                    .await;
            })
            .detach();
    }

    /// Whether handshakes from `client` are blocked by a cluster-wide count
    /// (learned from the broadcast): the seconds left.
    pub fn address_blocked(&self, client: std::net::IpAddr, now: u64) -> Option<u64> {
        let key = crate::throttle::address_key(client);
        let until = *self.blocked.borrow().get(&key)?;
        (until > now).then(|| until - now)
    }

    /// An address block broadcast by some node.
    fn on_block(&self, addr: std::net::IpAddr, secs: u64) {
        let now = crate::commands::now_unix();
        let mut blocked = self.blocked.borrow_mut();
        if blocked.len() >= crate::throttle::MAX_ADDRESSES {
            blocked.retain(|_, until| *until > now);
        }
        if blocked.len() < crate::throttle::MAX_ADDRESSES {
            blocked.insert(addr, now.saturating_add(secs));
        }
    }

    /// See [`super::claim_totp_step`].
    pub async fn claim_totp_step(&self, user: &str, step: u64) -> Result<bool, ()> {
        let key = self.keys.totp(user);
        let step = step.to_string();
        let ttl = TOTP_STEP_TTL_MS.to_string();
        match self
            .script(
                &self.scripts.totp,
                &[key.as_bytes()],
                &[step.as_bytes(), ttl.as_bytes()],
            )
            .await?
        {
            Value::Int(1) => Ok(true),
            Value::Int(0) => Ok(false),
            _ => Err(()),
        }
    }

    /// `publish` in cluster mode (see [`super::publish`]).
    pub async fn publish(
        self: Rc<Self>,
        shared: &Shared,
        rights: &Rights,
        channel: &str,
        data: &RawValue,
    ) -> Result<Published, PublishError<StoreFailure>> {
        {
            let hub = shared.hub.borrow();
            crate::hub::may_publish(rights, channel, hub.levels()).map_err(PublishError::Denied)?;
        }
        let ts = crate::server::now_millis().to_string();
        let limits = shared.cfg.history;
        let kept = limits.per_channel.to_string();
        let history_ttl = limits.ttl_ms.max(1).to_string();
        let channel_ttl = limits.ttl_ms.saturating_add(CHANNEL_GRACE_MS).to_string();
        let epoch = random_epoch();
        let (meta, hist, bcast) = (
            self.keys.meta(channel),
            self.keys.history(channel),
            self.keys.broadcast(),
        );
        let reply = self
            .script(
                &self.scripts.publish,
                &[meta.as_bytes(), hist.as_bytes(), bcast.as_bytes()],
                &[
                    channel.as_bytes(),
                    ts.as_bytes(),
                    rights.sub.as_bytes(),
                    data.get().as_bytes(),
                    epoch.as_bytes(),
                    kept.as_bytes(),
                    history_ttl.as_bytes(),
                    channel_ttl.as_bytes(),
                ],
            )
            .await
            .map_err(|()| PublishError::Store(StoreFailure::Broker))?;
        let Some((epoch, id)) = decode_published(&reply) else {
            shared.log.warn("broker_bad_reply", &[("command", "publish".into())]);
            return Err(PublishError::Store(StoreFailure::Broker));
        };
        Ok(Published {
            id,
            epoch: Rc::from(epoch),
            delivered: 0,
            slow: Vec::new(),
            congested: Vec::new(),
        })
    }

    /// See [`super::ready_to_subscribe`].
    pub async fn ready(self: Rc<Self>, shared: &Rc<Shared>, rights: &Rights, channel: &str) -> Result<(), ()> {
        // The hub refuses these itself, and `$security` stays per node.
        if !crate::hub::channel_name_ok(channel)
            || crate::hub::may_subscribe(rights, channel, shared.hub.borrow().levels()).is_err()
        {
            return Ok(());
        }
        // Every load wakes every waiter: wait for this channel's, at most
        // two loads and a bounded time.
        let deadline = std::time::Instant::now() + CALL_TIMEOUT * 2;
        let mut loads = 0;
        loop {
            let known = shared.hub.borrow().history().has(channel);
            if self.mirror.borrow().is_synced(channel, known) {
                return Ok(());
            }
            if !self.up.get() {
                return Err(());
            }
            let listener = self.loaded.listen();
            if !self.mirror.borrow().is_loading(channel) {
                if loads == 2 {
                    return Err(());
                }
                loads += 1;
                self.clone().spawn_load(shared, channel);
            }
            let woke = smol::future::or(
                async {
                    listener.await;
                    true
                },
                async {
                    crate::reactor::Timer::at(deadline).await;
                    false
                },
            )
            .await;
            if !woke {
                return Err(());
            }
        }
    }

    /// Starts loading `channel` from Redis on the event loop.
    fn spawn_load(self: Rc<Self>, shared: &Rc<Shared>, channel: &str) {
        {
            // Channels the hub pruned leave the mirror too (now and then).
            let hub = shared.hub.borrow();
            let mut m = self.mirror.borrow_mut();
            if m.len() > 2 * hub.channel_count() + 64 {
                m.retain(|c| hub.history().has(c));
            }
        }
        let pos = hub_position(shared, channel);
        self.mirror.borrow_mut().start_load(channel, pos);
        self.launch_load(shared, channel);
    }

    /// Runs the load of a channel already marked as loading.
    fn launch_load(self: Rc<Self>, shared: &Rc<Shared>, channel: &str) {
        let shared = shared.clone();
        let channel = channel.to_string();
        let ex = self.ex.clone();
        ex.spawn(async move {
            let epoch = random_epoch();
            let ttl = shared.cfg.history.ttl_ms.saturating_add(CHANNEL_GRACE_MS).to_string();
            let (meta, hist) = (self.keys.meta(&channel), self.keys.history(&channel));
            let reply = self
                .script(
                    &self.scripts.read,
                    &[meta.as_bytes(), hist.as_bytes()],
                    &[epoch.as_bytes(), ttl.as_bytes()],
                )
                .await;
            match reply.as_ref().ok().and_then(decode_snapshot) {
                Some(snap) => self.apply(&shared, &channel, &snap),
                None => {
                    if reply.is_ok() {
                        shared.log.warn("broker_bad_reply", &[("command", "read".into())]);
                    }
                    self.mirror.borrow_mut().load_failed(&channel);
                }
            }
            self.loaded.notify(usize::MAX);
        })
        .detach();
    }

    /// Puts a loaded snapshot in the hub's history and delivers what the
    /// channel's subscribers here missed.
    fn apply(&self, shared: &Shared, channel: &str, snap: &Snapshot) {
        let now = crate::server::now_millis();
        let missed = self.mirror.borrow_mut().loaded(channel, snap);
        {
            let mut hub = shared.hub.borrow_mut();
            let h = hub.history_mut();
            let first = snap.entries.first().map_or(snap.last, |e| e.offset.saturating_sub(1));
            h.restore_marker(channel, &snap.epoch, first);
            for e in &snap.entries {
                if let Some(frame) = frame_of(channel, e) {
                    h.restore(channel, &snap.epoch, e.offset, e.ts_ms, frame, now);
                }
            }
            if h.position(channel).offset < snap.last {
                h.restore_marker(channel, &snap.epoch, snap.last);
            }
        }
        for e in missed {
            self.deliver(shared, channel, &snap.epoch, &e, now);
        }
    }

    /// Keeps `e` in the hub's history (unless it is there) and offers it to
    /// the channel's subscribers here.
    fn deliver(&self, shared: &Shared, channel: &str, epoch: &str, e: &Entry, now: u64) {
        let Some(frame) = frame_of(channel, e) else {
            shared.log.warn("broker_bad_message", &[("channel", channel.into())]);
            return;
        };
        let p = {
            let mut hub = shared.hub.borrow_mut();
            hub.history_mut()
                .restore(channel, epoch, e.offset, e.ts_ms, frame.clone(), now);
            let epoch = hub.history().position(channel).epoch;
            hub.fan_out(channel, &frame, e.offset, epoch)
        };
        crate::server::after_publish(shared, &p);
    }

    /// One broadcast from Redis.
    fn on_message(self: &Rc<Self>, shared: &Rc<Shared>, payload: &[u8]) {
        if payload.starts_with(b"!ev ") {
            match decode_event(payload) {
                Some((node, _)) if node == self.cfg.node_id => {}
                Some((_, e)) => crate::server::remote_security_event(shared, &e),
                None => shared.log.warn("broker_bad_message", &[]),
            }
            return;
        }
        if payload.starts_with(b"!blk ") {
            match decode_block(payload) {
                Some((addr, secs)) => self.on_block(addr, secs),
                None => shared.log.warn("broker_bad_message", &[]),
            }
            return;
        }
        if payload.first() == Some(&b'!') {
            match decode_revocation(payload) {
                Some(r) => self.on_revocation(shared, r),
                None => shared.log.warn("broker_bad_message", &[]),
            }
            return;
        }
        let Some(p) = std::str::from_utf8(payload).ok().and_then(decode_pub) else {
            shared.log.warn("broker_bad_message", &[]);
            return;
        };
        let (pos, subscribed) = {
            let hub = shared.hub.borrow();
            let pos = hub
                .history()
                .has(&p.channel)
                .then(|| hub.history().position(&p.channel));
            (pos, hub.has_subscribers(&p.channel))
        };
        let channel = p.channel.clone();
        let epoch = p.epoch.clone();
        let entry = p.entry.clone();
        let step = self.mirror.borrow_mut().on_pub(p, pos, subscribed);
        match step {
            Step::Deliver => self.deliver(shared, &channel, &epoch, &entry, crate::server::now_millis()),
            Step::Load => self.clone().launch_load(shared, &channel),
            Step::Held | Step::Skip => {}
        }
    }

    /// Connects the command and pub/sub connections and subscribes. The
    /// crate's own timeouts are off: each step has [`CALL_TIMEOUT`] here.
    async fn connect(&self) -> Result<(PubSubSink, PubSubStream), String> {
        let client = client(&self.cfg)?;
        let config = ::redis::AsyncConnectionConfig::new()
            .set_connection_timeout(None)
            .set_response_timeout(None);
        let cmd = within(client.get_multiplexed_async_connection_with_config(&config)).await?;
        let (mut sink, stream) = within(client.get_async_pubsub()).await?.split();
        within(sink.subscribe(self.keys.broadcast())).await?;
        // The crate takes an error reply to SUBSCRIBE (NOAUTH, NOPERM) as
        // done: a PING answered in the subscribed form (`pong`, ``) confirms
        // the subscription.
        let pong = within(sink.ping::<Value>()).await?;
        if !matches!(&pong, Value::Array(a) if a.first().and_then(bytes) == Some(&b"pong"[..])) {
            return Err("SUBSCRIBE was not confirmed".to_string());
        }
        *self.cmd.borrow_mut() = Some(cmd);
        Ok((sink, stream))
    }

    /// The node's life: connect, feed the hub from the broadcast, and after
    /// a failure reconnect with backoff (logging `broker_down` once per
    /// outage and `broker_up` when back).
    pub async fn supervise(self: Rc<Self>, shared: Rc<Shared>) {
        *self.shared.borrow_mut() = Rc::downgrade(&shared);
        let mut backoff = BACKOFF_MIN;
        let mut announced_down = false;
        loop {
            self.broken.set(false);
            match self.connect().await {
                Ok((mut sink, mut sub)) => {
                    backoff = BACKOFF_MIN;
                    self.up.set(true);
                    shared.log.info(
                        "broker_up",
                        &[
                            ("node", self.cfg.node_id.as_str().into()),
                            (
                                "redis",
                                (&format!("{}:{}", self.cfg.url.host, self.cfg.url.port)).into(),
                            ),
                        ],
                    );
                    self.resync(&shared);
                    self.ex.spawn(self.clone().sync_revocations(shared.clone())).detach();
                    // A PING on the subscription every `PING_EVERY` of
                    // silence; no reply within `CALL_TIMEOUT` after it counts
                    // as down (a connection can die without a reset).
                    let mut heard = std::time::Instant::now();
                    let why = loop {
                        if self.broken.get() {
                            break "a command failed".to_string();
                        }
                        let listener = self.broken_event.listen();
                        let ev = smol::future::or(
                            async { Some(Some(sub.next().await)) },
                            smol::future::or(
                                async {
                                    listener.await;
                                    None
                                },
                                async {
                                    crate::reactor::Timer::at(heard + PING_EVERY).await;
                                    Some(None)
                                },
                            ),
                        )
                        .await;
                        match ev {
                            None => continue,
                            Some(None) => match within(sink.ping::<Value>()).await {
                                Ok(_) => heard = std::time::Instant::now(),
                                Err(e) => break format!("no reply to PING: {e}"),
                            },
                            Some(Some(None)) => break "connection closed by Redis".to_string(),
                            Some(Some(Some(msg))) => {
                                heard = std::time::Instant::now();
                                self.on_message(&shared, msg.get_payload_bytes());
                            }
                        }
                    };
                    self.up.set(false);
                    *self.cmd.borrow_mut() = None;
                    drop((sink, sub));
                    self.mirror.borrow_mut().disconnected();
                    shared.log.warn(
                        "broker_down",
                        &[("node", self.cfg.node_id.as_str().into()), ("error", (&why).into())],
                    );
                    announced_down = true;
                }
                Err(e) => {
                    if !announced_down {
                        shared.log.warn(
                            "broker_down",
                            &[("node", self.cfg.node_id.as_str().into()), ("error", (&e).into())],
                        );
                        announced_down = true;
                    }
                }
            }
            crate::reactor::Timer::after(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// After a reconnect: reloads the channels this node had synced and
    /// still has subscribers on (delivering what they missed while Redis
    /// was away); forgets the others.
    fn resync(self: &Rc<Self>, shared: &Rc<Shared>) {
        {
            let hub = shared.hub.borrow();
            self.mirror.borrow_mut().retain(|c| hub.history().has(c));
        }
        let stale = self.mirror.borrow().stale();
        for channel in stale {
            if shared.hub.borrow().has_subscribers(&channel) {
                self.clone().spawn_load(shared, &channel);
            } else {
                self.mirror.borrow_mut().forget(&channel);
            }
        }
    }
}

/// The `message` frame of a stored entry; `None` when its data is not JSON.
fn frame_of(channel: &str, e: &Entry) -> Option<Frame> {
    let data = RawValue::from_string(e.data.clone()).ok()?;
    Some(Frame::from(crate::protocol::message(
        channel, e.offset, e.ts_ms, &e.sub, &data,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec12_key_names_under_the_prefix() {
        let k = Keys::new("tessera");
        assert_eq!(k.meta("ops"), "tessera:m:ops");
        assert_eq!(k.history("@bob"), "tessera:h:@bob");
        assert_eq!(k.broadcast(), "tessera:pub");
        assert_eq!(k.totp("bo b:"), "tessera:totp:626f20623a");
        let t = k.throttle("2001:db8::1".parse().unwrap(), "ab");
        assert_eq!(t[1], "tessera:thr:b:a:2001:db8::");
        assert_eq!(t[2], "tessera:thr:c:u:6162");
    }

    fn entry(offset: u64, data: &str) -> Entry {
        Entry {
            offset,
            ts_ms: 1_700_000_000_000 + offset,
            sub: "a b:c 9".into(),
            data: data.into(),
        }
    }

    fn pubm(channel: &str, epoch: &str, offset: u64) -> Pub {
        Pub {
            channel: channel.into(),
            epoch: epoch.into(),
            entry: entry(offset, &format!("{{\"n\":{offset}}}")),
        }
    }

    #[test]
    fn spec12_payloads_round_trip_and_refuse_garbage() {
        let p = pubm("ops:x", "EPOCH_0123456789", 42);
        let text = encode_pub(&p);
        assert_eq!(decode_pub(&text), Some(p.clone()));
        assert_eq!(decode_entry(&encode_entry(&p.entry)), Some(p.entry.clone()));
        // Exactly what the Lua script writes for the same values.
        assert!(text.starts_with("5 ops:xEPOCH_0123456789 42 1700000000042 7 a b:c 9{"));
        for bad in [
            "",
            "5 ops",
            "x ops:xEPOCH_0123456789 1 1 0 {}",
            "5 ops:xshort 1 1 0 {}",
            "5 ops:xEPOCH_0123456789 0 1 0 {}",
            "5 ops:xEPOCH_0123456789 1 1 9 ab",
            "5 ops:xEPOCH_0123456789 1 1 0 ",
            "6 ops:x EPOCH_0123456789 1 1 0 {}",
            "5 a bcdEPOCH_0123456789 1 1 0 {}",
        ] {
            assert_eq!(decode_pub(bad), None, "{bad}");
        }
    }

    #[test]
    fn spec13_event_broadcasts_round_trip() {
        let mut ring = crate::events::Events::default();
        let e = ring.record(crate::events::Report {
            node: Some("b"),
            peer: Some("10.0.0.1:5"),
            sub: Some("agent 7"),
            ..crate::events::Report::new(crate::events::Kind::LoginFailed, "wrong_password", 42)
        });
        let wire = encode_event("b", &e);
        assert!(wire.starts_with("!ev b {"), "{wire}");
        let (node, back) = decode_event(wire.as_bytes()).unwrap();
        assert_eq!(node, "b");
        assert_eq!(back, crate::events::Event { id: 0, ..e });
        for bad in [
            &b"!ev b"[..],
            b"!ev b {}",
            b"!ev a/b {\"ts\":1,\"event\":\"revoked\",\"reason\":\"x\",\"peer\":null,\"sub\":null}",
            b"!ev b {\"ts\":1,\"event\":\"nope\",\"reason\":\"x\",\"peer\":null,\"sub\":null}",
            b"!ev b not json",
        ] {
            assert_eq!(decode_event(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn shared_budgets_refill_each_second() {
        let b = Cell::new((0, 0));
        assert!((0..3).all(|_| take_budget(&b, 100, 3)));
        assert!(!take_budget(&b, 100, 3));
        assert!(take_budget(&b, 101, 3));
        assert_eq!(b.get(), (101, 1));
        assert!(!take_budget(&Cell::new((0, 0)), 5, 0));
    }

    #[test]
    fn spec7_address_block_broadcasts() {
        assert_eq!(
            decode_block(b"!blk 10.0.0.1 60"),
            Some(("10.0.0.1".parse().unwrap(), 60))
        );
        assert_eq!(
            decode_block(b"!blk 2001:db8:: 60"),
            Some(("2001:db8::".parse().unwrap(), 60))
        );
        for bad in [
            &b"!blk 10.0.0.1"[..],
            b"!blk x 60",
            b"!blk 10.0.0.1 -1",
            b"!blk 10.0.0.1 99999",
            b"blk 1.2.3.4 6",
        ] {
            assert_eq!(decode_block(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn spec12_revocation_broadcasts() {
        assert_eq!(decode_revocation(b"!sid abc"), Some(Revocation::Sid("abc".into())));
        assert_eq!(decode_revocation(b"!sub a b"), Some(Revocation::Sub("a b".into())));
        for bad in [&b"sid abc"[..], b"!sid ", b"!xyz a", b"!sid", b"!"] {
            assert_eq!(decode_revocation(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn spec12_script_replies_decode() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let v = Value::Array(vec![b("EPOCH_0123456789"), Value::Int(7)]);
        assert_eq!(decode_published(&v), Some(("EPOCH_0123456789".into(), 7)));
        assert_eq!(
            decode_published(&Value::Array(vec![b("bad epoch!"), Value::Int(7)])),
            None
        );
        assert_eq!(
            decode_published(&Value::Array(vec![b("EPOCH_0123456789"), Value::Int(0)])),
            None
        );
        assert_eq!(decode_published(&Value::Nil), None);
        let snap = Value::Array(vec![
            b("EPOCH_0123456789"),
            b("9"),
            b(&encode_entry(&entry(8, "1"))),
            b(&encode_entry(&entry(9, "2"))),
        ]);
        let s = decode_snapshot(&snap).unwrap();
        assert_eq!((s.last, s.entries.len()), (9, 2));
        // Entries out of order or past the last offset are refused, and so
        // is a reply of another shape.
        let bad = Value::Array(vec![b("EPOCH_0123456789"), b("8"), b(&encode_entry(&entry(9, "2")))]);
        assert_eq!(decode_snapshot(&bad), None);
        let bad = Value::Array(vec![b("EPOCH_0123456789"), b("9"), Value::Int(3)]);
        assert_eq!(decode_snapshot(&bad), None);
        assert_eq!(decode_snapshot(&Value::Okay), None);
    }

    fn pos(epoch: &str, offset: u64) -> Option<Position> {
        Some(Position {
            epoch: Rc::from(epoch),
            offset,
        })
    }

    const E: &str = "EPOCH_0123456789";
    const F: &str = "EPOCH_new_456789";

    /// A snapshot of `epoch` whose last offset is `last`, holding `offsets`.
    fn snap(epoch: &str, last: u64, offsets: impl IntoIterator<Item = u64>) -> Snapshot {
        Snapshot {
            epoch: epoch.into(),
            last,
            entries: offsets.into_iter().map(|n| entry(n, "0")).collect(),
        }
    }

    /// Finishes the load of `channel` with `s`: the offsets delivered.
    fn load(m: &mut Mirror, channel: &str, s: &Snapshot) -> Vec<u64> {
        m.loaded(channel, s).iter().map(|e| e.offset).collect()
    }

    #[test]
    fn spec12_mirror_delivers_in_order_and_reloads_on_a_gap() {
        let mut m = Mirror::default();
        // Nobody here uses the channel: ignored.
        assert_eq!(m.on_pub(pubm("ops", E, 1), None, false), Step::Skip);
        // A subscriber on a never-synced channel: load, hold.
        assert_eq!(m.on_pub(pubm("ops", E, 2), None, true), Step::Load);
        assert_eq!(m.on_pub(pubm("ops", E, 3), None, true), Step::Held);
        // Never synced: the subscribers get what was held (2 and 3), not
        // the older history.
        assert_eq!(load(&mut m, "ops", &snap(E, 2, 1..=2)), [2, 3]);
        assert!(m.is_synced("ops", true));
        assert!(!m.is_synced("ops", false));
        assert_eq!(m.on_pub(pubm("ops", E, 3), pos(E, 3), true), Step::Skip);
        assert_eq!(m.on_pub(pubm("ops", E, 4), pos(E, 3), true), Step::Deliver);
        // 5 and 6 never came: reload, then deliver 5, 6, 7 once each.
        assert_eq!(m.on_pub(pubm("ops", E, 7), pos(E, 4), true), Step::Load);
        assert_eq!(m.on_pub(pubm("ops", E, 8), pos(E, 4), true), Step::Held);
        assert_eq!(load(&mut m, "ops", &snap(E, 7, 3..=7)), [5, 6, 7, 8]);
    }

    #[test]
    fn spec12_mirror_after_redis_lost_the_history_and_after_a_reconnect() {
        let mut m = Mirror::default();
        m.start_load("ops", None);
        assert!(load(&mut m, "ops", &snap(E, 5, [])).is_empty());
        // A new epoch (FLUSHALL): everything of it is new to the subscribers.
        assert_eq!(m.on_pub(pubm("ops", F, 2), pos(E, 5), true), Step::Load);
        assert_eq!(load(&mut m, "ops", &snap(F, 2, 1..=2)), [1, 2]);
        // Redis away and back: the channel is stale, then reloaded from
        // where its subscribers were.
        m.disconnected();
        assert!(!m.is_synced("ops", true));
        assert_eq!(m.stale(), ["ops"]);
        m.start_load("ops", pos(F, 2));
        m.load_failed("ops");
        assert_eq!(m.stale(), ["ops"]);
        m.start_load("ops", pos(F, 2));
        assert_eq!(load(&mut m, "ops", &snap(F, 4, 1..=4)), [3, 4]);
        // Forgotten channels start over.
        m.disconnected();
        m.forget("ops");
        assert!(m.stale().is_empty());
    }
}
