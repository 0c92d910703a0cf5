//! Connections that have not upgraded yet, under a global and a
//! per-address cap (`--max-pending`, `--max-pending-per-address`), sans-IO.
//!
//! A connection is *new* (accepted, its task has not read from it yet),
//! *busy* (a request is being read or answered) or *sheddable*, in one of
//! three tiers: it waits for a request head with nothing buffered
//! ([`Tier::Empty`]), it waits for the client to read a response that
//! does not fit in the socket's buffers ([`Tier::Stalled`]), or it waits
//! for the rest of a request head ([`Tier::Partial`]). At a cap, a new
//! connection pushes out the sheddable connection of the first tier that
//! has one, the one in it since longest (of its address, at the
//! per-address cap); never a new or busy one. An attacker holding many
//! silent or unread connections loses them; a client whose request is on
//! its way, or that was accepted a moment ago and has not had its first
//! read, keeps its place. When nothing is sheddable the new connection is
//! refused. `T` is the caller's handle for telling a connection to go.
//!
//! Within a tier, repeat offenders go first: an address (IPv6: /64) that
//! had a connection shed recently and has sent no complete request head
//! since is *suspect*, and a sheddable connection of a suspect address goes
//! before any other of its tier, however young. "Recently" is two
//! generations of at most four times `--max-pending` distinct addresses
//! each: an address stays suspect until that many other addresses have
//! been shed after it. An attacker who reopens every shed connection at
//! once would otherwise turn the places over so fast that a client
//! accepted in the same moment, and slow to send its head (a packet lost
//! to a full listen queue is resent 200 ms later), is the longest waiting
//! and goes instead; a client address that keeps sending requests is never
//! suspect for long.

use crate::hub::IdHasher;
use crate::throttle::address_key;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::net::IpAddr;

/// A map keyed by connection id (the hub's [`IdHasher`]: ids are a
/// server counter, never a peer's input, so one multiplication, not SipHash).
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Why a connection may be shed, in the order they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Waiting for a request head, nothing buffered.
    Empty = 0,
    /// Writing a response the client does not read.
    Stalled = 1,
    /// Waiting for the rest of a request head.
    Partial = 2,
}

const TIERS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    New,
    /// Sheddable since `tick` (lower ticks earlier).
    Sheddable {
        tick: u64,
        tier: Tier,
        /// Its address was suspect when it became sheddable.
        suspect: bool,
    },
    Busy,
}

struct Entry<T> {
    key: IpAddr,
    state: State,
    handle: T,
}

/// One address's connections and the ticks of its sheddable ones.
#[derive(Default)]
struct Address {
    count: usize,
    tiers: [BTreeSet<u64>; TIERS],
}

/// What to do with a new connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<T> {
    /// Serve it.
    Yes,
    /// Serve it, after telling this (sheddable) connection to go.
    Shed(T),
    /// Refuse it: at a cap and nothing sheddable.
    No,
}

/// The table of pre-upgrade connections.
pub struct Pending<T> {
    max_total: usize,
    max_per_address: usize,
    entries: IdMap<Entry<T>>,
    /// Sheddable connections, tick to id: index `2 × tier` for suspect
    /// addresses, `2 × tier + 1` for the others.
    tiers: [BTreeMap<u64, u64>; 2 * TIERS],
    per_address: HashMap<IpAddr, Address>,
    tick: u64,
    /// Suspect addresses (see the module): shed since the last rotation,
    /// and in the generation before.
    suspects: HashSet<IpAddr>,
    suspects_before: HashSet<IpAddr>,
    /// Distinct addresses in `suspects` that start a new generation.
    generation: usize,
}

impl<T> Pending<T> {
    pub fn new(max_total: usize, max_per_address: usize) -> Pending<T> {
        Pending {
            max_total,
            max_per_address,
            entries: IdMap::default(),
            tiers: Default::default(),
            per_address: HashMap::new(),
            tick: 0,
            suspects: HashSet::new(),
            suspects_before: HashSet::new(),
            generation: max_total.saturating_mul(4).clamp(64, 1 << 16),
        }
    }

    /// Whether `ip`'s connections go first in their tier (see the module).
    pub fn suspect(&self, ip: IpAddr) -> bool {
        self.is_suspect(address_key(ip))
    }

    fn is_suspect(&self, key: IpAddr) -> bool {
        self.suspects.contains(&key) || self.suspects_before.contains(&key)
    }

    /// Remembers that a connection of `key` was shed.
    fn note_shed(&mut self, key: IpAddr) {
        let was = self.is_suspect(key);
        self.suspects.insert(key);
        if self.suspects.len() >= self.generation {
            let fresh = std::mem::take(&mut self.suspects);
            let old = std::mem::replace(&mut self.suspects_before, fresh);
            for k in old {
                if !self.suspects_before.contains(&k) {
                    self.reclass(k, false);
                }
            }
        }
        if !was {
            self.reclass(key, true);
        }
    }

    /// A connection of `id`'s address sent a complete request head: the
    /// address is not suspect any more.
    pub fn spoke(&mut self, id: u64) {
        let Some(key) = self.entries.get(&id).map(|e| e.key) else {
            return;
        };
        // Most of the time nobody is suspect: no hashing then (every
        // request head comes this way).
        let a = !self.suspects.is_empty() && self.suspects.remove(&key);
        let b = !self.suspects_before.is_empty() && self.suspects_before.remove(&key);
        if a || b {
            self.reclass(key, false);
        }
    }

    /// `key`'s sheddable connections move to the suspect lists of their
    /// tiers (`suspect`) or back.
    fn reclass(&mut self, key: IpAddr, suspect: bool) {
        let Some(a) = self.per_address.get(&key) else { return };
        let (from, to) = if suspect { (1, 0) } else { (0, 1) };
        for (t, ticks) in a.tiers.iter().enumerate() {
            for tick in ticks {
                let Some(id) = self.tiers[2 * t + from].remove(tick) else {
                    continue;
                };
                self.tiers[2 * t + to].insert(*tick, id);
                if let Some(Entry {
                    state: State::Sheddable { suspect: s, .. },
                    ..
                }) = self.entries.get_mut(&id)
                {
                    *s = suspect;
                }
            }
        }
    }

    /// Forgets shed victim `id` and notes its address; its handle.
    fn shed(&mut self, id: u64) -> Option<T> {
        let key = self.entries.get(&id)?.key;
        let h = self.remove(id)?;
        self.note_shed(key);
        Some(h)
    }

    /// Connections counted.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Admits connection `id` from `ip` as new (not sheddable until its
    /// task calls [`Pending::sheddable`]). `exempt` skips the per-address
    /// cap (trusted proxies).
    pub fn admit(&mut self, id: u64, ip: IpAddr, exempt: bool, handle: T) -> Admit<T> {
        let key = address_key(ip);
        // An address has at most all the connections: below the cap in
        // all, no lookup (the one in `entry` below is then the only one).
        let at_cap = !exempt
            && self.entries.len() >= self.max_per_address
            && self.per_address.get(&key).map_or(0, |a| a.count) >= self.max_per_address;
        let victim = if at_cap {
            Some(self.victim(Some(key)))
        } else if self.entries.len() >= self.max_total {
            Some(self.victim(None))
        } else {
            None
        };
        let out = match victim {
            None => Admit::Yes,
            Some(v) => match v.and_then(|v| self.shed(v)) {
                Some(h) => Admit::Shed(h),
                None => return Admit::No,
            },
        };
        self.entries.insert(
            id,
            Entry {
                key,
                state: State::New,
                handle,
            },
        );
        self.per_address.entry(key).or_default().count += 1;
        out
    }

    /// `id` may be shed, for `tier`. Staying in a tier keeps the tick of
    /// when it entered it (more bytes of the same head do not make a
    /// connection younger); moving between the waiting tiers keeps it too.
    pub fn sheddable(&mut self, id: u64, tier: Tier) {
        let Some(e) = self.entries.get(&id) else { return };
        let tick = match e.state {
            State::Sheddable { tier: t, .. } if t == tier => return,
            State::Sheddable { tick, tier: t, .. } if t != Tier::Stalled && tier != Tier::Stalled => tick,
            _ => {
                self.tick += 1;
                self.tick
            }
        };
        let suspect = self.is_suspect(e.key);
        self.set_state(id, State::Sheddable { tick, tier, suspect });
    }

    /// `id` is reading or answering a request: not sheddable.
    pub fn busy(&mut self, id: u64) {
        self.set_state(id, State::Busy);
    }

    fn set_state(&mut self, id: u64, state: State) {
        let Some(e) = self.entries.get_mut(&id) else { return };
        let old = std::mem::replace(&mut e.state, state);
        let key = e.key;
        self.unlist(key, old);
        if let State::Sheddable { tick, tier, suspect } = state {
            if let Some(a) = self.per_address.get_mut(&key) {
                a.tiers[tier as usize].insert(tick);
                self.tiers[index(tier, suspect)].insert(tick, id);
            }
        }
    }

    /// Takes a sheddable state out of the tick indexes.
    fn unlist(&mut self, key: IpAddr, state: State) {
        if let State::Sheddable { tick, tier, suspect } = state {
            self.tiers[index(tier, suspect)].remove(&tick);
            if let Some(a) = self.per_address.get_mut(&key) {
                a.tiers[tier as usize].remove(&tick);
            }
        }
    }

    /// Forgets the connection that should go first and returns its handle
    /// (to tell it to go), if any is sheddable.
    pub fn shed_one(&mut self) -> Option<T> {
        let victim = self.victim(None)?;
        self.shed(victim)
    }

    /// Who goes first, of `key` or of all: the first tier that has one,
    /// suspect addresses first (of all), the longest in it.
    fn victim(&self, key: Option<IpAddr>) -> Option<u64> {
        match key {
            None => self.tiers.iter().find_map(|t| t.values().next().copied()),
            Some(k) => {
                let a = self.per_address.get(&k)?;
                (0..TIERS).find_map(|t| {
                    let tick = a.tiers[t].first()?;
                    (self.tiers[2 * t].get(tick))
                        .or_else(|| self.tiers[2 * t + 1].get(tick))
                        .copied()
                })
            }
        }
    }

    /// Forgets `id` (it upgraded, closed or was shed); its handle.
    pub fn remove(&mut self, id: u64) -> Option<T> {
        let e = self.entries.remove(&id)?;
        self.unlist(e.key, e.state);
        if let std::collections::hash_map::Entry::Occupied(mut a) = self.per_address.entry(e.key) {
            a.get_mut().count -= 1;
            if a.get().count == 0 {
                a.remove();
            }
        }
        Some(e.handle)
    }
}

/// Where a sheddable connection is listed (see [`Pending::tiers`]).
fn index(tier: Tier, suspect: bool) -> usize {
    2 * tier as usize + usize::from(!suspect)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Admits `id` and gives it its first read (nothing there).
    fn admit_read<T>(p: &mut Pending<T>, id: u64, addr: &str, h: T) -> Admit<T> {
        let a = p.admit(id, ip(addr), false, h);
        if !matches!(a, Admit::No) {
            p.sheddable(id, Tier::Empty);
        }
        a
    }

    #[test]
    fn the_global_cap_sheds_the_longest_waiting() {
        let mut p = Pending::new(3, 10);
        assert_eq!(admit_read(&mut p, 1, "10.0.0.1", 1), Admit::Yes);
        assert_eq!(admit_read(&mut p, 2, "10.0.0.2", 2), Admit::Yes);
        assert_eq!(admit_read(&mut p, 3, "10.0.0.3", 3), Admit::Yes);
        p.busy(1); // 1 is reading a request
        assert_eq!(admit_read(&mut p, 4, "10.0.0.4", 4), Admit::Shed(2));
        p.busy(3);
        p.busy(4);
        assert_eq!(p.admit(5, ip("10.0.0.5"), false, 5), Admit::No, "nothing sheddable");
        p.sheddable(1, Tier::Empty);
        assert_eq!(admit_read(&mut p, 5, "10.0.0.5", 5), Admit::Shed(1));
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn a_connection_not_yet_read_from_is_never_shed() {
        let mut p = Pending::new(2, 10);
        assert_eq!(p.admit(1, ip("10.0.0.1"), false, 1), Admit::Yes);
        assert_eq!(p.admit(2, ip("10.0.0.2"), false, 2), Admit::Yes);
        // Both were accepted but their tasks have not run: nobody to shed,
        // even though 1 is older.
        assert_eq!(p.admit(3, ip("10.0.0.3"), false, 3), Admit::No);
        assert_eq!(p.shed_one(), None);
        // 2 had its first read (nothing there); 1 still has not.
        p.sheddable(2, Tier::Empty);
        assert_eq!(p.admit(3, ip("10.0.0.3"), false, 3), Admit::Shed(2));
        assert_eq!(p.shed_one(), None, "1 and 3 are new");
        // The same at the per-address cap.
        let mut q = Pending::new(100, 1);
        assert_eq!(q.admit(1, ip("10.0.0.1"), false, 1), Admit::Yes);
        assert_eq!(q.admit(2, ip("10.0.0.1"), false, 2), Admit::No);
    }

    #[test]
    fn silent_go_before_unread_responses_before_partial_heads() {
        let mut p = Pending::new(4, 10);
        for id in 1..=4 {
            admit_read(&mut p, id, &format!("10.0.0.{id}"), id);
        }
        p.sheddable(1, Tier::Partial); // the oldest sent part of a head
        p.busy(2);
        p.sheddable(2, Tier::Stalled); // 2 does not read its response
        assert_eq!(admit_read(&mut p, 5, "10.0.0.5", 5), Admit::Shed(3));
        assert_eq!(admit_read(&mut p, 6, "10.0.0.6", 6), Admit::Shed(4));
        assert_eq!(admit_read(&mut p, 7, "10.0.0.7", 7), Admit::Shed(5));
        p.busy(6);
        p.busy(7);
        assert_eq!(
            p.admit(8, ip("10.0.0.8"), false, 8),
            Admit::Shed(2),
            "then the stalled writer"
        );
        p.busy(8);
        assert_eq!(
            p.admit(9, ip("10.0.0.9"), false, 9),
            Admit::Shed(1),
            "then the partial head"
        );
        assert_eq!(p.admit(10, ip("10.0.0.9"), false, 10), Admit::No);
    }

    #[test]
    fn more_bytes_of_the_same_head_do_not_make_a_connection_younger() {
        let mut p = Pending::new(10, 10);
        admit_read(&mut p, 1, "10.0.0.1", 1);
        admit_read(&mut p, 2, "10.0.0.2", 2);
        p.sheddable(1, Tier::Partial);
        p.sheddable(1, Tier::Partial);
        p.sheddable(2, Tier::Partial);
        assert_eq!(p.shed_one(), Some(1), "1 started waiting before 2");
        // A new head (keep-alive) does.
        admit_read(&mut p, 3, "10.0.0.3", 3);
        p.busy(2);
        p.sheddable(2, Tier::Empty);
        assert_eq!(p.shed_one(), Some(3));
        assert_eq!(p.shed_one(), Some(2));
        assert_eq!(p.shed_one(), None);
    }

    #[test]
    fn the_per_address_cap_sheds_that_address_only() {
        let mut p = Pending::new(100, 2);
        admit_read(&mut p, 1, "10.0.0.1", 1);
        admit_read(&mut p, 2, "10.0.0.9", 2);
        admit_read(&mut p, 3, "10.0.0.1", 3);
        assert_eq!(admit_read(&mut p, 4, "10.0.0.1", 4), Admit::Shed(1));
        assert_eq!(
            p.admit(5, ip("10.0.0.1"), true, 5),
            Admit::Yes,
            "a trusted proxy is exempt"
        );
        // The address's silent ones go before its partial ones.
        p.sheddable(3, Tier::Partial);
        p.busy(5);
        assert_eq!(admit_read(&mut p, 10, "10.0.0.1", 10), Admit::Shed(4));
        assert_eq!(admit_read(&mut p, 11, "10.0.0.1", 11), Admit::Shed(10));
        p.busy(11);
        assert_eq!(admit_read(&mut p, 12, "10.0.0.1", 12), Admit::Shed(3));
        p.busy(12);
        assert_eq!(p.admit(13, ip("10.0.0.1"), false, 13), Admit::No, "all busy");
        // IPv6 counts by /64.
        admit_read(&mut p, 6, "2001:db8::1", 6);
        admit_read(&mut p, 7, "2001:db8::2", 7);
        assert_eq!(admit_read(&mut p, 8, "2001:db8::3", 8), Admit::Shed(6));
        assert_eq!(p.remove(7), Some(7));
        assert_eq!(p.remove(7), None);
        // 2001:db8::/64 just had one shed: its 8 goes before the older 2.
        assert_eq!(p.shed_one(), Some(8));
        assert_eq!(p.shed_one(), Some(2));
    }

    #[test]
    fn repeat_offenders_go_before_a_client_that_waits_longer() {
        let mut p = Pending::new(3, 10);
        for id in 1..=3 {
            admit_read(&mut p, id, "10.9.0.1", id); // the attacker fills the table
        }
        assert!(!p.suspect(ip("10.9.0.1")));
        assert_eq!(admit_read(&mut p, 4, "10.9.0.1", 4), Admit::Shed(1));
        assert_eq!(admit_read(&mut p, 5, "10.0.0.7", 5), Admit::Shed(2)); // a client
        assert!(p.suspect(ip("10.9.0.1")));
        assert!(!p.suspect(ip("10.0.0.7")));
        // The attacker reopens: its connections go, the client's stays,
        // though it now waits longest (it was read before 6 and 7).
        assert_eq!(admit_read(&mut p, 6, "10.9.0.1", 6), Admit::Shed(3));
        assert_eq!(admit_read(&mut p, 7, "10.9.0.1", 7), Admit::Shed(4));
        assert_eq!(admit_read(&mut p, 8, "10.9.0.1", 8), Admit::Shed(6));
        assert_eq!(p.shed_one(), Some(7));
        // With nothing of a suspect address waiting, the longest waiting.
        p.remove(8);
        assert_eq!(p.shed_one(), Some(5));
        // Suspicion ends two generations later (64 distinct addresses shed
        // each here: 4 × 3, at least 64).
        for id in 100..300u64 {
            admit_read(&mut p, id, &format!("10.1.{}.{}", id / 200, id % 200), id);
            let _ = p.shed_one();
        }
        assert!(!p.suspect(ip("10.9.0.1")));
        assert!(!p.suspect(ip("10.0.0.7")));
    }

    #[test]
    fn an_address_that_sends_a_request_is_no_longer_suspect() {
        let mut p = Pending::new(10, 2);
        admit_read(&mut p, 1, "10.0.0.7", 1); // a client, waiting longest
        for id in 2..=3 {
            admit_read(&mut p, id, "10.9.0.1", id);
        }
        // The per-address cap sheds the attacker's own.
        assert_eq!(admit_read(&mut p, 4, "10.9.0.1", 4), Admit::Shed(2));
        assert_eq!(admit_read(&mut p, 5, "10.9.0.1", 5), Admit::Shed(3));
        assert!(p.suspect(ip("10.9.0.1")));
        // 5 sends a request head: 4 is back in line behind the client.
        p.spoke(5);
        p.busy(5);
        assert!(!p.suspect(ip("10.9.0.1")));
        assert_eq!(p.shed_one(), Some(1));
        assert_eq!(p.shed_one(), Some(4));
    }

    #[test]
    fn the_indexes_stay_consistent_under_churn() {
        // A deterministic mix of admits, state changes and removals; after
        // each step every index agrees with the entries.
        let mut p = Pending::new(16, 4);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for id in 1..5000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let addr = format!("10.0.{}.{}", x % 3, (x >> 8) % 7);
            let other = x % id;
            match x % 8 {
                0 | 1 => {
                    let _ = p.admit(id, ip(&addr), false, id);
                }
                2 => p.sheddable(other, Tier::Empty),
                3 => p.sheddable(other, Tier::Partial),
                4 => p.sheddable(other, Tier::Stalled),
                5 => p.busy(other),
                6 => p.spoke(other),
                _ => {
                    let _ = p.remove(other);
                }
            }
            assert!(p.len() <= 16);
            let sheddable = p
                .entries
                .values()
                .filter(|e| matches!(e.state, State::Sheddable { .. }))
                .count();
            assert_eq!(p.tiers.iter().map(|t| t.len()).sum::<usize>(), sheddable);
            for (id, e) in &p.entries {
                if let State::Sheddable { tick, tier, suspect } = e.state {
                    assert_eq!(p.tiers[index(tier, suspect)].get(&tick), Some(id));
                }
            }
            let listed: usize = p
                .per_address
                .values()
                .map(|a| a.tiers.iter().map(|t| t.len()).sum::<usize>())
                .sum();
            assert_eq!(listed, sheddable);
            assert_eq!(p.per_address.values().map(|a| a.count).sum::<usize>(), p.len());
            assert!(p.per_address.values().all(|a| a.count > 0 && a.count <= 4));
        }
    }
}
