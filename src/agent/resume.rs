//! What `tessera agent` has printed, per channel, and how it resumes
//! (SPEC §10), sans-IO: no socket, no clock, no file handle in here.
//!
//! A [`Positions`] table holds the last (epoch, offset) printed for each
//! channel and reads and writes the `--positions` file. A [`Tracker`] sits
//! between the socket and stdout for one agent run: it builds `subscribe`
//! commands with `since` from the table, and turns each server frame into
//! the lines to print (a `message` at or below the channel's offset within
//! its epoch is a duplicate and is dropped) and the one stderr line to show
//! when a resume comes back `recovered:false`.
//!
//! One race needs care: the personal channel `@sub` is joined by the server
//! at connect, so live messages can reach a new socket *before* the reply
//! to its `subscribe … since` and the replay that follows it, and those
//! live ones are newer than the replay. The tracker holds messages of a
//! channel whose resume is in flight, and after `subscribed` merges them in
//! offset order with the replay (the replay normally carries them too).
//!
//! ```
//! use tessera::agent::resume::{Out, Positions, Tracker};
//! let mut t = Tracker::new(Positions::parse("ops AbCdEfGh 4\n").unwrap());
//! let cmd = t.subscribe("ops", 1);
//! assert!(cmd.contains(r#""since":{"epoch":"AbCdEfGh","offset":4}"#));
//! let sub = r#"{"type":"subscribed","channel":"ops","epoch":"AbCdEfGh","offset":5,"recovered":true,"ref":1}"#;
//! assert_eq!(t.on_frame(sub).len(), 1);
//! let m = r#"{"type":"message","channel":"ops","id":5,"ts":1,"from":"hq","data":1}"#;
//! assert_eq!(t.on_frame(m), vec![Out::Print(m.to_string())]);
//! assert!(t.on_frame(m).is_empty()); // the same offset again: a duplicate
//! assert_eq!(t.positions().get("ops").unwrap().offset, 5);
//! ```

use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// The first line of a positions file.
const HEADER: &str = "# tessera agent positions: CHANNEL EPOCH OFFSET, one a line";

/// Where a channel's history was left: the last offset printed, in an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// Whether `s` is an epoch as SPEC §10 spells it: 8–32 of `A-Z a-z 0-9 _ -`.
pub fn epoch_ok(s: &str) -> bool {
    (8..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The last position printed per channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    map: BTreeMap<String, Position>,
}

impl Positions {
    /// Reads a positions file: `#` comments and blank lines, then one
    /// `CHANNEL EPOCH OFFSET` a line. Any other line is an error that names
    /// its line number.
    pub fn parse(text: &str) -> Result<Positions, String> {
        let mut map = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(channel), Some(epoch), Some(offset), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                return Err(format!("line {n}: expected CHANNEL EPOCH OFFSET"));
            };
            if !crate::hub::channel_name_ok(channel) {
                return Err(format!("line {n}: {channel:?} is not a channel name"));
            }
            if !epoch_ok(epoch) {
                return Err(format!("line {n}: {epoch:?} is not an epoch (8-32 of A-Z a-z 0-9 _ -)"));
            }
            let offset = offset
                .parse::<u64>()
                .map_err(|_| format!("line {n}: {offset:?} is not an offset"))?;
            let pos = Position {
                epoch: epoch.to_string(),
                offset,
            };
            if map.insert(channel.to_string(), pos).is_some() {
                return Err(format!("line {n}: {channel} is listed twice"));
            }
        }
        Ok(Positions { map })
    }

    /// The file text [`Positions::parse`] reads back.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(HEADER.len() + 1 + self.map.len() * 48);
        s.push_str(HEADER);
        s.push('\n');
        for (c, p) in &self.map {
            s.push_str(&format!("{c} {} {}\n", p.epoch, p.offset));
        }
        s
    }

    pub fn get(&self, channel: &str) -> Option<&Position> {
        self.map.get(channel)
    }

    pub fn set(&mut self, channel: &str, pos: Position) {
        self.map.insert(channel.to_string(), pos);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// What to do with a server frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// A line for stdout.
    Print(String),
    /// A line for stderr (a resume that was not recovered).
    Warn(String),
}

/// Whether `message` `id` of a channel last printed at `last` is new: a
/// frame at or below the last offset of the same epoch was printed already.
pub fn is_new(last: Option<u64>, id: u64) -> bool {
    last.is_none_or(|l| id > l)
}

/// A subscribe in flight: its `ref` and the position it resumes from.
struct Pending {
    reference: u64,
    since: Option<Position>,
}

/// The agent's resume logic for one run (see the module docs).
pub struct Tracker {
    positions: Positions,
    dirty: bool,
    /// Channels whose epoch is not known yet (no `subscribed` with an epoch
    /// seen): the last offset printed in this session.
    unknown: HashMap<String, u64>,
    pending: HashMap<String, Pending>,
    /// Messages held while a resume is in flight, then merged with the
    /// replay, by channel and offset.
    held: HashMap<String, BTreeMap<u64, String>>,
}

impl Tracker {
    pub fn new(positions: Positions) -> Tracker {
        Tracker {
            positions,
            dirty: false,
            unknown: HashMap::new(),
            pending: HashMap::new(),
            held: HashMap::new(),
        }
    }

    pub fn positions(&self) -> &Positions {
        &self.positions
    }

    /// Whether messages are held for a replay merge (see [`Tracker::tick`]).
    pub fn holds(&self) -> bool {
        !self.held.is_empty()
    }

    /// Whether the positions moved since they were last taken.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Whether the positions moved since the last call (then clears it).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// A new connection: nothing is in flight any more. Held messages were
    /// not printed, so the positions still point before them and the next
    /// resume asks for them again.
    pub fn new_session(&mut self) {
        self.unknown.clear();
        self.pending.clear();
        self.held.clear();
    }

    /// The `subscribe` command for `channel` (with `since` when its position
    /// is known), remembered until its reply.
    pub fn subscribe(&mut self, channel: &str, reference: u64) -> String {
        let since = self.positions.get(channel).cloned();
        let cmd = match &since {
            Some(p) => serde_json::json!({"type": "subscribe", "channel": channel,
                "since": {"epoch": p.epoch, "offset": p.offset}, "ref": reference}),
            None => serde_json::json!({"type": "subscribe", "channel": channel, "ref": reference}),
        };
        self.pending.insert(channel.to_string(), Pending { reference, since });
        cmd.to_string()
    }

    /// One text frame from the server: the lines to print, in order.
    pub fn on_frame(&mut self, text: &str) -> Vec<Out> {
        let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        self.on_parsed(text, &v)
    }

    /// [`Tracker::on_frame`] for a frame already parsed into `v`.
    pub fn on_parsed(&mut self, text: &str, v: &Value) -> Vec<Out> {
        let channel = v["channel"].as_str();
        match (v["type"].as_str(), channel) {
            (Some("message"), Some(ch)) => {
                let mut out = self.flush_all_but(Some(ch));
                match v["id"].as_u64() {
                    Some(id) => out.extend(self.on_message(ch, id, text)),
                    None => out.push(Out::Print(text.to_string())),
                }
                out
            }
            (Some("subscribed"), Some(ch)) => {
                let mut out = self.flush_all_but(None);
                out.push(Out::Print(text.to_string()));
                out.extend(self.on_subscribed(ch, v));
                out
            }
            (kind, _) => {
                let mut out = self.flush_all_but(None);
                if kind == Some("error")
                    && let Some(r) = v["ref"].as_u64()
                    && let Some(ch) = self
                        .pending
                        .iter()
                        .find(|(_, p)| p.reference == r)
                        .map(|(c, _)| c.clone())
                {
                    // The subscribe was refused: what was held goes out as it came.
                    self.pending.remove(&ch);
                    out.extend(self.flush(&ch));
                }
                out.push(Out::Print(text.to_string()));
                out
            }
        }
    }

    /// Time passed without the replay finishing: print what is held (for
    /// channels whose `subscribed` came; the others still wait for it).
    pub fn tick(&mut self) -> Vec<Out> {
        self.flush_all_but(None)
    }

    fn last(&self, channel: &str) -> Option<u64> {
        match self.positions.get(channel) {
            Some(p) => Some(p.offset),
            None => self.unknown.get(channel).copied(),
        }
    }

    fn advance(&mut self, channel: &str, id: u64) {
        match self.positions.map.get_mut(channel) {
            Some(p) => {
                p.offset = id;
                self.dirty = true;
            }
            None => {
                self.unknown.insert(channel.to_string(), id);
            }
        }
    }

    /// Prints `text` unless it is a duplicate.
    fn emit(&mut self, channel: &str, id: u64, text: String) -> Option<Out> {
        if !is_new(self.last(channel), id) {
            return None;
        }
        self.advance(channel, id);
        Some(Out::Print(text))
    }

    fn on_message(&mut self, ch: &str, id: u64, text: &str) -> Vec<Out> {
        if self.pending.get(ch).is_some_and(|p| p.since.is_some()) {
            // A live message ahead of the resume's replay: hold it.
            self.held
                .entry(ch.to_string())
                .or_default()
                .insert(id, text.to_string());
            return Vec::new();
        }
        let mut out = Vec::new();
        if let Some(held) = self.held.get_mut(ch) {
            // Merging a replay with what was held: older held ones first.
            let later = held.split_off(&id);
            let earlier = std::mem::replace(held, later);
            held.remove(&id);
            if held.is_empty() {
                self.held.remove(ch);
            }
            for (h, t) in earlier {
                out.extend(self.emit(ch, h, t));
            }
        }
        out.extend(self.emit(ch, id, text.to_string()));
        out
    }

    fn on_subscribed(&mut self, ch: &str, v: &Value) -> Vec<Out> {
        let asked = self.pending.remove(ch);
        let epoch = v["epoch"].as_str().filter(|e| epoch_ok(e));
        let last = v["offset"].as_u64();
        let (Some(epoch), Some(last)) = (epoch, last) else {
            // A hub without history (no epoch): nothing to resume from.
            return self.flush(ch);
        };
        let mut out = Vec::new();
        match asked.and_then(|p| p.since) {
            Some(since) if since.epoch == epoch => {
                // Same history: keep printing after K (offsets only grow; a
                // hub at a lower offset is taken at its word).
                let offset = since.offset.min(last);
                self.positions.set(
                    ch,
                    Position {
                        epoch: epoch.to_string(),
                        offset,
                    },
                );
                if v["recovered"] == false {
                    out.push(Out::Warn(format!(
                        "resume of {ch} not recovered: updates after offset {} of epoch {epoch} are no longer kept by the hub (it is at offset {last}); some were missed",
                        since.offset
                    )));
                }
            }
            Some(since) => {
                // Another history: everything the hub has in it is new.
                self.positions.set(
                    ch,
                    Position {
                        epoch: epoch.to_string(),
                        offset: 0,
                    },
                );
                out.push(Out::Warn(format!(
                    "resume of {ch} not recovered: the hub's history changed (epoch {} offset {} -> epoch {epoch}, at offset {last}); updates in between may be missed",
                    since.epoch, since.offset
                )));
            }
            None => {
                // A fresh subscription: live from here on. Messages printed
                // before this reply (personal channel) are at most `last`.
                let seen = self.unknown.remove(ch).unwrap_or(0);
                self.positions.set(
                    ch,
                    Position {
                        epoch: epoch.to_string(),
                        offset: last.max(seen),
                    },
                );
            }
        }
        self.dirty = true;
        // What was held and is not a duplicate waits for the replay to merge.
        let pos = self.positions.get(ch).map_or(0, |p| p.offset);
        if let Some(held) = self.held.get_mut(ch) {
            *held = held.split_off(&pos.saturating_add(1));
            if held.is_empty() {
                self.held.remove(ch);
            }
        }
        out
    }

    /// Prints what is held for `ch`, in offset order.
    fn flush(&mut self, ch: &str) -> Vec<Out> {
        let Some(held) = self.held.remove(ch) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (id, t) in held {
            out.extend(self.emit(ch, id, t));
        }
        out
    }

    /// Ends every merge (except `keep`'s) whose `subscribed` came: the
    /// replay is over once something else arrives.
    fn flush_all_but(&mut self, keep: Option<&str>) -> Vec<Out> {
        let mut done: Vec<String> = self
            .held
            .keys()
            .filter(|c| Some(c.as_str()) != keep && !self.pending.contains_key(c.as_str()))
            .cloned()
            .collect();
        done.sort();
        done.iter().flat_map(|c| self.flush(c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ch: &str, id: u64) -> String {
        format!(r#"{{"type":"message","channel":"{ch}","id":{id},"ts":1,"from":"hq","data":{id}}}"#)
    }

    fn subscribed(ch: &str, epoch: &str, offset: u64, recovered: Option<bool>) -> String {
        let mut v = serde_json::json!({"type":"subscribed","channel":ch,"epoch":epoch,"offset":offset});
        if let Some(r) = recovered {
            v["recovered"] = r.into();
        }
        v.to_string()
    }

    /// The ids printed for `ch` among `out`, and how many warnings.
    fn printed(out: &[Out]) -> (Vec<u64>, usize) {
        let mut ids = Vec::new();
        let mut warns = 0;
        for o in out {
            match o {
                Out::Print(t) => {
                    let v: Value = serde_json::from_str(t).unwrap();
                    if v["type"] == "message" {
                        ids.push(v["id"].as_u64().unwrap());
                    }
                }
                Out::Warn(_) => warns += 1,
            }
        }
        (ids, warns)
    }

    fn feed(t: &mut Tracker, frames: &[String]) -> Vec<Out> {
        frames.iter().flat_map(|f| t.on_frame(f)).collect()
    }

    const E1: &str = "epochOne1";
    const E2: &str = "epochTwo2";

    #[test]
    fn spec10_positions_file_round_trip() {
        let mut p = Positions::default();
        p.set(
            "ops",
            Position {
                epoch: E1.into(),
                offset: 42,
            },
        );
        p.set(
            "@agent-7",
            Position {
                epoch: "A_b-9876543210".into(),
                offset: 0,
            },
        );
        let text = p.render();
        assert!(text.starts_with("# tessera agent positions"));
        assert_eq!(Positions::parse(&text).unwrap(), p);
        assert_eq!(Positions::parse("").unwrap(), Positions::default());
        assert_eq!(
            Positions::parse("# c\n\n  ops   epochOne1   7  \n").unwrap().get("ops"),
            Some(&Position {
                epoch: E1.into(),
                offset: 7
            })
        );
    }

    #[test]
    fn spec10_bad_positions_files_name_the_line() {
        for (text, needle) in [
            ("ops epochOne1\n", "line 1: expected"),
            ("ops epochOne1 1 2\n", "line 1: expected"),
            ("#\nbad/chan epochOne1 1\n", "line 2: \"bad/chan\" is not a channel"),
            ("ops short 1\n", "not an epoch"),
            (&format!("ops {} 1\n", "x".repeat(33)), "not an epoch"),
            ("ops epoch!!!! 1\n", "not an epoch"),
            ("ops epochOne1 -1\n", "not an offset"),
            ("ops epochOne1 18446744073709551616\n", "not an offset"),
            ("ops epochOne1 1\nops epochOne1 2\n", "line 2: ops is listed twice"),
        ] {
            let e = Positions::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn spec10_epoch_spelling() {
        assert!(epoch_ok("abcdEFGH"));
        assert!(epoch_ok(&"a".repeat(32)));
        assert!(!epoch_ok("abcdEFG"));
        assert!(!epoch_ok(&"a".repeat(33)));
        assert!(!epoch_ok("abcd EFGH"));
    }

    #[test]
    fn spec10_dedupe_decision() {
        assert!(is_new(None, 1));
        assert!(is_new(Some(4), 5));
        assert!(!is_new(Some(5), 5));
        assert!(!is_new(Some(5), 3));
    }

    #[test]
    fn spec10_fresh_subscribe_then_resume_with_since() {
        let mut t = Tracker::new(Positions::default());
        let cmd: Value = serde_json::from_str(&t.subscribe("ops", 1)).unwrap();
        assert_eq!(cmd, serde_json::json!({"type":"subscribe","channel":"ops","ref":1}));
        let out = feed(&mut t, &[subscribed("ops", E1, 3, None), msg("ops", 4), msg("ops", 5)]);
        assert_eq!(printed(&out), (vec![4, 5], 0));
        assert!(t.take_dirty());
        assert!(!t.take_dirty());
        // Reconnect: resume from 5; the replay and a duplicate at the boundary.
        t.new_session();
        let cmd: Value = serde_json::from_str(&t.subscribe("ops", 2)).unwrap();
        assert_eq!(cmd["since"], serde_json::json!({"epoch":E1,"offset":5}));
        let out = feed(
            &mut t,
            &[
                subscribed("ops", E1, 7, Some(true)),
                msg("ops", 6),
                msg("ops", 7),
                msg("ops", 7),
                msg("ops", 5),
                msg("ops", 8),
            ],
        );
        assert_eq!(printed(&out), (vec![6, 7, 8], 0));
        assert_eq!(t.positions().get("ops").unwrap().offset, 8);
    }

    #[test]
    fn spec10_not_recovered_warns_once() {
        // Retention exceeded: same epoch, recovered false.
        let mut t = Tracker::new(Positions::parse("ops epochOne1 5\n").unwrap());
        t.subscribe("ops", 1);
        let out = feed(
            &mut t,
            &[subscribed("ops", E1, 30, Some(false)), msg("ops", 21), msg("ops", 30)],
        );
        assert_eq!(printed(&out), (vec![21, 30], 1));
        // A new epoch: every message of it is new, offsets start over.
        t.new_session();
        t.subscribe("ops", 2);
        let out = feed(
            &mut t,
            &[subscribed("ops", E2, 2, Some(false)), msg("ops", 1), msg("ops", 2)],
        );
        assert_eq!(printed(&out), (vec![1, 2], 1));
        match out.iter().find(|o| matches!(o, Out::Warn(_))) {
            Some(Out::Warn(w)) => assert!(
                w.contains("not recovered") && w.contains("ops") && w.contains(E2),
                "{w}"
            ),
            _ => unreachable!(),
        }
        assert_eq!(
            t.positions().get("ops"),
            Some(&Position {
                epoch: E2.into(),
                offset: 2
            })
        );
        // Recovered: no warning.
        t.new_session();
        t.subscribe("ops", 3);
        assert_eq!(
            printed(&feed(&mut t, &[subscribed("ops", E2, 2, Some(true))])),
            (vec![], 0)
        );
    }

    #[test]
    fn spec10_personal_channel_live_messages_ahead_of_the_replay_are_merged() {
        // @a was at 3; while the agent reconnects, 4 and 5 are published; 6
        // arrives live before the reply to the resume, then the replay 4..6.
        let mut t = Tracker::new(Positions::parse("@a epochOne1 3\n").unwrap());
        t.subscribe("@a", 1);
        let out = t.on_frame(&msg("@a", 6));
        assert!(out.is_empty(), "held until the resume is answered");
        let out = feed(
            &mut t,
            &[
                msg("@a", 7),
                subscribed("@a", E1, 7, Some(true)),
                msg("@a", 4),
                msg("@a", 5),
                msg("@a", 6),
                msg("@a", 7),
                msg("@a", 8),
            ],
        );
        assert_eq!(printed(&out), (vec![4, 5, 6, 7, 8], 0));
    }

    #[test]
    fn spec10_held_messages_missing_from_the_replay_still_print_in_order() {
        // History off on the hub: the replay is empty; what came live is all there is.
        let mut t = Tracker::new(Positions::parse("@a epochOne1 3\n").unwrap());
        t.subscribe("@a", 1);
        let out = feed(
            &mut t,
            &[msg("@a", 6), msg("@a", 5), subscribed("@a", E1, 6, Some(false))],
        );
        assert_eq!(printed(&out), (vec![], 1));
        let out = feed(&mut t, &[r#"{"type":"pong"}"#.to_string()]);
        assert_eq!(printed(&out), (vec![5, 6], 0));
        // The replay only has the newest: the older held one goes first.
        t.new_session();
        t.subscribe("@a", 2);
        let out = feed(
            &mut t,
            &[
                msg("@a", 8),
                msg("@a", 9),
                subscribed("@a", E1, 9, Some(false)),
                msg("@a", 9),
            ],
        );
        assert_eq!(printed(&out), (vec![8, 9], 1));
        // Nothing else comes: the tick prints what is left.
        t.new_session();
        t.subscribe("@a", 3);
        let out = feed(&mut t, &[msg("@a", 10), subscribed("@a", E1, 10, Some(true))]);
        assert_eq!(printed(&out), (vec![], 0));
        assert_eq!(printed(&t.tick()), (vec![10], 0));
    }

    #[test]
    fn spec10_messages_before_a_fresh_subscribe_and_refusals() {
        // Personal channel, first run: live messages before the reply print
        // at once; the reply's offset then sets the position.
        let mut t = Tracker::new(Positions::default());
        assert_eq!(printed(&t.on_frame(&msg("@a", 2))), (vec![2], 0));
        assert_eq!(printed(&t.on_frame(&msg("@a", 2))), (vec![], 0));
        t.subscribe("@a", 1);
        let out = feed(&mut t, &[msg("@a", 3), subscribed("@a", E1, 3, None), msg("@a", 4)]);
        assert_eq!(printed(&out), (vec![3, 4], 0));
        assert_eq!(t.positions().get("@a").unwrap().offset, 4);
        // A refused resume prints what was held and the error.
        let mut t = Tracker::new(Positions::parse("x epochOne1 1\n").unwrap());
        t.subscribe("x", 9);
        assert!(t.on_frame(&msg("x", 2)).is_empty());
        let out = t.on_frame(r#"{"type":"error","code":"forbidden","ref":9}"#);
        assert_eq!(printed(&out), (vec![2], 0));
        assert_eq!(out.len(), 2);
        // A hub without epochs: no resume state, messages still print.
        let mut t = Tracker::new(Positions::default());
        t.subscribe("ops", 1);
        let out = feed(
            &mut t,
            &[r#"{"type":"subscribed","channel":"ops"}"#.to_string(), msg("ops", 1)],
        );
        assert_eq!(printed(&out), (vec![1], 0));
        assert!(t.positions().is_empty());
    }

    #[test]
    fn arbitrary_positions_files_never_panic() {
        // A small xorshift: the same bytes every run.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let alphabet = b"ops @a-7 epochOne1 0123456789 \n#\t\xff\xc3";
        for _ in 0..5000 {
            let mut bytes = Vec::new();
            for _ in 0..(x % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(p) = Positions::parse(&text) {
                assert_eq!(Positions::parse(&p.render()), Ok(p));
            }
        }
    }

    #[test]
    fn non_message_frames_and_garbage_pass_through() {
        let mut t = Tracker::new(Positions::default());
        for f in [
            "not json",
            r#"{"type":"welcome","sub":"a"}"#,
            r#"{"type":"message","channel":"c"}"#,
            "[]",
        ] {
            assert_eq!(t.on_frame(f), vec![Out::Print(f.to_string())]);
        }
    }
}
