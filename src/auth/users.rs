//! The users file (SPEC §6) and PBKDF2-HMAC-SHA256 password hashes.
//!
//! One user a line, `NAME:CLEARANCE:PUBLISH:CHANNELS:HASH`, `#` comments,
//! and an optional sixth field `totp:<base32 secret>` (SPEC §11): the
//! user's second factor. HASH is a PHC string
//! `$pbkdf2-sha256$i=<iterations>,l=32$<salt>$<hash>` (salt and hash in PHC
//! B64: standard alphabet, no padding). Comments and blank lines survive a
//! rewrite by `tessera useradd`. No hash, TOTP secret or password appears
//! in `Debug` output or in a parse error.
//!
//! ```
//! use tessera::auth::users::{PasswordHash, UsersFile};
//! let h = PasswordHash::new(b"s3cret", 1000, [7; 16]);
//! let file = UsersFile::parse(&format!("# team\nhq:5:1::{}\n", h.to_phc())).unwrap();
//! let hq = file.get("hq").unwrap();
//! assert!(hq.hash.verify(b"s3cret") && !hq.hash.verify(b"guess"));
//! assert!(!format!("{hq:?}").contains(&h.to_phc()));
//! ```

use super::totp::TotpSecret;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as PHC_B64;
use sha2::Sha256;
use std::fmt;

/// Default PBKDF2 iterations (OWASP 2023 for PBKDF2-HMAC-SHA256).
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// Most iterations accepted from a file (bounds the work of one login).
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// A PBKDF2-HMAC-SHA256 password hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    pub iterations: u32,
    salt: Vec<u8>,
    hash: [u8; 32],
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PasswordHash(pbkdf2-sha256, i={}, <redacted>)", self.iterations)
    }
}

impl PasswordHash {
    /// Hashes `password` with `salt` (16 random bytes from the caller).
    pub fn new(password: &[u8], iterations: u32, salt: [u8; 16]) -> PasswordHash {
        let mut hash = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, &salt, iterations, &mut hash);
        PasswordHash {
            iterations,
            salt: salt.to_vec(),
            hash,
        }
    }

    /// Parses a PHC string.
    pub fn parse(phc: &str) -> Result<PasswordHash, &'static str> {
        let rest = phc
            .strip_prefix("$pbkdf2-sha256$")
            .ok_or("hash must start with $pbkdf2-sha256$")?;
        let mut parts = rest.split('$');
        let (params, salt, hash) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(p), Some(s), Some(h), None) => (p, s, h),
            _ => return Err("hash must be $pbkdf2-sha256$i=N,l=32$SALT$HASH"),
        };
        let mut iterations = None;
        let mut len_ok = false;
        for kv in params.split(',') {
            match kv.split_once('=') {
                Some(("i", n)) => iterations = n.parse::<u32>().ok(),
                Some(("l", "32")) => len_ok = true,
                _ => return Err("hash parameters must be i=N,l=32"),
            }
        }
        let iterations = iterations
            .filter(|i| (1..=MAX_ITERATIONS).contains(i))
            .ok_or("hash iterations must be 1-10000000")?;
        if !len_ok {
            return Err("hash length must be l=32");
        }
        let salt = PHC_B64.decode(salt).map_err(|_| "hash salt is not PHC base64")?;
        if !(8..=64).contains(&salt.len()) {
            return Err("hash salt must be 8-64 bytes");
        }
        let hash: [u8; 32] = PHC_B64
            .decode(hash)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or("hash must be 32 bytes of PHC base64")?;
        Ok(PasswordHash { iterations, salt, hash })
    }

    /// The PHC string.
    pub fn to_phc(&self) -> String {
        format!(
            "$pbkdf2-sha256$i={},l=32${}${}",
            self.iterations,
            PHC_B64.encode(&self.salt),
            PHC_B64.encode(self.hash)
        )
    }

    /// Whether `password` matches, compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, &self.salt, self.iterations, &mut out);
        out.iter().zip(self.hash.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// A user record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub clearance: u32,
    pub publish: bool,
    /// Empty: unrestricted.
    pub channels: Vec<String>,
    pub hash: PasswordHash,
    /// The TOTP secret of a user enrolled in the second factor (SPEC §11).
    pub totp: Option<TotpSecret>,
}

impl User {
    /// The file line for this user.
    pub fn to_line(&self) -> String {
        let mut line = format!(
            "{}:{}:{}:{}:{}",
            self.name,
            self.clearance,
            u8::from(self.publish),
            self.channels.join(","),
            self.hash.to_phc()
        );
        if let Some(t) = &self.totp {
            line.push_str(":totp:");
            line.push_str(&t.to_base32());
        }
        line
    }
}

/// A user name: 1–128 bytes, printable, no `:` or whitespace.
pub fn name_ok(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.chars().all(|c| !c.is_whitespace() && !c.is_control() && c != ':')
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Line {
    User(User),
    /// A comment or blank line, kept as written.
    Other(String),
}

/// A parsed users file, keeping its comments for rewrites.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsersFile {
    lines: Vec<Line>,
}

impl UsersFile {
    /// Parses the file; an error names the line.
    pub fn parse(text: &str) -> Result<UsersFile, String> {
        let mut lines = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') {
                // A lone trailing `\r` is a line ending, not content: keep
                // rewrites stable (found by the users_file fuzz target).
                lines.push(Line::Other(raw.trim_end_matches('\r').to_string()));
                continue;
            }
            let user = parse_user(t).map_err(|e| format!("line {}: {e}", i + 1))?;
            if lines.iter().any(|l| matches!(l, Line::User(u) if u.name == user.name)) {
                return Err(format!("line {}: user {:?} appears twice", i + 1, user.name));
            }
            lines.push(Line::User(user));
        }
        Ok(UsersFile { lines })
    }

    /// The user with this name.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.users().find(|u| u.name == name)
    }

    /// Every user, in file order.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.lines.iter().filter_map(|l| match l {
            Line::User(u) => Some(u),
            Line::Other(_) => None,
        })
    }

    /// Adds a user, or replaces the line of a user with the same name.
    pub fn upsert(&mut self, user: User) {
        for l in &mut self.lines {
            if let Line::User(u) = l
                && u.name == user.name
            {
                *u = user;
                return;
            }
        }
        self.lines.push(Line::User(user));
    }

    /// The file text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for l in &self.lines {
            match l {
                Line::User(u) => s.push_str(&u.to_line()),
                Line::Other(o) => s.push_str(o),
            }
            s.push('\n');
        }
        s
    }
}

fn parse_user(line: &str) -> Result<User, String> {
    let f: Vec<&str> = line.splitn(7, ':').collect();
    let (name, clearance, publish, channels, hash, totp) = match f[..] {
        [n, c, p, ch, h] => (n, c, p, ch, h, None),
        [n, c, p, ch, h, "totp", t] => (n, c, p, ch, h, Some(t)),
        _ => return Err("expected NAME:CLEARANCE:PUBLISH:CHANNELS:HASH[:totp:SECRET]".into()),
    };
    if !name_ok(name) {
        return Err("NAME must be 1-128 bytes without ':' or spaces".into());
    }
    let clearance = clearance
        .parse()
        .map_err(|_| "CLEARANCE must be 0-4294967295".to_string())?;
    let publish = match publish {
        "0" => false,
        "1" => true,
        _ => return Err("PUBLISH must be 0 or 1".into()),
    };
    let channels: Vec<String> = channels
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect();
    for c in &channels {
        if !crate::hub::pattern_ok(c) {
            return Err(format!("channel {c:?} is not a channel name or prefix*"));
        }
    }
    let hash = PasswordHash::parse(hash).map_err(String::from)?;
    let totp = totp.map(TotpSecret::from_base32).transpose().map_err(String::from)?;
    Ok(User {
        name: name.to_string(),
        clearance,
        publish,
        channels,
        hash,
        totp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pw: &str) -> PasswordHash {
        PasswordHash::new(pw.as_bytes(), 1000, [1; 16])
    }

    #[test]
    fn spec6_phc_round_trip_and_verify() {
        let x = h("pw");
        let phc = x.to_phc();
        assert!(phc.starts_with("$pbkdf2-sha256$i=1000,l=32$"));
        assert!(!phc.contains('='.to_string().repeat(2).as_str()));
        assert_eq!(PasswordHash::parse(&phc).unwrap(), x);
        assert!(x.verify(b"pw"));
        assert!(!x.verify(b"pw "));
    }

    #[test]
    fn spec6_known_vector_rfc7914_11() {
        // RFC 7914 §11: PBKDF2-HMAC-SHA256("passwd", "salt", 1, 64) starts 55 ac 04 6e.
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"passwd", b"salt", 1, &mut out);
        assert_eq!(&out[..4], &[0x55, 0xac, 0x04, 0x6e]);
    }

    #[test]
    fn spec6_bad_hashes_refused() {
        for bad in [
            "$pbkdf2-sha512$i=1,l=32$AAAAAAAAAAA$AAAA",
            "$pbkdf2-sha256$i=0,l=32$c2FsdHNhbHQ$AAAA",
            "$pbkdf2-sha256$i=10,l=64$c2FsdHNhbHQ$AAAA",
            "$pbkdf2-sha256$i=10,l=32$c2FsdHNhbHQ$AAAA",
            "$pbkdf2-sha256$i=10,l=32$!!$AAAA",
            "plain",
        ] {
            assert!(PasswordHash::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec6_file_parse_rewrite_keeps_comments() {
        let text = format!(
            "# ops team\n\nhq:5:1::{}\nagent-7:2:0:ops,team.*:{}\n",
            h("a").to_phc(),
            h("b").to_phc()
        );
        let mut f = UsersFile::parse(&text).unwrap();
        assert_eq!(f.render(), text);
        let a7 = f.get("agent-7").unwrap().clone();
        assert_eq!(
            (a7.clearance, a7.publish, a7.channels.clone()),
            (2, false, vec!["ops".into(), "team.*".into()])
        );
        f.upsert(User { clearance: 3, ..a7 });
        f.upsert(User {
            name: "new".into(),
            clearance: 0,
            publish: false,
            channels: vec![],
            hash: h("c"),
            totp: None,
        });
        let out = f.render();
        assert!(out.starts_with("# ops team\n\nhq:5:1::"));
        assert!(out.contains("\nagent-7:3:0:ops,team.*:"));
        assert!(out.ends_with(&format!("new:0:0::{}\n", h("c").to_phc())));
    }

    #[test]
    fn fuzz_users_file_lone_cr_round_trips() {
        for text in ["\r", "# c\r", "# a\r\n\r"] {
            let f = UsersFile::parse(text).unwrap();
            assert_eq!(UsersFile::parse(&f.render()).unwrap(), f, "{text:?}");
        }
    }

    /// users_file `name-spells-its-hash` (the oracle was wrong, nothing
    /// leaked): a name may spell a PHC string, even its own hash; `Debug`
    /// prints the name as written and still redacts the hash itself.
    #[test]
    fn fuzz_users_file_name_spelling_its_hash() {
        let phc = h("a").to_phc();
        let f = UsersFile::parse(&format!("{phc}x:2:0:ops:{phc}")).unwrap();
        let u = f.users().next().unwrap();
        assert_eq!(u.name, format!("{phc}x"));
        let digest = phc.rsplit('$').next().unwrap();
        assert!(!format!("{:?}", u.hash).contains(digest));
        assert_eq!(UsersFile::parse(&f.render()).unwrap(), f);
    }

    #[test]
    fn spec11_sixth_field_totp() {
        let seed = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        let five = format!("hq:5:1::{}", h("a").to_phc());
        let six = format!("{five}:totp:{seed}\nold:1:0:ops:{}\n", h("b").to_phc());
        let f = UsersFile::parse(&six).unwrap();
        assert_eq!(
            f.render(),
            six,
            "rewrite keeps the sixth field and old lines as written"
        );
        let hq = f.get("hq").unwrap();
        assert_eq!(hq.totp.as_ref().map(TotpSecret::to_base32).as_deref(), Some(seed));
        assert!(f.get("old").unwrap().totp.is_none());
        assert!(!format!("{f:?}").contains(seed), "Debug shows no secret");
        for bad in [
            format!("{five}:totp:"),
            format!("{five}:totp:gezdgnbvgy3tqojqgezdgnbvgy3tqojq"),
            format!("{five}:totp:GEZDGNBVGY3TQOJQGEZDGNBV"),
            format!("{five}:hotp:{seed}"),
            format!("{five}:totp:{seed}:x"),
            format!("{five}:{seed}"),
        ] {
            let e = UsersFile::parse(&bad).unwrap_err();
            assert!(e.starts_with("line 1:"), "{e}");
            assert!(
                !e.contains("GEZ") && !e.contains("gez"),
                "the error quotes no secret: {e}"
            );
        }
    }

    #[test]
    fn spec6_bad_lines_named() {
        let e = UsersFile::parse("# c\nhq:5:1:").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(UsersFile::parse(&format!("hq:x:1::{}", h("a").to_phc())).is_err());
        assert!(UsersFile::parse(&format!("hq:1:2::{}", h("a").to_phc())).is_err());
        assert!(UsersFile::parse(&format!("a:1:1::{0}\na:1:1::{0}", h("a").to_phc())).is_err());
        assert!(UsersFile::parse(&format!("a:1:1:bad chan:{}", h("a").to_phc())).is_err());
    }
}
