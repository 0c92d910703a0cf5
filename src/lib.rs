//! tessera: a small, single-threaded WebSocket hub whose every connection is
//! authenticated with an HS256 JWT during the handshake.
//!
//! The pure core (no sockets, no clocks) is:
//! - [`jwt`]: sign and verify tokens, the SPEC §3 reason codes;
//! - [`keys`]: key files and `kid` lookup.
//!
//! [`cli`] declares the command line; `main.rs` dispatches it.
#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod jwt;
pub mod keys;

/// `tessera 0.1.0 (commit abcdef123456, release)`: what `--version` prints.
pub fn version_line() -> String {
    format!(
        "tessera {} (commit {}, {})",
        env!("TESSERA_VERSION"),
        env!("TESSERA_COMMIT"),
        env!("TESSERA_PROFILE")
    )
}
