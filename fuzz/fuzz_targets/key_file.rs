//! `key_file`: arbitrary text through `tessera::keys::KeySet::parse`, the
//! function `--secret-file` loading and SIGHUP reloads call.
//!
//! An independent re-statement of SPEC §2 predicts the outcome: blank and
//! `#` lines are skipped; either exactly one line without `:` (the key) or
//! only `KID:KEY` lines (KID trimmed, 1–64 of `A-Z a-z 0-9 . _ -`, no
//! duplicates); every key its trimmed text, at least 32 bytes. When the
//! parse succeeds, each key must be the predicted bytes (same HMAC) and a
//! token signed with it must verify. Whatever happens, `Debug` and error
//! messages must be exactly those of the same file with every key replaced
//! by zeros: no key byte may reach them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::jwt::{self, Claims};
use tessera::keys::{KeySet, MIN_KEY_BYTES};
use tessera_fuzz::{LAX, NOW, mac};

/// A line of the file as SPEC §2 reads it.
enum Line<'a> {
    Skipped,
    Unnamed(&'a str),
    Named(&'a str, &'a str),
}

fn kid_ok(kid: &str) -> bool {
    (1..=64).contains(&kid.len()) && kid.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn read_line(line: &str) -> Line<'_> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Line::Skipped;
    }
    match line.find(':') {
        None => Line::Unnamed(line),
        Some(i) => Line::Named(line[..i].trim(), line[i + 1..].trim()),
    }
}

/// The keys SPEC §2 says the file holds, first one signing; `None` when it
/// must be refused.
fn expected_keys<'a>(lines: &[Line<'a>]) -> Option<Vec<(Option<&'a str>, &'a str)>> {
    let mut named: Vec<(Option<&str>, &str)> = Vec::new();
    let mut unnamed = Vec::new();
    for line in lines {
        match *line {
            Line::Skipped => {}
            Line::Unnamed(key) => unnamed.push((None, key)),
            Line::Named(kid, key) => {
                if !kid_ok(kid) || named.iter().any(|(k, _)| *k == Some(kid)) {
                    return None;
                }
                named.push((Some(kid), key));
            }
        }
    }
    let keys = match (named.len(), unnamed.len()) {
        (0, 1) => unnamed,
        (n, 0) if n > 0 => named,
        _ => return None,
    };
    keys.iter().all(|(_, key)| key.len() >= MIN_KEY_BYTES).then_some(keys)
}

/// The same file with every key replaced by as many zeros.
fn zeroed(lines: &[Line<'_>]) -> String {
    let mut out = String::new();
    for line in lines {
        match *line {
            Line::Skipped => {}
            Line::Unnamed(key) => out.push_str(&"0".repeat(key.len())),
            Line::Named(kid, key) => {
                out.push_str(kid);
                out.push(':');
                out.push_str(&"0".repeat(key.len()));
            }
        }
        out.push('\n');
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<Line<'_>> = text.lines().map(read_line).collect();
    let parsed = KeySet::parse(&text);
    let redacted = KeySet::parse(&zeroed(&lines));
    assert_eq!(
        format!("{parsed:?}"),
        format!("{redacted:?}"),
        "Debug output depends on key bytes"
    );
    if let (Err(e), Err(r)) = (&parsed, &redacted) {
        assert_eq!(e.to_string(), r.to_string(), "error message depends on key bytes");
    }

    let expected = expected_keys(&lines);
    let keys = match (parsed, expected) {
        (Err(_), None) => return,
        (Ok(keys), Some(expected)) => (keys, expected),
        (Err(e), Some(expected)) => panic!("refused ({e}) a valid key file with {} key(s)", expected.len()),
        (Ok(keys), None) => panic!("accepted an invalid key file as {} key(s)", keys.len()),
    };
    let (keys, expected) = keys;
    assert_eq!(keys.len(), expected.len());
    assert_eq!(keys.first().kid(), expected[0].0, "the first key must sign");
    let claims = Claims {
        sub: "agent-7".into(),
        exp: (NOW + 3600) as f64,
        ..Claims::default()
    };
    for (kid, secret) in expected {
        let key = match kid {
            Some(kid) => keys.by_kid(kid).expect("every kid is found"),
            None => keys.first(),
        };
        assert_eq!(key.kid(), kid);
        assert_eq!(
            key.mac(b"probe"),
            mac(secret, b"probe"),
            "key bytes differ from the file's text"
        );
        let token = jwt::sign(&claims, &keys, kid).expect("signing with a listed kid works");
        let verified = jwt::verify(&token, &keys, &LAX, NOW).expect("a token signed with the key verifies");
        assert_eq!(*verified, claims);
    }
});
