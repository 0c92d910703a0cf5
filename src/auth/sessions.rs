//! Sessions, rotating refresh tokens and revocation (SPEC §3, §4.1), sans-IO.
//!
//! A login opens a session (`sid`) and hands out a refresh token: 32 random
//! bytes, base64url. Only its SHA-256 is stored. Refreshing marks the
//! presented token used and issues a new one in the same session; presenting
//! a used token again is a theft signal: the whole session is revoked, and
//! its access tokens are refused by `sid` until they expire. Randomness and
//! `now` come from the caller.
//!
//! A session remembers how its login was authenticated (`amr`, RFC 8176),
//! so that refreshed tokens keep it. The TOTP replay memory lives here too
//! (SPEC §11): the last time step used per user, saved in the state file
//! with the sessions so a code stays used across a restart.
//!
//! The state stays bounded however often a session refreshes: every refresh
//! token of a session starts with the same 16 random bytes (its *family*,
//! stored only as SHA-256), so only the current token is kept; any other
//! token of the family is an old one, and presenting it is reuse. A session
//! counts its rotations (`generation`), and [`Sessions::over_cap`] names the
//! sessions to revoke to keep a user under a cap.
//!
//! ```
//! use tessera::auth::sessions::{Sessions, RefreshError};
//! let mut s = Sessions::default();
//! let (sid, t1) = s.login("agent-7", 100, 3700, 604_800, [1; 16], [2; 32]);
//! let (_, sub, t2) = s.rotate(&t1, 200, 3800, [3; 32]).unwrap();
//! assert_eq!(sub, "agent-7");
//! assert!(matches!(s.rotate(&t1, 300, 3900, [4; 32]), Err(RefreshError::Reused { .. })));
//! assert!(s.is_revoked(&sid));
//! assert!(s.rotate(&t2, 300, 3900, [5; 32]).is_err());
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// One login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub sub: String,
    /// When its newest refresh token expires (Unix seconds).
    pub refresh_expires: u64,
    /// The latest `exp` of an access token issued in it.
    pub access_expires: u64,
    pub revoked: bool,
    /// How the login was authenticated (RFC 8176 `amr`), e.g. `["pwd","otp"]`;
    /// empty for sessions from a state file written before SPEC §11.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// SHA-256 (base64url) of the session's refresh-token family: the first
    /// 16 bytes every refresh token of this session starts with. A token of
    /// the family that is not the current one is an old one: reuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// Rotations so far.
    #[serde(default)]
    pub generation: u64,
    /// When it was last opened or refreshed, as a count of such events (so
    /// ties within one second still have an order).
    #[serde(default)]
    pub touched: u64,
}

/// A stored refresh token (by its SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshEntry {
    pub sid: String,
    pub expires: u64,
    pub used: bool,
}

/// Why a refresh token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshError {
    /// Not a token this server issued (or long pruned).
    Unknown,
    Expired,
    /// The session was revoked (logout or reuse).
    Revoked,
    /// Presented twice: the session `sid` is now revoked.
    Reused {
        sid: String,
    },
}

impl RefreshError {
    /// The HTTP error code.
    pub fn code(&self) -> &'static str {
        match self {
            RefreshError::Reused { .. } => "refresh_token_reused",
            RefreshError::Expired => "refresh_token_expired",
            RefreshError::Unknown | RefreshError::Revoked => "invalid_refresh_token",
        }
    }
}

/// Every session and refresh token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sessions {
    sessions: HashMap<String, Session>,
    refresh: HashMap<[u8; 32], RefreshEntry>,
    /// The last TOTP time step accepted for each user (SPEC §11).
    totp_steps: HashMap<String, u64>,
    /// Family digest → sid (an index over `Session::family`).
    families: HashMap<[u8; 32], String>,
    /// The latest `Session::touched`.
    clock: u64,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The family part (first 16 bytes) of a well-formed refresh token.
fn family_bytes(presented: &str) -> Option<[u8; 16]> {
    let raw = URL_SAFE_NO_PAD.decode(presented).ok()?;
    let raw: [u8; 32] = raw.try_into().ok()?;
    raw[..16].try_into().ok()
}

fn decode_digest(s: &str) -> Option<[u8; 32]> {
    URL_SAFE_NO_PAD.decode(s).ok()?.try_into().ok()
}

impl Sessions {
    fn open(&mut self, sub: &str, access_exp: u64, sid_bytes: [u8; 16], token: [u8; 32]) -> (String, String) {
        let sid = URL_SAFE_NO_PAD.encode(sid_bytes);
        let refresh = URL_SAFE_NO_PAD.encode(token);
        self.sessions.insert(
            sid.clone(),
            Session {
                sub: sub.to_string(),
                refresh_expires: 0,
                access_expires: access_exp,
                revoked: false,
                amr: Vec::new(),
                family: None,
                generation: 0,
                touched: self.clock + 1,
            },
        );
        self.clock += 1;
        self.set_family(&sid, &token);
        (sid, refresh)
    }

    /// Stores a new refresh token of `sid`, valid until `expires`.
    pub fn add_refresh(&mut self, sid: &str, refresh: &str, expires: u64) {
        self.refresh.insert(
            digest(refresh),
            RefreshEntry {
                sid: sid.to_string(),
                expires,
                used: false,
            },
        );
        if let Some(s) = self.sessions.get_mut(sid) {
            s.refresh_expires = s.refresh_expires.max(expires);
        }
    }

    /// Opens a session and stores its first refresh token in one step.
    pub fn login(
        &mut self,
        sub: &str,
        now: u64,
        access_exp: u64,
        refresh_ttl: u64,
        sid_bytes: [u8; 16],
        token: [u8; 32],
    ) -> (String, String) {
        let (sid, refresh) = self.open(sub, access_exp, sid_bytes, token);
        self.add_refresh(&sid, &refresh, now.saturating_add(refresh_ttl));
        (sid, refresh)
    }

    /// Rotates `presented`: marks it used and returns `(sid, sub, new
    /// token)`; the new token expires at `new_expires`.
    pub fn rotate(
        &mut self,
        presented: &str,
        now: u64,
        new_expires: u64,
        token: [u8; 32],
    ) -> Result<(String, String, String), RefreshError> {
        let d = digest(presented);
        let Some(entry) = self.refresh.get(&d).cloned() else {
            // Not a live token: an older one of a known family is reuse.
            let sid = self.family_sid(presented).ok_or(RefreshError::Unknown)?.to_string();
            if self.sessions.get(&sid).is_some_and(|s| now >= s.refresh_expires) {
                return Err(RefreshError::Expired);
            }
            self.revoke(&sid);
            return Err(RefreshError::Reused { sid });
        };
        let session = self.sessions.get(&entry.sid).ok_or(RefreshError::Unknown)?.clone();
        if entry.used {
            self.revoke(&entry.sid);
            return Err(RefreshError::Reused { sid: entry.sid });
        }
        if session.revoked {
            return Err(RefreshError::Revoked);
        }
        if now >= entry.expires {
            return Err(RefreshError::Expired);
        }
        // The next token keeps the family (first 16 bytes) of the presented
        // one; a token from before families (older state files) starts one.
        let in_family = self.family_sid(presented) == Some(entry.sid.as_str());
        let mut next = token;
        if in_family && let Some(prefix) = family_bytes(presented) {
            next[..16].copy_from_slice(&prefix);
            // Reuse of it is caught by its family: nothing to keep.
            self.refresh.remove(&d);
        } else {
            // Kept (marked used) once per session at most: the next token
            // has a family.
            if let Some(e) = self.refresh.get_mut(&d) {
                e.used = true;
            }
            self.set_family(&entry.sid, &next);
        }
        self.clock += 1;
        if let Some(s) = self.sessions.get_mut(&entry.sid) {
            s.generation += 1;
            s.touched = self.clock;
        }
        let new = URL_SAFE_NO_PAD.encode(next);
        self.add_refresh(&entry.sid, &new, new_expires);
        Ok((entry.sid, session.sub, new))
    }

    /// Records how the login of `sid` was authenticated (RFC 8176 `amr`).
    pub fn set_amr(&mut self, sid: &str, amr: &[&str]) {
        if let Some(s) = self.sessions.get_mut(sid) {
            s.amr = amr.iter().map(|m| m.to_string()).collect();
        }
    }

    /// The `amr` of the login of `sid` (empty when unknown).
    pub fn amr(&self, sid: &str) -> Vec<String> {
        self.sessions.get(sid).map(|s| s.amr.clone()).unwrap_or_default()
    }

    /// The last TOTP time step accepted for `user`, if any.
    pub fn totp_last_step(&self, user: &str) -> Option<u64> {
        self.totp_steps.get(user).copied()
    }

    /// Records that `user` used the code of `step`: no code of that step or
    /// an earlier one is accepted again. Never moves backwards.
    pub fn use_totp_step(&mut self, user: &str, step: u64) {
        let last = self.totp_steps.entry(user.to_string()).or_insert(step);
        *last = (*last).max(step);
    }

    /// Makes the first 16 bytes of `token` the family of `sid`.
    fn set_family(&mut self, sid: &str, token: &[u8; 32]) {
        let fd: [u8; 32] = Sha256::digest(&token[..16]).into();
        if let Some(s) = self.sessions.get_mut(sid) {
            if let Some(old) = s.family.as_deref().and_then(decode_digest) {
                self.families.remove(&old);
            }
            s.family = Some(URL_SAFE_NO_PAD.encode(fd));
        }
        self.families.insert(fd, sid.to_string());
    }

    /// The session whose family `presented` belongs to.
    fn family_sid(&self, presented: &str) -> Option<&str> {
        let prefix = family_bytes(presented)?;
        let fd: [u8; 32] = Sha256::digest(prefix).into();
        self.families.get(&fd).map(String::as_str)
    }

    /// Live sessions of `sub` beyond the newest `keep - 1` (least recently
    /// refreshed first): revoke these before opening another, so one user
    /// holds at most `keep` live sessions.
    pub fn over_cap(&self, sub: &str, keep: usize) -> Vec<String> {
        let mut live: Vec<(u64, u64, &String)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.sub == sub && !s.revoked)
            .map(|(sid, s)| (s.touched, s.refresh_expires, sid))
            .collect();
        if live.len() < keep {
            return Vec::new();
        }
        live.sort_unstable();
        let excess = live.len() + 1 - keep.max(1);
        live.into_iter().take(excess).map(|(_, _, sid)| sid.clone()).collect()
    }

    /// Records the `exp` of a new access token in `sid`.
    pub fn issued_access(&mut self, sid: &str, exp: u64) {
        if let Some(s) = self.sessions.get_mut(sid) {
            s.access_expires = s.access_expires.max(exp);
        }
    }

    /// The session a refresh token belongs to (used or not).
    pub fn sid_of_refresh(&self, presented: &str) -> Option<&str> {
        match self.refresh.get(&digest(presented)) {
            Some(e) => Some(e.sid.as_str()),
            None => self.family_sid(presented),
        }
    }

    /// Revokes a session: its refresh tokens stop working and its access
    /// tokens are refused by `sid`. True if it existed and was live.
    pub fn revoke(&mut self, sid: &str) -> bool {
        match self.sessions.get_mut(sid) {
            Some(s) if !s.revoked => {
                s.revoked = true;
                true
            }
            _ => false,
        }
    }

    /// Revokes every live session of `sub`; returns their ids.
    pub fn revoke_sub(&mut self, sub: &str) -> Vec<String> {
        let mut sids: Vec<String> = self
            .sessions
            .iter_mut()
            .filter(|(_, s)| s.sub == sub && !s.revoked)
            .map(|(sid, s)| {
                s.revoked = true;
                sid.clone()
            })
            .collect();
        sids.sort_unstable();
        sids
    }

    pub fn is_revoked(&self, sid: &str) -> bool {
        self.sessions.get(sid).is_some_and(|s| s.revoked)
    }

    pub fn session(&self, sid: &str) -> Option<&Session> {
        self.sessions.get(sid)
    }

    /// Drops what can no longer matter at `now`: expired refresh tokens,
    /// and sessions none of whose tokens (access + `leeway`) is still valid.
    pub fn prune(&mut self, now: u64, leeway: u64) {
        self.refresh.retain(|_, e| e.expires > now);
        self.sessions
            .retain(|_, s| s.refresh_expires > now || s.access_expires.saturating_add(leeway) > now);
        let live = &self.sessions;
        self.refresh.retain(|_, e| live.contains_key(&e.sid));
        self.families.retain(|_, sid| live.contains_key(sid));
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The state file text (JSON; refresh tokens only as SHA-256).
    pub fn to_json(&self) -> String {
        let mut sessions: Vec<(&String, &Session)> = self.sessions.iter().collect();
        sessions.sort_by(|a, b| a.0.cmp(b.0));
        let mut refresh: Vec<(String, &RefreshEntry)> = self
            .refresh
            .iter()
            .map(|(h, e)| (URL_SAFE_NO_PAD.encode(h), e))
            .collect();
        refresh.sort_by(|a, b| a.0.cmp(&b.0));
        let mut totp: Vec<TotpRow> = self
            .totp_steps
            .iter()
            .map(|(user, step)| TotpRow {
                user: user.clone(),
                step: *step,
            })
            .collect();
        totp.sort_by(|a, b| a.user.cmp(&b.user));
        let file = StateFile {
            version: 1,
            sessions: sessions
                .into_iter()
                .map(|(sid, s)| SessionRow {
                    sid: sid.clone(),
                    session: s.clone(),
                })
                .collect(),
            refresh: refresh
                .into_iter()
                .map(|(h, e)| RefreshRow {
                    sha256: h,
                    entry: e.clone(),
                })
                .collect(),
            totp,
        };
        serde_json::to_string_pretty(&file).unwrap_or_default()
    }

    /// Parses the state file text.
    pub fn from_json(text: &str) -> Result<Sessions, String> {
        let file: StateFile = serde_json::from_str(text).map_err(|e| format!("not a tessera state file: {e}"))?;
        if file.version != 1 {
            return Err(format!("unsupported state file version {}", file.version));
        }
        let mut s = Sessions::default();
        for row in file.sessions {
            if let Some(fd) = row.session.family.as_deref() {
                let fd = decode_digest(fd).ok_or("a session's family is not 32 bytes of base64url")?;
                if s.families.insert(fd, row.sid.clone()).is_some() {
                    return Err("two sessions share a refresh-token family".into());
                }
            }
            s.clock = s.clock.max(row.session.touched);
            if s.sessions.insert(row.sid.clone(), row.session).is_some() {
                return Err(format!("session {:?} appears twice", row.sid));
            }
        }
        for row in file.refresh {
            let h: [u8; 32] = URL_SAFE_NO_PAD
                .decode(&row.sha256)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| "a refresh entry's sha256 is not 32 bytes of base64url".to_string())?;
            if !s.sessions.contains_key(&row.entry.sid) {
                return Err("a refresh entry names an unknown session".into());
            }
            if s.refresh.insert(h, row.entry).is_some() {
                return Err("a refresh entry appears twice".into());
            }
        }
        for row in file.totp {
            if s.totp_steps.insert(row.user, row.step).is_some() {
                return Err("a totp entry appears twice".into());
            }
        }
        Ok(s)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    sessions: Vec<SessionRow>,
    refresh: Vec<RefreshRow>,
    /// Last TOTP step used per user; absent in files from before SPEC §11.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    totp: Vec<TotpRow>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TotpRow {
    user: String,
    step: u64,
}

#[derive(Serialize, Deserialize)]
struct SessionRow {
    sid: String,
    #[serde(flatten)]
    session: Session,
}

#[derive(Serialize, Deserialize)]
struct RefreshRow {
    sha256: String,
    #[serde(flatten)]
    entry: RefreshEntry,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec4_1_rotation_and_reuse_revokes_the_session() {
        let mut s = Sessions::default();
        let (sid, t1) = s.login("a", 0, 60, 1000, [9; 16], [1; 32]);
        assert_eq!(t1.len(), 43);
        let (sid2, sub, t2) = s.rotate(&t1, 10, 1010, [2; 32]).unwrap();
        assert_eq!((sid2.as_str(), sub.as_str()), (sid.as_str(), "a"));
        let (_, _, t3) = s.rotate(&t2, 20, 1020, [3; 32]).unwrap();
        assert!(!s.is_revoked(&sid));
        assert_eq!(
            s.rotate(&t1, 30, 1030, [4; 32]),
            Err(RefreshError::Reused { sid: sid.clone() })
        );
        assert!(s.is_revoked(&sid));
        assert_eq!(s.rotate(&t3, 30, 1030, [5; 32]), Err(RefreshError::Revoked));
        assert_eq!(s.rotate("nope", 30, 1030, [6; 32]), Err(RefreshError::Unknown));
    }

    #[test]
    fn spec3_refresh_tokens_stored_only_as_sha256() {
        let mut s = Sessions::default();
        let (_, t) = s.login("a", 0, 60, 1000, [1; 16], [7; 32]);
        let json = s.to_json();
        assert!(!json.contains(&t));
        assert_eq!(Sessions::from_json(&json).unwrap(), s);
    }

    #[test]
    fn spec13_revoke_every_session_of_an_agent() {
        let mut s = Sessions::default();
        let (a1, t1) = s.login("a", 0, 100, 1000, [1; 16], [1; 32]);
        let (a2, _) = s.login("a", 0, 100, 1000, [2; 16], [2; 32]);
        let (b, tb) = s.login("b", 0, 100, 1000, [3; 16], [3; 32]);
        let mut want = vec![a1.clone(), a2.clone()];
        want.sort();
        assert_eq!(s.revoke_sub("a"), want);
        assert!(s.revoke_sub("a").is_empty(), "already revoked");
        assert!(s.is_revoked(&a1) && s.is_revoked(&a2) && !s.is_revoked(&b));
        assert_eq!(s.rotate(&t1, 1, 900, [9; 32]), Err(RefreshError::Revoked));
        assert!(s.rotate(&tb, 1, 900, [8; 32]).is_ok());
        assert!(s.revoke_sub("nobody").is_empty());
    }

    #[test]
    fn expiry_and_pruning() {
        let mut s = Sessions::default();
        let (sid, t) = s.login("a", 0, 60, 100, [1; 16], [1; 32]);
        assert_eq!(s.rotate(&t, 100, 200, [2; 32]), Err(RefreshError::Expired));
        s.revoke(&sid);
        s.prune(50, 30);
        assert!(s.is_revoked(&sid), "kept while its access token may still be presented");
        s.prune(100, 30);
        assert!(s.is_empty());
    }

    #[test]
    fn spec11_amr_and_totp_steps_survive_the_state_file() {
        let mut s = Sessions::default();
        let (sid, _) = s.login("a", 0, 60, 1000, [1; 16], [7; 32]);
        s.set_amr(&sid, &["pwd", "otp"]);
        assert_eq!(s.totp_last_step("a"), None);
        s.use_totp_step("a", 100);
        s.use_totp_step("a", 99);
        assert_eq!(s.totp_last_step("a"), Some(100), "never moves backwards");
        let back = Sessions::from_json(&s.to_json()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.amr(&sid), ["pwd", "otp"]);
        assert_eq!(back.totp_last_step("a"), Some(100));
        // A file from before SPEC §11 (no amr, no totp) still loads.
        let old = "{\"version\":1,\"sessions\":[{\"sid\":\"x\",\"sub\":\"a\",\"refresh_expires\":5,\"access_expires\":5,\"revoked\":false}],\"refresh\":[]}";
        let o = Sessions::from_json(old).unwrap();
        assert!(o.amr("x").is_empty() && o.totp_last_step("a").is_none());
        let twice = "{\"version\":1,\"sessions\":[],\"refresh\":[],\"totp\":[{\"user\":\"a\",\"step\":1},{\"user\":\"a\",\"step\":2}]}";
        assert!(Sessions::from_json(twice).is_err());
    }

    #[test]
    fn state_file_rejects_garbage() {
        assert!(Sessions::from_json("").is_err());
        assert!(Sessions::from_json("{\"version\":2,\"sessions\":[],\"refresh\":[]}").is_err());
        assert!(Sessions::from_json("{\"version\":1,\"sessions\":[],\"refresh\":[{\"sha256\":\"AA\",\"sid\":\"x\",\"expires\":1,\"used\":false}]}").is_err());
        assert_eq!(
            Sessions::from_json("{\"version\":1,\"sessions\":[],\"refresh\":[]}").unwrap(),
            Sessions::default()
        );
    }

    #[test]
    fn rotation_keeps_the_state_bounded_and_any_old_token_still_revokes() {
        let mut s = Sessions::default();
        let (sid, t0) = s.login("a", 0, 60, 1000, [9; 16], [1; 32]);
        let mut t = t0.clone();
        let mut tokens = vec![t0.clone()];
        for i in 0..500u32 {
            let mut r = [0u8; 32];
            r[16..20].copy_from_slice(&i.to_le_bytes());
            r[31] = 7;
            t = s.rotate(&t, 10, 1010, r).unwrap().2;
            tokens.push(t.clone());
        }
        assert_eq!(s.refresh.len(), 1, "only the current token is kept");
        assert_eq!(s.session(&sid).unwrap().generation, 500);
        let len = s.to_json().len();
        assert!(len < 1000, "{len} bytes");
        // Round trip keeps the family index.
        let mut back = Sessions::from_json(&s.to_json()).unwrap();
        assert_eq!(back.sid_of_refresh(&t0), Some(sid.as_str()));
        assert_eq!(
            back.rotate(&tokens[3], 20, 1020, [5; 32]),
            Err(RefreshError::Reused { sid: sid.clone() })
        );
        assert!(back.is_revoked(&sid));
        assert_eq!(
            s.rotate(&t0, 20, 1020, [5; 32]),
            Err(RefreshError::Reused { sid: sid.clone() })
        );
        assert_eq!(s.rotate(&t, 20, 1020, [5; 32]), Err(RefreshError::Revoked));
        // Past the session's refresh expiry an old token is just expired.
        let mut e = Sessions::default();
        let (_, u0) = e.login("b", 0, 60, 100, [3; 16], [4; 32]);
        let u1 = e.rotate(&u0, 10, 110, [6; 32]).unwrap().2;
        assert_eq!(e.rotate(&u0, 200, 300, [8; 32]), Err(RefreshError::Expired));
        assert_eq!(e.rotate(&u1, 200, 300, [8; 32]), Err(RefreshError::Expired));
    }

    #[test]
    fn a_state_with_two_sessions_of_one_family_is_refused() {
        let mut s = Sessions::default();
        s.login("a", 0, 60, 1000, [1; 16], [7; 32]);
        s.login("b", 0, 60, 1000, [2; 16], [7; 32]);
        assert!(Sessions::from_json(&s.to_json()).is_err());
    }

    #[test]
    fn tokens_from_before_families_rotate_into_one() {
        // A state file written before families: no `family` on the session.
        let mut s = Sessions::default();
        let (sid, t0) = s.login("a", 0, 60, 1000, [9; 16], [1; 32]);
        let mut json: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        json["sessions"][0].as_object_mut().unwrap().remove("family");
        let mut s = Sessions::from_json(&json.to_string()).unwrap();
        let t1 = s.rotate(&t0, 10, 1010, [2; 32]).unwrap().2;
        let t2 = s.rotate(&t1, 10, 1010, [3; 32]).unwrap().2;
        assert_eq!(s.refresh.len(), 2, "the pre-family token is kept, marked used");
        assert!(matches!(
            s.rotate(&t1, 20, 1020, [4; 32]),
            Err(RefreshError::Reused { .. })
        ));
        assert!(s.is_revoked(&sid));
        assert!(s.rotate(&t2, 20, 1020, [4; 32]).is_err());
    }

    #[test]
    fn over_cap_names_the_least_recently_refreshed() {
        let mut s = Sessions::default();
        // Same second: the order of events decides.
        let (a, ta) = s.login("u", 0, 60, 100, [9; 16], [1; 32]);
        let (b, _) = s.login("u", 0, 60, 100, [5; 16], [2; 32]);
        let (c, _) = s.login("u", 0, 60, 100, [1; 16], [3; 32]);
        s.login("other", 0, 60, 100, [4; 16], [4; 32]);
        assert!(s.over_cap("u", 4).is_empty());
        assert_eq!(s.over_cap("u", 3), vec![a.clone()]);
        assert_eq!(s.over_cap("u", 2), vec![a.clone(), b.clone()]);
        // A refresh makes a session the most recently used.
        s.rotate(&ta, 1, 101, [7; 32]).unwrap();
        assert_eq!(s.over_cap("u", 3), vec![b.clone()]);
        s.revoke(&b);
        assert_eq!(s.over_cap("u", 2), vec![c]);
        assert_eq!(Sessions::from_json(&s.to_json()).unwrap().clock, s.clock);
    }
}
