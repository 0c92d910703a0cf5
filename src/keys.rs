//! Signing keys (SPEC §2): key files, `TESSERA_SECRET`, `kid` lookup.
//!
//! A key file holds one line without `:` (a key with no id), or lines
//! `KID:KEY`. The key is the line's text with surrounding whitespace removed
//! (the base64url text itself, not its decoded bytes) and must be at least
//! 32 bytes. Each key is turned into a pre-keyed HMAC-SHA256 state once;
//! signing and verifying clone that state. No key byte ever reaches a
//! `Debug` string or an error message.
//!
//! ```
//! use tessera::keys::KeySet;
//! let keys = KeySet::parse("# ops keys\nk2:0123456789abcdef0123456789abcdef\n").unwrap();
//! assert_eq!(keys.first().kid(), Some("k2"));
//! assert!(format!("{keys:?}").contains("redacted"));
//! ```

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_KEY_BYTES: usize = 32;

/// One HS256 key with its optional id.
#[derive(Clone)]
pub struct Key {
    kid: Option<String>,
    mac: HmacSha256,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Key {
    fn new(kid: Option<String>, secret: &[u8]) -> Result<Key, KeyError> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort { kid, len: secret.len() });
        }
        // new_from_slice accepts any length for HMAC; this cannot fail.
        let mac = HmacSha256::new_from_slice(secret).map_err(|_| KeyError::TooShort {
            kid: kid.clone(),
            len: 0,
        })?;
        Ok(Key { kid, mac })
    }

    /// The key id, when the key file gives one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// HMAC-SHA256 of `data` under this key.
    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        let mut m = self.mac.clone();
        m.update(data);
        m.finalize().into_bytes().into()
    }

    /// Checks `tag` against HMAC-SHA256 of `data` in constant time.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut m = self.mac.clone();
        m.update(data);
        m.verify_slice(tag).is_ok()
    }
}

/// A non-empty list of keys; the first one signs.
#[derive(Clone, Debug)]
pub struct KeySet {
    keys: Vec<Key>,
}

/// Why a key source was refused. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The file or variable holds no key line.
    Empty,
    /// A key is shorter than [`MIN_KEY_BYTES`].
    TooShort { kid: Option<String>, len: usize },
    /// Lines with and without ids in one file.
    Mixed,
    /// More than one line without an id.
    SeveralUnnamed,
    /// An id outside `A-Z a-z 0-9 . _ -` or longer than 64 (given by line number).
    BadKid { line: usize },
    /// The same id twice.
    DuplicateKid(String),
    /// The file could not be read or is not UTF-8.
    Unreadable(String),
    /// Neither `--secret-file` nor `TESSERA_SECRET` was given.
    Missing,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Empty => f.write_str("no key in it"),
            KeyError::TooShort { kid: Some(k), len } => {
                write!(
                    f,
                    "key {k:?} is {len} bytes; at least {MIN_KEY_BYTES} are required (tessera keygen makes one)"
                )
            }
            KeyError::TooShort { kid: None, len } => {
                write!(
                    f,
                    "the key is {len} bytes; at least {MIN_KEY_BYTES} are required (tessera keygen makes one)"
                )
            }
            KeyError::Mixed => f.write_str("it mixes a key without id and KID:KEY lines; use one form"),
            KeyError::SeveralUnnamed => {
                f.write_str("it has several key lines without id; use KID:KEY lines for several keys")
            }
            KeyError::BadKid { line } => {
                write!(f, "line {line}: a key id must be 1-64 characters of A-Z a-z 0-9 . _ -")
            }
            KeyError::DuplicateKid(k) => write!(f, "key id {k:?} appears twice"),
            KeyError::Unreadable(why) => write!(f, "cannot be read: {why}"),
            KeyError::Missing => f.write_str("no signing key: give --secret-file PATH or set TESSERA_SECRET"),
        }
    }
}

impl std::error::Error for KeyError {}

fn kid_ok(k: &str) -> bool {
    (1..=64).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl KeySet {
    /// One key without id (the `TESSERA_SECRET` form).
    pub fn single(secret: &[u8]) -> Result<KeySet, KeyError> {
        let secret = secret.trim_ascii();
        if secret.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(KeySet {
            keys: vec![Key::new(None, secret)?],
        })
    }

    /// One key from raw bytes, untrimmed (library use, e.g. a decoded JWK).
    pub fn raw(secret: &[u8]) -> Result<KeySet, KeyError> {
        Ok(KeySet {
            keys: vec![Key::new(None, secret)?],
        })
    }

    /// Parses key file text (SPEC §2).
    pub fn parse(text: &str) -> Result<KeySet, KeyError> {
        let mut named = Vec::new();
        let mut unnamed = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once(':') {
                None => unnamed.push(line),
                Some((kid, key)) => {
                    let kid = kid.trim();
                    if !kid_ok(kid) {
                        return Err(KeyError::BadKid { line: i + 1 });
                    }
                    named.push((kid, key.trim()));
                }
            }
        }
        match (named.is_empty(), unnamed.len()) {
            (true, 0) => Err(KeyError::Empty),
            (true, 1) => KeySet::single(unnamed[0].as_bytes()),
            (true, _) => Err(KeyError::SeveralUnnamed),
            (false, 0) => {
                let mut keys: Vec<Key> = Vec::with_capacity(named.len());
                for (kid, key) in named {
                    if keys.iter().any(|k| k.kid() == Some(kid)) {
                        return Err(KeyError::DuplicateKid(kid.to_string()));
                    }
                    keys.push(Key::new(Some(kid.to_string()), key.as_bytes())?);
                }
                Ok(KeySet { keys })
            }
            (false, _) => Err(KeyError::Mixed),
        }
    }

    /// Reads and parses a key file.
    pub fn from_file(path: &Path) -> Result<KeySet, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Unreadable(e.kind().to_string()))?;
        KeySet::parse(&text)
    }

    /// The key source every subcommand uses: `--secret-file` when given,
    /// else `TESSERA_SECRET`. Errors name the source.
    pub fn load(secret_file: Option<&Path>, env_secret: Option<&str>) -> Result<KeySet, String> {
        match (secret_file, env_secret) {
            (Some(p), _) => KeySet::from_file(p).map_err(|e| format!("--secret-file {}: {e}", p.display())),
            (None, Some(s)) => KeySet::single(s.as_bytes()).map_err(|e| format!("TESSERA_SECRET: {e}")),
            (None, None) => Err(KeyError::Missing.to_string()),
        }
    }

    /// The signing key.
    pub fn first(&self) -> &Key {
        // A KeySet is never empty: every constructor refuses that.
        &self.keys[0]
    }

    /// The key with this id, if any.
    pub fn by_kid(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid() == Some(kid))
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a key set holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// 32 random bytes as base64url (43 characters): a fresh key.
pub fn generate() -> Result<String, getrandom::Error> {
    use base64::Engine as _;
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn spec2_single_key_line() {
        let ks = KeySet::parse(&format!("  {K}  \n")).unwrap();
        assert_eq!(ks.len(), 1);
        assert_eq!(ks.first().kid(), None);
    }

    #[test]
    fn spec2_kid_lines_comments_and_blanks() {
        let ks = KeySet::parse(&format!("# keys\n\nnew:{K}x\n old.v1 : {K}\n")).unwrap();
        assert_eq!(ks.len(), 2);
        assert_eq!(ks.first().kid(), Some("new"));
        assert!(ks.by_kid("old.v1").is_some());
        assert!(ks.by_kid("nope").is_none());
    }

    #[test]
    fn spec2_rfc7518_3_2_short_key_refused() {
        assert!(matches!(KeySet::parse("short"), Err(KeyError::TooShort { len: 5, .. })));
        assert!(matches!(
            KeySet::parse(&format!("a:{K}\nb:abc")),
            Err(KeyError::TooShort { .. })
        ));
        assert!(KeySet::single(&K.as_bytes()[..31]).is_err());
    }

    #[test]
    fn spec2_mixed_forms_refused() {
        assert_eq!(KeySet::parse(&format!("{K}\na:{K}")).unwrap_err(), KeyError::Mixed);
        assert_eq!(
            KeySet::parse(&format!("{K}\n{K}")).unwrap_err(),
            KeyError::SeveralUnnamed
        );
    }

    #[test]
    fn spec2_kid_charset_and_duplicates() {
        assert_eq!(
            KeySet::parse(&format!("a b:{K}")).unwrap_err(),
            KeyError::BadKid { line: 1 }
        );
        assert_eq!(
            KeySet::parse(&format!(":{K}")).unwrap_err(),
            KeyError::BadKid { line: 1 }
        );
        let long = "k".repeat(65);
        assert!(KeySet::parse(&format!("{long}:{K}")).is_err());
        assert_eq!(
            KeySet::parse(&format!("a:{K}\na:{K}")).unwrap_err(),
            KeyError::DuplicateKid("a".into())
        );
    }

    #[test]
    fn spec2_empty_refused() {
        assert_eq!(KeySet::parse("# nothing\n\n").unwrap_err(), KeyError::Empty);
        assert_eq!(KeySet::single(b"   ").unwrap_err(), KeyError::Empty);
    }

    #[test]
    fn secrets_never_in_debug_or_errors() {
        let ks = KeySet::parse(&format!("a:{K}")).unwrap();
        assert!(!format!("{ks:?}").contains(K));
        let err = KeySet::parse(&format!("a:{K}\n{K}")).unwrap_err().to_string();
        assert!(!err.contains(K));
        let err = KeySet::load(None, Some("tiny-secret")).unwrap_err();
        assert!(!err.contains("tiny-secret"), "{err}");
    }

    #[test]
    fn generated_keys_are_43_chars_and_usable() {
        let k = generate().unwrap();
        assert_eq!(k.len(), 43);
        assert!(KeySet::single(k.as_bytes()).is_ok());
        assert_ne!(k, generate().unwrap());
    }
}
