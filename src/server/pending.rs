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

use crate::throttle::address_key;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

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
    entries: HashMap<u64, Entry<T>>,
    /// Sheddable connections, by tier, tick to id.
    tiers: [BTreeMap<u64, u64>; TIERS],
    per_address: HashMap<IpAddr, Address>,
    tick: u64,
}

impl<T> Pending<T> {
    pub fn new(max_total: usize, max_per_address: usize) -> Pending<T> {
        Pending {
            max_total,
            max_per_address,
            entries: HashMap::new(),
            tiers: Default::default(),
            per_address: HashMap::new(),
            tick: 0,
        }
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
        let mine = self.per_address.get(&key).map_or(0, |a| a.count);
        let victim = if !exempt && mine >= self.max_per_address {
            Some(self.victim(Some(key)))
        } else if self.entries.len() >= self.max_total {
            Some(self.victim(None))
        } else {
            None
        };
        let out = match victim {
            None => Admit::Yes,
            Some(v) => match v.and_then(|v| self.remove(v)) {
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
            State::Sheddable { tick, tier: t } if t != Tier::Stalled && tier != Tier::Stalled => tick,
            _ => {
                self.tick += 1;
                self.tick
            }
        };
        self.set_state(id, State::Sheddable { tick, tier });
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
        if let State::Sheddable { tick, tier } = state {
            if let Some(a) = self.per_address.get_mut(&key) {
                a.tiers[tier as usize].insert(tick);
                self.tiers[tier as usize].insert(tick, id);
            }
        }
    }

    /// Takes a sheddable state out of the tick indexes.
    fn unlist(&mut self, key: IpAddr, state: State) {
        if let State::Sheddable { tick, tier } = state {
            self.tiers[tier as usize].remove(&tick);
            if let Some(a) = self.per_address.get_mut(&key) {
                a.tiers[tier as usize].remove(&tick);
            }
        }
    }

    /// Forgets the connection that should go first and returns its handle
    /// (to tell it to go), if any is sheddable.
    pub fn shed_one(&mut self) -> Option<T> {
        let victim = self.victim(None)?;
        self.remove(victim)
    }

    /// Who goes first, of `key` or of all: the first tier that has one,
    /// the longest in it.
    fn victim(&self, key: Option<IpAddr>) -> Option<u64> {
        let a = match key {
            None => None,
            Some(k) => Some(self.per_address.get(&k)?),
        };
        (0..TIERS).find_map(|t| match a {
            None => self.tiers[t].values().next().copied(),
            Some(a) => a.tiers[t].first().and_then(|tick| self.tiers[t].get(tick)).copied(),
        })
    }

    /// Forgets `id` (it upgraded, closed or was shed); its handle.
    pub fn remove(&mut self, id: u64) -> Option<T> {
        let e = self.entries.remove(&id)?;
        self.unlist(e.key, e.state);
        if let Some(a) = self.per_address.get_mut(&e.key) {
            a.count -= 1;
            if a.count == 0 {
                self.per_address.remove(&e.key);
            }
        }
        Some(e.handle)
    }
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
        assert_eq!(p.shed_one(), Some(2));
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
            match x % 7 {
                0 | 1 => {
                    let _ = p.admit(id, ip(&addr), false, id);
                }
                2 => p.sheddable(other, Tier::Empty),
                3 => p.sheddable(other, Tier::Partial),
                4 => p.sheddable(other, Tier::Stalled),
                5 => p.busy(other),
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
