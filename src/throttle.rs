//! Throttling of failed authentications (SPEC §7) and the fair login queue,
//! sans-IO.
//!
//! Ten failures (rejected logins, or upgrades answered 401) from one
//! address within 60 s block that address for 60 s. IPv6 addresses count by
//! their /64 (one host usually owns a whole /64). A login *reserves* its
//! attempt before the password is hashed, so concurrent wrong passwords
//! cannot overshoot the limit: once failures plus attempts in flight reach
//! it, the next one is refused; and at most [`IN_FLIGHT`] logins of one
//! address are hashed or waiting at once. Usernames have their own, larger limit
//! ([`USER_LIMIT`]) so that guessing one account from many addresses is
//! bounded too. Tables are bounded: past [`MAX_ADDRESSES`] the stalest
//! entries are dropped.
//!
//! [`LoginQueue`] decides which waiting login is hashed next: round-robin
//! over addresses, so that a flood from some addresses cannot starve a
//! login from another.
//!
//! ```
//! use tessera::throttle::Throttle;
//! let mut t = Throttle::default();
//! let ip = "10.0.0.1".parse().unwrap();
//! for i in 0..9 { assert!(!t.failure(ip, 100 + i)); }
//! assert!(t.failure(ip, 109));            // the tenth: now throttled
//! assert_eq!(t.blocked(ip, 110), Some(59)); // Retry-After seconds
//! assert_eq!(t.blocked(ip, 169), None);
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv6Addr};

/// Failures from one address that trigger a block.
pub const LIMIT: usize = 10;
/// Failed logins naming one user (from any address) that block that name.
pub const USER_LIMIT: usize = 20;
/// Logins from one address hashed or waiting at once; more get 429 at once.
pub const IN_FLIGHT: usize = 4;
/// The window the failures must fall in, and the block's length, in seconds.
pub const WINDOW_SECS: u64 = 60;
/// Most addresses (and, separately, user names) tracked at once.
pub const MAX_ADDRESSES: usize = 16_384;
/// User names are tracked by at most this many leading bytes.
const USER_KEY_BYTES: usize = 128;

/// The key an address is counted under: IPv4 as is (IPv4-mapped IPv6 too),
/// IPv6 by its /64 prefix.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

fn user_key(user: &str) -> String {
    let mut end = user.len().min(USER_KEY_BYTES);
    while !user.is_char_boundary(end) {
        end -= 1;
    }
    user[..end].to_string()
}

#[derive(Debug, Default, Clone)]
struct Entry {
    /// Times of the most recent failures.
    failures: Vec<u64>,
    /// Attempts reserved and not yet settled.
    pending: usize,
    blocked_until: u64,
}

impl Entry {
    fn blocked(&self, now: u64) -> Option<u64> {
        (self.blocked_until > now).then(|| self.blocked_until - now)
    }

    /// Seconds until an attempt could be admitted, if `limit` is reached.
    fn full(&mut self, now: u64, limit: usize) -> Option<u64> {
        if let Some(s) = self.blocked(now) {
            return Some(s);
        }
        self.failures.retain(|&t| t + WINDOW_SECS > now);
        (self.failures.len() + self.pending >= limit).then(|| {
            self.failures
                .first()
                .map_or(1, |&t| (t + WINDOW_SECS).saturating_sub(now).max(1))
        })
    }

    /// Records a failure; true when it starts a block.
    fn fail(&mut self, now: u64, limit: usize) -> bool {
        if self.blocked_until > now {
            return false;
        }
        self.failures.retain(|&t| t + WINDOW_SECS > now);
        self.failures.push(now);
        if self.failures.len() >= limit {
            self.failures.clear();
            self.blocked_until = now + WINDOW_SECS;
            return true;
        }
        false
    }

    fn live(&self, now: u64) -> bool {
        self.pending > 0 || self.blocked_until > now || self.failures.iter().any(|&t| t + WINDOW_SECS > now)
    }

    fn age(&self) -> u64 {
        self.failures.last().copied().unwrap_or(0).max(self.blocked_until)
    }
}

fn prune_map<K: Clone + Eq + std::hash::Hash + Ord>(m: &mut HashMap<K, Entry>, now: u64) {
    m.retain(|_, e| e.live(now));
    if m.len() >= MAX_ADDRESSES {
        let mut ages: Vec<(u64, K)> = m.iter().map(|(k, e)| (e.age(), k.clone())).collect();
        ages.sort_unstable();
        for (_, k) in ages.iter().take(ages.len() / 2) {
            m.remove(k);
        }
    }
}

/// A login attempt reserved by [`Throttle::reserve`]; give it back with
/// [`Throttle::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    addr: IpAddr,
    user: String,
}

/// What settling a failed attempt started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NewBlocks {
    pub address: bool,
    pub user: bool,
}

/// Failure counts and blocks by address and by user name.
#[derive(Debug, Default)]
pub struct Throttle {
    entries: HashMap<IpAddr, Entry>,
    users: HashMap<String, Entry>,
}

impl Throttle {
    /// Seconds left of a block on `ip` at `now`, if it is blocked.
    pub fn blocked(&self, ip: IpAddr, now: u64) -> Option<u64> {
        self.entries.get(&address_key(ip))?.blocked(now)
    }

    /// Records a failure (an upgrade answered 401); true when this one
    /// starts a block.
    pub fn failure(&mut self, ip: IpAddr, now: u64) -> bool {
        let key = address_key(ip);
        if self.entries.len() >= MAX_ADDRESSES && !self.entries.contains_key(&key) {
            prune_map(&mut self.entries, now);
        }
        self.entries.entry(key).or_default().fail(now, LIMIT)
    }

    /// Reserves a login attempt by `user` from `ip` before its password is
    /// hashed. `Err(seconds)` (for `Retry-After`) when the address or the
    /// name is blocked, or its failures plus attempts in flight reach the
    /// limit.
    pub fn reserve(&mut self, ip: IpAddr, user: &str, now: u64) -> Result<Attempt, u64> {
        let addr = address_key(ip);
        let user = user_key(user);
        if let Some(e) = self.entries.get_mut(&addr) {
            if let Some(s) = e.full(now, LIMIT) {
                return Err(s);
            }
            if e.pending >= IN_FLIGHT {
                return Err(1);
            }
        }
        if let Some(s) = self.users.get_mut(&user).and_then(|e| e.full(now, USER_LIMIT)) {
            return Err(s);
        }
        if self.entries.len() >= MAX_ADDRESSES && !self.entries.contains_key(&addr) {
            prune_map(&mut self.entries, now);
        }
        if self.users.len() >= MAX_ADDRESSES && !self.users.contains_key(&user) {
            prune_map(&mut self.users, now);
        }
        self.entries.entry(addr).or_default().pending += 1;
        self.users.entry(user.clone()).or_default().pending += 1;
        Ok(Attempt { addr, user })
    }

    /// Gives back a reserved attempt: `failed` records a failure on the
    /// address and the name.
    pub fn settle(&mut self, a: Attempt, failed: bool, now: u64) -> NewBlocks {
        let mut out = NewBlocks::default();
        if let Some(e) = self.entries.get_mut(&a.addr) {
            e.pending = e.pending.saturating_sub(1);
            out.address = failed && e.fail(now, LIMIT);
        }
        if let Some(e) = self.users.get_mut(&a.user) {
            e.pending = e.pending.saturating_sub(1);
            out.user = failed && e.fail(now, USER_LIMIT);
        }
        out
    }

    /// Drops stale entries; if still full, the oldest half.
    pub fn prune(&mut self, now: u64) {
        prune_map(&mut self.entries, now);
        prune_map(&mut self.users, now);
    }

    /// Addresses tracked (for tests and metrics).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A login's place in the [`LoginQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// A hashing slot is free: hash now, then call [`LoginQueue::done`].
    Run,
    /// Wait for this ticket to be granted ([`LoginQueue::poll`]).
    Wait(u64),
    /// The queue is full: 503 `busy`.
    Busy,
}

/// Logins waiting for one of `workers` hashing slots, at most `capacity`
/// of them. The next slot goes round-robin over the waiting addresses. A
/// login from an address with nothing waiting finds a place even in a full
/// queue by pushing out the newest waiter of the address holding the most
/// places (if that is more than one); that waiter gets 503 `busy`.
#[derive(Debug)]
pub struct LoginQueue {
    workers: usize,
    capacity: usize,
    running: usize,
    waiting: HashMap<IpAddr, VecDeque<u64>>,
    /// Addresses with waiters, in serving order (each once).
    turn: VecDeque<IpAddr>,
    len: usize,
    next: u64,
    granted: HashSet<u64>,
    evicted: HashSet<u64>,
}

impl LoginQueue {
    pub fn new(workers: usize, capacity: usize) -> LoginQueue {
        LoginQueue {
            workers: workers.max(1),
            capacity,
            running: 0,
            waiting: HashMap::new(),
            turn: VecDeque::new(),
            len: 0,
            next: 0,
            granted: HashSet::new(),
            evicted: HashSet::new(),
        }
    }

    /// Logins waiting (not hashing).
    pub fn waiting(&self) -> usize {
        self.len
    }

    /// A login from `ip` arrives.
    pub fn arrive(&mut self, ip: IpAddr) -> Arrival {
        let key = address_key(ip);
        if self.running < self.workers && self.len == 0 {
            self.running += 1;
            return Arrival::Run;
        }
        if self.len >= self.capacity {
            let mine = self.waiting.get(&key).map_or(0, VecDeque::len);
            let most = self
                .waiting
                .iter()
                .max_by_key(|(_, q)| q.len())
                .map(|(k, q)| (*k, q.len()));
            match most {
                Some((victim, n)) if mine == 0 && n >= 2 => {
                    if let Some(t) = self.waiting.get_mut(&victim).and_then(VecDeque::pop_back) {
                        self.evicted.insert(t);
                        self.len -= 1;
                    }
                }
                _ => return Arrival::Busy,
            }
        }
        self.next += 1;
        let t = self.next;
        let q = self.waiting.entry(key).or_default();
        if q.is_empty() {
            self.turn.push_back(key);
        }
        q.push_back(t);
        self.len += 1;
        Arrival::Wait(t)
    }

    /// `Some(true)`: the ticket's turn has come (it holds a slot now);
    /// `Some(false)`: it was pushed out (503); `None`: still waiting.
    pub fn poll(&mut self, ticket: u64) -> Option<bool> {
        if self.granted.remove(&ticket) {
            return Some(true);
        }
        if self.evicted.remove(&ticket) {
            return Some(false);
        }
        None
    }

    /// A waiting login went away (its connection task ended).
    pub fn leave(&mut self, ticket: u64) {
        if self.granted.remove(&ticket) {
            self.done();
            return;
        }
        if self.evicted.remove(&ticket) {
            return;
        }
        for q in self.waiting.values_mut() {
            if let Some(i) = q.iter().position(|&t| t == ticket) {
                q.remove(i);
                self.len -= 1;
                break;
            }
        }
        self.tidy();
    }

    /// A hash finished: its slot goes to the next address in turn. True
    /// when a waiter was granted (wake the waiters).
    pub fn done(&mut self) -> bool {
        self.running = self.running.saturating_sub(1);
        self.tidy();
        while self.running < self.workers {
            let Some(key) = self.turn.pop_front() else { return false };
            let Some(q) = self.waiting.get_mut(&key) else { continue };
            let Some(t) = q.pop_front() else { continue };
            self.len -= 1;
            if !q.is_empty() {
                self.turn.push_back(key);
            }
            self.granted.insert(t);
            self.running += 1;
            self.tidy();
            return true;
        }
        false
    }

    /// Forgets addresses with no waiters.
    fn tidy(&mut self) {
        self.waiting.retain(|_, q| !q.is_empty());
        let w = &self.waiting;
        self.turn.retain(|k| w.contains_key(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec7_ten_failures_in_60s_block_for_60s() {
        let mut t = Throttle::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for i in 0..9 {
            assert!(!t.failure(ip, 1000 + i * 6));
        }
        assert_eq!(t.blocked(ip, 1054), None);
        assert!(t.failure(ip, 1055));
        assert_eq!(t.blocked(ip, 1055), Some(60));
        assert_eq!(t.blocked(ip, 1114), Some(1));
        assert_eq!(t.blocked(ip, 1115), None);
        let other: IpAddr = "::1".parse().unwrap();
        assert_eq!(t.blocked(other, 1055), None);
    }

    #[test]
    fn spec7_failures_older_than_the_window_do_not_count() {
        let mut t = Throttle::default();
        let ip: IpAddr = "10.1.1.1".parse().unwrap();
        for i in 0..9 {
            t.failure(ip, i);
        }
        assert!(!t.failure(ip, 61));
        assert_eq!(t.blocked(ip, 61), None);
    }

    #[test]
    fn table_is_bounded() {
        let mut t = Throttle::default();
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            t.failure(IpAddr::from(i.to_be_bytes()), 5);
        }
        assert!(t.len() <= MAX_ADDRESSES);
    }

    #[test]
    fn reserved_attempts_count_before_they_fail() {
        let mut t = Throttle::default();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let held: Vec<Attempt> = (0..IN_FLIGHT).map(|_| t.reserve(ip, "a", 100).unwrap()).collect();
        assert_eq!(t.reserve(ip, "a", 100), Err(1), "at most IN_FLIGHT at once");
        for a in held {
            assert!(!t.settle(a, true, 100).address);
        }
        let held: Vec<Attempt> = (IN_FLIGHT..LIMIT - 1)
            .map(|_| {
                let a = t.reserve(ip, "a", 100).unwrap();
                assert!(!t.settle(a.clone(), true, 100).address);
                a
            })
            .collect();
        assert_eq!(held.len(), LIMIT - 1 - IN_FLIGHT);
        let last = t.reserve(ip, "a", 100).unwrap();
        assert_eq!(
            t.reserve(ip, "a", 100),
            Err(60),
            "failures plus the one in flight reach the limit"
        );
        let blocks = t.settle(last, true, 101);
        assert!(blocks.address);
        assert_eq!(t.blocked(ip, 101), Some(60));
        // Successful attempts give their place back.
        let other: IpAddr = "10.0.0.10".parse().unwrap();
        for _ in 0..3 * LIMIT {
            let a = t.reserve(other, "b", 100).unwrap();
            assert_eq!(t.settle(a, false, 100), NewBlocks::default());
        }
    }

    #[test]
    fn a_user_name_is_limited_across_addresses() {
        let mut t = Throttle::default();
        for i in 0..USER_LIMIT as u32 {
            let a = t
                .reserve(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), "victim", 50)
                .unwrap();
            t.settle(a, true, 50);
        }
        assert!(t.reserve("10.9.9.9".parse().unwrap(), "victim", 51).is_err());
        assert!(t.reserve("10.9.9.9".parse().unwrap(), "someone", 51).is_ok());
        assert!(
            t.reserve("10.9.9.9".parse().unwrap(), "victim", 50 + WINDOW_SECS)
                .is_ok()
        );
    }

    #[test]
    fn ipv6_counts_by_64() {
        let mut t = Throttle::default();
        for i in 0..LIMIT {
            t.failure(format!("2001:db8:1:2::{i:x}").parse().unwrap(), 7);
        }
        assert!(t.blocked("2001:db8:1:2:ffff::1".parse().unwrap(), 8).is_some());
        assert!(t.blocked("2001:db8:1:3::1".parse().unwrap(), 8).is_none());
        assert_eq!(
            address_key("::ffff:10.1.2.3".parse().unwrap()),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn login_queue_is_round_robin_and_makes_room_for_a_new_address() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let mut q = LoginQueue::new(1, 3);
        assert_eq!(q.arrive(a), Arrival::Run);
        let ta: Vec<u64> = (0..3)
            .map(|_| match q.arrive(a) {
                Arrival::Wait(t) => t,
                other => panic!("{other:?}"),
            })
            .collect();
        // Full, but b has nothing waiting: a's newest waiter makes room.
        let Arrival::Wait(tb) = q.arrive(b) else { panic!() };
        assert_eq!(q.poll(ta[2]), Some(false));
        // b has one waiting now; c too gets a place from a.
        let Arrival::Wait(tc) = q.arrive(c) else { panic!() };
        assert_eq!(q.poll(ta[1]), Some(false));
        // Full of distinct-ish addresses: a fourth from b is busy.
        assert_eq!(q.arrive(b), Arrival::Busy);
        // Serving order: a, b, c (round-robin by address).
        assert!(q.done());
        assert_eq!(q.poll(ta[0]), Some(true));
        assert!(q.done());
        assert_eq!(q.poll(tb), Some(true));
        q.leave(tc);
        assert!(!q.done());
        assert_eq!(q.waiting(), 0);
        assert_eq!(q.arrive(c), Arrival::Run);
    }
}
