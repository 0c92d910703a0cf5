//! Security events (SPEC §13), sans-IO: a bounded in-memory ring of what an
//! operator should see as it happens — refused upgrades, failed logins,
//! throttled addresses, reused refresh tokens, revocations, slow consumers.
//!
//! Ids count up from 1 for the server's lifetime; the ring keeps the newest
//! [`CAPACITY`] and drops the oldest, so a flood of failed handshakes costs
//! a fixed amount of memory. Every text field is cut to a fixed length, and
//! callers only hand in codes, agent ids and peer addresses: never tokens,
//! passwords, cookies or query strings. The caller passes the time.
//!
//! ```
//! use tessera::events::{Events, Kind, Report};
//! let mut ring = Events::with_capacity(2);
//! for n in 0..3 {
//!     let peer = Some("10.0.0.1:5000");
//!     ring.record(Report { peer, ..Report::new(Kind::WsReject, "bad_signature", 1000 + n) });
//! }
//! let page = ring.page(None, 10);
//! assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), [2, 3]); // the oldest fell off
//! assert_eq!(ring.page(Some(2), 10).len(), 1);
//! ```

use serde::Serialize;
use std::collections::VecDeque;

/// Events kept in memory (SPEC §13: at least 1000).
pub const CAPACITY: usize = 1024;
/// Most events one `GET /admin/events` returns.
pub const MAX_PAGE: usize = 1000;
/// Longest text kept in any field, in bytes (cut at a character boundary).
pub const MAX_FIELD: usize = 128;

/// The kinds of security event (the `event` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A WebSocket upgrade was refused (reason: the SPEC §4.2 code).
    WsReject,
    /// A login failed (reason: `unknown_user`, `wrong_password`, or the
    /// second-factor code).
    LoginFailed,
    /// An address was blocked after too many failures.
    IpThrottled,
    /// A used refresh token came back: its session was revoked.
    RefreshReused,
    /// An operator revoked sessions (`POST /admin/revoke`).
    Revoked,
    /// A socket was closed with 4008.
    SlowConsumer,
}

impl Kind {
    /// Every kind, in a fixed order (for metrics).
    pub const ALL: [Kind; 6] = [
        Kind::WsReject,
        Kind::LoginFailed,
        Kind::IpThrottled,
        Kind::RefreshReused,
        Kind::Revoked,
        Kind::SlowConsumer,
    ];

    /// The kind named `s` (as [`Kind::as_str`] writes it).
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::WsReject => "ws_reject",
            Kind::LoginFailed => "login_failed",
            Kind::IpThrottled => "ip_throttled",
            Kind::RefreshReused => "refresh_reused",
            Kind::Revoked => "revoked",
            Kind::SlowConsumer => "slow_consumer",
        }
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One security event, as `GET /admin/events` and `$security` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub id: u64,
    /// Unix milliseconds.
    pub ts: u64,
    pub event: Kind,
    /// A code (`bad_signature`, `wrong_password`, …), never client text.
    pub reason: String,
    /// The peer address (`ip:port`, or the IP for `ip_throttled`).
    pub peer: Option<String>,
    /// The agent concerned, when known.
    pub sub: Option<String>,
    /// For `revoked`: the operator who did it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Cluster mode (SPEC §12): the node it happened on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// An event as its caller describes it, for [`Events::record`]: the kind,
/// a reason code and the time, plus whatever else is known
/// (`Report { sub, ..Report::new(kind, reason, ts_ms) }`).
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    pub kind: Kind,
    pub reason: &'a str,
    pub ts_ms: u64,
    pub peer: Option<&'a str>,
    pub sub: Option<&'a str>,
    pub by: Option<&'a str>,
    /// Cluster mode: the node it happened on.
    pub node: Option<&'a str>,
}

impl<'a> Report<'a> {
    pub fn new(kind: Kind, reason: &'a str, ts_ms: u64) -> Report<'a> {
        Report {
            kind,
            reason,
            ts_ms,
            peer: None,
            sub: None,
            by: None,
            node: None,
        }
    }
}

impl Event {
    /// The event as a [`Report`] (to record it in another ring).
    pub fn report(&self) -> Report<'_> {
        Report {
            kind: self.event,
            reason: &self.reason,
            ts_ms: self.ts,
            peer: self.peer.as_deref(),
            sub: self.sub.as_deref(),
            by: self.by.as_deref(),
            node: self.node.as_deref(),
        }
    }

    /// The JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Cuts `s` to at most [`MAX_FIELD`] bytes at a character boundary.
pub fn clip(s: &str) -> String {
    if s.len() <= MAX_FIELD {
        return s.to_string();
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The ring of recent events.
#[derive(Debug)]
pub struct Events {
    ring: VecDeque<Event>,
    capacity: usize,
    last_id: u64,
}

impl Default for Events {
    fn default() -> Events {
        Events::with_capacity(CAPACITY)
    }
}

impl Events {
    /// A ring keeping the newest `capacity` events (at least 1).
    pub fn with_capacity(capacity: usize) -> Events {
        let capacity = capacity.max(1);
        Events {
            ring: VecDeque::with_capacity(capacity.min(CAPACITY)),
            capacity,
            last_id: 0,
        }
    }

    /// Records an event and returns a copy with its new id, every text
    /// field clipped. Ids count up in the order events are recorded here,
    /// whatever cluster node they come from.
    pub fn record(&mut self, r: Report<'_>) -> Event {
        self.last_id += 1;
        if self.ring.len() >= self.capacity {
            self.ring.pop_front();
        }
        let e = Event {
            id: self.last_id,
            ts: r.ts_ms,
            event: r.kind,
            reason: clip(r.reason),
            peer: r.peer.map(clip),
            sub: r.sub.map(clip),
            by: r.by.map(clip),
            node: r.node.map(clip),
        };
        self.ring.push_back(e.clone());
        e
    }

    /// A page, oldest first: with `after`, the first `limit` events whose id
    /// is above it (poll with the last id seen); without, the newest
    /// `limit`. `limit` is capped at [`MAX_PAGE`].
    pub fn page(&self, after: Option<u64>, limit: usize) -> Vec<&Event> {
        let limit = limit.min(MAX_PAGE);
        match after {
            Some(after) => {
                // Ids are consecutive in the ring: index arithmetic, no scan.
                let first = self.ring.front().map_or(0, |e| e.id);
                let skip = after.saturating_add(1).saturating_sub(first);
                let skip = usize::try_from(skip).unwrap_or(usize::MAX);
                self.ring.iter().skip(skip).take(limit).collect()
            }
            None => {
                let skip = self.ring.len().saturating_sub(limit);
                self.ring.iter().skip(skip).collect()
            }
        }
    }

    /// The id of the newest event (0 before the first).
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Events kept now.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&Event]) -> Vec<u64> {
        v.iter().map(|e| e.id).collect()
    }

    #[test]
    fn spec13_ids_count_up_and_the_ring_stays_bounded() {
        let mut r = Events::default();
        for n in 0..(CAPACITY as u64 * 5) {
            let peer = Some("127.0.0.1:1");
            let e = r.record(Report {
                peer,
                ..Report::new(Kind::WsReject, "missing_token", n)
            });
            assert_eq!(e.id, n + 1);
        }
        assert_eq!(r.len(), CAPACITY);
        const { assert!(CAPACITY >= 1000, "SPEC §13 keeps at least 1000") };
        assert_eq!(r.last_id(), CAPACITY as u64 * 5);
        let all = r.page(Some(0), usize::MAX);
        assert_eq!(all.len(), MAX_PAGE);
        assert_eq!(all[0].id, CAPACITY as u64 * 4 + 1, "the oldest were dropped");
    }

    #[test]
    fn spec13_paging_after_and_limit() {
        let mut r = Events::with_capacity(10);
        for n in 1..=15 {
            r.record(Report {
                sub: Some("a"),
                ..Report::new(Kind::LoginFailed, "wrong_password", n)
            });
        }
        // Kept: 6..=15.
        assert_eq!(ids(&r.page(None, 3)), [13, 14, 15]);
        assert_eq!(ids(&r.page(None, 100)), (6..=15).collect::<Vec<_>>());
        assert_eq!(
            ids(&r.page(Some(0), 2)),
            [6, 7],
            "after an id long gone: the oldest kept"
        );
        assert_eq!(ids(&r.page(Some(9), 3)), [10, 11, 12]);
        assert_eq!(ids(&r.page(Some(14), 3)), [15]);
        assert!(r.page(Some(15), 3).is_empty());
        assert!(r.page(Some(u64::MAX), 3).is_empty());
        assert!(r.page(None, 0).is_empty());
        assert!(Events::default().page(Some(3), 5).is_empty());
    }

    #[test]
    fn fields_are_clipped_and_json_has_the_spec_members() {
        let mut r = Events::default();
        let long = "é".repeat(200);
        let e = r.record(Report {
            peer: Some("1.2.3.4:5"),
            sub: Some(&long),
            by: Some("hq"),
            ..Report::new(Kind::Revoked, "operator", 7)
        });
        assert!(e.sub.as_ref().unwrap().len() <= MAX_FIELD);
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        for k in ["id", "ts", "event", "reason", "peer", "sub", "by"] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
        assert_eq!(v["event"], "revoked");
        let e = r.record(Report {
            peer: Some("::1"),
            ..Report::new(Kind::IpThrottled, "too_many_failures", 8)
        });
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert!(v["sub"].is_null() && v.get("by").is_none() && v.get("node").is_none());
        let e = r.record(Report {
            node: Some("b"),
            ..Report::new(Kind::LoginFailed, "wrong_password", 9)
        });
        assert_eq!((e.id, e.node.as_deref()), (3, Some("b")));
        // Recorded again elsewhere: the same but for the id.
        let again = Events::default().record(e.report());
        assert_eq!(again, Event { id: 1, ..e });
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("nope"), None);
        let names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "ws_reject",
                "login_failed",
                "ip_throttled",
                "refresh_reused",
                "revoked",
                "slow_consumer"
            ]
        );
    }
}
