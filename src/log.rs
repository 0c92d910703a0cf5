//! One event per line on stderr (SPEC §7): JSON by default, or text.
//!
//! Callers pass typed fields; nothing here knows tokens, cookies or query
//! strings, and the server never hands them in. Line and paragraph
//! separators (U+2028, U+2029) and bidirectional controls are escaped in
//! both formats, so a peer-supplied string cannot reorder or split what a
//! reader of the log sees; [`clip`] caps peer-supplied text.

use serde_json::{Map, Value};
use std::borrow::Cow;
use std::io::Write;

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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let line = render(
            self.format,
            &rfc3339(now.as_secs(), now.subsec_millis()),
            level,
            event,
            fields,
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    pub fn info(&self, event: &str, fields: &[(&str, Field<'_>)]) {
        self.event("info", event, fields)
    }

    pub fn warn(&self, event: &str, fields: &[(&str, Field<'_>)]) {
        self.event("warn", event, fields)
    }
}

/// One line, newline-terminated.
pub fn render(format: Format, ts: &str, level: &str, event: &str, fields: &[(&str, Field<'_>)]) -> String {
    match format {
        Format::Json => {
            let mut m = Map::new();
            m.insert("ts".into(), ts.into());
            m.insert("level".into(), level.into());
            m.insert("event".into(), event.into());
            for (k, v) in fields {
                let v = match v {
                    Field::Str(s) => Value::from(*s),
                    Field::U64(n) => Value::from(*n),
                    Field::Bool(b) => Value::from(*b),
                };
                m.insert((*k).to_string(), v);
            }
            let mut s = escape_invisible(Value::Object(m).to_string());
            s.push('\n');
            s
        }
        Format::Text => {
            let mut s = format!("{ts} {level} {event}");
            for (k, v) in fields {
                match v {
                    // Debug-quoting escapes control characters in peer-supplied text.
                    Field::Str(x) => s.push_str(&escape_invisible(format!(" {k}={x:?}"))),
                    Field::U64(n) => s.push_str(&format!(" {k}={n}")),
                    Field::Bool(b) => s.push_str(&format!(" {k}={b}")),
                }
            }
            s.push('\n');
            s
        }
    }
}

/// Characters that change how a line reads without being seen: line and
/// paragraph separators, and the bidirectional controls (Unicode UAX #9).
fn invisible(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Replaces [`invisible`] characters with `\uXXXX` (valid inside a JSON
/// string, where alone they can appear in a rendered line).
fn escape_invisible(s: String) -> String {
    if !s.chars().any(invisible) {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 12);
    for c in s.chars() {
        if invisible(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
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
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn clip_marks_truncation() {
        assert_eq!(clip("short", 64), "short");
        let long = "é".repeat(40);
        let c = clip(&long, 64);
        assert!(c.starts_with(&"é".repeat(32)) && c.ends_with("…[+16 bytes]"), "{c}");
    }
}
