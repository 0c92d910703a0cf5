//! Channels, access rules, subscriptions and fan-out (SPEC §4.3), sans-IO.
//!
//! The hub knows which connection may see which channel and who is
//! subscribed where. A published message is serialised once, kept in the
//! channel's history ([`crate::history`]) and the same [`Frame`] is offered
//! to every subscriber's [`Outbox`]; an outbox over its depth or at its hard
//! cap says so, and the hub returns those connections (congested, slow) for
//! the shell to hold publishers back or close with 4008. A `subscribe` puts
//! its reply and the replayed history into the outbox in the same step that
//! subscribes, so no live message can fall between them. The hub never
//! blocks and never reads a clock: publish and subscribe take the time.
//!
//! ```
//! use std::{cell::RefCell, collections::VecDeque, rc::Rc};
//! use tessera::hub::{Hub, Levels, Offer, Outbox, Rights, splice_resume};
//! use tessera::hub::Frame;
//! #[derive(Clone)]
//! struct Q(Rc<RefCell<VecDeque<Frame>>>);
//! impl Outbox for Q {
//!     fn offer(&self, m: &Frame) -> Offer { self.0.borrow_mut().push_back(m.clone()); Offer::Queued }
//!     fn resume(&self, ch: &str, after: u64, rejoined: bool, head: Frame, replay: Vec<(u64, Frame)>) {
//!         splice_resume(&mut self.0.borrow_mut(), ch, after, rejoined, head, replay)
//!     }
//! }
//! let mut hub = Hub::new(Levels::default());
//! let rights = Rights { sub: "a".into(), clearance: 0, channels: None, publish: true };
//! hub.join(1, rights.clone(), Q(Rc::default()));
//! hub.subscribe(1, "ops").unwrap();
//! let p = hub.publish(&rights, "ops", &serde_json::value::RawValue::from_string("1".into()).unwrap(), 0).unwrap();
//! assert_eq!((p.id, p.delivered), (1, 1));
//! ```

use crate::history::{History, Limits, Retained};
use crate::protocol::{self, Since};
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// A connection's id, unique for the server's lifetime.
pub type ConnId = u64;

/// One serialised server message, shared by every subscriber it goes to
/// and by the history (cloning it is a reference-count increment, not a
/// copy). An `Rc<String>`: 8 bytes in each queue slot and a plain
/// increment, where tungstenite's `Utf8Bytes` took 32 bytes and an atomic
/// behind a call (issue 11: a burst writes one slot per subscriber and
/// message). The `String` is kept as serialised (no copy into an `Rc<str>`,
/// whose header would also push a frame into the next allocator size class).
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Rc<String>);

impl Frame {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Frame {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for Frame {
    fn from(s: String) -> Frame {
        Frame(Rc::new(s))
    }
}

impl From<&str> for Frame {
    fn from(s: &str) -> Frame {
        Frame(Rc::new(s.to_owned()))
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.0.as_str(), f)
    }
}

/// What became of a live message offered to an outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// Queued, and the queue is now at or over its depth: hold publishers
    /// back until it drains.
    Congested,
    /// Not queued: the queue is at its hard cap (close with 4008).
    Full,
}

/// Where a connection's outbound messages wait.
pub trait Outbox {
    /// Queues a live message.
    fn offer(&self, msg: &Frame) -> Offer;
    /// Queues a `subscribe` reply (`head`) and the replayed frames after it,
    /// none of them counted against the queue depth. `rejoined`: the
    /// connection was already on `channel`, so live frames of it after
    /// `after` may be waiting: see [`splice_resume`].
    fn resume(&self, channel: &str, after: u64, rejoined: bool, head: Frame, replay: Vec<(u64, Frame)>);
}

/// Appends a subscribe reply and its replay to `queue`. When the connection
/// was already on the channel, frames of it with an offset after `after`
/// still waiting in the queue move behind the reply, merged with the replay
/// by offset without duplicates: the client sees `subscribed`, then every
/// message after its point exactly once, in order.
pub fn splice_resume(
    queue: &mut VecDeque<Frame>,
    channel: &str,
    after: u64,
    rejoined: bool,
    head: Frame,
    mut replay: Vec<(u64, Frame)>,
) {
    let waiting = |f: &Frame| matches!(protocol::message_position(f), Some((c, id)) if c == channel && id > after);
    if rejoined && queue.iter().any(waiting) {
        queue.retain(|f| match protocol::message_position(f) {
            Some((c, id)) if c == channel && id > after => {
                replay.push((id, f.clone()));
                false
            }
            _ => true,
        });
        replay.sort_by_key(|f| f.0);
        replay.dedup_by_key(|f| f.0);
    }
    queue.push_back(head);
    queue.extend(replay.into_iter().map(|f| f.1));
}

/// What a token allows (from its claims).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    pub sub: String,
    pub clearance: u32,
    /// `None`: every channel the clearance allows.
    pub channels: Option<Vec<String>>,
    pub publish: bool,
}

impl Rights {
    /// The rights a verified token carries.
    pub fn from_claims(c: &crate::jwt::Claims) -> Rights {
        Rights {
            sub: c.sub.clone(),
            clearance: c.clearance,
            channels: c.channels.clone(),
            publish: c.publish,
        }
    }

    /// [`Rights::from_claims`], moving the strings out of `c` (its `sub`
    /// and `channels` are left empty).
    pub fn take_from(c: &mut crate::jwt::Claims) -> Rights {
        Rights {
            sub: std::mem::take(&mut c.sub),
            clearance: c.clearance,
            channels: c.channels.take(),
            publish: c.publish,
        }
    }

    /// The agent's personal channel `@<sub>`.
    pub fn personal(&self) -> String {
        // Not `format!`: every handshake joins it (issue 16).
        let mut name = String::with_capacity(1 + self.sub.len());
        name.push('@');
        name.push_str(&self.sub);
        name
    }
}

/// Channel clearance levels (`--channel NAME=LEVEL`); unlisted need 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Levels(pub HashMap<String, u32>);

impl Levels {
    pub fn level(&self, channel: &str) -> u32 {
        self.0.get(channel).copied().unwrap_or(0)
    }
}

/// Why a channel operation was refused (the SPEC error codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Not a valid channel name: `bad_channel`.
    BadChannel,
    /// Not allowed: `forbidden`.
    Forbidden,
    /// The socket holds `--max-subscriptions` already: `too_many_subscriptions`.
    TooManySubscriptions,
    /// A new channel beyond `--max-channels`: `too_many_channels`.
    TooManyChannels,
}

impl Denied {
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::BadChannel => "bad_channel",
            Denied::Forbidden => "forbidden",
            Denied::TooManySubscriptions => "too_many_subscriptions",
            Denied::TooManyChannels => "too_many_channels",
        }
    }
    pub fn message(self) -> &'static str {
        match self {
            Denied::BadChannel => "channel names are 1-64 characters of A-Z a-z 0-9 _ . : - @",
            Denied::Forbidden => "your token does not allow this channel",
            Denied::TooManySubscriptions => "this socket is at its subscription limit; unsubscribe first",
            Denied::TooManyChannels => "the server is at its channel limit; use an existing channel",
        }
    }
}

/// SPEC §4.3: 1–64 characters of `A-Z a-z 0-9 _ . : - @`.
pub fn channel_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-@".contains(&b))
}

/// Whether `p` is a valid `channels` entry: a channel name, or a prefix
/// ending in `*` (`*` alone allows everything the clearance allows).
pub fn pattern_ok(p: &str) -> bool {
    match p.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => channel_name_ok(prefix),
        None => channel_name_ok(p),
    }
}

/// A `channels` claim pattern: an exact name, or a prefix ending in `*`.
pub fn pattern_matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => pattern == channel,
    }
}

/// May these rights read `channel`? Personal channels `@x` are readable by
/// `x` only; others need the level and, with a `channels` claim, a match.
pub fn may_subscribe(rights: &Rights, channel: &str, levels: &Levels) -> Result<(), Denied> {
    if !channel_name_ok(channel) {
        return Err(Denied::BadChannel);
    }
    if let Some(owner) = channel.strip_prefix('@') {
        return if owner == rights.sub {
            Ok(())
        } else {
            Err(Denied::Forbidden)
        };
    }
    general_access(rights, channel, levels)
}

/// The reserved channel of live security events (SPEC §13): operators only.
/// `$` is not a channel-name character, so no other `$` name is valid.
pub const SECURITY: &str = "$security";

/// The `from` of messages the server itself publishes.
pub const SERVER_SUB: &str = "$tessera";

/// [`may_subscribe`], plus [`SECURITY`] for operators.
pub fn may_read(rights: &Rights, operator: bool, channel: &str, levels: &Levels) -> Result<(), Denied> {
    if channel == SECURITY {
        return if operator { Ok(()) } else { Err(Denied::Forbidden) };
    }
    may_subscribe(rights, channel, levels)
}

/// May these rights publish to `channel`? Needs `publish`; a personal
/// channel needs nothing more, others the same rights as reading.
pub fn may_publish(rights: &Rights, channel: &str, levels: &Levels) -> Result<(), Denied> {
    if !channel_name_ok(channel) {
        return Err(Denied::BadChannel);
    }
    if !rights.publish {
        return Err(Denied::Forbidden);
    }
    if channel.starts_with('@') {
        return Ok(());
    }
    general_access(rights, channel, levels)
}

fn general_access(rights: &Rights, channel: &str, levels: &Levels) -> Result<(), Denied> {
    if rights.clearance < levels.level(channel) {
        return Err(Denied::Forbidden);
    }
    match &rights.channels {
        Some(pats) if !pats.iter().any(|p| pattern_matches(p, channel)) => Err(Denied::Forbidden),
        _ => Ok(()),
    }
}

/// Hashes a [`ConnId`] with one multiplication. Ids are handed out by the
/// server in sequence, never chosen by a client, so SipHash's protection
/// against chosen keys buys nothing on the fan-out path, where every
/// delivery looks its subscriber up.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: an odd multiplier keeps sequential ids apart in
        // the low bits (the bucket) and spreads them over the top bits (the
        // control byte).
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Tables keep their largest capacity: after a spike of 15,000 sockets the
/// connection and channel maps alone held ~5 MB with nobody connected. A
/// table above this many slots that falls under a quarter full is halved
/// down to twice its length (amortised O(1) per removal).
const SHRINK_ABOVE: usize = 256;

fn shrink_map<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(map: &mut HashMap<K, V, S>) {
    if map.capacity() > SHRINK_ABOVE && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

struct Conn<O> {
    rights: Rights,
    /// May read [`SECURITY`] (SPEC §13).
    operator: bool,
    subs: Subs,
    outbox: O,
}

/// Subscriptions a connection keeps in a vector before they move to a
/// hash set.
const FEW: usize = 8;

/// A connection's subscriptions. Most sockets hold only their personal
/// channel, so up to [`FEW`] are kept in a vector (an idle socket pays for
/// one pointer, not a hash table); more move to a hash set, so a socket
/// holding thousands still looks one up in O(1).
pub enum Subs {
    Few(Vec<Rc<str>>),
    Many(HashSet<Rc<str>>),
}

impl Subs {
    fn contains(&self, channel: &str) -> bool {
        match self {
            Subs::Few(v) => v.iter().any(|c| **c == *channel),
            Subs::Many(h) => h.contains(channel),
        }
    }

    /// Adds a channel not held yet.
    fn insert(&mut self, channel: Rc<str>) {
        match self {
            Subs::Few(v) if v.len() < FEW => {
                if v.is_empty() {
                    v.reserve_exact(1);
                }
                v.push(channel);
            }
            Subs::Few(v) => {
                let mut h: HashSet<Rc<str>> = v.drain(..).collect();
                h.insert(channel);
                *self = Subs::Many(h);
            }
            Subs::Many(h) => {
                h.insert(channel);
            }
        }
    }

    /// Takes `channel` out; its name, if it was held.
    fn remove(&mut self, channel: &str) -> Option<Rc<str>> {
        match self {
            Subs::Few(v) => {
                let i = v.iter().position(|c| **c == *channel)?;
                Some(v.swap_remove(i))
            }
            Subs::Many(h) => h.take(channel),
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&Rc<str>) -> bool) {
        match self {
            Subs::Few(v) => v.retain(|c| keep(c)),
            Subs::Many(h) => h.retain(|c| keep(c)),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Subs::Few(v) => v.len(),
            Subs::Many(h) => h.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The channels, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Rc<str>> {
        let (few, many) = match self {
            Subs::Few(v) => (Some(v.iter()), None),
            Subs::Many(h) => (None, Some(h.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

/// A channel's subscribers, each with its outbox: a publish offers the
/// frame to each without looking the connection up.
struct Channel<O> {
    subscribers: Vec<(ConnId, O)>,
    /// Where each subscriber sits in `subscribers`, kept while the channel
    /// has more than [`INDEXED`]: a leave or unsubscribe is then O(1) (a
    /// lookup and a `swap_remove`) instead of a scan of the whole list
    /// (1000 leaves of a 1000-subscriber channel were ~0.5 M comparisons).
    /// The fan-out still walks the plain vector. Boxed: most channels are
    /// personal ones, and an idle socket's pays 8 bytes for it, not 32.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<ConnId, usize, BuildHasherDefault<IdHasher>>>>,
}

/// Subscribers a channel has before it keeps an [`Channel::index`]; it is
/// dropped again under half of this.
const INDEXED: usize = 32;

impl<O> Channel<O> {
    fn push(&mut self, id: ConnId, outbox: O) {
        // Most channels are personal ones with one subscriber: no room for four.
        if self.subscribers.is_empty() {
            self.subscribers.reserve_exact(1);
        }
        self.subscribers.push((id, outbox));
        let len = self.subscribers.len();
        match &mut self.index {
            Some(index) => {
                index.insert(id, len - 1);
            }
            None if len > INDEXED => {
                let index = self
                    .subscribers
                    .iter()
                    .enumerate()
                    .map(|(at, (s, _))| (*s, at))
                    .collect();
                self.index = Some(Box::new(index));
            }
            None => {}
        }
    }

    fn remove(&mut self, id: ConnId) {
        match &mut self.index {
            Some(index) => {
                let Some(at) = index.remove(&id) else { return };
                if at >= self.subscribers.len() {
                    return;
                }
                self.subscribers.swap_remove(at);
                if let Some((moved, _)) = self.subscribers.get(at) {
                    index.insert(*moved, at);
                }
                if self.subscribers.len() < INDEXED / 2 {
                    self.index = None;
                } else {
                    shrink_map(index);
                }
            }
            None => self.subscribers.retain(|(s, _)| *s != id),
        }
        if self.subscribers.capacity() > SHRINK_ABOVE && self.subscribers.len() < self.subscribers.capacity() / 4 {
            self.subscribers.shrink_to(self.subscribers.len() * 2);
        }
    }
}

/// The outcome of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The message id in its channel (its offset; counts up from 1).
    pub id: u64,
    /// The channel's epoch (SPEC §10).
    pub epoch: Rc<str>,
    /// How many subscribers it was queued to.
    pub delivered: usize,
    /// Subscribers whose queue was at its hard cap: close them with 4008.
    pub slow: Vec<ConnId>,
    /// Subscribers whose queue is now at or over its depth.
    pub congested: Vec<ConnId>,
}

/// Why a publish did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError<E> {
    Denied(Denied),
    /// The durable history could not take the message (nothing was sent).
    Store(E),
}

/// What a `subscribe` answered (the reply and replay are already queued).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    pub epoch: Rc<str>,
    pub offset: u64,
    pub recovered: Option<bool>,
    /// Messages replayed.
    pub replayed: usize,
}

/// The hub: connections, channels, subscriptions, history.
pub struct Hub<O> {
    levels: Levels,
    conns: HashMap<ConnId, Conn<O>, BuildHasherDefault<IdHasher>>,
    channels: HashMap<Rc<str>, Channel<O>>,
    history: History,
    /// `--max-subscriptions` per connection (its personal channel included).
    max_subscriptions: usize,
    /// `--max-channels`: channels known to the history (published to or
    /// subscribed); personal channels of joining connections are always made.
    max_channels: usize,
}

impl<O: Outbox + Clone> Hub<O> {
    /// A hub with the default history limits and a fixed seed (tests, docs).
    pub fn new(levels: Levels) -> Hub<O> {
        let limits = Limits {
            per_channel: 100,
            ttl_ms: 3_600_000,
            max_bytes: 16 << 20,
        };
        Hub::with_history(levels, History::new(limits, [0; 32]))
    }

    pub fn with_history(levels: Levels, history: History) -> Hub<O> {
        Hub {
            levels,
            conns: HashMap::default(),
            channels: HashMap::new(),
            history,
            max_subscriptions: usize::MAX,
            max_channels: usize::MAX,
        }
    }

    /// Sets `--max-subscriptions` and `--max-channels`.
    pub fn set_limits(&mut self, max_subscriptions: usize, max_channels: usize) {
        self.max_subscriptions = max_subscriptions;
        self.max_channels = max_channels;
    }

    /// Channels known now (`tessera_channels`).
    pub fn channel_count(&self) -> usize {
        self.history.channel_count()
    }

    /// Refuses a channel that does not exist yet when the hub is at
    /// `--max-channels`.
    fn room_for_channel(&self, channel: &str) -> Result<(), Denied> {
        if !self.history.has(channel) && self.history.channel_count() >= self.max_channels {
            return Err(Denied::TooManyChannels);
        }
        Ok(())
    }

    /// Drops channels that retain no history, had no publish for the
    /// history TTL and have no subscriber (the shell calls it on a timer).
    pub fn prune_idle(&mut self, now_ms: u64) -> usize {
        let channels = &self.channels;
        self.history.prune(now_ms, |c| channels.contains_key(c))
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn history_mut(&mut self) -> &mut History {
        &mut self.history
    }

    pub fn levels(&self) -> &Levels {
        &self.levels
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Adds a connection and subscribes it to its personal channel.
    pub fn join(&mut self, id: ConnId, rights: Rights, outbox: O) {
        let personal: Rc<str> = Rc::from(rights.personal());
        self.conns.insert(
            id,
            Conn {
                rights,
                operator: false,
                subs: Subs::Few(Vec::new()),
                outbox,
            },
        );
        if channel_name_ok(&personal) {
            // Created (its epoch fixed when first seen) but not held to
            // `--max-channels`; the TTL for pruning it runs from the next
            // prune.
            self.history.ensure(&personal, u64::MAX);
            self.add_sub(id, personal);
        }
    }

    /// Removes a connection and all its subscriptions.
    pub fn leave(&mut self, id: ConnId) -> Option<O> {
        let conn = self.conns.remove(&id)?;
        for ch in conn.subs.iter() {
            self.drop_subscriber(ch, id);
        }
        shrink_map(&mut self.conns);
        shrink_map(&mut self.channels);
        Some(conn.outbox)
    }

    fn drop_subscriber(&mut self, channel: &Rc<str>, id: ConnId) {
        // One lookup for the subscriber and, with the last one, the channel
        // (every socket's personal channel goes this way; issue 16).
        if let std::collections::hash_map::Entry::Occupied(mut c) = self.channels.entry(channel.clone()) {
            c.get_mut().remove(id);
            if c.get().subscribers.is_empty() {
                c.remove();
                self.history.drop_if_never_published(channel);
            }
        }
    }

    /// Subscribes `id` to `channel` (one lookup: a new channel takes this
    /// name, shared with the history's; an existing one keeps its own,
    /// which the connection then shares).
    fn add_sub(&mut self, id: ConnId, channel: Rc<str>) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.subs.contains(&channel) {
            return;
        }
        let entry = self.channels.entry(channel);
        let key = entry.key().clone();
        entry
            .or_insert_with(|| Channel {
                subscribers: Vec::new(),
                index: None,
            })
            .push(id, conn.outbox.clone());
        conn.subs.insert(key);
    }

    /// `subscribe` without `since` and without `ref`.
    pub fn subscribe(&mut self, id: ConnId, channel: &str) -> Result<Subscribed, Denied> {
        self.subscribe_since(id, channel, None, None, 0)
    }

    /// `subscribe` (SPEC §4.3, §10): checks the rights now, subscribes
    /// (idempotent) and queues the `subscribed` reply followed by the
    /// replay for `since`, all in this one step.
    pub fn subscribe_since(
        &mut self,
        id: ConnId,
        channel: &str,
        since: Option<&Since>,
        reference: Option<&RawValue>,
        now_ms: u64,
    ) -> Result<Subscribed, Denied> {
        let conn = self.conns.get(&id).ok_or(Denied::Forbidden)?;
        self.may_read(conn, channel)?;
        let rejoined = conn.subs.contains(channel);
        if !rejoined {
            if conn.subs.len() >= self.max_subscriptions {
                return Err(Denied::TooManySubscriptions);
            }
            self.room_for_channel(channel)?;
        }
        // The channel exists from now on, so its epoch stays what this
        // reply says until it is pruned.
        let name: Rc<str> = Rc::from(channel);
        self.history.ensure(&name, now_ms);
        let replay = self.history.replay(channel, since, now_ms);
        let after = match since {
            Some(Since::Position { epoch, offset }) if **epoch == *replay.epoch => (*offset).min(replay.offset),
            Some(Since::Position { .. }) => 0,
            Some(Since::Last(n)) => replay.offset.saturating_sub(*n),
            None => replay.offset,
        };
        let head = protocol::subscribed(channel, &replay.epoch, replay.offset, replay.recovered, reference);
        let out = Subscribed {
            epoch: replay.epoch.clone(),
            offset: replay.offset,
            recovered: replay.recovered,
            replayed: replay.frames.len(),
        };
        self.add_sub(id, name);
        if let Some(conn) = self.conns.get(&id) {
            conn.outbox
                .resume(channel, after, rejoined, Frame::from(head), replay.frames);
        }
        Ok(out)
    }

    /// Whether the connection is subscribed to `channel`.
    pub fn is_subscribed(&self, id: ConnId, channel: &str) -> bool {
        self.conns.get(&id).is_some_and(|c| c.subs.contains(channel))
    }

    /// A connection's outbox.
    pub fn outbox(&self, id: ConnId) -> Option<&O> {
        self.conns.get(&id).map(|c| &c.outbox)
    }

    /// `unsubscribe`: always succeeds for a valid name.
    pub fn unsubscribe(&mut self, id: ConnId, channel: &str) -> Result<(), Denied> {
        if !channel_name_ok(channel) && channel != SECURITY {
            return Err(Denied::BadChannel);
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            if let Some(name) = conn.subs.remove(channel) {
                self.drop_subscriber(&name, id);
            }
        }
        Ok(())
    }

    /// The channels a connection is subscribed to, sorted.
    pub fn subscriptions(&self, id: ConnId) -> Vec<String> {
        let mut out: Vec<String> = self
            .conns
            .get(&id)
            .map(|c| c.subs.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Publishes `data` to `channel` as `from`, at `ts_ms`. The message is
    /// serialised once; the history and each subscriber get the same bytes.
    pub fn publish(&mut self, from: &Rights, channel: &str, data: &RawValue, ts_ms: u64) -> Result<Published, Denied> {
        self.publish_with(from, channel, data, ts_ms, |_| Ok::<(), std::convert::Infallible>(()))
            .map_err(|e| match e {
                PublishError::Denied(d) => d,
                PublishError::Store(never) => match never {},
            })
    }

    /// [`Hub::publish`], with `store` called on the message before anyone
    /// sees it (the durable log's append). When `store` fails nothing is
    /// sent or kept, and the offset is not used.
    pub fn publish_with<E>(
        &mut self,
        from: &Rights,
        channel: &str,
        data: &RawValue,
        ts_ms: u64,
        store: impl FnOnce(Retained<'_>) -> Result<(), E>,
    ) -> Result<Published, PublishError<E>> {
        may_publish(from, channel, &self.levels).map_err(PublishError::Denied)?;
        self.room_for_channel(channel).map_err(PublishError::Denied)?;
        let next = self.history.next(channel);
        let id = next.offset;
        let msg = Frame::from(protocol::message(channel, id, ts_ms, &from.sub, data));
        store(Retained {
            channel,
            epoch: &next.epoch,
            offset: id,
            ts_ms,
            frame: msg.as_str(),
        })
        .map_err(PublishError::Store)?;
        self.history.push(channel, id, ts_ms, msg.clone(), ts_ms);
        Ok(self.offer_all(channel, &msg, id, next.epoch))
    }

    /// Offers a message already kept elsewhere (cluster mode: received
    /// from the broker with its offset and epoch) to every subscriber of
    /// `channel`, without touching the history.
    pub fn fan_out(&self, channel: &str, msg: &Frame, id: u64, epoch: Rc<str>) -> Published {
        self.offer_all(channel, msg, id, epoch)
    }

    /// Whether some connection is subscribed to `channel`.
    pub fn has_subscribers(&self, channel: &str) -> bool {
        self.channels.get(channel).is_some_and(|c| !c.subscribers.is_empty())
    }

    /// Offers `msg` to every subscriber of `channel`.
    fn offer_all(&self, channel: &str, msg: &Frame, id: u64, epoch: Rc<str>) -> Published {
        let mut delivered = 0;
        let mut slow = Vec::new();
        let mut congested = Vec::new();
        if let Some(ch) = self.channels.get(channel) {
            for (sid, outbox) in &ch.subscribers {
                match outbox.offer(msg) {
                    Offer::Queued => delivered += 1,
                    Offer::Congested => {
                        delivered += 1;
                        congested.push(*sid);
                    }
                    Offer::Full => slow.push(*sid),
                }
            }
        }
        Published {
            id,
            epoch,
            delivered,
            slow,
            congested,
        }
    }

    /// Publishes to the reserved channel [`SECURITY`] as the server
    /// (`from` is [`SERVER_SUB`]): no rights are checked, so only the shell
    /// calls it. Kept in the in-memory history like any channel, so a
    /// resuming operator gets what it missed; never written to disk.
    pub fn publish_security(&mut self, data: &RawValue, ts_ms: u64) -> Published {
        let next = self.history.next(SECURITY);
        let msg = Frame::from(protocol::message(SECURITY, next.offset, ts_ms, SERVER_SUB, data));
        self.history.push(SECURITY, next.offset, ts_ms, msg.clone(), ts_ms);
        self.offer_all(SECURITY, &msg, next.offset, next.epoch)
    }

    /// Marks a connection as an operator (SPEC §13) or not: only operators
    /// may subscribe to [`SECURITY`]. Call it before [`Hub::update_rights`]
    /// when a refresh changes the token.
    pub fn set_operator(&mut self, id: ConnId, operator: bool) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.operator = operator;
        }
    }

    /// Whether this connection may read `channel` now.
    fn may_read(&self, conn: &Conn<O>, channel: &str) -> Result<(), Denied> {
        may_read(&conn.rights, conn.operator, channel, &self.levels)
    }

    /// `presence` (SPEC §13): the distinct `sub`s subscribed to `channel`
    /// now, sorted, for a connection that may subscribe to it.
    pub fn presence(&self, id: ConnId, channel: &str) -> Result<Vec<String>, Denied> {
        let conn = self.conns.get(&id).ok_or(Denied::Forbidden)?;
        self.may_read(conn, channel)?;
        let mut subs: Vec<String> = self
            .channels
            .get(channel)
            .map(|ch| {
                ch.subscribers
                    .iter()
                    .filter_map(|(c, _)| self.conns.get(c))
                    .map(|c| c.rights.sub.clone())
                    .collect()
            })
            .unwrap_or_default();
        subs.sort_unstable();
        subs.dedup();
        Ok(subs)
    }

    /// Every connection with its rights and subscriptions (for
    /// `GET /admin/connections`).
    pub fn connections(&self) -> impl Iterator<Item = (ConnId, &Rights, &Subs, &O)> {
        self.conns.iter().map(|(id, c)| (*id, &c.rights, &c.subs, &c.outbox))
    }

    /// Replaces a connection's rights after an in-band refresh and drops
    /// the subscriptions they no longer allow; returns those channels.
    pub fn update_rights(&mut self, id: ConnId, rights: Rights) -> Vec<String> {
        let Some(conn) = self.conns.get_mut(&id) else {
            return Vec::new();
        };
        conn.rights = rights;
        let levels = &self.levels;
        let rights = &conn.rights;
        let operator = conn.operator;
        let mut dropped: Vec<Rc<str>> = Vec::new();
        conn.subs.retain(|c| {
            let keep = may_read(rights, operator, c, levels).is_ok();
            if !keep {
                dropped.push(c.clone());
            }
            keep
        });
        dropped.sort();
        for c in &dropped {
            self.drop_subscriber(c, id);
        }
        dropped.iter().map(|c| c.to_string()).collect()
    }

    /// Every connection's outbox.
    pub fn outboxes(&self) -> impl Iterator<Item = (ConnId, &O)> {
        self.conns.iter().map(|(id, c)| (*id, &c.outbox))
    }

    /// The rights a connection holds now.
    pub fn rights(&self, id: ConnId) -> Option<&Rights> {
        self.conns.get(&id).map(|c| &c.rights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A bounded test outbox.
    struct Q {
        cap: usize,
        items: RefCell<VecDeque<Frame>>,
    }
    impl Outbox for Rc<Q> {
        fn offer(&self, m: &Frame) -> Offer {
            let mut i = self.items.borrow_mut();
            if i.len() >= self.cap {
                return Offer::Full;
            }
            i.push_back(m.clone());
            Offer::Queued
        }
        fn resume(&self, ch: &str, after: u64, rejoined: bool, head: Frame, replay: Vec<(u64, Frame)>) {
            splice_resume(&mut self.items.borrow_mut(), ch, after, rejoined, head, replay)
        }
    }
    impl Q {
        fn texts(&self) -> Vec<String> {
            self.items.borrow_mut().drain(..).map(|f| f.to_string()).collect()
        }
    }
    fn q(cap: usize) -> Rc<Q> {
        Rc::new(Q {
            cap,
            items: RefCell::default(),
        })
    }
    #[test]
    fn rights_taken_from_claims_are_the_copied_ones() {
        for channels in [None, Some(vec!["ops".to_string(), "team.*".to_string()])] {
            let mut c = crate::jwt::Claims {
                sub: "agent-7".into(),
                clearance: 3,
                channels,
                publish: true,
                sid: Some("s1".into()),
                ..Default::default()
            };
            let copied = Rights::from_claims(&c);
            assert_eq!(Rights::take_from(&mut c), copied);
            // Only the moved strings are gone.
            assert_eq!((c.sub.as_str(), c.channels, c.sid.as_deref()), ("", None, Some("s1")));
        }
    }

    fn r(sub: &str, clearance: u32, channels: Option<&[&str]>, publish: bool) -> Rights {
        Rights {
            sub: sub.into(),
            clearance,
            channels: channels.map(|c| c.iter().map(|s| s.to_string()).collect()),
            publish,
        }
    }
    fn levels() -> Levels {
        Levels(
            [("ops".to_string(), 1), ("briefing".to_string(), 3)]
                .into_iter()
                .collect(),
        )
    }
    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).unwrap()
    }

    #[test]
    fn spec4_3_channel_names() {
        assert!(channel_name_ok("a.b:c-d_e@f"));
        assert!(channel_name_ok(&"x".repeat(64)));
        assert!(!channel_name_ok(&"x".repeat(65)));
        assert!(!channel_name_ok(""));
        assert!(!channel_name_ok("a b"));
        assert!(!channel_name_ok("ops/1"));
    }

    #[test]
    fn spec4_3_levels_and_channel_patterns() {
        let l = levels();
        assert_eq!(
            may_subscribe(&r("a", 0, None, false), "ops", &l),
            Err(Denied::Forbidden)
        );
        assert_eq!(may_subscribe(&r("a", 1, None, false), "ops", &l), Ok(()));
        assert_eq!(
            may_subscribe(&r("a", 2, None, false), "briefing", &l),
            Err(Denied::Forbidden)
        );
        assert_eq!(may_subscribe(&r("a", 0, None, false), "anything", &l), Ok(()));
        let pats = r("a", 9, Some(&["ops", "team.*"]), false);
        assert_eq!(may_subscribe(&pats, "ops", &l), Ok(()));
        assert_eq!(may_subscribe(&pats, "team.red", &l), Ok(()));
        assert_eq!(may_subscribe(&pats, "briefing", &l), Err(Denied::Forbidden));
        assert_eq!(may_subscribe(&pats, "bad name", &l), Err(Denied::BadChannel));
    }

    #[test]
    fn spec4_3_personal_channel_privacy() {
        let l = levels();
        assert_eq!(may_subscribe(&r("a", 9, None, true), "@a", &l), Ok(()));
        assert_eq!(may_subscribe(&r("a", 9, None, true), "@b", &l), Err(Denied::Forbidden));
        assert_eq!(may_publish(&r("a", 0, Some(&[]), true), "@b", &l), Ok(()));
        assert_eq!(may_publish(&r("a", 9, None, false), "@b", &l), Err(Denied::Forbidden));
    }

    #[test]
    fn fan_out_serialises_once_and_counts_ids_per_channel() {
        let mut hub = Hub::new(levels());
        let (qa, qb) = (q(10), q(10));
        hub.join(1, r("a", 1, None, false), qa.clone());
        hub.join(2, r("b", 1, None, false), qb.clone());
        hub.subscribe(1, "ops").unwrap();
        hub.subscribe(2, "ops").unwrap();
        hub.subscribe(2, "ops").unwrap();
        let hq = r("hq", 5, None, true);
        qa.texts();
        qb.texts();
        let p = hub.publish(&hq, "ops", &raw("{}"), 5).unwrap();
        assert_eq!((p.id, p.delivered, p.slow), (1, 2, vec![]));
        assert_eq!(
            qa.items.borrow()[0].as_str().as_ptr(),
            qb.items.borrow()[0].as_str().as_ptr()
        );
        assert_eq!(hub.publish(&hq, "ops", &raw("{}"), 6).unwrap().id, 2);
        let other = hub.publish(&hq, "other", &raw("{}"), 6).unwrap();
        assert_eq!((other.id, other.delivered), (1, 0));
        assert_ne!(other.epoch, p.epoch);
        // Personal channel subscribed on join.
        assert_eq!(hub.publish(&hq, "@a", &raw("1"), 7).unwrap().delivered, 1);
        hub.unsubscribe(1, "ops").unwrap();
        assert_eq!(hub.publish(&hq, "ops", &raw("{}"), 8).unwrap().delivered, 1);
        hub.leave(2);
        assert_eq!(hub.publish(&hq, "ops", &raw("{}"), 8).unwrap().delivered, 0);
        assert_eq!(
            hub.publish(&r("x", 0, None, true), "ops", &raw("{}"), 8),
            Err(Denied::Forbidden)
        );
    }

    #[test]
    fn full_queue_reports_slow_consumer_without_delaying_others() {
        let mut hub = Hub::new(Levels::default());
        let (slow, fast) = (q(1), q(10));
        hub.join(1, r("s", 0, None, false), slow.clone());
        hub.join(2, r("f", 0, None, false), fast.clone());
        hub.subscribe(1, "c").unwrap();
        hub.subscribe(2, "c").unwrap();
        slow.texts();
        fast.texts();
        let p = r("p", 0, None, true);
        assert!(hub.publish(&p, "c", &raw("1"), 0).unwrap().slow.is_empty());
        let second = hub.publish(&p, "c", &raw("2"), 0).unwrap();
        assert_eq!((second.delivered, second.slow), (1, vec![1]));
        assert_eq!(fast.items.borrow().len(), 2);
    }

    #[test]
    fn spec4_3_refresh_drops_now_forbidden_subscriptions() {
        let mut hub = Hub::new(levels());
        hub.join(1, r("a", 3, None, false), q(5));
        hub.subscribe(1, "ops").unwrap();
        hub.subscribe(1, "briefing").unwrap();
        let dropped = hub.update_rights(1, r("a", 1, None, false));
        assert_eq!(dropped, vec!["briefing".to_string()]);
        assert_eq!(hub.subscriptions(1), vec!["@a".to_string(), "ops".to_string()]);
        let hq = r("hq", 5, None, true);
        assert_eq!(hub.publish(&hq, "briefing", &raw("1"), 0).unwrap().delivered, 0);
    }

    fn ids(frames: &[String]) -> Vec<String> {
        frames
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_str(f).unwrap();
                match v["type"].as_str().unwrap() {
                    "message" => format!("{}#{}", v["channel"].as_str().unwrap(), v["id"]),
                    t => format!("{t}:{}:{}", v["offset"], v["recovered"]),
                }
            })
            .collect()
    }

    #[test]
    fn spec10_subscribe_queues_reply_then_replay_then_live() {
        let mut hub = Hub::new(Levels::default());
        let hq = r("hq", 0, None, true);
        for n in 1..=3 {
            hub.publish(&hq, "c", &raw(&n.to_string()), n).unwrap();
        }
        let qa = q(100);
        hub.join(1, r("a", 0, None, false), qa.clone());
        let s = hub.subscribe_since(1, "c", Some(&Since::Last(2)), None, 10).unwrap();
        assert_eq!((s.offset, s.recovered, s.replayed), (3, Some(true), 2));
        hub.publish(&hq, "c", &raw("4"), 11).unwrap();
        assert_eq!(ids(&qa.texts()), ["subscribed:3:true", "c#2", "c#3", "c#4"]);
        // Forbidden: nothing queued.
        let lv = Levels([("secret".to_string(), 9)].into_iter().collect());
        let mut hub2: Hub<Rc<Q>> = Hub::new(lv);
        hub2.publish(&r("hq", 9, None, true), "secret", &raw("1"), 0).unwrap();
        let qb = q(100);
        hub2.join(2, r("b", 0, None, false), qb.clone());
        assert_eq!(
            hub2.subscribe_since(2, "secret", Some(&Since::Last(5)), None, 0),
            Err(Denied::Forbidden)
        );
        assert!(qb.texts().is_empty());
    }

    #[test]
    fn spec10_resubscribe_moves_waiting_live_frames_behind_the_reply() {
        let mut hub = Hub::new(Levels::default());
        let hq = r("hq", 0, None, true);
        let qa = q(100);
        hub.join(1, r("a", 0, None, false), qa.clone());
        hub.subscribe(1, "other").unwrap();
        qa.texts();
        for n in 1..=3 {
            hub.publish(&hq, "@a", &raw("1"), n).unwrap();
        }
        hub.publish(&hq, "other", &raw("1"), 4).unwrap();
        // The client saw @a up to 1 before; 2 and 3 still wait in the queue.
        let epoch = hub.history().position("@a").epoch.to_string();
        let since = Since::Position { epoch, offset: 1 };
        let s = hub.subscribe_since(1, "@a", Some(&since), None, 5).unwrap();
        assert_eq!((s.recovered, hub.subscriptions(1).len()), (Some(true), 2));
        hub.publish(&hq, "@a", &raw("1"), 6).unwrap();
        assert_eq!(
            ids(&qa.texts()),
            ["@a#1", "other#1", "subscribed:3:true", "@a#2", "@a#3", "@a#4"]
        );
        // With history off the waiting frames still come once, in order.
        let mut hub = Hub::with_history(
            Levels::default(),
            History::new(
                Limits {
                    per_channel: 0,
                    ttl_ms: 1000,
                    max_bytes: 1000,
                },
                [3; 32],
            ),
        );
        let qa = q(100);
        hub.join(1, r("a", 0, None, false), qa.clone());
        for n in 1..=2 {
            hub.publish(&hq, "@a", &raw("1"), n).unwrap();
        }
        let s = hub.subscribe_since(1, "@a", Some(&Since::Last(9)), None, 5).unwrap();
        assert_eq!(s.recovered, Some(false));
        assert_eq!(ids(&qa.texts()), ["subscribed:2:false", "@a#1", "@a#2"]);
        assert_eq!(hub.subscriptions(1), ["@a"]);
    }

    #[test]
    fn subscription_and_channel_limits() {
        let mut hub = Hub::new(Levels::default());
        hub.set_limits(3, 5);
        hub.join(1, r("a", 0, None, true), q(100));
        // @a is one of the 3 subscriptions and one of the 5 channels.
        hub.subscribe(1, "x").unwrap();
        hub.subscribe(1, "y").unwrap();
        assert_eq!(hub.subscribe(1, "z"), Err(Denied::TooManySubscriptions));
        // Subscribing again to a held channel is not a new subscription.
        hub.subscribe(1, "x").unwrap();
        hub.unsubscribe(1, "y").unwrap();
        hub.subscribe(1, "z").unwrap();
        // `y` never had a message: it went with its last subscriber.
        assert_eq!(hub.channel_count(), 3);
        let p = r("p", 0, None, true);
        hub.publish(&p, "w", &raw("1"), 0).unwrap();
        hub.publish(&p, "v", &raw("1"), 0).unwrap();
        assert_eq!(hub.publish(&p, "u", &raw("1"), 0), Err(Denied::TooManyChannels));
        hub.publish(&p, "x", &raw("1"), 0).unwrap();
        assert_eq!(Denied::TooManyChannels.as_str(), "too_many_channels");
        assert_eq!(hub.subscriptions(1), ["@a", "x", "z"]);
    }

    #[test]
    fn idle_channels_without_subscribers_are_pruned_after_the_ttl() {
        let limits = Limits {
            per_channel: 10,
            ttl_ms: 1000,
            max_bytes: 1 << 20,
        };
        let mut hub = Hub::with_history(Levels::default(), History::new(limits, [5; 32]));
        let p = r("p", 0, None, true);
        let first = hub.publish(&p, "gone", &raw("1"), 0).unwrap();
        hub.publish(&p, "gone", &raw("2"), 0).unwrap();
        hub.join(1, r("a", 0, None, false), q(100));
        let kept = hub.subscribe_since(1, "kept", None, None, 0).unwrap();
        hub.publish(&p, "kept", &raw("1"), 0).unwrap();
        // Retained or within TTL + grace: nothing goes.
        let grace = crate::history::IDLE_GRACE_MS;
        assert_eq!(hub.prune_idle(1000 + grace), 0);
        hub.history_mut().expire(1001 + grace);
        assert_eq!(hub.prune_idle(1001 + grace), 1);
        assert_eq!(hub.channel_count(), 2);
        // Re-created: new epoch, offsets start over; `kept` keeps its own.
        let again = hub.publish(&p, "gone", &raw("3"), 2000 + grace).unwrap();
        assert_eq!(again.id, 1);
        assert_ne!(again.epoch, first.epoch);
        assert_eq!(hub.history().position("kept").epoch, kept.epoch);
        // Once the subscriber leaves, its channels go too: `@a`, which
        // never had a message, at once; the others after the TTL.
        hub.leave(1);
        assert_eq!(hub.channel_count(), 2);
        hub.history_mut().expire(100_000);
        assert_eq!(hub.prune_idle(100_000), 2);
        assert_eq!(hub.channel_count(), 0);
    }

    #[test]
    fn failed_store_sends_nothing_and_keeps_the_offset() {
        let mut hub = Hub::new(Levels::default());
        let qa = q(10);
        hub.join(1, r("a", 0, None, false), qa.clone());
        let hq = r("hq", 0, None, true);
        let e = hub.publish_with(&hq, "@a", &raw("1"), 0, |_| Err("disk full"));
        assert_eq!(e, Err(PublishError::Store("disk full")));
        assert!(qa.texts().is_empty());
        let mut seen = None;
        let p = hub
            .publish_with(&hq, "@a", &raw("1"), 0, |rec| {
                seen = Some((rec.offset, rec.frame.to_string()));
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(p.id, 1);
        assert_eq!(seen, Some((1, qa.texts()[0].clone())));
    }

    #[test]
    fn subscriptions_move_from_the_vector_to_a_set_and_stay_exact() {
        let mut subs = Subs::Few(Vec::new());
        let names: Vec<String> = (0..3 * FEW).map(|i| format!("c{i}")).collect();
        for (i, n) in names.iter().enumerate() {
            assert!(!subs.contains(n));
            subs.insert(Rc::from(n.as_str()));
            assert!(subs.contains(n));
            assert_eq!(subs.len(), i + 1);
            assert_eq!(matches!(subs, Subs::Few(_)), i < FEW, "at {i}");
        }
        let mut seen: Vec<&str> = subs.iter().map(|c| &**c).collect();
        seen.sort_unstable();
        let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
        want.sort_unstable();
        assert_eq!(seen, want);
        assert_eq!(subs.remove("c3").as_deref(), Some("c3"));
        assert_eq!(subs.remove("c3"), None);
        assert!(!subs.contains("c3"));
        subs.retain(|c| &**c != "c4");
        assert_eq!(subs.len(), 3 * FEW - 2);
        // The small form removes and retains the same way.
        let mut few = Subs::Few(Vec::new());
        few.insert(Rc::from("a"));
        few.insert(Rc::from("b"));
        assert!(few.remove("a").is_some() && !few.contains("a") && few.contains("b"));
        few.retain(|_| false);
        assert!(few.is_empty());
    }

    #[test]
    fn publish_reaches_subscribers_across_the_subscription_forms() {
        // One socket on more channels than the vector holds, another on one:
        // both get what is published, and nothing after they unsubscribe.
        let mut hub: Hub<Rc<Q>> = Hub::new(Levels::default());
        let (a, b) = (q(100), q(100));
        hub.join(1, r("a", 0, None, true), a.clone());
        hub.join(2, r("b", 0, None, true), b.clone());
        for i in 0..2 * FEW {
            hub.subscribe(1, &format!("ch{i}")).unwrap();
        }
        hub.subscribe(2, "ch3").unwrap();
        a.texts();
        b.texts();
        let p = hub.publish(&r("x", 0, None, true), "ch3", &raw("1"), 0).unwrap();
        assert_eq!(p.delivered, 2);
        assert_eq!((a.texts().len(), b.texts().len()), (1, 1));
        hub.unsubscribe(1, "ch3").unwrap();
        assert!(!hub.is_subscribed(1, "ch3") && hub.is_subscribed(1, "ch4"));
        let p = hub.publish(&r("x", 0, None, true), "ch3", &raw("2"), 0).unwrap();
        assert_eq!(p.delivered, 1);
        assert_eq!((a.texts().len(), b.texts().len()), (0, 1));
        hub.leave(2);
        let p = hub.publish(&r("x", 0, None, true), "ch3", &raw("3"), 0).unwrap();
        assert_eq!(p.delivered, 0);
        assert_eq!(hub.subscriptions(1).len(), 2 * FEW);
    }

    #[test]
    fn leaves_from_a_big_channel_keep_its_index_exact() {
        let mut hub: Hub<Rc<Q>> = Hub::new(levels());
        let mut queues = Vec::new();
        for id in 0..200u64 {
            let q = q(8);
            hub.join(id, r(&format!("u{id}"), 1, None, false), q.clone());
            hub.subscribe(id, "ops").unwrap();
            queues.push(q);
        }
        assert!(hub.channels["ops"].index.is_some(), "indexed past INDEXED subscribers");
        // Leaves and unsubscribes from the front, the back and the middle.
        let gone: Vec<u64> = (0..200u64).filter(|id| id % 3 == 0 || *id > 180).collect();
        for id in &gone {
            if id % 2 == 0 {
                hub.leave(*id).unwrap();
            } else {
                hub.unsubscribe(*id, "ops").unwrap();
            }
        }
        let ch = &hub.channels["ops"];
        let index = ch.index.as_ref().unwrap();
        assert_eq!(index.len(), ch.subscribers.len());
        for (id, at) in index.iter() {
            assert_eq!(ch.subscribers[*at].0, *id);
        }
        for q in &queues {
            q.items.borrow_mut().clear();
        }
        let raw = serde_json::value::to_raw_value(&1).unwrap();
        let p = hub.publish(&r("hq", 9, None, true), "ops", &raw, 0).unwrap();
        assert_eq!(p.delivered, 200 - gone.len());
        for (id, q) in queues.iter().enumerate() {
            let got = q.items.borrow().len();
            assert_eq!(got, usize::from(!gone.contains(&(id as u64))), "subscriber {id}");
        }
        // Under half of INDEXED the index is dropped, and leaves still work.
        let left: Vec<u64> = (0..200u64).filter(|id| !gone.contains(id)).collect();
        for id in &left[..left.len() - 5] {
            hub.leave(*id).unwrap();
        }
        assert!(hub.channels["ops"].index.is_none());
        hub.leave(left[left.len() - 1]).unwrap();
        let p = hub.publish(&r("hq", 9, None, true), "ops", &raw, 0).unwrap();
        assert_eq!(p.delivered, 4);
    }

    #[test]
    fn tables_shrink_after_a_spike_of_connections() {
        let mut hub: Hub<Rc<Q>> = Hub::new(levels());
        for id in 0..5000u64 {
            hub.join(id, r(&format!("u{id}"), 1, None, false), q(4));
            hub.subscribe(id, "ops").unwrap();
        }
        let peak = (hub.conns.capacity(), hub.channels.capacity());
        assert!(peak.0 >= 5000 && peak.1 >= 5000, "{peak:?}");
        assert!(hub.channels["ops"].subscribers.capacity() >= 5000);
        for id in 0..4990u64 {
            hub.leave(id).unwrap();
        }
        assert_eq!(hub.len(), 10);
        assert!(hub.conns.capacity() <= SHRINK_ABOVE, "{}", hub.conns.capacity());
        assert!(hub.channels.capacity() <= SHRINK_ABOVE, "{}", hub.channels.capacity());
        assert!(hub.channels["ops"].subscribers.capacity() <= SHRINK_ABOVE);
        // The survivors still get messages.
        let raw = serde_json::value::to_raw_value(&1).unwrap();
        let p = hub.publish(&r("hq", 9, None, true), "ops", &raw, 0).unwrap();
        assert_eq!(p.delivered, 10);
    }

    #[test]
    fn spec13_security_channel_is_for_operators_only() {
        let mut hub = Hub::new(Levels::default());
        let (qa, qb) = (q(10), q(10));
        hub.join(1, r("hq", 5, None, true), qa.clone());
        hub.join(2, r("a", 9, Some(&["*"]), true), qb.clone());
        assert_eq!(hub.subscribe(1, SECURITY).map(|_| ()), Err(Denied::Forbidden));
        hub.set_operator(1, true);
        assert!(hub.subscribe(1, SECURITY).is_ok());
        assert_eq!(hub.subscribe(2, SECURITY).map(|_| ()), Err(Denied::Forbidden));
        for other in ["$other", "$", "$security2"] {
            assert_eq!(hub.subscribe(1, other).map(|_| ()), Err(Denied::BadChannel), "{other}");
        }
        let hq = r("hq", 5, None, true);
        assert_eq!(
            hub.publish(&hq, SECURITY, &raw("1"), 0).map(|_| ()),
            Err(Denied::BadChannel),
            "nobody publishes there"
        );
        qa.texts();
        let p = hub.publish_security(&raw(r#"{"id":1}"#), 5);
        assert_eq!((p.id, p.delivered), (1, 1));
        let got = qa.texts();
        assert_eq!(ids(&got), ["$security#1"]);
        assert!(got[0].contains(r#""from":"$tessera""#));
        assert!(qb.texts().iter().all(|f| !f.contains("$security")));
        // A refresh that ends operator rights drops the subscription.
        hub.set_operator(1, false);
        assert_eq!(hub.update_rights(1, hq.clone()), [SECURITY]);
        hub.set_operator(1, true);
        hub.subscribe(1, SECURITY).unwrap();
        assert!(hub.update_rights(1, hq).is_empty(), "still an operator: kept");
        assert_eq!(hub.unsubscribe(1, SECURITY), Ok(()));
        assert!(!hub.is_subscribed(1, SECURITY));
    }

    #[test]
    fn spec13_presence_lists_distinct_subs_for_readers_only() {
        let lv = Levels([("secret".to_string(), 3)].into_iter().collect());
        let mut hub = Hub::new(lv);
        hub.join(1, r("b", 5, None, false), q(10));
        hub.join(2, r("a", 5, None, false), q(10));
        hub.join(3, r("a", 5, None, false), q(10));
        hub.join(4, r("low", 0, None, false), q(10));
        for id in 1..=3 {
            hub.subscribe(id, "secret").unwrap();
        }
        assert_eq!(hub.presence(1, "secret").unwrap(), ["a", "b"]);
        assert_eq!(hub.presence(4, "secret"), Err(Denied::Forbidden));
        assert_eq!(hub.presence(4, "nobody-here").unwrap(), Vec::<String>::new());
        assert_eq!(hub.presence(4, "@a"), Err(Denied::Forbidden));
        assert_eq!(hub.presence(2, "@a").unwrap(), ["a"]);
        assert_eq!(hub.presence(4, "bad name"), Err(Denied::BadChannel));
        assert_eq!(hub.presence(4, SECURITY), Err(Denied::Forbidden));
        hub.leave(3);
        hub.unsubscribe(1, "secret").unwrap();
        assert_eq!(hub.presence(2, "secret").unwrap(), ["a"]);
        assert_eq!(hub.presence(99, "secret"), Err(Denied::Forbidden));
        let n = hub.connections().count();
        assert_eq!(n, 3);
    }
}
