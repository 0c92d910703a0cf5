//! Connections that have not upgraded yet, under a global and a
//! per-address cap (`--max-pending`, `--max-pending-per-address`), sans-IO.
//!
//! A connection is *idle* while it waits for a request head (its first, or
//! the next one on keep-alive). At a cap, a new connection pushes out the
//! connection that has been idle longest (of its address, at the
//! per-address cap): an attacker holding many silent connections loses
//! them, a client that is sending a request does not. When nothing is idle
//! the new connection is refused. `T` is the caller's handle for telling a
//! connection to go.

use crate::throttle::address_key;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

struct Entry<T> {
    key: IpAddr,
    /// `Some(tick)` while idle; lower ticks went idle earlier.
    idle: Option<u64>,
    handle: T,
}

/// What to do with a new connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<T> {
    /// Serve it.
    Yes,
    /// Serve it, after telling this (idle) connection to go.
    Shed(T),
    /// Refuse it: at a cap and nothing idle to shed.
    No,
}

/// The table of pre-upgrade connections.
pub struct Pending<T> {
    max_total: usize,
    max_per_address: usize,
    entries: HashMap<u64, Entry<T>>,
    /// Idle connections by when they went idle.
    idle: BTreeMap<u64, u64>,
    per_address: HashMap<IpAddr, usize>,
    tick: u64,
}

impl<T> Pending<T> {
    pub fn new(max_total: usize, max_per_address: usize) -> Pending<T> {
        Pending {
            max_total,
            max_per_address,
            entries: HashMap::new(),
            idle: BTreeMap::new(),
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

    /// Admits connection `id` from `ip` (idle from the start: it has sent
    /// nothing yet). `exempt` skips the per-address cap (trusted proxies).
    pub fn admit(&mut self, id: u64, ip: IpAddr, exempt: bool, handle: T) -> Admit<T> {
        let key = address_key(ip);
        let mine = self.per_address.get(&key).copied().unwrap_or(0);
        let victim = if !exempt && mine >= self.max_per_address {
            Some(self.oldest_idle(Some(key)))
        } else if self.entries.len() >= self.max_total {
            Some(self.oldest_idle(None))
        } else {
            None
        };
        let out = match victim {
            None => Admit::Yes,
            Some(None) => return Admit::No,
            Some(Some(id)) => match self.remove(id) {
                Some(h) => Admit::Shed(h),
                None => return Admit::No,
            },
        };
        self.tick += 1;
        self.entries.insert(
            id,
            Entry {
                key,
                idle: Some(self.tick),
                handle,
            },
        );
        self.idle.insert(self.tick, id);
        *self.per_address.entry(key).or_default() += 1;
        out
    }

    /// Marks `id` busy (a request is being read or answered) or idle again.
    pub fn set_idle(&mut self, id: u64, idle: bool) {
        let Some(e) = self.entries.get_mut(&id) else { return };
        if let Some(t) = e.idle.take() {
            self.idle.remove(&t);
        }
        if idle {
            self.tick += 1;
            e.idle = Some(self.tick);
            self.idle.insert(self.tick, id);
        }
    }

    /// Forgets the connection idle longest and returns its handle (to tell
    /// it to go), if any is idle.
    pub fn shed_one(&mut self) -> Option<T> {
        let victim = self.oldest_idle(None)?;
        self.remove(victim)
    }

    fn oldest_idle(&self, key: Option<IpAddr>) -> Option<u64> {
        self.idle
            .values()
            .copied()
            .find(|id| key.is_none_or(|k| self.entries.get(id).is_some_and(|e| e.key == k)))
    }

    /// Forgets `id` (it upgraded, closed or was shed); its handle.
    pub fn remove(&mut self, id: u64) -> Option<T> {
        let e = self.entries.remove(&id)?;
        if let Some(t) = e.idle {
            self.idle.remove(&t);
        }
        if let Some(n) = self.per_address.get_mut(&e.key) {
            *n -= 1;
            if *n == 0 {
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

    #[test]
    fn the_global_cap_sheds_the_longest_idle() {
        let mut p = Pending::new(3, 10);
        assert_eq!(p.admit(1, ip("10.0.0.1"), false, 1), Admit::Yes);
        assert_eq!(p.admit(2, ip("10.0.0.2"), false, 2), Admit::Yes);
        assert_eq!(p.admit(3, ip("10.0.0.3"), false, 3), Admit::Yes);
        p.set_idle(1, false); // 1 is sending a request
        assert_eq!(p.admit(4, ip("10.0.0.4"), false, 4), Admit::Shed(2));
        p.set_idle(3, false);
        p.set_idle(4, false);
        assert_eq!(p.admit(5, ip("10.0.0.5"), false, 5), Admit::No, "nothing idle");
        p.set_idle(1, true);
        assert_eq!(p.admit(5, ip("10.0.0.5"), false, 5), Admit::Shed(1));
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn the_per_address_cap_sheds_that_address_only() {
        let mut p = Pending::new(100, 2);
        p.admit(1, ip("10.0.0.1"), false, 1);
        p.admit(2, ip("10.0.0.9"), false, 2);
        p.admit(3, ip("10.0.0.1"), false, 3);
        assert_eq!(p.admit(4, ip("10.0.0.1"), false, 4), Admit::Shed(1));
        assert_eq!(
            p.admit(5, ip("10.0.0.1"), true, 5),
            Admit::Yes,
            "a trusted proxy is exempt"
        );
        // IPv6 counts by /64.
        p.admit(6, ip("2001:db8::1"), false, 6);
        p.admit(7, ip("2001:db8::2"), false, 7);
        assert_eq!(p.admit(8, ip("2001:db8::3"), false, 8), Admit::Shed(6));
        assert_eq!(p.remove(7), Some(7));
        assert_eq!(p.remove(7), None);
        assert_eq!(p.shed_one(), Some(2));
    }
}
