//! The systemd notification protocol (`sd_notify(3)`), in a few lines of std.
//!
//! Under `Type=notify` systemd passes `NOTIFY_SOCKET` (a unix datagram socket:
//! a path, or `@name` in the abstract namespace) and, with `WatchdogSec=`,
//! `WATCHDOG_USEC` (and `WATCHDOG_PID`). `tessera serve` sends `READY=1` once
//! its listener is bound, `WATCHDOG=1` from a task on the event loop (so a
//! stuck loop stops the pings and systemd restarts the service), and
//! `STOPPING=1` when shutdown starts. Without `NOTIFY_SOCKET` every call is a
//! no-op. Sends never block the loop: the socket is non-blocking and a lost
//! datagram is only a missed notification.
//!
//! The environment parsing ([`watchdog_period`], [`parse_address`]) is pure
//! and tested here; [`Notifier`] owns the socket.
//!
//! ```
//! use std::time::Duration;
//! // WatchdogSec=10 → ping every 5 s.
//! let p = tessera::notify::watchdog_period(Some("10000000"), None, 42);
//! assert_eq!(p, Some(Duration::from_secs(5)));
//! ```

use std::time::Duration;

/// Where `NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A filesystem path.
    Path(std::path::PathBuf),
    /// `@name`: the Linux abstract namespace (without the `@`).
    Abstract(Vec<u8>),
}

/// Reads a `NOTIFY_SOCKET` value: `/path` or `@abstract`. Anything else
/// (empty, relative, `vsock:`) is not supported and gives `None`.
pub fn parse_address(value: &str) -> Option<Address> {
    if let Some(name) = value.strip_prefix('@') {
        return (!name.is_empty()).then(|| Address::Abstract(name.as_bytes().to_vec()));
    }
    value
        .starts_with('/')
        .then(|| Address::Path(std::path::PathBuf::from(value)))
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC` (as
/// `sd_watchdog_enabled(3)` advises), when that is set, positive and meant
/// for this process (`WATCHDOG_PID` absent or equal to `pid`). At least
/// 1 ms, so a tiny value cannot spin the loop.
pub fn watchdog_period(usec: Option<&str>, watchdog_pid: Option<&str>, pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(p) = watchdog_pid
        && p.trim().parse::<u32>().ok() != Some(pid)
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// A connected notification socket (or nothing, outside systemd).
#[derive(Debug, Default)]
pub struct Notifier {
    #[cfg(unix)]
    sock: Option<(std::os::unix::net::UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; a missing or unusable value gives a notifier
    /// that sends nothing (and says why in the error, for one log line).
    pub fn from_env() -> (Notifier, Option<String>) {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return (Notifier::default(), None);
        };
        match Notifier::open(&value.to_string_lossy()) {
            Ok(n) => (n, None),
            Err(e) => (Notifier::default(), Some(format!("NOTIFY_SOCKET: {e}"))),
        }
    }

    #[cfg(unix)]
    fn open(value: &str) -> Result<Notifier, String> {
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let addr = match parse_address(value) {
            Some(Address::Path(p)) => SocketAddr::from_pathname(p).map_err(|e| e.to_string())?,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Some(Address::Abstract(name)) => {
                use std::os::linux::net::SocketAddrExt as _;
                SocketAddr::from_abstract_name(name).map_err(|e| e.to_string())?
            }
            _ => return Err("expected /path or @abstract-name".into()),
        };
        let sock = UnixDatagram::unbound().map_err(|e| e.to_string())?;
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(Notifier {
            sock: Some((sock, addr)),
        })
    }

    #[cfg(not(unix))]
    fn open(_: &str) -> Result<Notifier, String> {
        Err("not supported on this platform".into())
    }

    /// Whether notifications go anywhere.
    pub fn enabled(&self) -> bool {
        #[cfg(unix)]
        return self.sock.is_some();
        #[cfg(not(unix))]
        false
    }

    /// Sends one state string (`READY=1`, `WATCHDOG=1`, …); failures are
    /// returned for logging, never fatal.
    pub fn send(&self, state: &str) -> std::io::Result<()> {
        #[cfg(unix)]
        if let Some((sock, addr)) = &self.sock {
            sock.send_to_addr(state.as_bytes(), addr)?;
        }
        let _ = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_notify_addresses() {
        assert_eq!(
            parse_address("/run/systemd/notify"),
            Some(Address::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse_address("@sd-notify"),
            Some(Address::Abstract(b"sd-notify".to_vec()))
        );
        assert_eq!(parse_address("@"), None);
        assert_eq!(parse_address(""), None);
        assert_eq!(parse_address("relative/path"), None);
        assert_eq!(parse_address("vsock:2:1234"), None);
    }

    #[test]
    fn sd_watchdog_enabled_period_is_half_the_timeout_for_this_pid_only() {
        assert_eq!(watchdog_period(None, None, 7), None);
        assert_eq!(watchdog_period(Some("0"), None, 7), None);
        assert_eq!(watchdog_period(Some("-5"), None, 7), None);
        assert_eq!(watchdog_period(Some("lots"), None, 7), None);
        assert_eq!(
            watchdog_period(Some("3000000"), None, 7),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            watchdog_period(Some("3000000"), Some("7"), 7),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(watchdog_period(Some("3000000"), Some("8"), 7), None);
        assert_eq!(watchdog_period(Some("3000000"), Some("x"), 7), None);
        assert_eq!(watchdog_period(Some("1"), None, 7), Some(Duration::from_millis(1)));
        assert_eq!(
            watchdog_period(Some("18446744073709551615"), None, 7),
            Some(Duration::from_micros(u64::MAX / 2))
        );
    }

    #[cfg(unix)]
    #[test]
    fn sends_datagrams_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("tessera-notify-unit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::open(path.to_str().expect("utf-8 temp path")).expect("open");
        assert!(n.enabled());
        n.send("READY=1").expect("send");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1");
        assert!(!Notifier::default().enabled());
        Notifier::default().send("READY=1").expect("no-op");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
