//! Counters for `/metrics` (Prometheus text format 0.0.4). Single-threaded:
//! plain `Cell`s.

use std::cell::Cell;
use std::fmt::Write as _;

/// The server's counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections: Cell<u64>,
    pub handshakes_ok: Cell<u64>,
    /// Rejected handshakes by reason code.
    pub handshakes_rejected: std::cell::RefCell<std::collections::BTreeMap<&'static str, u64>>,
    pub logins_ok: Cell<u64>,
    pub logins_failed: Cell<u64>,
    pub messages_in: Cell<u64>,
    pub messages_out: Cell<u64>,
    pub slow_consumers: Cell<u64>,
    /// Failed authentications by reason code (SPEC §13).
    pub auth_failures: std::cell::RefCell<std::collections::BTreeMap<&'static str, u64>>,
    /// Security events recorded, by event (SPEC §13).
    pub security_events: std::cell::RefCell<std::collections::BTreeMap<&'static str, u64>>,
    /// Gauges set before rendering: messages and frame bytes the history
    /// retains, and the bytes of `--history-dir`.
    pub history_messages: Cell<u64>,
    /// Channels known (`--max-channels`).
    pub channels: Cell<u64>,
    pub history_bytes: Cell<u64>,
    pub history_disk_bytes: Cell<u64>,
    /// Pre-upgrade connections shed at `--max-pending*` (or out of files).
    pub pending_shed: Cell<u64>,
    /// Connections refused at `--max-pending*` with nothing idle to shed.
    pub pending_refused: Cell<u64>,
    /// `accept` failures (e.g. out of file descriptors).
    pub accept_failed: Cell<u64>,
}

/// Adds `n` to a counter.
pub fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get().saturating_add(n));
}

impl Metrics {
    pub fn reject(&self, reason: &'static str) {
        *self.handshakes_rejected.borrow_mut().entry(reason).or_default() += 1;
    }

    /// Counts a failed authentication (a refused upgrade, login or refresh).
    pub fn auth_failure(&self, reason: &'static str) {
        *self.auth_failures.borrow_mut().entry(reason).or_default() += 1;
    }

    /// Counts a recorded security event.
    pub fn security_event(&self, event: &'static str) {
        *self.security_events.borrow_mut().entry(event).or_default() += 1;
    }

    /// `tessera_auth_failures_total` and `tessera_security_events_total`;
    /// every event kind is listed, 0 or not.
    fn render_security(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP tessera_auth_failures_total Failed authentications (upgrades, logins, refreshes) by reason."
        );
        let _ = writeln!(out, "# TYPE tessera_auth_failures_total counter");
        for (reason, n) in self.auth_failures.borrow().iter() {
            let _ = writeln!(out, "tessera_auth_failures_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP tessera_security_events_total Security events recorded (GET /admin/events) by event."
        );
        let _ = writeln!(out, "# TYPE tessera_security_events_total counter");
        let seen = self.security_events.borrow();
        for kind in crate::events::Kind::ALL {
            let n = seen.get(kind.as_str()).copied().unwrap_or(0);
            let _ = writeln!(out, "tessera_security_events_total{{event=\"{}\"}} {n}", kind.as_str());
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(1024);
        let _ = writeln!(out, "# HELP tessera_connections Open WebSocket connections.");
        let _ = writeln!(out, "# TYPE tessera_connections gauge");
        let _ = writeln!(out, "tessera_connections {}", self.connections.get());
        let _ = writeln!(
            out,
            "# HELP tessera_handshakes_total WebSocket upgrade attempts by result."
        );
        let _ = writeln!(out, "# TYPE tessera_handshakes_total counter");
        let _ = writeln!(
            out,
            "tessera_handshakes_total{{result=\"ok\"}} {}",
            self.handshakes_ok.get()
        );
        for (reason, n) in self.handshakes_rejected.borrow().iter() {
            let _ = writeln!(out, "tessera_handshakes_total{{result=\"{reason}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP tessera_logins_total Login attempts by result.");
        let _ = writeln!(out, "# TYPE tessera_logins_total counter");
        let _ = writeln!(out, "tessera_logins_total{{result=\"ok\"}} {}", self.logins_ok.get());
        let _ = writeln!(
            out,
            "tessera_logins_total{{result=\"failed\"}} {}",
            self.logins_failed.get()
        );
        for (name, help, v) in [
            (
                "tessera_messages_in_total",
                "WebSocket messages received.",
                &self.messages_in,
            ),
            (
                "tessera_messages_out_total",
                "WebSocket messages queued to clients.",
                &self.messages_out,
            ),
            (
                "tessera_slow_consumers_total",
                "Sockets closed with 4008 (slow consumer).",
                &self.slow_consumers,
            ),
            (
                "tessera_pending_shed_total",
                "Idle connections that had not upgraded, closed to make room.",
                &self.pending_shed,
            ),
            (
                "tessera_pending_refused_total",
                "Connections refused at the pre-upgrade caps.",
                &self.pending_refused,
            ),
            (
                "tessera_accept_failed_total",
                "Failed accepts (e.g. out of file descriptors).",
                &self.accept_failed,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.get());
        }
        self.render_security(&mut out);
        for (name, help, v) in [
            (
                "tessera_history_messages",
                "Messages retained for resume, all channels.",
                &self.history_messages,
            ),
            (
                "tessera_channels",
                "Channels known (published to or subscribed, not yet pruned).",
                &self.channels,
            ),
            (
                "tessera_history_bytes",
                "Bytes of retained messages (serialised frames).",
                &self.history_bytes,
            ),
            (
                "tessera_history_disk_bytes",
                "Bytes of the --history-dir log (0 without it).",
                &self.history_disk_bytes,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}", v.get());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec4_1_metric_names_present() {
        let m = Metrics::default();
        m.reject("token_expired");
        add(&m.messages_out, 3);
        let t = m.render();
        for name in [
            "tessera_connections 0",
            "tessera_handshakes_total{result=\"ok\"} 0",
            "tessera_handshakes_total{result=\"token_expired\"} 1",
            "tessera_logins_total{result=\"ok\"} 0",
            "tessera_messages_in_total 0",
            "tessera_messages_out_total 3",
            "tessera_slow_consumers_total 0",
            "tessera_security_events_total{event=\"ws_reject\"} 0",
            "tessera_security_events_total{event=\"slow_consumer\"} 0",
            "tessera_history_messages 0",
            "tessera_history_disk_bytes 0",
        ] {
            assert!(t.contains(name), "{name} missing in\n{t}");
        }
    }

    #[test]
    fn spec13_auth_failures_and_security_events_by_label() {
        let m = Metrics::default();
        m.auth_failure("bad_signature");
        m.auth_failure("bad_signature");
        m.auth_failure("wrong_password");
        m.security_event("ws_reject");
        let t = m.render();
        for line in [
            "# TYPE tessera_auth_failures_total counter",
            "tessera_auth_failures_total{reason=\"bad_signature\"} 2",
            "tessera_auth_failures_total{reason=\"wrong_password\"} 1",
            "tessera_security_events_total{event=\"ws_reject\"} 1",
            "tessera_security_events_total{event=\"revoked\"} 0",
        ] {
            assert!(t.contains(line), "{line} missing in\n{t}");
        }
    }
}
