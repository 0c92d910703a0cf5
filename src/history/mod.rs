//! Per-channel message history (SPEC §10), sans-IO: a bounded ring of recent
//! messages per channel, offsets and epochs, and what a resuming subscriber
//! gets (`since` → frames to replay and whether nothing was lost).
//!
//! The ring keeps the very [`Frame`]s the hub queued to subscribers (a
//! reference-count increment, no second copy). Limits: `per_channel`
//! messages, `ttl_ms` age and `max_bytes` of frames across all channels,
//! dropped oldest first (by publish order). Nothing here reads a clock: every
//! call that may expire messages takes `now_ms`.
//!
//! A channel that never had a message has no log: its epoch is derived from
//! the process's random seed and its name (so it is stable while the process
//! lives and new after a restart), and its offset is 0. The first publish
//! creates the log with that epoch. Logs restored from disk keep their epoch.
//!
//! ```
//! use tessera::history::{History, Limits};
//! use tessera::protocol::Since;
//! let mut h = History::new(Limits { per_channel: 2, ttl_ms: 60_000, max_bytes: 1 << 20 }, [7; 32]);
//! for n in 1..=3 {
//!     h.push("ops", n, 0, format!("m{n}").into(), 0);
//! }
//! let r = h.replay("ops", Some(&Since::Last(5)), 0);
//! assert_eq!(r.offset, 3);
//! assert_eq!(r.recovered, Some(false)); // message 1 is gone
//! assert_eq!(r.frames.iter().map(|f| f.0).collect::<Vec<_>>(), [2, 3]);
//! ```

pub mod disk;

pub use crate::hub::Frame;
use crate::protocol::Since;
use sha2::{Digest, Sha256};
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

/// Retention limits (`--history`, `--history-ttl`, `--history-max-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Messages kept per channel; 0 keeps none (offsets and epochs still count).
    pub per_channel: usize,
    /// Oldest age kept, in milliseconds.
    pub ttl_ms: u64,
    /// Frame bytes kept across all channels.
    pub max_bytes: u64,
}

struct Entry {
    offset: u64,
    ts_ms: u64,
    /// Global publish order, for dropping the oldest across channels.
    seq: u64,
    frame: Frame,
}

struct Log {
    /// Fixed the first time anyone sees it (a position, a replay, a
    /// publish, a restore), not when the channel is created: every
    /// connection's personal channel is created at its handshake, and most
    /// are never published to nor resumed (no SHA-256 per handshake).
    epoch: OnceCell<Rc<str>>,
    /// The channel's last offset.
    last: u64,
    /// Every offset up to here is no longer retained (0: none lost).
    lost_through: u64,
    entries: VecDeque<Entry>,
    /// When the channel was created or last published to (for [`History::prune`]).
    touched_ms: u64,
}

impl Log {
    /// No message was ever published to it (none is retained either).
    fn never_published(&self) -> bool {
        self.last == 0
    }
}

/// A channel's epoch and last offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: Rc<str>,
    pub offset: u64,
}

/// What a `subscribe` gets: the channel's position, whether nothing after
/// the client's point was lost (`None` without `since`), and the retained
/// frames after that point, oldest first.
pub struct Replay {
    pub epoch: Rc<str>,
    pub offset: u64,
    pub recovered: Option<bool>,
    pub frames: Vec<(u64, Frame)>,
}

/// One retained message or channel marker, borrowed, in the disk log's
/// terms (an empty `frame` is a marker: epoch and last offset only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retained<'a> {
    pub channel: &'a str,
    pub epoch: &'a str,
    pub offset: u64,
    pub ts_ms: u64,
    pub frame: &'a str,
}

/// How long a channel whose history expired keeps its epoch and last
/// offset before [`History::prune`] may drop it: a client resuming soon
/// after still learns, in the same epoch, that it missed messages.
pub const IDLE_GRACE_MS: u64 = 10_000;

/// Every channel's history.
pub struct History {
    limits: Limits,
    seed: [u8; 32],
    logs: HashMap<Rc<str>, Log>,
    /// Each non-empty log's first entry, by `seq`: the global oldest first.
    fronts: BTreeMap<u64, Rc<str>>,
    seq: u64,
    bytes: u64,
    retained: usize,
    /// Re-creation generations, [`GENERATION_BUCKETS`] of them, a channel's
    /// bucket picked by a hash keyed with `salt`. Dropping a channel that
    /// had messages bumps its bucket, so a channel re-created after it
    /// never reuses an earlier epoch (resumes across the drop say
    /// `recovered: false`). Dropping one that never had a message bumps
    /// nothing: re-created, it gets the same epoch, which is right (its
    /// offsets start at 0 again either way), so such channels can go as
    /// soon as nobody subscribes. A bump also moves the epochs of the
    /// other never-published channels of its bucket: a resume there says
    /// `recovered: false` with nothing missed, the safe direction.
    generations: Vec<u32>,
    salt: [u8; 32],
}

/// Epoch text: 16 characters of `A-Z a-z 0-9 _ -` (96 bits).
fn derive_epoch(seed: &[u8; 32], channel: &str) -> Rc<str> {
    use base64::Engine;
    let mut h = Sha256::new();
    h.update(seed);
    h.update(channel.as_bytes());
    let d = h.finalize();
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&d[..12]);
    Rc::from(text)
}

/// Buckets of [`History`]'s re-creation generations (4 KiB).
const GENERATION_BUCKETS: usize = 1024;

/// `channel`'s generation bucket (keyed by `salt`, so a client cannot aim
/// at another channel's bucket). SipHash over the secret salt and the name,
/// not SHA-256: it runs for every new channel (each connection's personal
/// one), and the generations live only in this process's memory, so the
/// hash may differ between builds (~4,000 instructions less per handshake).
fn bucket(salt: &[u8; 32], channel: &str) -> usize {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(salt);
    h.write(channel.as_bytes());
    (h.finish() % GENERATION_BUCKETS as u64) as usize
}

/// The epoch of a channel created when its bucket's generation is
/// `dropped` (0: [`derive_epoch`], stable for a `--history-dir` seed).
fn fresh_epoch(seed: &[u8; 32], salt: &[u8; 32], dropped: u32, channel: &str) -> Rc<str> {
    if dropped == 0 {
        return derive_epoch(seed, channel);
    }
    use base64::Engine;
    let mut h = Sha256::new();
    h.update(seed);
    h.update(salt);
    h.update(dropped.to_be_bytes());
    h.update(channel.as_bytes());
    let d = h.finalize();
    Rc::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&d[..12]))
}

/// A valid epoch (SPEC §10): 8–32 characters of `A-Z a-z 0-9 _ -`.
pub fn epoch_ok(e: &str) -> bool {
    (8..=32).contains(&e.len()) && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Drops the first entry of `log` (keyed `key` in `fronts`).
fn pop_front(log: &mut Log, key: &Rc<str>, fronts: &mut BTreeMap<u64, Rc<str>>, bytes: &mut u64, retained: &mut usize) {
    let Some(e) = log.entries.pop_front() else { return };
    fronts.remove(&e.seq);
    *bytes = bytes.saturating_sub(e.frame.len() as u64);
    *retained = retained.saturating_sub(1);
    log.lost_through = log.lost_through.max(e.offset);
    if let Some(next) = log.entries.front() {
        fronts.insert(next.seq, key.clone());
    }
}

impl History {
    /// `seed`: 32 random bytes, new for every process (epochs of channels
    /// created in memory derive from it).
    pub fn new(limits: Limits, seed: [u8; 32]) -> History {
        History {
            limits,
            seed,
            logs: HashMap::new(),
            fronts: BTreeMap::new(),
            seq: 0,
            bytes: 0,
            retained: 0,
            generations: vec![0; GENERATION_BUCKETS],
            salt: seed,
        }
    }

    /// The generation of `channel`'s bucket.
    fn generation(&self, channel: &str) -> u32 {
        self.generations.get(bucket(&self.salt, channel)).copied().unwrap_or(0)
    }

    /// The epoch a channel created now gets.
    fn new_epoch(&self, channel: &str) -> Rc<str> {
        fresh_epoch(&self.seed, &self.salt, self.generation(channel), channel)
    }

    /// `log`'s epoch, fixed now if nobody has seen it yet. An epoch fixed
    /// late is still one nobody saw before: a bump of its bucket in the
    /// meantime only makes it newer (see `generations`).
    fn epoch_of(&self, channel: &str, log: &Log) -> Rc<str> {
        log.epoch.get_or_init(|| self.new_epoch(channel)).clone()
    }

    /// Random bytes mixed into the epochs of channels re-created after a
    /// prune (the shell passes fresh ones per process, so that with a
    /// persisted `--history-dir` seed a restart does not repeat them).
    pub fn set_salt(&mut self, salt: [u8; 32]) {
        self.salt = salt;
    }

    /// Channels known now (with an epoch and offsets, or only created).
    pub fn channel_count(&self) -> usize {
        self.logs.len()
    }

    /// Whether `channel` exists.
    pub fn has(&self, channel: &str) -> bool {
        self.logs.contains_key(channel)
    }

    /// Creates `channel` (empty) if it does not exist; its epoch is fixed
    /// when first seen (`now_ms` `u64::MAX`: its idle time starts at the
    /// next prune).
    pub fn ensure(&mut self, channel: &Rc<str>, now_ms: u64) {
        // One lookup; a new log shares the hub's name for the channel.
        self.logs.entry(channel.clone()).or_insert_with(|| Log {
            epoch: OnceCell::new(),
            last: 0,
            lost_through: 0,
            entries: VecDeque::new(),
            touched_ms: now_ms,
        });
    }

    /// Drops channels that `in_use` does not claim (the hub: channels with
    /// subscribers) and that either never had a message, or retain nothing
    /// and were not published to for `--history-ttl` plus
    /// [`IDLE_GRACE_MS`]. Returns how many were dropped. A dropped
    /// channel's epoch and last offset are forgotten: nothing it held can
    /// be resumed anyway, and a later one of that name gets a new epoch
    /// (the same one if it never had a message: see `generations`).
    pub fn prune(&mut self, now_ms: u64, in_use: impl Fn(&str) -> bool) -> usize {
        let ttl = self.limits.ttl_ms.saturating_add(IDLE_GRACE_MS);
        let before = self.logs.len();
        let salt = self.salt;
        let generations = &mut self.generations;
        self.logs.retain(|name, log| {
            if log.touched_ms == u64::MAX {
                log.touched_ms = now_ms;
            }
            if in_use(name) {
                return true;
            }
            if log.never_published() {
                return false;
            }
            let keep = !log.entries.is_empty() || now_ms.saturating_sub(log.touched_ms) <= ttl;
            if !keep {
                if let Some(g) = generations.get_mut(bucket(&salt, name)) {
                    *g = g.wrapping_add(1).max(1);
                }
            }
            keep
        });
        let n = before - self.logs.len();
        // Give the table's memory back after a burst of channels went.
        if self.logs.capacity() > 64 && self.logs.len() < self.logs.capacity() / 4 {
            self.logs.shrink_to_fit();
        }
        n
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Frame bytes retained now (what compaction keeps).
    pub fn retained_bytes(&self) -> u64 {
        self.bytes
    }

    /// Messages retained now, across channels.
    pub fn retained_len(&self) -> usize {
        self.retained
    }

    /// The channel's epoch and last offset.
    pub fn position(&self, channel: &str) -> Position {
        match self.logs.get(channel) {
            Some(l) => Position {
                epoch: self.epoch_of(channel, l),
                offset: l.last,
            },
            None => Position {
                epoch: self.new_epoch(channel),
                offset: 0,
            },
        }
    }

    /// The epoch and offset the channel's next message gets.
    pub fn next(&self, channel: &str) -> Position {
        let p = self.position(channel);
        Position {
            offset: p.offset.saturating_add(1),
            ..p
        }
    }

    /// Records message `offset` of `channel` (offsets ascending; an offset
    /// not above the last is ignored), then applies the limits.
    pub fn push(&mut self, channel: &str, offset: u64, ts_ms: u64, frame: Frame, now_ms: u64) {
        let limits = self.limits;
        self.seq += 1;
        let seq = self.seq;
        let key = match self.logs.get_key_value(channel) {
            Some((k, _)) => k.clone(),
            None => Rc::from(channel),
        };
        let fresh = match self.logs.get(channel) {
            Some(l) if l.epoch.get().is_some() => None,
            _ => Some(self.new_epoch(channel)),
        };
        let log = self.logs.entry(key.clone()).or_insert_with(|| Log {
            epoch: OnceCell::new(),
            last: 0,
            lost_through: 0,
            entries: VecDeque::new(),
            touched_ms: now_ms,
        });
        if let Some(e) = fresh {
            let _ = log.epoch.set(e);
        }
        if offset <= log.last {
            return;
        }
        log.last = offset;
        log.touched_ms = log.touched_ms.max(now_ms);
        if limits.per_channel == 0 {
            log.lost_through = offset;
            return;
        }
        if log.entries.is_empty() {
            self.fronts.insert(seq, key.clone());
        }
        self.bytes += frame.len() as u64;
        self.retained += 1;
        log.entries.push_back(Entry {
            offset,
            ts_ms,
            seq,
            frame,
        });
        while log.entries.len() > limits.per_channel {
            pop_front(log, &key, &mut self.fronts, &mut self.bytes, &mut self.retained);
        }
        Self::expire_log(
            limits,
            log,
            &key,
            &mut self.fronts,
            &mut self.bytes,
            &mut self.retained,
            now_ms,
        );
        self.trim_bytes();
    }

    /// A channel restored from disk: its epoch and last offset, no message
    /// (a marker record). Replaces whatever was known of the channel.
    pub fn restore_marker(&mut self, channel: &str, epoch: &str, last: u64) {
        self.forget(channel);
        self.logs.insert(
            Rc::from(channel),
            Log {
                epoch: OnceCell::from(Rc::from(epoch)),
                last,
                lost_through: last,
                entries: VecDeque::new(),
                // Set at the next prune: a restored channel gets a full TTL.
                touched_ms: u64::MAX,
            },
        );
    }

    /// A message restored from disk. A new epoch for the channel replaces
    /// what was known of it; the first restored message of a channel marks
    /// everything before it as lost.
    pub fn restore(&mut self, channel: &str, epoch: &str, offset: u64, ts_ms: u64, frame: Frame, now_ms: u64) {
        let same = self
            .logs
            .get(channel)
            .is_some_and(|l| l.epoch.get().is_some_and(|e| **e == *epoch));
        if !same {
            self.restore_marker(channel, epoch, offset.saturating_sub(1));
        } else if let Some(l) = self.logs.get_mut(channel)
            && l.entries.is_empty()
        {
            l.lost_through = l.lost_through.max(offset.saturating_sub(1));
        }
        self.push(channel, offset, ts_ms, frame, now_ms);
    }

    /// Drops `channel` if it never had a message: what [`History::prune`]
    /// does to it once nobody subscribes, done when its last subscriber
    /// goes (every connection's personal channel, so the table does not
    /// grow by one channel per handshake until the next prune).
    pub fn drop_if_never_published(&mut self, channel: &str) {
        // One lookup when it goes (the usual case), two when it stays.
        if let Some((key, log)) = self.logs.remove_entry(channel)
            && !log.never_published()
        {
            self.logs.insert(key, log);
        }
    }

    fn forget(&mut self, channel: &str) {
        if let Some(log) = self.logs.remove(channel) {
            for e in &log.entries {
                self.fronts.remove(&e.seq);
                self.bytes = self.bytes.saturating_sub(e.frame.len() as u64);
                self.retained = self.retained.saturating_sub(1);
            }
        }
    }

    fn expire_log(
        limits: Limits,
        log: &mut Log,
        key: &Rc<str>,
        fronts: &mut BTreeMap<u64, Rc<str>>,
        bytes: &mut u64,
        retained: &mut usize,
        now_ms: u64,
    ) {
        while log
            .entries
            .front()
            .is_some_and(|e| now_ms.saturating_sub(e.ts_ms) > limits.ttl_ms)
        {
            pop_front(log, key, fronts, bytes, retained);
        }
    }

    fn trim_bytes(&mut self) {
        while self.bytes > self.limits.max_bytes {
            let Some((_, key)) = self.fronts.pop_first() else { break };
            let Some(log) = self.logs.get_mut(&key) else { continue };
            // pop_front removes the front key again (already gone) and
            // inserts the next one.
            pop_front(log, &key, &mut self.fronts, &mut self.bytes, &mut self.retained);
        }
    }

    /// Drops messages older than the TTL in every channel, oldest first
    /// (the shell calls it on a timer).
    pub fn expire(&mut self, now_ms: u64) {
        let limits = self.limits;
        while let Some((_, key)) = self.fronts.first_key_value() {
            let key = key.clone();
            let Some(log) = self.logs.get_mut(&key) else {
                self.fronts.pop_first();
                continue;
            };
            let expired = log
                .entries
                .front()
                .is_some_and(|e| now_ms.saturating_sub(e.ts_ms) > limits.ttl_ms);
            if !expired {
                break;
            }
            pop_front(log, &key, &mut self.fronts, &mut self.bytes, &mut self.retained);
        }
    }

    /// What a `subscribe` to `channel` with `since` gets (SPEC §10).
    /// `recovered` is true when nothing after the client's point was lost:
    /// same epoch, and every message after it still retained.
    pub fn replay(&mut self, channel: &str, since: Option<&Since>, now_ms: u64) -> Replay {
        let limits = self.limits;
        if let Some(key) = self.logs.get_key_value(channel).map(|(k, _)| k.clone())
            && let Some(log) = self.logs.get_mut(&key)
        {
            Self::expire_log(
                limits,
                log,
                &key,
                &mut self.fronts,
                &mut self.bytes,
                &mut self.retained,
                now_ms,
            );
        }
        let pos = self.position(channel);
        let Some(since) = since else {
            return Replay {
                epoch: pos.epoch,
                offset: pos.offset,
                recovered: None,
                frames: Vec::new(),
            };
        };
        let (after, same_epoch) = match since {
            Since::Position { epoch, offset } => (*offset, **epoch == *pos.epoch),
            Since::Last(n) => (pos.offset.saturating_sub(*n), true),
        };
        let lost_through = self.logs.get(channel).map_or(0, |l| l.lost_through);
        let (after, recovered) = if !same_epoch {
            (0, false)
        } else if after > pos.offset {
            (pos.offset, false)
        } else {
            (after, lost_through <= after)
        };
        let frames = self
            .logs
            .get(channel)
            .map(|l| {
                l.entries
                    .iter()
                    .filter(|e| e.offset > after)
                    .map(|e| (e.offset, e.frame.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Replay {
            epoch: pos.epoch,
            offset: pos.offset,
            recovered: Some(recovered),
            frames,
        }
    }

    /// Everything retained, for compacting the disk log: per channel its
    /// messages in offset order, or one marker (empty frame) for a channel
    /// that has offsets but no retained message.
    pub fn retained(&self) -> impl Iterator<Item = Retained<'_>> {
        // A channel without an epoch was never published to: nothing to keep.
        let logs = self
            .logs
            .iter()
            .filter_map(|(ch, log)| Some((ch, log, log.epoch.get()?)));
        logs.flat_map(|(ch, log, epoch)| {
            let marker = (log.entries.is_empty() && log.last > 0).then(|| Retained {
                channel: ch,
                epoch,
                offset: log.last,
                ts_ms: 0,
                frame: "",
            });
            marker.into_iter().chain(log.entries.iter().map(move |e| Retained {
                channel: ch,
                epoch,
                offset: e.offset,
                ts_ms: e.ts_ms,
                frame: e.frame.as_str(),
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(per_channel: usize, ttl_ms: u64, max_bytes: u64) -> History {
        History::new(
            Limits {
                per_channel,
                ttl_ms,
                max_bytes,
            },
            [1; 32],
        )
    }
    fn offsets(r: &Replay) -> Vec<u64> {
        r.frames.iter().map(|f| f.0).collect()
    }
    fn pos(epoch: &str, offset: u64) -> Since {
        Since::Position {
            epoch: epoch.into(),
            offset,
        }
    }
    fn fill(h: &mut History, ch: &str, n: u64, ts: u64) {
        for i in 1..=n {
            let next = h.next(ch).offset;
            h.push(ch, next, ts, format!("{ch}{i:05}").into(), ts);
        }
    }

    #[test]
    fn spec10_epochs_are_valid_stable_per_process_and_new_per_seed() {
        let a = h(10, 1000, 1000);
        let e = a.position("ops").epoch;
        assert!(epoch_ok(&e), "{e}");
        assert_eq!(a.position("ops").epoch, e);
        assert_ne!(a.position("other").epoch, e);
        let b = History::new(a.limits(), [2; 32]);
        assert_ne!(b.position("ops").epoch, e);
        assert!(!epoch_ok("short"));
        assert!(!epoch_ok(&"x".repeat(33)));
        assert!(!epoch_ok("has space!"));
    }

    #[test]
    fn spec10_since_position_replays_after_k() {
        let mut h = h(10, 1000, 1 << 20);
        fill(&mut h, "c", 5, 0);
        let e = h.position("c").epoch.to_string();
        let r = h.replay("c", Some(&pos(&e, 2)), 0);
        assert_eq!((r.offset, r.recovered, offsets(&r)), (5, Some(true), vec![3, 4, 5]));
        // Up to date: nothing to send, nothing lost.
        let r = h.replay("c", Some(&pos(&e, 5)), 0);
        assert_eq!((r.recovered, offsets(&r)), (Some(true), vec![]));
        // From the start.
        assert_eq!(offsets(&h.replay("c", Some(&pos(&e, 0)), 0)), vec![1, 2, 3, 4, 5]);
        // A point past the end is unknown here.
        let r = h.replay("c", Some(&pos(&e, 9)), 0);
        assert_eq!((r.recovered, offsets(&r)), (Some(false), vec![]));
        // Another epoch: everything retained, not recovered.
        let r = h.replay("c", Some(&pos("otherepoch", 3)), 0);
        assert_eq!((r.recovered, offsets(&r)), (Some(false), vec![1, 2, 3, 4, 5]));
        // No since: position only.
        let r = h.replay("c", None, 0);
        assert_eq!((r.offset, r.recovered, r.frames.len()), (5, None, 0));
    }

    #[test]
    fn spec10_since_last() {
        let mut h = h(10, 1000, 1 << 20);
        fill(&mut h, "c", 5, 0);
        let r = h.replay("c", Some(&Since::Last(2)), 0);
        assert_eq!((r.recovered, offsets(&r)), (Some(true), vec![4, 5]));
        let r = h.replay("c", Some(&Since::Last(0)), 0);
        assert_eq!((r.recovered, offsets(&r)), (Some(true), vec![]));
        let r = h.replay("c", Some(&Since::Last(1000)), 0);
        assert_eq!((r.recovered, offsets(&r)), (Some(true), vec![1, 2, 3, 4, 5]));
        // An empty channel: nothing lost.
        let r = h.replay("new", Some(&Since::Last(3)), 0);
        assert_eq!((r.offset, r.recovered, offsets(&r)), (0, Some(true), vec![]));
    }

    #[test]
    fn an_epoch_once_seen_stays_while_the_channel_lives() {
        let mut h = h(10, 1000, 1 << 20);
        h.set_salt([9; 32]);
        h.ensure(&Rc::from("@a"), 0);
        h.ensure(&Rc::from("@b"), 0);
        // Never seen, never published: nothing for the disk log.
        assert_eq!(h.retained().count(), 0);
        let seen = h.position("@a").epoch;
        // Drop 4000 channels that had messages: nearly every bucket's
        // generation moves, "@a"'s and "@b"'s very likely among them.
        for i in 0..4000 {
            fill(&mut h, &format!("c{i}"), 1, 0);
        }
        h.expire(5000);
        let later = 5000 + 1000 + IDLE_GRACE_MS + 1;
        assert_eq!(h.prune(later, |c| c.starts_with('@')), 4000);
        assert_eq!(h.position("@a").epoch, seen, "a seen epoch is fixed");
        let b = h.position("@b").epoch;
        assert!(epoch_ok(&b), "{b}");
        assert_eq!(h.position("@b").epoch, b);
        // Published to: kept by the disk log with the epoch its publisher saw.
        let next = h.next("@b");
        h.push("@b", next.offset, 0, Frame::from("m"), later);
        let kept: Vec<_> = h
            .retained()
            .map(|r| (r.channel, r.epoch.to_string(), r.offset))
            .collect();
        assert_eq!(kept, vec![("@b", b.to_string(), 1)]);
    }

    #[test]
    fn never_published_channels_go_when_unused_and_come_back_with_their_epoch() {
        let mut h = h(10, 1000, 1 << 20);
        h.set_salt([9; 32]);
        h.ensure(&Rc::from("@alice"), 0);
        let quiet = h.position("@alice").epoch;
        fill(&mut h, "busy", 2, 0);
        let busy = h.position("busy").epoch;
        // Subscribed: kept. Unused and never published: gone at once.
        assert_eq!(h.prune(0, |c| c == "@alice"), 0);
        assert_eq!(h.prune(1, |_| false), 1);
        assert!(!h.has("@alice"));
        assert!(h.has("busy"), "retains messages");
        // Re-created: the same epoch, nothing was lost.
        h.ensure(&Rc::from("@alice"), 2);
        assert_eq!(h.position("@alice").epoch, quiet);
        let r = h.replay("@alice", Some(&pos(&quiet, 0)), 2);
        assert_eq!(r.recovered, Some(true));
        // A channel that had messages: dropped after TTL + grace, and its
        // re-creation gets a new epoch (a resume says not recovered).
        h.expire(5000);
        let later = 5000 + 1000 + IDLE_GRACE_MS + 1;
        assert_eq!(h.prune(later, |_| false), 2);
        assert_ne!(h.position("busy").epoch, busy);
        let r = h.replay("busy", Some(&pos(&busy, 2)), later);
        assert_eq!(r.recovered, Some(false));
    }

    #[test]
    fn spec10_count_limit_per_channel() {
        let mut h = h(3, 1000, 1 << 20);
        fill(&mut h, "a", 5, 0);
        fill(&mut h, "b", 2, 0);
        assert_eq!(h.retained_len(), 5);
        let e = h.position("a").epoch.to_string();
        let r = h.replay("a", Some(&pos(&e, 1)), 0);
        assert_eq!((r.recovered, offsets(&r)), (Some(false), vec![3, 4, 5]));
        let r = h.replay("a", Some(&pos(&e, 2)), 0);
        assert_eq!((r.recovered, offsets(&r)), (Some(true), vec![3, 4, 5]));
        let r = h.replay("a", Some(&Since::Last(4)), 0);
        assert_eq!((r.recovered, offsets(&r)), (Some(false), vec![3, 4, 5]));
    }

    #[test]
    fn spec10_history_off_keeps_offsets_and_epochs() {
        let mut h = h(0, 1000, 1 << 20);
        fill(&mut h, "a", 3, 0);
        assert_eq!(
            (h.position("a").offset, h.retained_len(), h.retained_bytes()),
            (3, 0, 0)
        );
        let e = h.position("a").epoch.to_string();
        assert_eq!(h.replay("a", Some(&pos(&e, 3)), 0).recovered, Some(true));
        assert_eq!(h.replay("a", Some(&pos(&e, 2)), 0).recovered, Some(false));
    }

    #[test]
    fn spec10_ttl_lazily_and_by_sweep() {
        let mut h = h(10, 100, 1 << 20);
        fill(&mut h, "a", 2, 1000);
        fill(&mut h, "b", 1, 1050);
        fill(&mut h, "a", 1, 1080);
        // Age 100 is kept, 101 is not.
        let e = h.position("a").epoch.to_string();
        assert_eq!(offsets(&h.replay("a", Some(&pos(&e, 0)), 1100)), vec![1, 2, 3]);
        let r = h.replay("a", Some(&pos(&e, 0)), 1101);
        assert_eq!((r.recovered, offsets(&r)), (Some(false), vec![3]));
        assert_eq!(h.retained_len(), 2);
        h.expire(1151);
        assert_eq!(h.retained_len(), 1);
        h.expire(1181);
        assert_eq!((h.retained_len(), h.retained_bytes()), (0, 0));
        assert_eq!(h.position("a").offset, 3);
    }

    #[test]
    fn spec10_max_bytes_across_channels_oldest_first() {
        // Frames are 6 bytes ("a00001"); room for 4.
        let mut h = h(10, 1000, 24);
        fill(&mut h, "a", 2, 0);
        fill(&mut h, "b", 2, 0);
        assert_eq!(h.retained_bytes(), 24);
        fill(&mut h, "b", 1, 0);
        // a's first message (the oldest anywhere) went.
        let ea = h.position("a").epoch.to_string();
        let r = h.replay("a", Some(&pos(&ea, 0)), 0);
        assert_eq!((r.recovered, offsets(&r)), (Some(false), vec![2]));
        fill(&mut h, "b", 2, 0);
        assert_eq!(offsets(&h.replay("a", Some(&pos(&ea, 0)), 0)), Vec::<u64>::new());
        let eb = h.position("b").epoch.to_string();
        assert_eq!(offsets(&h.replay("b", Some(&pos(&eb, 0)), 0)), vec![2, 3, 4, 5]);
        assert_eq!((h.retained_len(), h.retained_bytes()), (4, 24));
    }

    #[test]
    fn frames_are_shared_not_copied() {
        let mut h = h(10, 1000, 1 << 20);
        let f: Frame = "hello".into();
        h.push("c", 1, 0, f.clone(), 0);
        let r = h.replay("c", Some(&Since::Last(1)), 0);
        assert_eq!(r.frames[0].1.as_str().as_ptr(), f.as_str().as_ptr());
    }

    #[test]
    fn restore_keeps_epoch_and_marks_earlier_offsets_lost() {
        let mut h = h(10, 1000, 1 << 20);
        h.restore_marker("m", "markerEpoch1", 7);
        assert_eq!(h.position("m").offset, 7);
        assert_eq!(&*h.position("m").epoch, "markerEpoch1");
        assert_eq!(h.next("m").offset, 8);
        h.restore("c", "diskEpoch123", 4, 0, "x4".into(), 0);
        h.restore("c", "diskEpoch123", 5, 0, "x5".into(), 0);
        let r = h.replay("c", Some(&pos("diskEpoch123", 3)), 0);
        assert_eq!((r.recovered, offsets(&r)), (Some(true), vec![4, 5]));
        let r = h.replay("c", Some(&pos("diskEpoch123", 2)), 0);
        assert_eq!(r.recovered, Some(false));
        // Compaction input: the marker and the messages.
        let mut all: Vec<_> = h.retained().map(|r| (r.channel, r.offset, r.frame)).collect();
        all.sort();
        assert_eq!(all, vec![("c", 4, "x4"), ("c", 5, "x5"), ("m", 7, "")]);
        // A later epoch for the same channel replaces the old one.
        h.restore("c", "diskEpoch456", 1, 0, "y1".into(), 0);
        assert_eq!((h.position("c").offset, h.retained_len()), (1, 1));
    }
}
