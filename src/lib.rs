//! tessera: a small, single-threaded WebSocket hub whose every connection is
//! authenticated with an HS256 JWT during the handshake.
//!
//! The pure core (no sockets, no clocks) is:
//! - [`jwt`]: sign and verify tokens, the SPEC §3 reason codes;
//! - [`keys`]: key files and `kid` lookup;
//! - [`http`]: request heads, cookies, query strings, responses, routes;
//! - [`gate`]: the handshake decision (who may open a socket);
//! - [`protocol`]: WebSocket messages;
//! - [`hub`]: channels, subscriptions, fan-out to bounded queues;
//! - [`throttle`]: failed-authentication limits per address;
//! - [`events`]: the bounded ring of security events (SPEC §13);
//! - [`log`], [`metrics`]: events and counters;
//! - [`notify`]: systemd readiness and watchdog messages (`sd_notify`).
//!
//! [`broker`] is the seam between the shell and where publications and
//! history live (this process, or Redis in cluster mode).
//!
//! [`server`] is the thin async shell that owns sockets and timers, on
//! [`reactor`] (edge-triggered, mio);
//! [`cli`] declares the command line; `main.rs` dispatches it.
#![forbid(unsafe_code)]

pub mod agent;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod commands;
pub mod events;
pub mod gate;
pub mod history;
pub mod http;
pub mod hub;
pub mod jwt;
pub mod keys;
pub mod log;
pub mod metrics;
pub mod notify;
pub mod protocol;
pub mod reactor;
pub mod server;
pub mod throttle;
pub mod tls;

/// `tessera 0.1.0 (commit abcdef123456, release)`: what `--version` prints.
pub fn version_line() -> String {
    format!(
        "tessera {} (commit {}, {})",
        env!("TESSERA_VERSION"),
        env!("TESSERA_COMMIT"),
        env!("TESSERA_PROFILE")
    )
}
