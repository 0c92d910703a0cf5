//! Per-address throttling of failed authentications (SPEC §7), sans-IO.
//!
//! Ten failures (rejected logins, or upgrades answered 401) from one
//! address within 60 s block that address for 60 s. The table is bounded:
//! past [`MAX_ADDRESSES`] the stalest entries are dropped.
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

use std::collections::HashMap;
use std::net::IpAddr;

/// Failures that trigger a block.
pub const LIMIT: usize = 10;
/// The window the failures must fall in, and the block's length, in seconds.
pub const WINDOW_SECS: u64 = 60;
/// Most addresses tracked at once.
pub const MAX_ADDRESSES: usize = 16_384;

#[derive(Debug, Default, Clone)]
struct Entry {
    /// Times of the most recent failures (at most LIMIT).
    failures: Vec<u64>,
    blocked_until: u64,
}

/// Failure counts and blocks by address.
#[derive(Debug, Default)]
pub struct Throttle {
    entries: HashMap<IpAddr, Entry>,
}

impl Throttle {
    /// Seconds left of a block on `ip` at `now`, if it is blocked.
    pub fn blocked(&self, ip: IpAddr, now: u64) -> Option<u64> {
        let e = self.entries.get(&ip)?;
        (e.blocked_until > now).then(|| e.blocked_until - now)
    }

    /// Records a failure; true when this one starts a block.
    pub fn failure(&mut self, ip: IpAddr, now: u64) -> bool {
        if self.entries.len() >= MAX_ADDRESSES && !self.entries.contains_key(&ip) {
            self.prune(now);
        }
        let e = self.entries.entry(ip).or_default();
        if e.blocked_until > now {
            return false;
        }
        e.failures.retain(|&t| t + WINDOW_SECS > now);
        e.failures.push(now);
        if e.failures.len() >= LIMIT {
            e.failures.clear();
            e.blocked_until = now + WINDOW_SECS;
            return true;
        }
        false
    }

    /// Drops stale entries; if still full, the oldest half.
    pub fn prune(&mut self, now: u64) {
        self.entries
            .retain(|_, e| e.blocked_until > now || e.failures.iter().any(|&t| t + WINDOW_SECS > now));
        if self.entries.len() >= MAX_ADDRESSES {
            let mut ages: Vec<(u64, IpAddr)> = self
                .entries
                .iter()
                .map(|(ip, e)| (e.failures.last().copied().unwrap_or(0).max(e.blocked_until), *ip))
                .collect();
            ages.sort_unstable();
            for (_, ip) in ages.iter().take(ages.len() / 2) {
                self.entries.remove(ip);
            }
        }
    }

    /// Addresses tracked (for tests and metrics).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
}
