//! One event per line on stderr (SPEC §7): JSON by default, or text.
//!
//! While `serve` runs, lines are gathered in a per-thread buffer and
//! written together when the event loop goes idle [`FLUSH_DELAY`] or more
//! after the oldest of them was logged ([`FlushWhenIdle`]), when the buffer
//! passes [`FLUSH_BYTES`], on shutdown and on a panic: at most one
//! `write(2)` per loop turn and per [`FLUSH_DELAY`] instead of one per line
//! (issue 16), and no line is lost. Elsewhere (commands, other threads)
//! each line is written at once.
//!
//! Callers pass typed fields; nothing here knows tokens, cookies or query
//! strings, and the server never hands them in. Line and paragraph
//! separators (U+2028, U+2029) and bidirectional controls are escaped in
//! both formats, so a peer-supplied string cannot reorder or split what a
//! reader of the log sees; [`clip`] caps peer-supplied text.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Buffered lines past this many bytes are written at once.
pub const FLUSH_BYTES: usize = 16 * 1024;

/// How long a buffered line may wait for the loop's next idle moment to
/// share a write with later ones.
pub const FLUSH_DELAY: std::time::Duration = std::time::Duration::from_millis(25);

thread_local! {
    /// Lines not yet written; `None` while buffering is off on this thread.
    static PENDING: RefCell<Option<String>> = const { RefCell::new(None) };
    /// When the oldest line in [`PENDING`] was logged.
    static SINCE: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

/// A field value.
pub enum Field<'a> {
    Str(&'a str),
    U64(u64),
    Bool(bool),
    /// A peer's address, written as its `Display` writes it, straight into
    /// the line (no text of its own to allocate).
    Addr(&'a std::net::SocketAddr),
}

impl<'a> From<&'a str> for Field<'a> {
    fn from(s: &'a str) -> Field<'a> {
        Field::Str(s)
    }
}
impl<'a> From<&'a Cow<'a, str>> for Field<'a> {
    fn from(s: &'a Cow<'a, str>) -> Field<'a> {
        Field::Str(s)
    }
}
impl<'a> From<&'a String> for Field<'a> {
    fn from(s: &'a String) -> Field<'a> {
        Field::Str(s)
    }
}
impl<'a> From<&'a std::net::SocketAddr> for Field<'a> {
    fn from(a: &'a std::net::SocketAddr) -> Field<'a> {
        Field::Addr(a)
    }
}
impl From<u64> for Field<'_> {
    fn from(v: u64) -> Field<'static> {
        Field::U64(v)
    }
}
impl From<bool> for Field<'_> {
    fn from(v: bool) -> Field<'static> {
        Field::Bool(v)
    }
}

/// Writes events to stderr.
#[derive(Debug, Clone, Copy)]
pub struct Logger {
    pub format: Format,
}

impl Logger {
    /// Logs `event` at `level` with `fields`, stamped with the current time.
    pub fn event(&self, level: &str, event: &str, fields: &[(&str, Field<'_>)]) {
        let now = crate::reactor::wall_now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let ts = Timestamp(now.as_secs(), now.subsec_millis());
        let buffered = PENDING.with(|p| {
            let Ok(mut p) = p.try_borrow_mut() else { return false };
            let Some(buf) = p.as_mut() else { return false };
            if buf.is_empty() {
                // The loop turn's clock, like the time stamps: no clock read per line.
                SINCE.with(|s| s.set(Some(crate::reactor::now())));
            }
            render_into(buf, self.format, ts, level, event, fields);
            if buf.len() >= FLUSH_BYTES {
                write_out(buf);
            }
            true
        });
        if !buffered {
            let mut line = String::with_capacity(160);
            render_into(&mut line, self.format, ts, level, event, fields);
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    pub fn info(&self, event: &str, fields: &[(&str, Field<'_>)]) {
        self.event("info", event, fields)
    }

    pub fn warn(&self, event: &str, fields: &[(&str, Field<'_>)]) {
        self.event("warn", event, fields)
    }
}

/// Writes and empties `buf`.
fn write_out(buf: &mut String) {
    SINCE.with(|s| s.set(None));
    if !buf.is_empty() {
        let _ = std::io::stderr().lock().write_all(buf.as_bytes());
        buf.clear();
    }
}

/// Writes the lines buffered on this thread now.
pub fn flush() {
    PENDING.with(|p| {
        if let Ok(mut p) = p.try_borrow_mut()
            && let Some(buf) = p.as_mut()
        {
            write_out(buf);
        }
    });
}

/// Turns line buffering on for this thread until the guard is dropped
/// (which writes what is left). A panic writes the buffered lines before
/// the process goes (release builds abort on panic, so no unwinding would).
pub fn buffer_lines() -> Buffering {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            flush();
            previous(info);
        }));
    });
    PENDING.with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            p.get_or_insert_with(|| String::with_capacity(FLUSH_BYTES));
        }
    });
    Buffering {
        _thread_bound: std::marker::PhantomData,
    }
}

/// Line buffering on this thread; see [`buffer_lines`].
pub struct Buffering {
    _thread_bound: std::marker::PhantomData<*const ()>,
}

impl Drop for Buffering {
    fn drop(&mut self) {
        flush();
        PENDING.with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                *p = None;
            }
        });
    }
}

/// Drives a future (the executor) and writes the buffered lines when it
/// returns `Pending` (the event loop is about to wait for I/O or a timer,
/// or, under a long burst of work, yields every few hundred tasks) and the
/// oldest of them waited [`FLUSH_DELAY`]; otherwise a timer wakes the loop
/// then. Under a stream of connections that is one write per
/// [`FLUSH_DELAY`] or [`FLUSH_BYTES`] instead of one per loop turn.
pub struct FlushWhenIdle<F> {
    inner: F,
    /// Set for the oldest buffered line's deadline while lines wait.
    timer: Option<crate::reactor::Timer>,
}

impl<F> FlushWhenIdle<F> {
    pub fn new(inner: F) -> FlushWhenIdle<F> {
        FlushWhenIdle { inner, timer: None }
    }
}

impl<F: Future + Unpin> Future for FlushWhenIdle<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let r = Pin::new(&mut self.inner).poll(cx);
        if r.is_ready() {
            return r;
        }
        let Some(since) = SINCE.with(|s| s.get()) else {
            self.timer = None;
            return r;
        };
        let due = since + FLUSH_DELAY;
        if crate::reactor::now() >= due {
            flush();
            self.timer = None;
            return r;
        }
        let timer = self.timer.get_or_insert_with(|| crate::reactor::Timer::at(due));
        if Pin::new(timer).poll(cx).is_ready() {
            flush();
            self.timer = None;
        }
        r
    }
}

/// One line, newline-terminated.
pub fn render(format: Format, ts: &str, level: &str, event: &str, fields: &[(&str, Field<'_>)]) -> String {
    let mut s = String::with_capacity(160);
    render_into(&mut s, format, ts, level, event, fields);
    s
}

/// Appends one newline-terminated line to `out`.
fn render_into(
    out: &mut String,
    format: Format,
    ts: impl Stamp,
    level: &str,
    event: &str,
    fields: &[(&str, Field<'_>)],
) {
    let start = out.len();
    match format {
        Format::Json => {
            out.push_str("{\"ts\":\"");
            ts.render(out);
            out.push_str("\",\"level\":");
            json_str(out, level);
            out.push_str(",\"event\":");
            json_str(out, event);
            // Later fields of the same name win, as in a JSON object built
            // key by key; the fixed keys come first.
            for (i, (k, v)) in fields.iter().enumerate() {
                if matches!(*k, "ts" | "level" | "event") || fields[i + 1..].iter().any(|(k2, _)| k2 == k) {
                    continue;
                }
                out.push(',');
                json_str(out, k);
                out.push(':');
                match v {
                    Field::Str(s) => json_str(out, s),
                    Field::U64(n) => push_u64(out, *n),
                    Field::Addr(a) => quoted_addr(out, a),
                    Field::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                }
            }
            out.push('}');
        }
        Format::Text => {
            ts.render(out);
            out.push(' ');
            out.push_str(level);
            out.push(' ');
            out.push_str(event);
            for (k, v) in fields {
                out.push(' ');
                out.push_str(k);
                out.push('=');
                match v {
                    // Debug-quoting escapes control characters in peer-supplied text.
                    Field::Str(x) => debug_str(out, x),
                    Field::U64(n) => push_u64(out, *n),
                    Field::Addr(a) => quoted_addr(out, a),
                    Field::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                }
            }
        }
    }
    escape_invisible_from(out, start);
    out.push('\n');
}

/// `s` as a JSON string (serde_json's escaping).
pub(crate) fn json_str(out: &mut String, s: &str) {
    // Printable ASCII but `"` and `\\` is written as it is (the usual case:
    // names, addresses, codes); anything else goes through serde_json.
    if plain_ascii(s) {
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    // Writing into a String cannot fail; serde_json escapes exactly as
    // `Value::to_string` did.
    let mut w = StrWriter(out);
    let _ = serde_json::to_writer(&mut w, s);
}

/// `io::Write` into a `String` for serde_json (which writes valid UTF-8).
struct StrWriter<'a>(&'a mut String);

impl Write for StrWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(b) {
            Ok(t) => {
                self.0.push_str(t);
                Ok(b.len())
            }
            Err(_) => Err(std::io::ErrorKind::InvalidData.into()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// True if `s` is printable ASCII without `"` and `\\`: JSON and Rust's
/// `Debug` both quote it without escaping anything.
fn plain_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// `s` as `{s:?}` writes it.
fn debug_str(out: &mut String, s: &str) {
    if plain_ascii(s) {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        let _ = write!(out, "{s:?}");
    }
}

/// `addr` as its `Display` writes it. IPv4 without `core::fmt`: every
/// accepted socket logs its peer, and the formatting machinery was the
/// largest piece of code the handshake ran only for that (issue 16).
pub fn addr_text(addr: &std::net::SocketAddr) -> String {
    let mut out = String::with_capacity(21);
    push_addr(&mut out, addr);
    out
}

/// [`addr_text`], appended to `out`.
fn push_addr(out: &mut String, addr: &std::net::SocketAddr) {
    match addr {
        std::net::SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, u64::from(octet));
            }
            out.push(':');
            push_u64(out, u64::from(v4.port()));
        }
        std::net::SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

/// An address in quotes, as a string field is written in both formats (an
/// address needs no escaping: digits, dots, colons, brackets, hex).
fn quoted_addr(out: &mut String, addr: &std::net::SocketAddr) {
    out.push('"');
    push_addr(out, addr);
    out.push('"');
}

/// `n` in decimal, as `{n}` writes it.
pub(crate) fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// A line's time stamp, appended to the line.
trait Stamp {
    fn render(&self, out: &mut String);
}

impl Stamp for &str {
    fn render(&self, out: &mut String) {
        out.push_str(self);
    }
}

/// `rfc3339` without an allocation.
#[derive(Clone, Copy)]
struct Timestamp(u64, u32);

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_rfc3339(f, self.0, self.1)
    }
}

impl Stamp for Timestamp {
    /// The date and time of day are worked out once per second (per
    /// thread) and reused by every line of that second; the milliseconds
    /// are appended per line.
    fn render(&self, out: &mut String) {
        thread_local! {
            /// The second last rendered, and its `YYYY-MM-DDTHH:MM:SS.`.
            static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
        }
        let done = SECOND.with(|c| {
            let Ok(mut c) = c.try_borrow_mut() else { return false };
            if c.0 != self.0 || c.1.is_empty() {
                let mut s = String::with_capacity(24);
                let _ = write_rfc3339(&mut s, self.0, 0);
                // Keep `…SS.`; the milliseconds (`000Z`) come per line.
                s.truncate(s.len().saturating_sub(4));
                *c = (self.0, s);
            }
            out.push_str(&c.1);
            true
        });
        if !done {
            let _ = write_rfc3339(out, self.0, self.1);
            return;
        }
        let ms = self.1.min(999);
        // Each digit is below 10: the casts cannot truncate.
        out.push(char::from(b'0' + (ms / 100) as u8));
        out.push(char::from(b'0' + (ms / 10 % 10) as u8));
        out.push(char::from(b'0' + (ms % 10) as u8));
        out.push('Z');
    }
}

/// Characters that change how a line reads without being seen: line and
/// paragraph separators, and the bidirectional controls (Unicode UAX #9).
fn invisible(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Replaces [`invisible`] characters in `s[start..]` with `\\uXXXX` (valid
/// inside a JSON string, where alone they can appear in a rendered line).
fn escape_invisible_from(s: &mut String, start: usize) {
    let Some(tail) = s.get(start..) else { return };
    // Every invisible character is outside ASCII.
    if tail.is_ascii() || !tail.chars().any(invisible) {
        return;
    }
    let mut out = String::with_capacity(tail.len() + 12);
    for c in tail.chars() {
        if invisible(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    s.truncate(start);
    s.push_str(&out);
}

/// Caps peer-supplied text at `max` bytes (on a character boundary); a cut
/// is marked with how many bytes were left out.
pub fn clip(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…[+{} bytes]", &s[..end], s.len() - end))
}

/// `2026-11-27T16:50:03.123Z` from Unix seconds and milliseconds.
pub fn rfc3339(secs: u64, millis: u32) -> String {
    Timestamp(secs, millis).to_string()
}

fn write_rfc3339(f: &mut impl std::fmt::Write, secs: u64, millis: u32) -> std::fmt::Result {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (H. Hinnant), valid for all dates after 1970.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    write!(
        f,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn rfc3339_utc() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_795_798_203, 999), "2026-11-27T16:50:03.999Z");
    }

    #[test]
    fn spec7_json_line() {
        let l = render(
            Format::Json,
            "T",
            "info",
            "ws_accept",
            &[("sub", "a\"b".into()), ("n", 3u64.into())],
        );
        let v: Value = serde_json::from_str(l.trim_end()).unwrap();
        assert_eq!(v["event"], "ws_accept");
        assert_eq!(v["sub"], "a\"b");
        assert_eq!(v["n"], 3);
        assert!(l.ends_with('\n') && l.matches('\n').count() == 1);
        let t = render(Format::Text, "T", "warn", "x", &[("peer", "a\nb".into())]);
        assert_eq!(t, "T warn x peer=\"a\\nb\"\n");
    }

    #[test]
    fn separators_and_bidi_controls_are_escaped() {
        let evil = "a\u{2028}b\u{2029}c\u{202e}d\u{2066}e";
        let l = render(Format::Json, "T", "info", "x", &[("user", evil.into())]);
        assert!(!l.chars().any(invisible), "{l:?}");
        assert!(l.contains("a\\u2028b\\u2029c\\u202ed\\u2066e"), "{l}");
        let v: Value = serde_json::from_str(l.trim_end()).unwrap();
        assert_eq!(v["user"], evil, "still the same string to a JSON reader");
        let t = render(Format::Text, "T", "info", "x", &[("user", evil.into())]);
        assert!(!t.chars().any(invisible), "{t:?}");
    }

    #[test]
    fn fast_paths_write_what_fmt_and_serde_json_write() {
        let strings = [
            "",
            "plain",
            "127.0.0.1:5000",
            "a\"b",
            "back\\slash",
            "tab\there",
            "nl\n",
            "del\u{7f}",
            "é",
            "\u{0}",
            "~ !#$%&'()*+,-./:;<=>?@[]^_`{|}",
            "\u{301}x",
            "x\u{200b}",
        ];
        for s in strings {
            let mut d = String::new();
            debug_str(&mut d, s);
            assert_eq!(d, format!("{s:?}"), "{s:?}");
            let mut j = String::new();
            json_str(&mut j, s);
            assert_eq!(j, serde_json::to_string(s).unwrap(), "{s:?}");
        }
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12_345,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut o = String::from("x");
            push_u64(&mut o, n);
            assert_eq!(o, format!("x{n}"));
        }
        // Peer addresses, as `Display` writes them.
        for a in [
            "127.0.0.1:9000",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.20.3.44:80",
            "[::1]:8080",
            "[fe80::1%3]:1",
            "[::ffff:1.2.3.4]:443",
        ] {
            let addr: std::net::SocketAddr = a.parse().unwrap();
            assert_eq!(addr_text(&addr), addr.to_string(), "{a}");
            assert_eq!(addr_text(&addr), a);
            // Written into a line, an address is the string field of its text.
            for format in [Format::Text, Format::Json] {
                assert_eq!(
                    render(format, "T", "info", "x", &[("peer", (&addr).into())]),
                    render(format, "T", "info", "x", &[("peer", a.into())]),
                    "{a}"
                );
            }
        }
        // The cached date of a second, then the next second and back.
        for (secs, ms) in [
            (1_795_798_203, 7),
            (1_795_798_203, 999),
            (1_795_798_204, 0),
            (0, 10),
            (951_782_400, 5),
        ] {
            let mut o = String::new();
            Timestamp(secs, ms).render(&mut o);
            assert_eq!(o, rfc3339(secs, ms));
        }
    }

    #[test]
    fn lines_are_the_same_as_formatted_field_by_field() {
        let fields: [(&str, Field<'_>); 5] = [
            ("conn", 42u64.into()),
            ("sub", "dev-1".into()),
            ("reason", "a \"quoted\"\nline".into()),
            ("ok", true.into()),
            ("n", 0u64.into()),
        ];
        let t = render(Format::Text, "T", "info", "ws_close", &fields);
        assert_eq!(
            t,
            "T info ws_close conn=42 sub=\"dev-1\" reason=\"a \\\"quoted\\\"\\nline\" ok=true n=0\n"
        );
        let j = render(Format::Json, "T", "info", "ws_close", &fields);
        assert_eq!(
            j,
            "{\"ts\":\"T\",\"level\":\"info\",\"event\":\"ws_close\",\"conn\":42,\"sub\":\"dev-1\",\"reason\":\"a \\\"quoted\\\"\\nline\",\"ok\":true,\"n\":0}\n"
        );
    }

    #[test]
    fn clip_marks_truncation() {
        assert_eq!(clip("short", 64), "short");
        let long = "é".repeat(40);
        let c = clip(&long, 64);
        assert!(c.starts_with(&"é".repeat(32)) && c.ends_with("…[+16 bytes]"), "{c}");
    }

    fn pending() -> Option<String> {
        PENDING.with(|p| p.borrow().clone())
    }

    #[test]
    fn buffered_lines_wait_for_a_flush_and_the_guard() {
        let log = Logger { format: Format::Text };
        assert_eq!(pending(), None, "off unless asked for");
        let guard = buffer_lines();
        log.info("one", &[("n", 1u64.into())]);
        log.info("two", &[]);
        let held = pending().unwrap_or_default();
        assert!(
            held.contains(" info one n=1\n") && held.ends_with(" info two\n"),
            "{held:?}"
        );
        flush();
        assert_eq!(pending().as_deref(), Some(""), "written out");
        // Past the bound a line is written at once.
        let big = "x".repeat(FLUSH_BYTES);
        log.info("big", &[("pad", (&big).into())]);
        assert_eq!(pending().as_deref(), Some(""));
        log.info("three", &[]);
        drop(guard);
        assert_eq!(pending(), None, "the guard writes the rest and turns buffering off");
    }

    #[test]
    fn idle_executor_flushes_after_the_delay() {
        let log = Logger { format: Format::Json };
        let _guard = buffer_lines();
        let start = std::time::Instant::now();
        let mut polls = 0;
        let fut = std::future::poll_fn(|cx| {
            polls += 1;
            match polls {
                // Logged, then the loop waits for nothing: only the flush
                // timer can wake it.
                1 => {
                    log.info("turn", &[]);
                    Poll::Pending
                }
                2 => {
                    assert!(start.elapsed() >= FLUSH_DELAY, "woken by the flush timer");
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                _ => {
                    assert_eq!(pending().as_deref(), Some(""), "flushed when the loop went idle");
                    Poll::Ready(())
                }
            }
        });
        crate::reactor::block_on(FlushWhenIdle::new(Box::pin(fut))).expect("reactor");
    }

    #[test]
    fn spec7_key_order_and_last_duplicate_wins() {
        let l = render(
            Format::Json,
            "T",
            "info",
            "x",
            &[
                ("a", 1u64.into()),
                ("event", "spoof".into()),
                ("a", 2u64.into()),
                ("b", true.into()),
            ],
        );
        assert_eq!(
            l,
            "{\"ts\":\"T\",\"level\":\"info\",\"event\":\"x\",\"a\":2,\"b\":true}\n"
        );
    }
}
