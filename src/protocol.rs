//! WebSocket messages (SPEC §4.3), sans-IO: client text frames to
//! [`Command`]s, and the server's JSON replies and pushes.
//!
//! `data` and `ref` are kept as raw JSON text: they are echoed byte for byte
//! and never re-encoded.
//!
//! ```
//! use tessera::protocol::{parse_client, Command, Since};
//! let m = parse_client(r#"{"type":"subscribe","channel":"ops","since":{"last":5},"ref":7}"#).unwrap();
//! assert!(matches!(m.command, Command::Subscribe { ref channel, since: Some(Since::Last(5)) } if channel == "ops"));
//! assert_eq!(m.reference.unwrap().get(), "7");
//! ```

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A client command.
#[derive(Debug)]
pub enum Command {
    /// `subscribe`, with an optional resume point (SPEC §10).
    Subscribe {
        channel: String,
        since: Option<Since>,
    },
    Unsubscribe(String),
    Publish {
        channel: String,
        data: Box<RawValue>,
    },
    Refresh(String),
    Ping,
    /// `presence`: who is subscribed to a channel now (SPEC §13).
    Presence(String),
}

/// Where a resuming subscriber stands (SPEC §10 `since`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// `{"epoch":E,"offset":K}`: the last message seen.
    Position { epoch: String, offset: u64 },
    /// `{"last":N}`: the last N retained messages.
    Last(u64),
}

/// The most `{"last":N}` may ask for.
pub const MAX_LAST: u64 = 1000;

/// A parsed client message: the command and its optional `ref`.
#[derive(Debug)]
pub struct ClientMessage {
    pub command: Command,
    pub reference: Option<Box<RawValue>>,
}

/// A message that is not a valid command (`bad_message`), with the `ref`
/// when one could be read.
#[derive(Debug)]
pub struct BadMessage {
    pub reference: Option<Box<RawValue>>,
    pub message: &'static str,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    since: Option<&'a RawValue>,
    #[serde(rename = "ref", borrow, default)]
    reference: Option<&'a RawValue>,
}

fn string(raw: Option<&RawValue>) -> Option<String> {
    serde_json::from_str::<String>(raw?.get()).ok()
}

/// Parses one client text frame.
pub fn parse_client(text: &str) -> Result<ClientMessage, BadMessage> {
    let wire: Wire<'_> = serde_json::from_str(text).map_err(|_| BadMessage {
        reference: None,
        message: "not a JSON object with known members",
    })?;
    let reference = wire.reference.map(RawValue::to_owned);
    let bad = |message| BadMessage {
        reference: reference.clone(),
        message,
    };
    let command = match string(wire.kind).as_deref() {
        Some("subscribe") => Command::Subscribe {
            channel: string(wire.channel).ok_or_else(|| bad("channel must be a string"))?,
            since: match wire.since {
                None => None,
                Some(raw) => Some(parse_since(raw).map_err(bad)?),
            },
        },
        Some("unsubscribe") => {
            Command::Unsubscribe(string(wire.channel).ok_or_else(|| bad("channel must be a string"))?)
        }
        Some("publish") => Command::Publish {
            channel: string(wire.channel).ok_or_else(|| bad("channel must be a string"))?,
            data: wire
                .data
                .map(RawValue::to_owned)
                .ok_or_else(|| bad("publish needs data"))?,
        },
        Some("refresh") => Command::Refresh(string(wire.token).ok_or_else(|| bad("token must be a string"))?),
        Some("ping") => Command::Ping,
        Some("presence") => Command::Presence(string(wire.channel).ok_or_else(|| bad("channel must be a string"))?),
        _ => return Err(bad("unknown message type")),
    };
    Ok(ClientMessage { command, reference })
}

/// `since`: `{"epoch":E,"offset":K}` or `{"last":N}` with N ≤ [`MAX_LAST`].
fn parse_since(raw: &RawValue) -> Result<Since, &'static str> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct W {
        epoch: Option<String>,
        offset: Option<u64>,
        last: Option<u64>,
    }
    const SHAPE: &str = "since must be {\"epoch\":E,\"offset\":K} or {\"last\":N}";
    let w: W = serde_json::from_str(raw.get()).map_err(|_| SHAPE)?;
    match (w.epoch, w.offset, w.last) {
        (Some(epoch), Some(offset), None) if (1..=64).contains(&epoch.len()) => Ok(Since::Position { epoch, offset }),
        (None, None, Some(n)) if n <= MAX_LAST => Ok(Since::Last(n)),
        (None, None, Some(_)) => Err("since.last must be at most 1000"),
        _ => Err(SHAPE),
    }
}

/// A server reply or notice. Only the fields set are written.
#[derive(Serialize, Default)]
pub struct Reply<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<&'a RawValue>,
}

impl Reply<'_> {
    /// The JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `{"type":"error","code":…,"message":…}` with the request's `ref`.
pub fn error(code: &str, message: &str, reference: Option<&RawValue>) -> String {
    Reply {
        kind: "error",
        code: Some(code),
        message: Some(message),
        reference,
        ..Reply::default()
    }
    .to_json()
}

/// The first message on a socket:
/// `{"type":"welcome","sub":…,"clearance":…,"expires_at":…,"server":…}`.
/// Written by hand, not by serde_json: every handshake sends one (issue
/// 16); the text is serde_json's (unit test).
pub fn welcome(sub: &str, clearance: u32, expires_at: u64, server: &str) -> String {
    // 62 bytes of names and punctuation, 30 digits at most, 4 quotes: no
    // reallocation for a sub and server name without escapes.
    let mut out = String::with_capacity(96 + sub.len() + server.len());
    out.push_str(r#"{"type":"welcome","sub":"#);
    crate::log::json_str(&mut out, sub);
    out.push_str(r#","clearance":"#);
    crate::log::push_u64(&mut out, u64::from(clearance));
    out.push_str(r#","expires_at":"#);
    crate::log::push_u64(&mut out, expires_at);
    out.push_str(r#","server":"#);
    crate::log::json_str(&mut out, server);
    out.push('}');
    out
}

/// `{"type":"subscribed","channel":C,"epoch":E,"offset":N[,"recovered":B][,"ref":R]}`.
pub fn subscribed(
    channel: &str,
    epoch: &str,
    offset: u64,
    recovered: Option<bool>,
    reference: Option<&RawValue>,
) -> String {
    Reply {
        kind: "subscribed",
        channel: Some(channel),
        epoch: Some(epoch),
        offset: Some(offset),
        recovered,
        reference,
        ..Reply::default()
    }
    .to_json()
}

/// `{"type":"presence","channel":C,"subs":[…][,"ref":R]}` (SPEC §13).
pub fn presence(channel: &str, subs: &[String], reference: Option<&RawValue>) -> String {
    #[derive(Serialize)]
    struct Presence<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        subs: &'a [String],
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a RawValue>,
    }
    serde_json::to_string(&Presence {
        kind: "presence",
        channel,
        subs,
        reference,
    })
    .unwrap_or_default()
}

/// The channel and id of a frame made by [`message`] (used to find frames
/// of a channel still waiting in a queue); `None` for any other frame.
pub fn message_position(frame: &str) -> Option<(&str, u64)> {
    let rest = frame.strip_prefix(r#"{"type":"message","channel":""#)?;
    // Channel names never need escaping (SPEC §4.3), so the first quote ends it.
    let end = rest.find('"')?;
    let (channel, rest) = rest.split_at(end);
    let rest = rest.strip_prefix(r#"","id":"#)?;
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let id = rest.get(..digits)?.parse().ok()?;
    Some((channel, id))
}

/// A mission update, serialised once and queued to every subscriber.
pub fn message(channel: &str, id: u64, ts_ms: u64, from: &str, data: &RawValue) -> String {
    #[derive(Serialize)]
    struct Message<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        id: u64,
        ts: u64,
        from: &'a str,
        data: &'a RawValue,
    }
    // Sized up front: the frame may be kept in the history for an hour, and
    // `to_string`'s doubling growth would keep up to twice its length.
    let mut out = Vec::with_capacity(96 + channel.len() + from.len() + data.get().len());
    let m = Message {
        kind: "message",
        channel,
        id,
        ts: ts_ms,
        from,
        data,
    };
    if serde_json::to_writer(&mut out, &m).is_err() {
        return String::new();
    }
    out.shrink_to_fit();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welcome_is_the_text_serde_json_writes() {
        #[derive(Serialize)]
        struct Welcome<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            sub: &'a str,
            clearance: u32,
            expires_at: u64,
            server: &'a str,
        }
        let long = "é".repeat(100);
        for (sub, clearance, exp) in [
            ("agent-7", 0, 1_700_000_000),
            ("a \"quoted\" \\ name", u32::MAX, u64::MAX),
            ("ctl\u{1}\n\u{7f}\u{2028}", 3, 0),
            (long.as_str(), 9, 42),
            ("", 1, 1),
        ] {
            let theirs = serde_json::to_string(&Welcome {
                kind: "welcome",
                sub,
                clearance,
                expires_at: exp,
                server: "tessera/0.1.0",
            })
            .unwrap();
            assert_eq!(welcome(sub, clearance, exp, "tessera/0.1.0"), theirs, "{sub:?}");
        }
        // The longest numbers fit the first allocation.
        let w = welcome("agent-7", u32::MAX, u64::MAX, "tessera/0.1.0");
        assert_eq!(w.capacity(), 96 + "agent-7".len() + "tessera/0.1.0".len());
    }

    #[test]
    fn spec4_3_every_command() {
        let p = |s: &str| parse_client(s).map(|m| m.command);
        assert!(matches!(p(r#"{"type":"unsubscribe","channel":"a"}"#), Ok(Command::Unsubscribe(c)) if c == "a"));
        assert!(matches!(p(r#"{"type":"ping"}"#), Ok(Command::Ping)));
        assert!(
            matches!(p(r#"{"type":"subscribe","channel":"a"}"#), Ok(Command::Subscribe { channel, since: None }) if channel == "a")
        );
        assert!(matches!(p(r#"{"type":"refresh","token":"t"}"#), Ok(Command::Refresh(t)) if t == "t"));
        match p(r#"{"type":"publish","channel":"c","data":{"x":[1, 2]}}"#) {
            Ok(Command::Publish { channel, data }) => {
                assert_eq!(channel, "c");
                assert_eq!(data.get(), r#"{"x":[1, 2]}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn spec4_3_bad_message_keeps_ref() {
        let e = parse_client(r#"{"type":"dance","ref":"r1"}"#).unwrap_err();
        assert_eq!(e.reference.unwrap().get(), r#""r1""#);
        assert!(parse_client("not json").unwrap_err().reference.is_none());
        assert!(parse_client(r#"{"type":"subscribe","channel":5}"#).is_err());
        assert!(parse_client(r#"{"type":"publish","channel":"c"}"#).is_err());
        assert!(parse_client(r#"[1]"#).is_err());
        assert!(parse_client(r#"{"type":"ping","type":"ping"}"#).is_err());
    }

    #[test]
    fn spec13_presence_command_and_reply() {
        let m = parse_client(r#"{"type":"presence","channel":"ops","ref":"p"}"#).unwrap();
        assert!(matches!(m.command, Command::Presence(ref c) if c == "ops"));
        assert!(parse_client(r#"{"type":"presence"}"#).is_err());
        assert!(parse_client(r#"{"type":"presence","channel":["ops"]}"#).is_err());
        let r = RawValue::from_string(r#""p""#.into()).unwrap();
        assert_eq!(
            presence("ops", &["a".into(), "b\"".into()], Some(&r)),
            r#"{"type":"presence","channel":"ops","subs":["a","b\""],"ref":"p"}"#
        );
        assert_eq!(
            presence("x", &[], None),
            r#"{"type":"presence","channel":"x","subs":[]}"#
        );
    }

    #[test]
    fn spec10_since_forms() {
        let since = |s: &str| match parse_client(&format!(r#"{{"type":"subscribe","channel":"c","since":{s}}}"#)) {
            Ok(ClientMessage {
                command: Command::Subscribe { since, .. },
                ..
            }) => Ok(since),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.message),
        };
        assert_eq!(
            since(r#"{"epoch":"abcdefgh","offset":7}"#),
            Ok(Some(Since::Position {
                epoch: "abcdefgh".into(),
                offset: 7
            }))
        );
        assert_eq!(since(r#"{"last":1000}"#), Ok(Some(Since::Last(1000))));
        assert_eq!(since(r#"{"last":0}"#), Ok(Some(Since::Last(0))));
        // `null` is the same as no `since`.
        assert_eq!(since("null"), Ok(None));
        assert_eq!(since(r#"{"last":1001}"#), Err("since.last must be at most 1000"));
        for bad in [
            r#"{"last":-1}"#,
            r#"{"epoch":"e"}"#,
            r#"{"offset":1}"#,
            r#"{"epoch":"e","offset":1,"last":2}"#,
            r#"{"epoch":5,"offset":1}"#,
            r#"{"epoch":"","offset":1}"#,
            r#"{"epoch":"e","offset":1.5}"#,
            r#"{"epoch":"e","offset":1,"x":1}"#,
            r#""last""#,
            "[1]",
        ] {
            assert!(since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn message_position_reads_our_frames_only() {
        let d = RawValue::from_string("{}".into()).unwrap();
        assert_eq!(message_position(&message("a.b", 42, 1, "x", &d)), Some(("a.b", 42)));
        assert_eq!(message_position(r#"{"type":"subscribed","channel":"a"}"#), None);
        assert_eq!(message_position(r#"{"type":"message","channel":"a","id":x"#), None);
    }

    #[test]
    fn replies_render_only_set_fields() {
        assert_eq!(
            subscribed("c", "E", 3, Some(false), None),
            r#"{"type":"subscribed","channel":"c","epoch":"E","offset":3,"recovered":false}"#
        );
        let r = RawValue::from_string("42".into()).unwrap();
        assert_eq!(
            Reply {
                kind: "subscribed",
                channel: Some("ops"),
                reference: Some(&r),
                ..Reply::default()
            }
            .to_json(),
            r#"{"type":"subscribed","channel":"ops","ref":42}"#
        );
        assert_eq!(
            error("forbidden", "no", None),
            r#"{"type":"error","code":"forbidden","message":"no"}"#
        );
        let d = RawValue::from_string("[true]".into()).unwrap();
        assert_eq!(
            message("ops", 3, 1000, "hq", &d),
            r#"{"type":"message","channel":"ops","id":3,"ts":1000,"from":"hq","data":[true]}"#
        );
    }
}
